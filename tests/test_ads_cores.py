"""The SotW and delta stream cores, driven with real request messages (no sockets)."""

from __future__ import annotations

from dataclasses import replace

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from google.rpc.status_pb2 import Status

from meshlet.controlplane.delta import DeltaStream
from meshlet.controlplane.sotw import SotwStream
from meshlet.controlplane.stream_state import Push
from meshlet.model import LbPolicy
from meshlet.xds import types
from tests.xds_fixtures import api, snapshot_of, web

WEB_CLUSTER = "outbound|80||web.default.svc.cluster.local"
API_CLUSTER = "outbound|9090||api.shop.svc.cluster.local"
WEB_API_LISTENER = "web.default.svc.cluster.local:80"


def sotw(push: Push) -> DiscoveryResponse:
    return DiscoveryResponse.FromString(push.payload)


def delta(push: Push) -> DeltaDiscoveryResponse:
    return DeltaDiscoveryResponse.FromString(push.payload)


def sotw_names(push: Push, message_type: type = Cluster) -> list[str]:
    out = []
    for packed in sotw(push).resources:
        message = message_type()
        assert packed.Unpack(message)
        is_cla = isinstance(message, ClusterLoadAssignment)
        out.append(message.cluster_name if is_cla else message.name)
    return out


def request(
    type_url: str,
    names: list[str] | None = None,
    nonce: str = "",
    version: str = "",
    error: str | None = None,
) -> DiscoveryRequest:
    req = DiscoveryRequest(
        type_url=type_url, resource_names=names or [], response_nonce=nonce, version_info=version
    )
    req.node.id = "node-1"
    if error is not None:
        req.error_detail.CopyFrom(Status(code=3, message=error))
    return req


# --- state of the world ---------------------------------------------------------------


def test_sotw_wildcard_cds_gets_everything_but_on_demand_listeners() -> None:
    snap = snapshot_of(web("10.0.0.1"), api("10.0.0.2"))
    stream = SotwStream()
    [push], nack = stream.on_request(request(types.CLUSTER), snap)
    assert not nack
    assert sorted(sotw_names(push)) == sorted([types.PASSTHROUGH_CLUSTER, WEB_CLUSTER, API_CLUSTER])
    [lds], _ = stream.on_request(request(types.LISTENER), snap)
    listeners = sotw_names(lds, Listener)
    assert WEB_API_LISTENER not in listeners
    assert "10.96.0.10_80" in listeners and types.OUTBOUND_LISTENER in listeners


def test_sotw_named_listener_is_served_on_demand() -> None:
    snap = snapshot_of(web("10.0.0.1"))
    stream = SotwStream()
    [push], _ = stream.on_request(request(types.LISTENER, [WEB_API_LISTENER]), snap)
    assert sotw_names(push, Listener) == [WEB_API_LISTENER]


def test_sotw_ack_sends_nothing_and_is_recorded() -> None:
    snap = snapshot_of(web("10.0.0.1"))
    stream = SotwStream()
    [push], _ = stream.on_request(request(types.CLUSTER), snap)
    response = sotw(push)
    pushes, nack = stream.on_request(
        request(types.CLUSTER, nonce=response.nonce, version=response.version_info), snap
    )
    assert pushes == [] and not nack
    assert stream.watches[types.CLUSTER].version_acked == response.version_info


def test_sotw_nack_is_recorded_and_not_resent() -> None:
    snap = snapshot_of(web("10.0.0.1"))
    stream = SotwStream()
    [push], _ = stream.on_request(request(types.CLUSTER), snap)
    pushes, nack = stream.on_request(
        request(types.CLUSTER, nonce=sotw(push).nonce, error="bad cluster"), snap
    )
    assert nack and pushes == []
    watch = stream.watches[types.CLUSTER]
    assert watch.last_nack == "bad cluster" and watch.nacks == 1
    assert watch.version_nacked == sotw(push).version_info


def test_sotw_stale_nonce_is_ignored() -> None:
    snap = snapshot_of(web("10.0.0.1"))
    stream = SotwStream()
    stream.on_request(request(types.ENDPOINT, [WEB_CLUSTER]), snap)
    pushes, nack = stream.on_request(
        request(types.ENDPOINT, [WEB_CLUSTER, API_CLUSTER], nonce="999", error="x"), snap
    )
    assert pushes == [] and not nack
    assert stream.watches[types.ENDPOINT].names == {WEB_CLUSTER}


def test_sotw_eds_sends_only_what_changed() -> None:
    first = snapshot_of(web("10.0.0.1"), api("10.0.0.2"))
    stream = SotwStream()
    [push], _ = stream.on_request(request(types.ENDPOINT, [WEB_CLUSTER, API_CLUSTER]), first)
    assert sorted(sotw_names(push, ClusterLoadAssignment)) == sorted([WEB_CLUSTER, API_CLUSTER])
    stream.generation = first.generation
    second = snapshot_of(web("10.0.0.1", "10.0.0.3"), api("10.0.0.2"), previous=first)
    [update] = stream.on_snapshot(second)
    assert sotw_names(update, ClusterLoadAssignment) == [WEB_CLUSTER]
    assert stream.on_snapshot(second) == []  # nothing new


def test_sotw_cds_is_full_state_and_push_order_is_make_before_break() -> None:
    first = snapshot_of(web("10.0.0.1"))
    stream = SotwStream()
    for type_url in (types.NAME_TABLE, types.LISTENER, types.CLUSTER):
        stream.on_request(request(type_url, []), first)
    stream.on_request(request(types.ENDPOINT, [WEB_CLUSTER]), first)
    stream.generation = first.generation
    second = snapshot_of(web("10.0.0.1"), api("10.0.0.2"), previous=first)
    pushes = stream.on_snapshot(second)
    assert [p.type_url for p in pushes] == [types.CLUSTER, types.LISTENER, types.NAME_TABLE]
    assert API_CLUSTER in sotw_names(pushes[0]) and WEB_CLUSTER in sotw_names(pushes[0])


def test_sotw_resource_asked_before_it_exists_is_sent_when_it_appears() -> None:
    first = snapshot_of(web("10.0.0.1"))
    stream = SotwStream()
    assert stream.on_request(request(types.ENDPOINT, [API_CLUSTER]), first)[0] == []
    stream.generation = first.generation
    second = snapshot_of(web("10.0.0.1"), api("10.0.0.2"), previous=first)
    [push] = stream.on_snapshot(second)
    assert sotw_names(push, ClusterLoadAssignment) == [API_CLUSTER]


def test_sotw_lagging_stream_compares_everything() -> None:
    first = snapshot_of(web("10.0.0.1"))
    stream = SotwStream()
    stream.on_request(request(types.ENDPOINT, [WEB_CLUSTER]), first)
    stream.generation = first.generation
    second = snapshot_of(web("10.0.0.2"), previous=first)
    third = snapshot_of(web("10.0.0.2"), api("10.0.0.3"), previous=second)
    # The stream never saw `second`: third.changed says nothing about web, yet web changed.
    [push] = stream.on_snapshot(third)
    assert sotw_names(push, ClusterLoadAssignment) == [WEB_CLUSTER]


# --- delta ------------------------------------------------------------------------------


def delta_request(
    type_url: str,
    subscribe: list[str] | None = None,
    unsubscribe: list[str] | None = None,
    nonce: str = "",
    initial: dict[str, str] | None = None,
    error: str | None = None,
) -> DeltaDiscoveryRequest:
    req = DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=subscribe or [],
        resource_names_unsubscribe=unsubscribe or [],
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    req.node.id = "node-1"
    if error is not None:
        req.error_detail.CopyFrom(Status(code=3, message=error))
    return req


def test_delta_wildcard_then_only_changes() -> None:
    first = snapshot_of(web("10.0.0.1"))
    stream = DeltaStream()
    [push], _ = stream.on_request(delta_request(types.CLUSTER), first)
    assert sorted(r.name for r in delta(push).resources) == sorted(
        [types.PASSTHROUGH_CLUSTER, WEB_CLUSTER]
    )
    stream.generation = first.generation
    second = snapshot_of(web("10.0.0.1"), api("10.0.0.2"), previous=first)
    [update] = stream.on_snapshot(second)
    assert [r.name for r in delta(update).resources] == [API_CLUSTER]
    third = snapshot_of(api("10.0.0.2"), previous=second)
    [removal] = stream.on_snapshot(third)
    assert list(delta(removal).removed_resources) == [WEB_CLUSTER]
    assert list(delta(removal).resources) == []


def test_delta_reconnect_sends_only_what_differs() -> None:
    snap = snapshot_of(web("10.0.0.1"), api("10.0.0.2"))
    held = {name: r.version for name, r in snap.of_type(types.CLUSTER).items()}
    held.pop(API_CLUSTER)
    held["outbound|1||old.default.svc.cluster.local"] = "abc"
    stream = DeltaStream()
    [push], _ = stream.on_request(delta_request(types.CLUSTER, initial=held), snap)
    response = delta(push)
    assert [r.name for r in response.resources] == [API_CLUSTER]
    assert list(response.removed_resources) == ["outbound|1||old.default.svc.cluster.local"]


def test_delta_reconnect_with_everything_current_still_answers_wildcard() -> None:
    snap = snapshot_of(web("10.0.0.1"))
    held = {name: r.version for name, r in snap.of_type(types.CLUSTER).items()}
    [push], _ = DeltaStream().on_request(delta_request(types.CLUSTER, initial=held), snap)
    assert not delta(push).resources and not delta(push).removed_resources


def test_delta_named_subscribe_unsubscribe_and_missing() -> None:
    snap = snapshot_of(web("10.0.0.1"))
    stream = DeltaStream()
    [push], _ = stream.on_request(delta_request(types.ENDPOINT, [WEB_CLUSTER, API_CLUSTER]), snap)
    response = delta(push)
    assert [r.name for r in response.resources] == [WEB_CLUSTER]
    assert list(response.removed_resources) == [API_CLUSTER]  # asked for, does not exist
    pushes, _ = stream.on_request(
        delta_request(types.ENDPOINT, unsubscribe=[WEB_CLUSTER], nonce=response.nonce), snap
    )
    assert pushes == []
    assert stream.watches[types.ENDPOINT].names == {API_CLUSTER}
    # Asking again sends it again, even though nothing changed.
    [again], _ = stream.on_request(delta_request(types.ENDPOINT, [WEB_CLUSTER]), snap)
    assert [r.name for r in delta(again).resources] == [WEB_CLUSTER]


def test_delta_nack_recorded_and_not_resent() -> None:
    snap = snapshot_of(web("10.0.0.1"))
    stream = DeltaStream()
    [push], _ = stream.on_request(delta_request(types.CLUSTER), snap)
    pushes, nack = stream.on_request(
        delta_request(types.CLUSTER, nonce=delta(push).nonce, error="no"), snap
    )
    assert nack and pushes == []
    assert stream.watches[types.CLUSTER].last_nack == "no"
    status = stream.status()
    assert status["node"] == "node-1"


# --- both -------------------------------------------------------------------------------


def test_changed_cluster_gets_its_endpoints_again_sotw() -> None:
    first = snapshot_of(web("10.0.0.1"))
    stream = SotwStream()
    stream.on_request(request(types.CLUSTER), first)
    stream.on_request(request(types.ENDPOINT, [WEB_CLUSTER]), first)
    stream.generation = first.generation
    # Same endpoints, new load-balancing policy: only the Cluster changed.
    second = snapshot_of(replace(web("10.0.0.1"), lb_policy=LbPolicy.MAGLEV), previous=first)
    assert second.changed[types.ENDPOINT] == frozenset()
    pushes = stream.on_snapshot(second)
    assert [p.type_url for p in pushes] == [types.CLUSTER, types.ENDPOINT]
    assert sotw_names(pushes[1], ClusterLoadAssignment) == [WEB_CLUSTER]


def test_changed_cluster_gets_its_endpoints_again_delta() -> None:
    first = snapshot_of(web("10.0.0.1"))
    stream = DeltaStream()
    stream.on_request(delta_request(types.CLUSTER), first)
    stream.on_request(delta_request(types.ENDPOINT, [WEB_CLUSTER]), first)
    stream.generation = first.generation
    second = snapshot_of(replace(web("10.0.0.1"), lb_policy=LbPolicy.MAGLEV), previous=first)
    pushes = stream.on_snapshot(second)
    assert [p.type_url for p in pushes] == [types.CLUSTER, types.ENDPOINT]
    assert [r.name for r in delta(pushes[1]).resources] == [WEB_CLUSTER]
    # A change that adds a cluster sends no endpoints for the ones that stayed.
    third = snapshot_of(
        replace(web("10.0.0.1"), lb_policy=LbPolicy.MAGLEV), api("10.0.0.5"), previous=second
    )
    [cds] = stream.on_snapshot(third)
    assert [r.name for r in delta(cds).resources] == [API_CLUSTER]


def test_sotw_first_request_with_a_leftover_nonce_is_answered() -> None:
    # A client that reconnects may keep the nonce of its previous stream.
    snap = snapshot_of(web("10.0.0.1"))
    [push], _ = SotwStream().on_request(request(types.CLUSTER, nonce="41"), snap)
    assert WEB_CLUSTER in sotw_names(push)


def test_sotw_explicit_star_then_empty_unsubscribes() -> None:
    snap = snapshot_of(web("10.0.0.1"))
    stream = SotwStream()
    [push], _ = stream.on_request(request(types.CLUSTER, ["*"]), snap)
    assert stream.watches[types.CLUSTER].wildcard
    [empty], _ = stream.on_request(request(types.CLUSTER, [], nonce=sotw(push).nonce), snap)
    assert not stream.watches[types.CLUSTER].wildcard
    assert sotw_names(empty) == []


def test_types_the_server_never_serves_are_counted_not_watched() -> None:
    snap = snapshot_of(web("10.0.0.1"))
    sotw_stream, delta_stream = SotwStream(), DeltaStream()
    for i in range(1000):  # a client choosing type URLs: no watch, no answer, each
        unknown = f"type.googleapis.com/example.Nothing{i}"
        assert sotw_stream.on_request(request(unknown), snap) == ([], False)
        assert delta_stream.on_request(delta_request(unknown), snap) == ([], False)
    for stream in (sotw_stream, delta_stream):
        assert stream.watches == {} and stream.unknown_type_requests == 1000
    # What it serves still works on the same stream.
    [push], _ = delta_stream.on_request(delta_request(types.CLUSTER), snap)
    assert delta(push).resources


def test_a_node_id_of_any_size_is_kept_short() -> None:
    stream = SotwStream()
    hostile = request(types.CLUSTER)
    hostile.node.id = "n" * 8_000_000
    stream.on_request(hostile, snapshot_of(web("10.0.0.1")))
    assert len(stream.node_id) <= 300


def test_what_a_client_chose_is_shown_short_in_its_status() -> None:
    stream = SotwStream()
    names = [WEB_CLUSTER, *(f"{i:04d}" + "x" * 10_000 for i in range(999))]
    snap = snapshot_of(web("10.0.0.1"))
    [push], _ = stream.on_request(request(types.ENDPOINT, names), snap)
    ack = request(types.ENDPOINT, names, nonce=sotw(push).nonce, version="v" * 1_000_000)
    stream.on_request(ack, snap)
    eds = stream.status()["types"]["eds"]  # type: ignore[index]
    assert eds["subscribed_count"] == 1000 and len(eds["subscribed"]) == 100
    assert all(len(n) <= 300 for n in eds["subscribed"]) and len(eds["version_acked"]) <= 300
