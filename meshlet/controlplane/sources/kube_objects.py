"""Kubernetes Services and EndpointSlices, as plain dicts, into the mesh model.

Pure: the manifest folder source and the Kubernetes API source both hand in the
objects exactly as `kubectl get -o yaml` prints them or the API returns them as
JSON, and get back validated specs, then each Service joined to its slices.
Items of an API list carry no `kind`/`apiVersion`, so nothing here looks at
them; callers dispatch by kind.

Validation follows the Kubernetes API server, so a manifest the cluster would
refuse is refused here too, with the field path in the message.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from meshlet.controlplane.sources.route_annotations import ANNOTATIONS, parse_route_policy
from meshlet.model import (
    Endpoint,
    Health,
    LbPolicy,
    RoutePolicy,
    Service,
    ServiceKind,
    ServicePort,
)

LB_POLICY_ANNOTATION = "meshlet.io/lb-policy"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

_SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
_PROTOCOLS = ("TCP", "UDP", "SCTP")
_ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
_SESSION_AFFINITIES = ("None", "ClientIP")
# PreferSameZone is the newer spelling of PreferClose.
_PREFER_SAME_ZONE = frozenset({"PreferClose", "PreferSameZone"})

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# The name part of a qualified name (appProtocol, label keys).
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
# IANA service name: what a named targetPort must look like.
_IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9]|-(?!-))*")
# The API server's caps on one EndpointSlice (pkg/apis/discovery/validation), checked
# before anything in those lists is decoded. A Service's ports have none there.
MAX_SLICE_ENDPOINTS = 1000
MAX_ENDPOINT_ADDRESSES = 100
MAX_SLICE_PORTS = 20_000


class ManifestError(ValueError):
    """An object the API server would refuse, or objects that conflict.

    `location` says where (file, document, object) and is filled in by whoever
    knows it; `message` says what is wrong, naming the field.
    """

    def __init__(self, message: str, location: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.location = location

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message

    def __reduce__(self) -> tuple[type[ManifestError], tuple[str, str]]:
        # Both fields, so a child process that parsed a file can send its problems.
        return ManifestError, (self.message, self.location)


@dataclass(frozen=True)
class PortSpec:
    name: str
    port: int
    protocol: str
    # A number, or the name of a container port resolved through EndpointSlice ports.
    target_port: int | str
    app_protocol: str = ""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    namespace: str
    kind: ServiceKind
    cluster_ips: tuple[str, ...] = ()
    ports: tuple[PortSpec, ...] = ()
    external_name: str = ""
    lb_policy: LbPolicy = LbPolicy.ROUND_ROBIN
    lb_policy_default: bool = False
    client_ip_affinity: bool = False
    prefer_same_zone: bool = False
    publish_not_ready: bool = False
    route_policy: RoutePolicy = field(default_factory=RoutePolicy)
    # metadata.creationTimestamp (seconds since the epoch), None when a manifest has
    # none: the older of two Services claiming one ClusterIP keeps it.
    created: float | None = None
    # Where it came from ("web.yaml: document 2"), so conflicts can name both sides.
    origin: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class SlicePort:
    name: str
    port: int
    protocol: str


@dataclass(frozen=True)
class SliceEndpoint:
    addresses: tuple[str, ...]
    ready: bool
    serving: bool
    terminating: bool
    zone: str = ""
    hostname: str = ""


@dataclass(frozen=True)
class SliceSpec:
    name: str
    namespace: str
    service_name: str
    address_type: str
    ports: tuple[SlicePort, ...] = ()
    # Always empty for FQDN slices: the mesh routes to IPs only.
    endpoints: tuple[SliceEndpoint, ...] = ()
    created: float | None = None
    origin: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def describe(obj: Mapping[str, object]) -> str:
    """`Service default/web`, for error locations; never fails on odd input."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    kind = obj.get("kind")
    name = meta.get("name")
    namespace = meta.get("namespace") or "default"
    label = kind if isinstance(kind, str) and kind else "object"
    if isinstance(name, str) and name:
        return f"{label} {namespace}/{name}"
    return label


# --- Service -----------------------------------------------------------------


def parse_service(obj: Mapping[str, object]) -> ServiceSpec:
    meta = _mapping(obj, "metadata", "metadata")
    name = _name(meta, _DNS1035_LABEL, "a DNS-1035 label")
    namespace = _namespace(meta)
    spec = _mapping(obj, "spec", "spec")

    type_ = _string(spec, "type", "spec.type") or "ClusterIP"
    if type_ not in _SERVICE_TYPES:
        raise _not_one_of("spec.type", type_, _SERVICE_TYPES)
    cluster_ips = _cluster_ips(spec, type_)
    headless = cluster_ips == ("None",)
    ports = _service_ports(spec)
    if not ports and type_ != "ExternalName" and not headless:
        raise ManifestError(f"spec.ports is empty: a {type_} service needs at least one port")

    external_name = ""
    if type_ == "ExternalName":
        external_name = _string(spec, "externalName", "spec.externalName")
        if not external_name:
            raise ManifestError("spec.externalName is required for type ExternalName")
        if not _DNS1123_SUBDOMAIN.fullmatch(external_name.removesuffix(".")):
            raise ManifestError(f"spec.externalName {_show(external_name)} is not a valid DNS name")

    affinity = _string(spec, "sessionAffinity", "spec.sessionAffinity") or "None"
    if affinity not in _SESSION_AFFINITIES:
        raise _not_one_of("spec.sessionAffinity", affinity, _SESSION_AFFINITIES)
    client_ip = affinity == "ClientIP"
    lb_policy = _lb_policy(meta)
    by_default = lb_policy is None
    if lb_policy is None:
        # ClientIP affinity means "same client, same endpoint": a hash of the source IP.
        lb_policy = LbPolicy.RING_HASH if client_ip else LbPolicy.ROUND_ROBIN

    if type_ == "ExternalName":
        kind = ServiceKind.EXTERNAL_NAME
    elif headless:
        kind = ServiceKind.HEADLESS
    else:
        kind = ServiceKind.CLUSTER_IP
    distribution = _string(spec, "trafficDistribution", "spec.trafficDistribution")
    return ServiceSpec(
        name=name,
        namespace=namespace,
        kind=kind,
        cluster_ips=() if headless else cluster_ips,
        ports=ports,
        external_name=external_name.removesuffix("."),
        lb_policy=lb_policy,
        lb_policy_default=by_default,
        client_ip_affinity=client_ip,
        # Unknown values (newer Kubernetes) mean no preference rather than an error.
        prefer_same_zone=distribution in _PREFER_SAME_ZONE,
        publish_not_ready=_bool(spec, "publishNotReadyAddresses", "spec") or False,
        route_policy=_route_policy(meta),
        created=_created(meta),
    )


def _cluster_ips(spec: Mapping[str, object], type_: str) -> tuple[str, ...]:
    """The normalized ClusterIPs, `("None",)` for headless, `()` when unset."""
    single = _string(spec, "clusterIP", "spec.clusterIP")
    listed = [
        _string_value(value, f"spec.clusterIPs[{i}]")
        for i, value in enumerate(_list(spec, "clusterIPs", "spec.clusterIPs"))
    ]
    if single and listed and listed[0] != single:
        raise ManifestError(
            f"spec.clusterIPs[0] {_show(listed[0])} does not match spec.clusterIP {_show(single)}"
        )
    raw = listed or ([single] if single else [])
    if not raw:
        return ()
    if type_ == "ExternalName":
        raise ManifestError("spec.clusterIP must be empty for type ExternalName")
    if "None" in raw:
        if raw != ["None"]:
            raise ManifestError('spec.clusterIPs: "None" must be the only value')
        if type_ != "ClusterIP":
            raise ManifestError(f'spec.clusterIP "None" (headless) is not allowed for {type_}')
        return ("None",)
    if len(raw) > 2:
        raise ManifestError(f"spec.clusterIPs has {len(raw)} addresses, at most 2 are allowed")
    field_ = "spec.clusterIPs" if listed else "spec.clusterIP"
    ips = []
    for i, text in enumerate(raw):
        where = f"{field_}[{i}]" if listed else field_
        ips.append(_ip(text, where))
    if len(ips) == 2 and ips[0].version == ips[1].version:
        raise ManifestError(
            f"spec.clusterIPs {', '.join(raw)} must be one IPv4 and one IPv6 address (dual-stack)"
        )
    return tuple(str(ip) for ip in ips)


def _service_ports(spec: Mapping[str, object]) -> tuple[PortSpec, ...]:
    raw = _list(spec, "ports", "spec.ports")
    ports: list[PortSpec] = []
    names: dict[str, int] = {}
    numbers: dict[tuple[int, str], int] = {}
    for i, item in enumerate(raw):
        path = f"spec.ports[{i}]"
        entry = _as_mapping(item, path)
        name = _string(entry, "name", f"{path}.name")
        if name and not _is_label(name):
            raise ManifestError(f"{path}.name {_show(name)} is not a valid DNS-1123 label")
        if not name and len(raw) > 1:
            raise ManifestError(f"{path}.name is required when a service has more than one port")
        if name in names:
            raise ManifestError(
                f"{path}.name {_show(name)} is a duplicate of spec.ports[{names[name]}].name"
            )
        names[name] = i
        port = _port(entry.get("port"), f"{path}.port")
        protocol = _protocol(entry, path)
        if (port, protocol) in numbers:
            raise ManifestError(
                f"{path} duplicates port {port}/{protocol} of spec.ports[{numbers[port, protocol]}]"
            )
        numbers[port, protocol] = i
        target = _target_port(entry, port, path)
        ports.append(PortSpec(name, port, protocol, target, _app_protocol(entry, path)))
    return tuple(ports)


def _target_port(entry: Mapping[str, object], port: int, path: str) -> int | str:
    value = entry.get("targetPort")
    # The API server defaults a missing (or zero/empty) targetPort to the port.
    if value is None or value == "" or (type(value) is int and value == 0):
        return port
    if isinstance(value, str):
        if len(value) > 15 or not _IANA_SVC_NAME.fullmatch(value) or value.endswith("-"):
            raise ManifestError(
                f"{path}.targetPort {_show(value)} is neither a number 1-65535 nor a port name"
                " (at most 15 lowercase letters, digits and '-')"
            )
        if not any(c.isalpha() for c in value):
            raise ManifestError(
                f"{path}.targetPort {_show(value)} is a string: write a number without quotes"
            )
        return value
    return _port(value, f"{path}.targetPort")


def _lb_policy(meta: Mapping[str, object]) -> LbPolicy | None:
    annotations = _mapping(meta, "annotations", "metadata.annotations")
    path = f"metadata.annotations[{_show(LB_POLICY_ANNOTATION)}]"
    value = _string(annotations, LB_POLICY_ANNOTATION, path)
    if not value:
        return None
    try:
        return LbPolicy(value)
    except ValueError:
        raise _not_one_of(path, value, [p.value for p in LbPolicy]) from None


def _route_policy(meta: Mapping[str, object]) -> RoutePolicy:
    annotations = _mapping(meta, "annotations", "metadata.annotations")
    ours = {}
    for key in ANNOTATIONS:
        value = _string(annotations, key, f"metadata.annotations[{_show(key)}]")
        if key in annotations:
            ours[key] = value
    try:
        return parse_route_policy(ours)
    except ValueError as exc:
        raise ManifestError(str(exc)) from None


# --- EndpointSlice -----------------------------------------------------------


def parse_endpoint_slice(obj: Mapping[str, object]) -> SliceSpec:
    meta = _mapping(obj, "metadata", "metadata")
    name = _name(meta, _DNS1123_SUBDOMAIN, "a DNS-1123 subdomain", limit=253)
    namespace = _namespace(meta)
    labels = _mapping(meta, "labels", "metadata.labels")
    label_path = f"metadata.labels[{_show(SERVICE_NAME_LABEL)}]"
    service_name = _string(labels, SERVICE_NAME_LABEL, label_path)
    if not service_name:
        raise ManifestError(f"{label_path} is missing: it names the slice's Service")
    address_type = _string(obj, "addressType", "addressType")
    if not address_type:
        raise ManifestError("addressType is missing")
    if address_type not in _ADDRESS_TYPES:
        raise _not_one_of("addressType", address_type, _ADDRESS_TYPES)
    ports = _slice_ports(obj)
    created = _created(meta)
    raw = _at_most(_list(obj, "endpoints", "endpoints"), MAX_SLICE_ENDPOINTS, "endpoints")
    if address_type == "FQDN":
        # Not an error, just nothing the mesh can route to.
        return SliceSpec(name, namespace, service_name, address_type, ports, created=created)
    version = 4 if address_type == "IPv4" else 6
    endpoints = tuple(
        _slice_endpoint(item, f"endpoints[{i}]", version) for i, item in enumerate(raw)
    )
    return SliceSpec(name, namespace, service_name, address_type, ports, endpoints, created)


def _slice_ports(obj: Mapping[str, object]) -> tuple[SlicePort, ...]:
    ports: list[SlicePort] = []
    names: dict[str, int] = {}
    for i, item in enumerate(_at_most(_list(obj, "ports", "ports"), MAX_SLICE_PORTS, "ports")):
        path = f"ports[{i}]"
        entry = _as_mapping(item, path)
        name = _string(entry, "name", f"{path}.name")
        if name and not _is_label(name):
            raise ManifestError(f"{path}.name {_show(name)} is not a valid DNS-1123 label")
        if name in names:
            raise ManifestError(
                f"{path}.name {_show(name)} is a duplicate of ports[{names[name]}].name"
            )
        names[name] = i
        protocol = _protocol(entry, path)
        # A port without a number means "unrestricted": the Service's targetPort applies.
        if entry.get("port") is not None:
            ports.append(SlicePort(name, _port(entry["port"], f"{path}.port"), protocol))
    return tuple(ports)


def _slice_endpoint(item: object, path: str, version: int) -> SliceEndpoint:
    entry = _as_mapping(item, path)
    raw = _list(entry, "addresses", f"{path}.addresses")
    if not raw:
        raise ManifestError(f"{path}.addresses is empty: an endpoint needs an address")
    _at_most(raw, MAX_ENDPOINT_ADDRESSES, f"{path}.addresses")
    addresses = []
    for i, value in enumerate(raw):
        where = f"{path}.addresses[{i}]"
        ip = _ip(_string_value(value, where), where)
        if ip.version != version:
            raise ManifestError(f"{where} {_show(value)} is not an IPv{version} address")
        addresses.append(str(ip))
    conditions = _mapping(entry, "conditions", f"{path}.conditions")
    where = f"{path}.conditions"
    # Kubernetes' nil defaults: unknown readiness counts as ready.
    ready = _bool(conditions, "ready", where)
    ready = True if ready is None else ready
    serving = _bool(conditions, "serving", where)
    serving = ready if serving is None else serving
    terminating = _bool(conditions, "terminating", where) or False
    hostname = _string(entry, "hostname", f"{path}.hostname")
    if hostname and not _is_label(hostname):
        raise ManifestError(f"{path}.hostname {_show(hostname)} is not a valid DNS-1123 label")
    return SliceEndpoint(
        addresses=tuple(addresses),
        ready=ready,
        serving=serving,
        terminating=terminating,
        zone=_string(entry, "zone", f"{path}.zone"),
        hostname=hostname,
    )


# --- The join ----------------------------------------------------------------


def join_service(svc: ServiceSpec, slices: Iterable[SliceSpec]) -> Service:
    """A Service of the mesh: the spec with the endpoints of its slices.

    Names and ClusterIPs must be unique already: `controlplane.claims` decides
    which of two conflicting objects is served."""
    slices = tuple(slices)
    ports = tuple(
        ServicePort(
            port.name,
            port.port,
            port.protocol,
            _port_endpoints(svc, port, slices),
            port.app_protocol,
        )
        for port in svc.ports
    )
    return Service(
        name=svc.name,
        namespace=svc.namespace,
        kind=svc.kind,
        cluster_ips=svc.cluster_ips,
        ports=ports,
        external_name=svc.external_name,
        lb_policy=svc.lb_policy,
        lb_policy_default=svc.lb_policy_default,
        client_ip_affinity=svc.client_ip_affinity,
        prefer_same_zone=svc.prefer_same_zone,
        route_policy=svc.route_policy,
        pod_addresses=_pod_addresses(svc, slices),
    )


def _port_endpoints(
    svc: ServiceSpec, port: PortSpec, slices: Sequence[SliceSpec]
) -> tuple[Endpoint, ...]:
    best: dict[tuple[str, int], Endpoint] = {}
    for slice_ in slices:
        number = _endpoint_port(port, slice_)
        if number is None:
            continue
        for ep in slice_.endpoints:
            health = _health(ep, svc.publish_not_ready)
            if health is None:
                continue
            for address in ep.addresses:
                _keep_better(best, Endpoint(address, number, health, ep.zone, ep.hostname))
    return _sorted(best.values())


def _endpoint_port(port: PortSpec, slice_: SliceSpec) -> int | None:
    """The port the slice's endpoints listen on for this service port, if known.

    The slice port of the same name is how Kubernetes resolves a named targetPort
    per pod; hand-written slices may omit it, then a numeric targetPort applies.
    """
    for candidate in slice_.ports:
        if candidate.name == port.name and candidate.protocol == port.protocol:
            return candidate.port
    return port.target_port if isinstance(port.target_port, int) else None


def _pod_addresses(svc: ServiceSpec, slices: Sequence[SliceSpec]) -> tuple[Endpoint, ...]:
    best: dict[tuple[str, int], Endpoint] = {}
    for slice_ in slices:
        for ep in slice_.endpoints:
            health = _health(ep, svc.publish_not_ready)
            if health is not None:
                for address in ep.addresses:
                    _keep_better(best, Endpoint(address, 0, health, ep.zone, ep.hostname))
    return _sorted(best.values())


def _health(ep: SliceEndpoint, publish_not_ready: bool) -> Health | None:
    """HEALTHY, DRAINING, or None for an endpoint that must not get traffic."""
    if ep.terminating:
        return Health.DRAINING if ep.serving or publish_not_ready else None
    return Health.HEALTHY if ep.ready or publish_not_ready else None


def _keep_better(best: dict[tuple[str, int], Endpoint], candidate: Endpoint) -> None:
    # One address+port in several slices (e.g. while slices are rebalanced): keep one.
    key = (candidate.address, candidate.port)
    current = best.get(key)
    if current is None or (
        current.health is not Health.HEALTHY and candidate.health is Health.HEALTHY
    ):
        best[key] = candidate


def _sorted(endpoints: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    # Numeric address order: 10.0.0.9 before 10.0.0.10, IPv4 before IPv6.
    def key(ep: Endpoint) -> tuple[int, int, int]:
        ip = ipaddress.ip_address(ep.address)
        return ip.version, int(ip), ep.port

    return tuple(sorted(endpoints, key=key))


# --- Field access with the field's path in every error ----------------------


def _show(value: object) -> str:
    """A value as the manifest spelled it; containers only by type (they may be huge)."""
    if value is None or isinstance(value, str | int | float | bool):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return json.dumps(str(value))


def _not_one_of(path: str, value: object, allowed: Iterable[str]) -> ManifestError:
    return ManifestError(f"{path} {_show(value)} is not one of {', '.join(allowed)}")


def _as_mapping(value: object, path: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ManifestError(f"{path} must be a mapping, not {_show(value)}")
    return value


def _mapping(obj: Mapping[str, object], key: str, path: str) -> Mapping[str, object]:
    value = obj.get(key)
    return {} if value is None else _as_mapping(value, path)


def _list(obj: Mapping[str, object], key: str, path: str) -> Sequence[object]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ManifestError(f"{path} must be a list, not {_show(value)}")
    return value


def _at_most(items: Sequence[object], limit: int, path: str) -> Sequence[object]:
    if len(items) > limit:
        raise ManifestError(f"{path} has {len(items):,} entries, at most {limit:,} are allowed")
    return items


def _string_value(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise ManifestError(f"{path} must be a string, not {_show(value)}")
    return value


def _string(obj: Mapping[str, object], key: str, path: str) -> str:
    value = obj.get(key)
    return "" if value is None else _string_value(value, path)


def _bool(obj: Mapping[str, object], key: str, parent: str) -> bool | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, bool):
        raise ManifestError(f"{parent}.{key} must be true or false, not {_show(value)}")
    return value


def _port(value: object, path: str) -> int:
    if value is None:
        raise ManifestError(f"{path} is missing")
    # bool is an int in Python, but `port: true` is no port.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ManifestError(f"{path} must be a number, not {_show(value)}")
    if not 1 <= value <= 65535:
        raise ManifestError(f"{path} {value} is out of range 1-65535")
    return value


def _protocol(entry: Mapping[str, object], path: str) -> str:
    protocol = _string(entry, "protocol", f"{path}.protocol") or "TCP"
    if protocol not in _PROTOCOLS:
        raise _not_one_of(f"{path}.protocol", protocol, _PROTOCOLS)
    return protocol


def _app_protocol(entry: Mapping[str, object], path: str) -> str:
    """spec.ports[].appProtocol: a qualified name, as the API server checks it (an IANA
    name such as "grpc", or a prefixed one such as "kubernetes.io/h2c")."""
    value = _string(entry, "appProtocol", f"{path}.appProtocol")
    if not value:
        return ""
    prefix, slash, name = value.rpartition("/")
    if (
        (slash and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix)))
        or len(name) > 63
        or not _QUALIFIED_NAME.fullmatch(name)
    ):
        raise ManifestError(
            f"{path}.appProtocol {_show(value)} is not a qualified name "
            '(such as "grpc", "http" or "kubernetes.io/h2c")'
        )
    return value


def _ip(text: str, path: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ManifestError(f"{path} {_show(text)} is not an IP address") from None


def _is_label(text: str) -> bool:
    return len(text) <= 63 and _DNS1123_LABEL.fullmatch(text) is not None


def _name(meta: Mapping[str, object], pattern: re.Pattern[str], what: str, limit: int = 63) -> str:
    name = _string(meta, "name", "metadata.name")
    if not name:
        raise ManifestError("metadata.name is missing")
    if len(name) > limit or not pattern.fullmatch(name):
        raise ManifestError(f"metadata.name {_show(name)} is not {what}")
    return name


def _created(meta: Mapping[str, object]) -> float | None:
    """metadata.creationTimestamp as seconds since the epoch; YAML reads an unquoted
    timestamp as a datetime, JSON (the API) gives the RFC 3339 text."""
    value = meta.get("creationTimestamp")
    if value is None:
        return None
    when = value if isinstance(value, datetime.datetime) else None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            when = datetime.datetime.fromisoformat(value)
    if when is None:
        raise ManifestError(
            f"metadata.creationTimestamp {_show(value)} is not a time"
            " (RFC 3339, as 2024-05-01T12:00:00Z)"
        )
    if when.tzinfo is None:  # Kubernetes writes UTC
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _namespace(meta: Mapping[str, object]) -> str:
    namespace = _string(meta, "namespace", "metadata.namespace") or "default"
    if not _is_label(namespace):
        raise ManifestError(f"metadata.namespace {_show(namespace)} is not a DNS-1123 label")
    return namespace
