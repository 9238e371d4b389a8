"""The injector's settings: one file (the chart renders it into a ConfigMap), read by
`meshlet inject` and by the webhook, which reloads it when it changes.

    image: ghcr.io/meshlet/meshlet:0.1.0
    controlPlane: meshlet.meshlet-system.svc:15010
    mode: native                      # or classic, for clusters without native sidecars
    serviceCIDRs: [10.96.0.0/12]
    clusterDNS: [10.96.0.10]          # whose DNS is answered; default: resolv.conf's servers
    proxy: {resources: {requests: {cpu: 10m, memory: 64Mi}, limits: {memory: 256Mi}}}

Every key is optional (defaults below); an unknown key or a bad value is an error
that names it, so a typo never silently changes what is injected.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from meshlet import __version__, defaults

NATIVE, CLASSIC = "native", "classic"
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti|E|Ei|P|Pi)?$")


class SettingsError(ValueError):
    pass


def _default_resources(memory_limit: str) -> dict[str, dict[str, str]]:
    return {"requests": {"cpu": "10m", "memory": "40Mi"}, "limits": {"memory": memory_limit}}


@dataclass(frozen=True)
class InjectorSettings:
    image: str = f"{defaults.IMAGE_REPOSITORY}:{__version__}"
    image_pull_policy: str = "IfNotPresent"
    control_plane: str = (
        f"{defaults.CONTROL_PLANE_SERVICE}.{defaults.SYSTEM_NAMESPACE}.svc:{defaults.XDS_PORT}"
    )
    system_namespace: str = defaults.SYSTEM_NAMESPACE
    cluster_domain: str = defaults.CLUSTER_DOMAIN
    service_cidrs: tuple[str, ...] = (defaults.SERVICE_CIDR,)
    # The DNS servers whose queries the sidecar answers; empty: the pod's resolv.conf's.
    cluster_dns: tuple[str, ...] = ()
    mode: str = NATIVE
    proxy_uid: int = defaults.PROXY_UID
    proxy_resources: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: _default_resources("256Mi")
    )
    init_resources: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: _default_resources("64Mi")
    )
    drain_seconds: float = 5.0
    exclude_ports: tuple[int, ...] = ()
    exclude_cidrs: tuple[str, ...] = ()
    log_level: str = "info"


_KEYS = (
    "image",
    "imagePullPolicy",
    "controlPlane",
    "systemNamespace",
    "clusterDomain",
    "serviceCIDRs",
    "clusterDNS",
    "mode",
    "proxy",
    "init",
    "excludeOutboundPorts",
    "excludeOutboundCIDRs",
    "logLevel",
)


def settings_from(data: object, where: str = "settings") -> InjectorSettings:
    """Settings from the parsed file; SettingsError names the key that is wrong."""
    if data is None:
        return InjectorSettings()
    if not isinstance(data, Mapping):
        raise SettingsError(f"{where}: expected a mapping of settings")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise SettingsError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")
    values: dict[str, Any] = {}
    texts = {
        "image": "image",
        "controlPlane": "control_plane",
        "systemNamespace": "system_namespace",
        "clusterDomain": "cluster_domain",
        "logLevel": "log_level",
    }
    for key, name in texts.items():
        if key in data:
            values[name] = _text(data[key], f"{where}.{key}")
    if "imagePullPolicy" in data:
        values["image_pull_policy"] = _one_of(
            data["imagePullPolicy"], ("Always", "IfNotPresent", "Never"), f"{where}.imagePullPolicy"
        )
    if "mode" in data:
        values["mode"] = _one_of(data["mode"], (NATIVE, CLASSIC), f"{where}.mode")
    if "serviceCIDRs" in data:
        values["service_cidrs"] = tuple(
            cidr(c, f"{where}.serviceCIDRs[{i}]")
            for i, c in enumerate(_list(data["serviceCIDRs"], f"{where}.serviceCIDRs"))
        )
        if not values["service_cidrs"]:
            raise SettingsError(f"{where}.serviceCIDRs is empty: nothing would be captured")
    if "clusterDNS" in data:
        values["cluster_dns"] = tuple(
            _ip(a, f"{where}.clusterDNS[{i}]")
            for i, a in enumerate(_list(data["clusterDNS"], f"{where}.clusterDNS"))
        )
    if "excludeOutboundPorts" in data:
        values["exclude_ports"] = ports(
            data["excludeOutboundPorts"], f"{where}.excludeOutboundPorts"
        )
    if "excludeOutboundCIDRs" in data:
        values["exclude_cidrs"] = tuple(
            cidr(c, f"{where}.excludeOutboundCIDRs[{i}]")
            for i, c in enumerate(
                _list(data["excludeOutboundCIDRs"], f"{where}.excludeOutboundCIDRs")
            )
        )
    for part in ("proxy", "init"):
        if part in data:
            values.update(_part(data[part], part, f"{where}.{part}"))
    if "control_plane" in values:
        _dial(values["control_plane"], f"{where}.controlPlane")
    return replace(InjectorSettings(), **values)


def load_settings(path: str | Path) -> InjectorSettings:
    """The settings file (YAML or JSON); SettingsError for one that is missing or wrong."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise SettingsError(f"{path}: not YAML or JSON: {exc}") from None
    return settings_from(data, str(path))


def _part(value: object, part: str, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise SettingsError(f"{where}: expected a mapping")
    known = {"resources", "uid", "drainSeconds"} if part == "proxy" else {"resources"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise SettingsError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )
    out: dict[str, Any] = {}
    if "resources" in value:
        out[f"{part}_resources"] = resources(value["resources"], f"{where}.resources")
    if "uid" in value:
        uid = value["uid"]
        if not isinstance(uid, int) or isinstance(uid, bool) or not 1 <= uid < 2**31:
            raise SettingsError(f"{where}.uid: expected a non-root uid, got {uid!r}")
        out["proxy_uid"] = uid
    if "drainSeconds" in value:
        seconds = value["drainSeconds"]
        if (
            not isinstance(seconds, int | float)
            or isinstance(seconds, bool)
            or not 0 <= seconds <= 3600
        ):
            raise SettingsError(f"{where}.drainSeconds: expected 0-3600 seconds, got {seconds!r}")
        out["drain_seconds"] = float(seconds)
    return out


def resources(value: object, where: str) -> dict[str, dict[str, str]]:
    """Kubernetes resource requirements: requests and limits of cpu and memory."""
    if not isinstance(value, Mapping):
        raise SettingsError(f"{where}: expected requests and limits")
    out: dict[str, dict[str, str]] = {}
    for kind, amounts in value.items():
        if kind not in ("requests", "limits"):
            raise SettingsError(f"{where}: unknown key {kind!r} (known: requests, limits)")
        if not isinstance(amounts, Mapping):
            raise SettingsError(f"{where}.{kind}: expected cpu and memory")
        out[kind] = {}
        for name, amount in amounts.items():
            if name not in ("cpu", "memory"):
                raise SettingsError(f"{where}.{kind}: unknown resource {name!r} (cpu, memory)")
            out[kind][name] = quantity(amount, f"{where}.{kind}.{name}")
    return out


def quantity(value: object, where: str) -> str:
    text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _QUANTITY.match(text):
        raise SettingsError(f"{where}: {value!r} is not a quantity (say 100m, 64Mi)")
    return text


def cidr(value: object, where: str) -> str:
    try:
        return str(ipaddress.ip_network(str(value).strip(), strict=True))
    except ValueError as exc:
        raise SettingsError(f"{where}: {value!r} is not a CIDR ({exc})") from None


def ports(value: object, where: str) -> tuple[int, ...]:
    """A list of ports, or one comma-separated string of them (as annotations carry it)."""
    items = value.split(",") if isinstance(value, str) else _list(value, where)
    out = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise SettingsError(f"{where}: {item!r} is not a port number 1-65535")
        out.append(int(text))
    return tuple(out)


def _dial(value: str, where: str) -> None:
    from meshlet.flags import dial_address

    try:
        dial_address(value)
    except Exception as exc:
        raise SettingsError(f"{where}: {exc}") from None


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SettingsError(f"{where}: expected a non-empty string, got {value!r}")
    return value.strip()


def _one_of(value: object, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise SettingsError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _list(value: object, where: str) -> list[object]:
    if not isinstance(value, list):
        raise SettingsError(f"{where}: expected a list, got {value!r}")
    return value


def _ip(value: object, where: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise SettingsError(f"{where}: {value!r} is not an IP address") from None
