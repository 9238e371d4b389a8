"""One response -> the next SidecarState, or a ValidationError (pure).

`apply_update` decodes every resource of the response with its type's decoder,
checks the state that would result (a listener or a route must point at a
cluster the sidecar has), and returns that new state. The previous state is never touched,
so a rejected response leaves the last good state exactly as it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import any_pb2

from meshlet._proto.meshlet.v1.nametable_pb2 import NameTable
from meshlet.sidecar.state import (
    AcceptedResource,
    ListenerConfig,
    OutlierConfig,
    SidecarState,
)
from meshlet.sidecar.validate import fields
from meshlet.sidecar.validate.cluster import decode_cluster
from meshlet.sidecar.validate.errors import ValidationError, Where
from meshlet.sidecar.validate.listener import decode_listener
from meshlet.sidecar.validate.load_assignment import decode_load_assignment
from meshlet.sidecar.validate.name_table import decode_name_table
from meshlet.sidecar.validate.route import decode_route_configuration
from meshlet.xds import types
from meshlet.xds.error_detail import quoted as q


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


_KINDS = {
    types.CLUSTER: "Cluster",
    types.ENDPOINT: "ClusterLoadAssignment",
    types.LISTENER: "Listener",
    types.ROUTE: "RouteConfiguration",
    types.NAME_TABLE: "NameTable",
}


@dataclass(frozen=True)
class _Decoded(Generic[fields.M]):
    name: str
    message: fields.M
    accepted: AcceptedResource


def _decoded(
    update: Update,
    message_type: type[fields.M],
    name_of: Callable[[fields.M], str],
    unnamed: str = "",
) -> list[_Decoded[fields.M]]:
    """Every resource of the response decoded, named, and checked to be of the right type.

    `name_of` reads the name a resource gives itself; `unnamed` names a SotW
    resource whose type carries no name (the NameTable).
    """
    kind = _KINDS[update.type_url]
    out: list[_Decoded[fields.M]] = []
    seen: set[str] = set()
    for received in update.resources:
        where = Where(kind, received.name or "(unnamed)")
        packed = received.resource
        if packed.type_url != update.type_url:
            got = q(packed.type_url) or "nothing"
            raise where.fail(f"is of type {got}, not {update.type_url}")
        message = fields.decode(where, "resource", packed, message_type)
        inner = name_of(message)
        name = received.name if received.name is not None else (inner or unnamed)
        if not name:
            raise where.fail("has no name")
        if received.name is not None and inner and inner != name:
            raise Where(kind, name).fail(f'names itself "{q(inner)}"')
        if name in seen:
            raise Where(kind, name).fail("appears twice in one response")
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
    outliers: dict[OutlierConfig, OutlierConfig] = {}  # one object per distinct setting
    for item in _decoded(update, cluster_pb2.Cluster, lambda c: c.name):
        clusters[item.name] = decode_cluster(item.name, item.message, outliers)
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
        endpoints[item.name] = decode_load_assignment(item.name, item.message)
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
        config = decode_listener(item.name, item.message)
        if config is None:
            continue  # an API listener: for proxyless gRPC, not for this proxy
        if config.http is None and config.cluster not in state.clusters:
            raise Where("Listener", item.name).fail(
                f'tcp_proxy points at cluster "{q(config.cluster)}" that the sidecar does not have'
            )
        by_name[item.name] = config
        accepted[item.name] = item.accepted
    listeners: dict[tuple[str, int], ListenerConfig] = {}
    outbound: ListenerConfig | None = None
    for name in sorted(by_name):
        config = by_name[name]
        if config.use_original_dst:
            if outbound is not None:
                raise Where("Listener", name).fail(
                    f'is a second use_original_dst listener (the first is "{q(outbound.name)}")'
                )
            outbound = config
            continue
        key = (config.address, config.port)
        other = listeners.get(key)
        if other is not None:
            raise Where("Listener", name).fail(
                f'has the address {config.address}:{config.port} of listener "{q(other.name)}"'
            )
        listeners[key] = config
    # A route configuration goes with the last listener that names it, as a
    # cluster's load assignment goes with the cluster.
    named = _route_names(listeners.values())
    routes = {n: r for n, r in state.routes.items() if n in named}
    rds_accepted = {n: r for n, r in state.accepted.get(types.ROUTE, {}).items() if n in named}
    return dataclasses.replace(
        state,
        listeners=listeners,
        outbound_listener=outbound,
        routes=routes,
        accepted=_accepted(state, {types.LISTENER: accepted, types.ROUTE: rds_accepted}),
        type_versions=_versions(state, update),
    )


def _route_names(listeners: Iterable[ListenerConfig]) -> set[str]:
    return {lis.http.route_config for lis in listeners if lis.http is not None}


def _apply_routes(state: SidecarState, update: Update, _domain: str) -> SidecarState:
    accepted, _ = _start(state, update, state.routes)
    named = _route_names(state.listeners.values())
    routes = {n: r for n, r in state.routes.items() if n not in update.removed}
    for item in _decoded(update, route_pb2.RouteConfiguration, lambda r: r.name):
        if item.name not in named:
            continue  # a late answer for a listener that is gone
        config = decode_route_configuration(item.name, item.message)
        for i, rule in enumerate(config.routes):
            if rule.cluster not in state.clusters:
                raise Where("RouteConfiguration", item.name).fail(
                    f'virtual_hosts[0].routes[{i}] points at cluster "{q(rule.cluster)}"'
                    " that the sidecar does not have"
                )
        routes[item.name] = config
        accepted[item.name] = item.accepted
    return dataclasses.replace(
        state,
        routes=routes,
        accepted=_accepted(state, {types.ROUTE: accepted}),
        type_versions=_versions(state, update),
    )


def _apply_name_table(state: SidecarState, update: Update, domain: str) -> SidecarState:
    accepted, removed = _start(state, update, state.name_tables)
    tables = {n: t for n, t in state.name_tables.items() if n not in removed}
    for item in _decoded(update, NameTable, _namespace_of):
        tables[item.name] = decode_name_table(item.name, item.message, domain)
        accepted[item.name] = item.accepted
    return dataclasses.replace(
        state,
        name_tables=tables,
        accepted=_accepted(state, {types.NAME_TABLE: accepted}),
        type_versions=_versions(state, update),
    )


def _namespace_of(table: NameTable) -> str:
    """A NameTable is named by the namespace of its names (SotW carries no other name)."""
    for info in table.table.values():
        return info.namespace
    return ""


_APPLY: dict[str, Callable[[SidecarState, Update, str], SidecarState]] = {
    types.CLUSTER: _apply_clusters,
    types.ENDPOINT: _apply_endpoints,
    types.LISTENER: _apply_listeners,
    types.ROUTE: _apply_routes,
    types.NAME_TABLE: _apply_name_table,
}


def apply_update(state: SidecarState, update: Update, cluster_domain: str) -> SidecarState:
    """The state after accepting `update`, or ValidationError; `state` is left as it was."""
    apply = _APPLY.get(update.type_url)
    if apply is None:
        raise ValidationError(f"type {q(update.type_url)} is not one the sidecar asked for")
    return apply(state, update, cluster_domain)
