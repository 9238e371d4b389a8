"""resolv.conf: the pod's original nameservers, search domains and ndots (pure parse).

Follows glibc: `nameserver` lines in order (at most 3 are used by glibc; all are
kept here), the last `search` or `domain` line wins, `options ndots:N` capped at
15. Beyond glibc, a nameserver may carry a port: `10.0.0.10:5353`,
`[fd00::10]:5353` (a bare IPv6 address has no port; `%zone` suffixes are
dropped). Lines that do not parse are skipped, as the resolver does.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

DNS_PORT = 53
_MAX_NDOTS = 15


@dataclass(frozen=True)
class ResolvConf:
    nameservers: tuple[tuple[str, int], ...] = ()
    search: tuple[str, ...] = ()
    ndots: int = 1


def parse_address(text: str, default_port: int = DNS_PORT) -> tuple[str, int]:
    """'IP', 'IPv4:PORT' or '[IPv6]:PORT' -> (ip, port); ValueError when it does not parse."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [IPv6]:PORT")
        if rest:
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text, text)
    host = host.partition("%")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    return str(ip), port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{whole!r}: {text!r} is not a port")
    return int(text)


def parse_resolv_conf(text: str) -> ResolvConf:
    nameservers: list[tuple[str, int]] = []
    search: tuple[str, ...] = ()
    ndots = 1
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) < 2:
            continue
        keyword, args = words[0], words[1:]
        if keyword == "nameserver":
            try:
                nameservers.append(parse_address(args[0]))
            except ValueError:
                continue
        elif keyword in ("search", "domain"):
            search = tuple(
                d.rstrip(".").lower() for d in (args if keyword == "search" else args[:1])
            )
        elif keyword == "options":
            for option in args:
                name, _, value = option.partition(":")
                if name == "ndots" and value.isdigit():
                    ndots = min(int(value), _MAX_NDOTS)
    return ResolvConf(tuple(nameservers), search, ndots)


def read_resolv_conf(path: str | Path = "/etc/resolv.conf") -> ResolvConf:
    """The parsed file (OSError when it cannot be read: the caller says what to do)."""
    return parse_resolv_conf(Path(path).read_text(errors="replace"))
