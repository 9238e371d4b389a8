"""Command-line flags that also read MESHLET_<FLAG> environment variables."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from typing import Any


def env_name(flag: str) -> str:
    return "MESHLET_" + flag.lstrip("-").replace("-", "_").upper()


def add_flag(
    parser: argparse.ArgumentParser, flag: str, env: str | None = None, **kwargs: Any
) -> None:
    """Like add_argument, with the default taken from MESHLET_<FLAG> (or `env`) when set.

    argparse runs `type` on string defaults too, so a bad environment value is
    reported exactly like a bad flag.
    """
    env = env or env_name(flag)
    value = os.environ.get(env)
    if value is not None:
        if kwargs.get("action") == "append":
            kwargs["default"] = [_convert(kwargs, v) for v in value.replace(",", " ").split()]
        elif kwargs.get("action") == "store_true":
            kwargs["default"] = value.lower() in ("1", "true", "yes", "on")
        else:
            kwargs["default"] = value
        # argparse checks `choices` only on the command line, not on defaults.
        choices = kwargs.get("choices")
        if choices is not None and _convert(kwargs, value) not in choices:
            parser.error(f"{env}={value!r}: choose from {', '.join(map(str, choices))}")
    help_text = kwargs.get("help", "")
    kwargs["help"] = f"{help_text} [env {env}]".strip()
    parser.add_argument(flag, **kwargs)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """--help shows each flag's default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        shown = default not in (None, False, argparse.SUPPRESS, [], "") and action.option_strings
        if shown and "default" not in text.lower():
            value = ",".join(map(str, default)) if isinstance(default, list) else default
            shown_default = f"(default: {str(value).replace('%', '%%')})"
            words, env, tag = text.rpartition(" [env ")  # add_flag's tag stays last
            text = f"{words} {shown_default}{env}{tag}" if env else f"{text} {shown_default}"
        return text


def _convert(kwargs: dict[str, Any], value: str) -> Any:
    convert = kwargs.get("type")
    return convert(value) if convert else value


def host_port(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[V6]:PORT' -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} in {text!r} is out of range 0-65535")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        raise argparse.ArgumentTypeError(f"{text!r} has no host")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise argparse.ArgumentTypeError(f"{host!r} in {text!r} is not an IP address") from None
    return host, port


_DNS_NAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*\.?"
)


def dial_address(text: str) -> tuple[str, int]:
    """'HOST:PORT' where HOST may also be a DNS name (a Service's, say): resolved when
    dialled, through the resolver of the process (a pod's original nameservers)."""
    host, sep, port_text = text.rpartition(":")
    if host and not host.startswith("[") and _DNS_NAME.fullmatch(host.lower()):
        if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return host.lower(), int(port_text)
    try:
        return host_port(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT with an IP address or a DNS name as HOST"
        ) from None


def dial_address_text(text: str) -> str:
    """A `dial_address`, checked, kept as the text it was."""
    dial_address(text)
    return text


def host_port_or_off(text: str) -> tuple[str, int] | None:
    """A `host_port`, or "off" (None): a server that is not to run."""
    return None if text.strip().lower() == "off" else host_port(text)


def port_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number 1-65535")
    return int(text)


def domain_name(text: str) -> str:
    name = text.strip(".").lower()
    labels = name.split(".")
    if not name or any(not label or len(label) > 63 for label in labels):
        raise argparse.ArgumentTypeError(f"{text!r} is not a DNS domain")
    return name


def namespace_name(text: str) -> str:
    """A Kubernetes namespace: a DNS-1123 label."""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a namespace name (lowercase letters, digits and '-', at most 63)"
        )
    return text


def grpc_address(host: str, port: int) -> str:
    """HOST:PORT, an IPv6 host in brackets: as gRPC targets, logs and endpoint names write it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def dns_upstream(text: str) -> tuple[str, int]:
    """IP[:PORT] (IPv6 with a port as [IP]:PORT) -> (ip, port), port 53 by default."""
    from meshlet.resolv import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def ttl_seconds(text: str) -> int:
    if not text.isdigit() or int(text) > 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TTL in seconds (0-86400)")
    return int(text)


def cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a CIDR ({exc})") from None


def ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def id_number(text: str) -> int:
    """A uid or gid."""
    if not text.isdigit() or int(text) >= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a user or group id")
    return int(text)


_BYTE_UNITS = {"": 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def byte_size(text: str) -> int:
    """A number of bytes, optionally in Ki, Mi or Gi (as Kubernetes writes quantities)."""
    match = re.fullmatch(r"([0-9]+)(Ki|Mi|Gi)?", text.strip())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size in bytes (a number, or with Ki, Mi or Gi: 4Mi)"
        )
    return int(match.group(1)) * _BYTE_UNITS[match.group(2) or ""]


def byte_size_text(size: int) -> str:
    """A `byte_size` as a flag's default shows it: 4194304 -> 4Mi."""
    for unit in ("Gi", "Mi", "Ki"):
        if size % _BYTE_UNITS[unit] == 0:
            return f"{size // _BYTE_UNITS[unit]}{unit}"
    return str(size)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0-86400)")
    return value
