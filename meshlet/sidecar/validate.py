"""Received xDS resources -> the plain configs of SidecarState, or a ValidationError (pure).

`apply_update` is the whole decision for one response: decode and validate every
resource in it, check the state that would result (a listener must point at a
cluster the sidecar has), and return that new state. The previous state is never
touched, so a rejected response leaves the last good state exactly as it was.

A response is taken or refused whole: one bad resource NACKs it, and the error
names the type, the resource and the field, e.g.

    Cluster "outbound|80||web.default.svc.cluster.local": load_balancing_policy has no
    policy meshlet supports (got envoy.load_balancing_policies.foo)
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.maglev.v3 import maglev_pb2
from envoy.extensions.load_balancing_policies.random.v3 import random_pb2
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2
from google.protobuf.message import DecodeError, Message

from meshlet._proto.meshlet.v1.nametable_pb2 import NameTable
from meshlet.model import Endpoint, Health, LbPolicy
from meshlet.sidecar.state import (
    AcceptedResource,
    ClusterConfig,
    ListenerConfig,
    OutlierConfig,
    SidecarState,
)
from meshlet.xds import types

METADATA_KEY = "meshlet"

# Defaults Envoy applies when a field is absent, so an absent field means here
# what it means to every other data plane.
_CONNECT_TIMEOUT = 5.0
_MAX_CONNECTIONS = 1024
_OUTLIER_CONSECUTIVE = 5
_OUTLIER_INTERVAL = 10.0
_OUTLIER_BASE_EJECTION = 30.0
_OUTLIER_MAX_PERCENT = 10
_IDLE_TIMEOUT = 3600.0


def _type_url(message: type[Message]) -> str:
    return "type.googleapis.com/" + message.DESCRIPTOR.full_name


# Policies are chosen by their config's type, as Envoy and gRPC do; the
# extension's name is only a label.
_LB_BY_TYPE = {
    _type_url(round_robin_pb2.RoundRobin): LbPolicy.ROUND_ROBIN,
    _type_url(least_request_pb2.LeastRequest): LbPolicy.LEAST_REQUEST,
    _type_url(random_pb2.Random): LbPolicy.RANDOM,
    _type_url(ring_hash_pb2.RingHash): LbPolicy.RING_HASH,
    _type_url(maglev_pb2.Maglev): LbPolicy.MAGLEV,
}
_LB_BY_ENUM = {
    cluster_pb2.Cluster.ROUND_ROBIN: LbPolicy.ROUND_ROBIN,
    cluster_pb2.Cluster.LEAST_REQUEST: LbPolicy.LEAST_REQUEST,
    cluster_pb2.Cluster.RANDOM: LbPolicy.RANDOM,
    cluster_pb2.Cluster.RING_HASH: LbPolicy.RING_HASH,
    cluster_pb2.Cluster.MAGLEV: LbPolicy.MAGLEV,
}
_HEALTH = {
    health_check_pb2.UNKNOWN: Health.HEALTHY,
    health_check_pb2.HEALTHY: Health.HEALTHY,
    health_check_pb2.DRAINING: Health.DRAINING,
}
_TCP_PROXY = _type_url(tcp_proxy_pb2.TcpProxy)
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_SRV_PROTOCOLS = frozenset({"tcp", "udp", "sctp"})


class ValidationError(ValueError):
    """A resource the sidecar cannot honour; the message becomes the NACK's error_detail."""


@dataclass(frozen=True)
class Received:
    """One resource of a response as it came off the wire."""

    # Delta names every resource; SotW does not (None): the name comes from the resource.
    name: str | None
    version: str
    resource: any_pb2.Any


@dataclass(frozen=True)
class Update:
    """One response of one type, in the shape both protocol variants share."""

    type_url: str
    version: str  # SotW version_info, delta system_version_info
    resources: Sequence[Received]
    removed: Sequence[str] = ()
    # SotW CDS and LDS: the response holds every resource; one left out is deleted.
    full_state: bool = False


@dataclass(frozen=True)
class _Where:
    kind: str
    name: str

    def fail(self, problem: str) -> ValidationError:
        return ValidationError(f'{self.kind} "{self.name}": {problem}')


# --- small checks -------------------------------------------------------------


def _ip(where: _Where, path: str, text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise where.fail(f'{path} "{text}" is not an IP address') from None


def _port(where: _Where, path: str, port: int) -> int:
    if not 1 <= port <= 65535:
        raise where.fail(f"{path} {port} is out of range 1-65535")
    return port


def _socket_address(where: _Where, path: str, address: address_pb2.Address) -> tuple[str, int]:
    if address.WhichOneof("address") != "socket_address":
        raise where.fail(f"{path} is not a socket address")
    socket = address.socket_address
    if socket.WhichOneof("port_specifier") == "named_port":
        raise where.fail(f"{path}.socket_address.named_port is not supported")
    ip = _ip(where, f"{path}.socket_address.address", socket.address)
    return ip, _port(where, f"{path}.socket_address.port_value", socket.port_value)


def _seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _positive_seconds(where: _Where, path: str, duration: duration_pb2.Duration) -> float:
    seconds = _seconds(duration)
    if seconds <= 0:
        raise where.fail(f"{path} must be positive (got {seconds:g}s)")
    return seconds


def is_dns_name(name: str) -> bool:
    """Lower-case labels of letters, digits and inner hyphens, without a trailing dot."""
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


# --- Cluster ------------------------------------------------------------------


def _discovery(where: _Where, cluster: cluster_pb2.Cluster) -> bool:
    """Checks how the cluster finds its endpoints; True for ORIGINAL_DST."""
    if cluster.HasField("cluster_type"):
        raise where.fail(f"cluster_type {cluster.cluster_type.name} is not supported")
    if cluster.type == cluster_pb2.Cluster.ORIGINAL_DST:
        return True
    if cluster.type != cluster_pb2.Cluster.EDS:
        kind = cluster_pb2.Cluster.DiscoveryType.Name(cluster.type)
        raise where.fail(
            f"type {kind} is not supported (meshlet supports EDS over ADS and ORIGINAL_DST)"
        )
    eds = cluster.eds_cluster_config
    source = eds.eds_config.WhichOneof("config_source_specifier")
    if source not in ("ads", "self"):
        raise where.fail(f"eds_cluster_config.eds_config must be ADS (got {source or 'nothing'})")
    if eds.service_name and eds.service_name != where.name:
        raise where.fail(
            f'eds_cluster_config.service_name "{eds.service_name}" is not supported '
            "(the load assignment must have the cluster's name)"
        )
    return False


def _lb_policy(where: _Where, cluster: cluster_pb2.Cluster) -> LbPolicy:
    if cluster.HasField("load_balancing_policy"):
        seen = []
        for entry in cluster.load_balancing_policy.policies:
            config = entry.typed_extension_config
            policy = _LB_BY_TYPE.get(config.typed_config.type_url)
            if policy is not None:
                return policy
            seen.append(config.name or config.typed_config.type_url.rpartition("/")[2])
        raise where.fail(
            "load_balancing_policy has no policy meshlet supports "
            f"(got {', '.join(seen) or 'an empty list'})"
        )
    policy = _LB_BY_ENUM.get(cluster.lb_policy)
    if policy is None:
        name = cluster_pb2.Cluster.LbPolicy.Name(cluster.lb_policy)
        raise where.fail(f"lb_policy {name} is not supported")
    return policy


def _max_connections(cluster: cluster_pb2.Cluster) -> int:
    for threshold in cluster.circuit_breakers.thresholds:
        if threshold.priority == base_pb2.DEFAULT and threshold.HasField("max_connections"):
            return int(threshold.max_connections.value)
    return _MAX_CONNECTIONS


# Most clusters share one outlier setting: one object for each distinct one.
_OUTLIERS: dict[OutlierConfig, OutlierConfig] = {}


def _outlier(where: _Where, cluster: cluster_pb2.Cluster) -> OutlierConfig:
    config = _outlier_config(where, cluster)
    if len(_OUTLIERS) >= 1024:  # bounded, whatever the control plane sends
        _OUTLIERS.clear()
    return _OUTLIERS.setdefault(config, config)


def _outlier_config(where: _Where, cluster: cluster_pb2.Cluster) -> OutlierConfig:
    if not cluster.HasField("outlier_detection"):
        return OutlierConfig(enabled=False)
    od = cluster.outlier_detection
    percent = od.max_ejection_percent.value if od.HasField("max_ejection_percent") else None
    if percent is not None and percent > 100:
        raise where.fail(f"outlier_detection.max_ejection_percent {percent} is over 100")
    return OutlierConfig(
        enabled=True,
        consecutive_failures=(
            od.consecutive_5xx.value if od.HasField("consecutive_5xx") else _OUTLIER_CONSECUTIVE
        ),
        interval_seconds=(
            _positive_seconds(where, "outlier_detection.interval", od.interval)
            if od.HasField("interval")
            else _OUTLIER_INTERVAL
        ),
        base_ejection_seconds=(
            _positive_seconds(where, "outlier_detection.base_ejection_time", od.base_ejection_time)
            if od.HasField("base_ejection_time")
            else _OUTLIER_BASE_EJECTION
        ),
        max_ejection_percent=_OUTLIER_MAX_PERCENT if percent is None else percent,
    )


_KIND_OF_VALUE = {"bool_value": bool, "string_value": str}


def _metadata(where: _Where, cluster: cluster_pb2.Cluster) -> dict[str, bool | str]:
    if METADATA_KEY not in cluster.metadata.filter_metadata:
        return {}
    info = cluster.metadata.filter_metadata[METADATA_KEY]
    out: dict[str, bool | str] = {}
    for key, kind in (
        ("prefer_same_zone", "bool_value"),
        ("client_ip_affinity", "bool_value"),
        ("service", "string_value"),
        ("namespace", "string_value"),
    ):
        if key not in info.fields:
            continue
        value: struct_pb2.Value = info.fields[key]
        if value.WhichOneof("kind") != kind:
            expected = _KIND_OF_VALUE[kind].__name__
            raise where.fail(
                f'metadata.filter_metadata["{METADATA_KEY}"].{key} must be a {expected}'
            )
        out[key] = getattr(value, kind)
    return out


def validate_cluster(name: str, cluster: cluster_pb2.Cluster) -> ClusterConfig:
    where = _Where("Cluster", name)
    original_destination = _discovery(where, cluster)
    if cluster.HasField("transport_socket"):
        raise where.fail("transport_socket (upstream TLS) is not supported")
    # ORIGINAL_DST connects where the client meant to: nothing to balance.
    lb_policy = LbPolicy.ROUND_ROBIN if original_destination else _lb_policy(where, cluster)
    connect_timeout = (
        _positive_seconds(where, "connect_timeout", cluster.connect_timeout)
        if cluster.HasField("connect_timeout")
        else _CONNECT_TIMEOUT
    )
    metadata = _metadata(where, cluster)
    return ClusterConfig(
        name=name,
        lb_policy=lb_policy,
        connect_timeout_seconds=connect_timeout,
        max_connections=_max_connections(cluster),
        outlier=_outlier(where, cluster),
        prefer_same_zone=bool(metadata.get("prefer_same_zone", False)),
        original_destination=original_destination,
        service=str(metadata.get("service", "")),
        namespace=str(metadata.get("namespace", "")),
        client_ip_affinity=bool(metadata.get("client_ip_affinity", False)),
    )


# --- ClusterLoadAssignment ----------------------------------------------------


def validate_load_assignment(
    name: str, assignment: endpoint_pb2.ClusterLoadAssignment
) -> tuple[Endpoint, ...]:
    """The usable endpoints: HEALTHY and UNKNOWN as healthy, DRAINING as draining, no others."""
    where = _Where("ClusterLoadAssignment", name)
    out = []
    for i, locality in enumerate(assignment.endpoints):
        zone = locality.locality.zone
        for j, lb_endpoint in enumerate(locality.lb_endpoints):
            path = f"endpoints[{i}].lb_endpoints[{j}]"
            if lb_endpoint.WhichOneof("host_identifier") != "endpoint":
                raise where.fail(f"{path} has no endpoint")
            ip, port = _socket_address(
                where, f"{path}.endpoint.address", lb_endpoint.endpoint.address
            )
            weight = 1
            if lb_endpoint.HasField("load_balancing_weight"):
                weight = lb_endpoint.load_balancing_weight.value
                if weight < 1:
                    raise where.fail(f"{path}.load_balancing_weight must be at least 1")
            health = _HEALTH.get(lb_endpoint.health_status)
            if health is None:
                continue  # unhealthy, timed out or degraded: not a place to send connections
            out.append(Endpoint(ip, port, health, zone, lb_endpoint.endpoint.hostname, int(weight)))
    return tuple(out)


# --- Listener -----------------------------------------------------------------


def validate_listener(name: str, listener: listener_pb2.Listener) -> ListenerConfig | None:
    """A socket listener's config; None for an API listener, which is for proxyless gRPC."""
    if listener.HasField("api_listener"):
        return None
    where = _Where("Listener", name)
    if listener.HasField("internal_listener"):
        raise where.fail("internal_listener is not supported")
    if not listener.HasField("address"):
        raise where.fail("has no address")
    ip, port = _socket_address(where, "address", listener.address)
    chains = [(f"filter_chains[{i}]", c) for i, c in enumerate(listener.filter_chains)]
    if listener.HasField("default_filter_chain"):
        chains.append(("default_filter_chain", listener.default_filter_chain))
    if len(chains) != 1:
        raise where.fail(f"has {len(chains)} filter chains; meshlet supports exactly one")
    path, chain = chains[0]
    if chain.HasField("transport_socket"):
        raise where.fail(f"{path}.transport_socket (TLS) is not supported")
    filters = chain.filters
    if len(filters) != 1 or filters[0].typed_config.type_url != _TCP_PROXY:
        got = ", ".join(f.name or f.typed_config.type_url for f in filters) or "none"
        raise where.fail(f"{path}.filters must be a single tcp_proxy (got {got})")
    proxy = _decode(where, f"{path}.filters[0]", filters[0].typed_config, tcp_proxy_pb2.TcpProxy)
    path = f"{path}.filters[0] tcp_proxy"
    if proxy.WhichOneof("cluster_specifier") != "cluster" or not proxy.cluster:
        raise where.fail(f"{path} must name one cluster (weighted_clusters is not supported)")
    if proxy.HasField("tunneling_config"):
        raise where.fail(f"{path}.tunneling_config is not supported")
    hash_source_ip = False
    for k, policy in enumerate(proxy.hash_policy):
        kind = policy.WhichOneof("policy_specifier")
        if kind != "source_ip":
            raise where.fail(f"{path}.hash_policy[{k}] {kind} is not supported (only source_ip)")
        hash_source_ip = True
    idle_timeout = _IDLE_TIMEOUT
    if proxy.HasField("idle_timeout"):
        idle_timeout = _seconds(proxy.idle_timeout)
        if idle_timeout < 0:
            raise where.fail(f"{path}.idle_timeout must not be negative")
    return ListenerConfig(
        name=name,
        address=ip,
        port=port,
        cluster=proxy.cluster,
        hash_source_ip=hash_source_ip,
        use_original_dst=listener.use_original_dst.value,
        idle_timeout_seconds=idle_timeout,
    )


# --- NameTable ----------------------------------------------------------------


def validate_name_table(name: str, table: NameTable, cluster_domain: str) -> NameTable:
    """Checks every entry; the table itself is what the DNS server reads."""
    where = _Where("NameTable", name)
    domain = cluster_domain.rstrip(".").lower()
    suffix = "." + domain
    for fqdn in sorted(table.table):
        if fqdn != fqdn.lower():
            raise where.fail(f"name {fqdn} is not lower case")
        if not is_dns_name(fqdn):
            raise where.fail(f'name "{fqdn}" is not a valid DNS name')
        if not fqdn.endswith(suffix):
            raise where.fail(f"name {fqdn} is outside the cluster domain {domain}")
        info = table.table[fqdn]
        path = f'table["{fqdn}"]'
        for i, ip in enumerate(info.ips):
            _ip(where, f"{path}.ips[{i}]", ip)
        if info.cname:
            if info.ips:
                raise where.fail(f"{path} has both a cname and ips")
            if not is_dns_name(info.cname):
                raise where.fail(f'{path}.cname "{info.cname}" is not a valid DNS name')
        for i, port in enumerate(info.ports):
            _port(where, f"{path}.ports[{i}].port", port.port)
            if port.protocol not in _SRV_PROTOCOLS:
                raise where.fail(
                    f'{path}.ports[{i}].protocol "{port.protocol}" is not tcp, udp or sctp'
                )
    return table


# --- one response -> the next state ------------------------------------------

M = TypeVar("M", bound=Message)

_KINDS = {
    types.CLUSTER: "Cluster",
    types.ENDPOINT: "ClusterLoadAssignment",
    types.LISTENER: "Listener",
    types.NAME_TABLE: "NameTable",
}


def _decode(where: _Where, path: str, packed: any_pb2.Any, message_type: type[M]) -> M:
    try:
        return message_type.FromString(packed.value)
    except DecodeError as exc:
        raise where.fail(f"{path} cannot be decoded ({exc})") from None


@dataclass(frozen=True)
class _Decoded(Generic[M]):
    name: str
    message: M
    accepted: AcceptedResource


def _decoded(
    update: Update,
    message_type: type[M],
    name_of: Callable[[M], str],
    unnamed: str = "",
) -> list[_Decoded[M]]:
    """Every resource of the response decoded, named, and checked to be of the right type.

    `name_of` reads the name a resource gives itself; `unnamed` names a SotW
    resource whose type carries no name (the NameTable).
    """
    kind = _KINDS[update.type_url]
    out: list[_Decoded[M]] = []
    seen: set[str] = set()
    for received in update.resources:
        where = _Where(kind, received.name or "(unnamed)")
        packed = received.resource
        if packed.type_url != update.type_url:
            raise where.fail(f"is of type {packed.type_url or 'nothing'}, not {update.type_url}")
        message = _decode(where, "resource", packed, message_type)
        inner = name_of(message)
        name = received.name if received.name is not None else (inner or unnamed)
        if not name:
            raise where.fail("has no name")
        if received.name is not None and inner and inner != name:
            raise _Where(kind, name).fail(f'names itself "{inner}"')
        if name in seen:
            raise _Where(kind, name).fail("appears twice in one response")
        seen.add(name)
        resource = AcceptedResource(name, received.version, update.type_url, packed.value)
        out.append(_Decoded(name, message, resource))
    return out


def _start(
    state: SidecarState, update: Update, current: Mapping[str, object]
) -> tuple[dict[str, AcceptedResource], set[str]]:
    """The accepted resources of the type to build on, and the names the update removes."""
    accepted = {} if update.full_state else dict(state.accepted.get(update.type_url, {}))
    removed = set(update.removed)
    if update.full_state:
        removed |= set(current)
    for name in update.removed:
        accepted.pop(name, None)
    return accepted, removed


def _accepted(
    state: SidecarState, by_type: Mapping[str, Mapping[str, AcceptedResource]]
) -> dict[str, Mapping[str, AcceptedResource]]:
    return {**state.accepted, **by_type}


def _versions(state: SidecarState, update: Update) -> dict[str, str]:
    return {**state.type_versions, update.type_url: update.version}


def _apply_clusters(state: SidecarState, update: Update, _domain: str) -> SidecarState:
    accepted, removed = _start(state, update, state.clusters)
    clusters = {n: c for n, c in state.clusters.items() if n not in removed}
    for item in _decoded(update, cluster_pb2.Cluster, lambda c: c.name):
        clusters[item.name] = validate_cluster(item.name, item.message)
        accepted[item.name] = item.accepted

    # A cluster's endpoints go with it. A listener may still point at a removed
    # cluster for a moment: the control plane sends its removal right after (LDS
    # follows CDS), and until then connections to it fail as Envoy's would.
    def keeps_endpoints(name: str) -> bool:
        cluster = clusters.get(name)
        return cluster is not None and not cluster.original_destination

    endpoints = {n: e for n, e in state.endpoints.items() if keeps_endpoints(n)}
    eds_accepted = {
        n: r for n, r in state.accepted.get(types.ENDPOINT, {}).items() if keeps_endpoints(n)
    }
    return dataclasses.replace(
        state,
        clusters=clusters,
        endpoints=endpoints,
        accepted=_accepted(state, {types.CLUSTER: accepted, types.ENDPOINT: eds_accepted}),
        type_versions=_versions(state, update),
    )


def _apply_endpoints(state: SidecarState, update: Update, _domain: str) -> SidecarState:
    accepted, _ = _start(state, update, state.endpoints)
    endpoints = dict(state.endpoints)

    def asked_for(name: str) -> bool:
        cluster = state.clusters.get(name)
        return cluster is not None and not cluster.original_destination

    for name in update.removed:
        if asked_for(name):
            endpoints[name] = ()  # the cluster exists and has no endpoints (yet)
        else:
            endpoints.pop(name, None)
    for item in _decoded(update, endpoint_pb2.ClusterLoadAssignment, lambda a: a.cluster_name):
        if not asked_for(item.name):
            continue  # a late answer for a cluster that is gone: nothing to use it for
        endpoints[item.name] = validate_load_assignment(item.name, item.message)
        accepted[item.name] = item.accepted
    return dataclasses.replace(
        state,
        endpoints=endpoints,
        accepted=_accepted(state, {types.ENDPOINT: accepted}),
        type_versions=_versions(state, update),
    )


def _apply_listeners(state: SidecarState, update: Update, _domain: str) -> SidecarState:
    by_name = {listener.name: listener for listener in state.listeners.values()}
    if state.outbound_listener is not None:
        by_name[state.outbound_listener.name] = state.outbound_listener
    accepted, removed = _start(state, update, by_name)
    for name in removed:
        by_name.pop(name, None)
    for item in _decoded(update, listener_pb2.Listener, lambda lis: lis.name):
        config = validate_listener(item.name, item.message)
        if config is None:
            continue  # an API listener: for proxyless gRPC, not for this proxy
        if config.cluster not in state.clusters:
            raise _Where("Listener", item.name).fail(
                f'tcp_proxy points at cluster "{config.cluster}" that the sidecar does not have'
            )
        by_name[item.name] = config
        accepted[item.name] = item.accepted
    listeners: dict[tuple[str, int], ListenerConfig] = {}
    outbound: ListenerConfig | None = None
    for name in sorted(by_name):
        config = by_name[name]
        if config.use_original_dst:
            if outbound is not None:
                raise _Where("Listener", name).fail(
                    f'is a second use_original_dst listener (the first is "{outbound.name}")'
                )
            outbound = config
            continue
        key = (config.address, config.port)
        other = listeners.get(key)
        if other is not None:
            raise _Where("Listener", name).fail(
                f'has the address {config.address}:{config.port} of listener "{other.name}"'
            )
        listeners[key] = config
    return dataclasses.replace(
        state,
        listeners=listeners,
        outbound_listener=outbound,
        accepted=_accepted(state, {types.LISTENER: accepted}),
        type_versions=_versions(state, update),
    )


def _apply_name_table(state: SidecarState, update: Update, domain: str) -> SidecarState:
    current = {types.NAME_TABLE_RESOURCE: state.name_table} if state.name_table else {}
    accepted, removed = _start(state, update, current)
    table = None if types.NAME_TABLE_RESOURCE in removed else state.name_table
    for item in _decoded(update, NameTable, lambda _: "", types.NAME_TABLE_RESOURCE):
        if item.name != types.NAME_TABLE_RESOURCE:
            continue  # not asked for
        table = validate_name_table(item.name, item.message, domain)
        accepted[item.name] = item.accepted
    return dataclasses.replace(
        state,
        name_table=table,
        accepted=_accepted(state, {types.NAME_TABLE: accepted}),
        type_versions=_versions(state, update),
    )


_APPLY: dict[str, Callable[[SidecarState, Update, str], SidecarState]] = {
    types.CLUSTER: _apply_clusters,
    types.ENDPOINT: _apply_endpoints,
    types.LISTENER: _apply_listeners,
    types.NAME_TABLE: _apply_name_table,
}


def apply_update(state: SidecarState, update: Update, cluster_domain: str) -> SidecarState:
    """The state after accepting `update`, or ValidationError; `state` is left as it was."""
    apply = _APPLY.get(update.type_url)
    if apply is None:
        raise ValidationError(f"type {update.type_url} is not one the sidecar asked for")
    return apply(state, update, cluster_domain)
