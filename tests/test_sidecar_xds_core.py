"""The xDS client's cores without a network: backoff, the requests each protocol sends,
and one response in -> ACK or NACK out, with the state and status that follow."""

from __future__ import annotations

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
    Resource,
)
from google.protobuf.message import Message

from meshlet.backoff import Backoff, BackoffPolicy
from meshlet.model import Endpoint, LbPolicy, Mesh, Service, ServicePort
from meshlet.sidecar.state import SidecarState
from meshlet.sidecar.xds_client import DeltaSession, SotwSession, XdsClient, XdsProtocol
from meshlet.xds import types
from meshlet.xds.translate import translate
from meshlet.xds.wire import pack

WEB = "outbound|80||web.default.svc.cluster.local"
# The port is named http: its listener takes routes over RDS, by this name.
WEB_ROUTES = "web.default.svc.cluster.local:80"
NODE = Node(id="pod-1")


# --- backoff ---------------------------------------------------------------------


def test_backoff_ceiling_doubles_to_the_cap_with_full_jitter() -> None:
    backoff = Backoff(BackoffPolicy(base_seconds=0.2, cap_seconds=15.0))
    ceilings = [backoff.next_delay(0.0, 0.999999) for _ in range(9)]
    assert [round(c, 3) for c in ceilings] == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 15.0, 15.0]
    assert backoff.next_delay(0.0, 0.0) == 0.0, "full jitter goes down to zero"
    assert backoff.next_delay(0.0, 0.5) == 7.5


def test_backoff_starts_over_after_a_stream_that_lived_a_while() -> None:
    backoff = Backoff(BackoffPolicy(base_seconds=1.0, cap_seconds=100.0, reset_after_seconds=10.0))
    for _ in range(5):
        backoff.next_delay(9.9, 0.5)  # short streams keep counting
    assert backoff.next_delay(9.9, 0.5) == 16.0
    assert backoff.next_delay(10.0, 0.5) == 0.5
    assert backoff.next_delay(0.0, 0.5) == 1.0


def test_backoff_never_overflows() -> None:
    backoff = Backoff(BackoffPolicy(cap_seconds=15.0))
    for _ in range(10_000):
        delay = backoff.next_delay(0.0, 0.5)
    assert delay == 7.5


# --- what a held state looks like --------------------------------------------------


def served() -> dict[str, dict[str, Message]]:
    web = Service(
        "web",
        "default",
        cluster_ips=("10.96.0.10",),
        ports=(ServicePort("http", 80, endpoints=(Endpoint("10.1.0.1", 8080),)),),
    )
    out: dict[str, dict[str, Message]] = {}
    for generated in translate(Mesh((web,)), "cluster.local"):
        if not generated.on_demand:
            out.setdefault(generated.type_url, {})[generated.name] = generated.message
    return out


def delta_response(
    type_url: str, nonce: str, messages: dict[str, Message]
) -> DeltaDiscoveryResponse:
    return DeltaDiscoveryResponse(
        type_url=type_url,
        nonce=nonce,
        system_version_info=f"sys-{nonce}",
        resources=[
            Resource(name=n, version=f"v-{n}", resource=pack(m)) for n, m in messages.items()
        ],
    )


def client(protocol: XdsProtocol = "delta") -> tuple[XdsClient, list[SidecarState]]:
    states: list[SidecarState] = []
    made = XdsClient(
        "127.0.0.1:1",
        "pod-1",
        "default",
        "zone-a",
        "cluster.local",
        protocol,
        states.append,
    )
    return made, states


def held_state() -> SidecarState:
    """The state a delta client has after one full round."""
    made, _ = client()
    session = DeltaSession(NODE)
    resources = served()
    for nonce, type_url in enumerate(
        (types.CLUSTER, types.ENDPOINT, types.LISTENER, types.ROUTE, types.NAME_TABLE), start=1
    ):
        made.handle(session, delta_response(type_url, str(nonce), resources[type_url]))
    assert made.ready
    return made.state


# --- delta requests --------------------------------------------------------------


def test_delta_opening_of_a_fresh_client() -> None:
    requests = DeltaSession(NODE).opening(SidecarState())
    assert [(r.type_url, list(r.resource_names_subscribe)) for r in requests] == [
        (types.CLUSTER, ["*"]),
        (types.LISTENER, ["*"]),
        (types.NAME_TABLE, ["*"]),
    ], "no EDS request before there is a cluster to name (an empty first one means wildcard)"
    assert requests[0].node.id == "pod-1"
    assert not any(r.HasField("node") for r in requests[1:]), "the node goes once per stream"


def test_delta_opening_resumes_from_what_is_held() -> None:
    state = held_state()
    requests = {r.type_url: r for r in DeltaSession(NODE).opening(state)}
    assert dict(requests[types.CLUSTER].initial_resource_versions) == {
        types.PASSTHROUGH_CLUSTER: f"v-{types.PASSTHROUGH_CLUSTER}",
        WEB: f"v-{WEB}",
    }
    assert list(requests[types.ENDPOINT].resource_names_subscribe) == [WEB]
    assert dict(requests[types.ENDPOINT].initial_resource_versions) == {WEB: f"v-{WEB}"}
    assert set(requests[types.LISTENER].initial_resource_versions) == {
        types.OUTBOUND_LISTENER,
        "10.96.0.10_80",
    }
    assert list(requests[types.ROUTE].resource_names_subscribe) == [WEB_ROUTES]
    assert dict(requests[types.ROUTE].initial_resource_versions) == {WEB_ROUTES: f"v-{WEB_ROUTES}"}
    assert dict(requests[types.NAME_TABLE].initial_resource_versions) == {"default": "v-default"}
    order = [r.type_url for r in DeltaSession(NODE).opening(state)]
    assert order == [types.CLUSTER, types.ENDPOINT, types.LISTENER, types.ROUTE, types.NAME_TABLE]


def test_delta_route_subscription_follows_the_http_listeners() -> None:
    made, _ = client()
    session = DeltaSession(NODE)
    session.opening(SidecarState())
    resources = served()
    made.handle(session, delta_response(types.CLUSTER, "1", resources[types.CLUSTER]))
    replies = made.handle(session, delta_response(types.LISTENER, "2", resources[types.LISTENER]))
    assert replies == [
        DeltaDiscoveryRequest(type_url=types.LISTENER, response_nonce="2"),
        DeltaDiscoveryRequest(
            type_url=types.ROUTE,
            resource_names_subscribe=[WEB_ROUTES],
            initial_resource_versions={},
        ),
    ]
    removal = DeltaDiscoveryResponse(
        type_url=types.LISTENER, nonce="3", removed_resources=["10.96.0.10_80"]
    )
    replies = made.handle(session, removal)
    assert replies == [
        DeltaDiscoveryRequest(type_url=types.LISTENER, response_nonce="3"),
        DeltaDiscoveryRequest(type_url=types.ROUTE, resource_names_unsubscribe=[WEB_ROUTES]),
    ]


def test_delta_endpoint_subscription_follows_the_clusters() -> None:
    made, _ = client()
    session = DeltaSession(NODE)
    session.opening(SidecarState())
    clusters = served()[types.CLUSTER]
    replies = made.handle(session, delta_response(types.CLUSTER, "1", clusters))
    assert replies == [
        DeltaDiscoveryRequest(type_url=types.CLUSTER, response_nonce="1"),
        DeltaDiscoveryRequest(
            type_url=types.ENDPOINT, resource_names_subscribe=[WEB], initial_resource_versions={}
        ),
    ]
    removal = DeltaDiscoveryResponse(type_url=types.CLUSTER, nonce="2", removed_resources=[WEB])
    replies = made.handle(session, removal)
    assert replies == [
        DeltaDiscoveryRequest(type_url=types.CLUSTER, response_nonce="2"),
        DeltaDiscoveryRequest(type_url=types.ENDPOINT, resource_names_unsubscribe=[WEB]),
    ]
    assert WEB not in made.state.clusters


# --- SotW requests -----------------------------------------------------------------


def test_sotw_restates_version_nonce_and_names() -> None:
    state = held_state()
    session = SotwSession(NODE)
    requests = {r.type_url: r for r in session.opening(state)}
    assert requests[types.CLUSTER].version_info == state.type_versions[types.CLUSTER]
    assert list(requests[types.CLUSTER].resource_names) == []
    assert list(requests[types.ENDPOINT].resource_names) == [WEB]
    assert list(requests[types.ROUTE].resource_names) == [WEB_ROUTES]
    assert list(requests[types.NAME_TABLE].resource_names) == []  # every namespace's
    assert all(r.response_nonce == "" for r in requests.values())

    response = DiscoveryResponse(type_url=types.ENDPOINT, version_info="9", nonce="n1")
    session.update_of(response)
    ack = session.ack(response, state)
    assert (ack.response_nonce, list(ack.resource_names)) == ("n1", [WEB])
    # A later subscription change carries the latest nonce, or the server ignores it.
    dropped = SidecarState(
        clusters={k: v for k, v in state.clusters.items() if k != WEB},
        type_versions=state.type_versions,
    )
    [change, routes] = session.resubscribe(dropped)
    assert (change.type_url, change.response_nonce, list(change.resource_names)) == (
        types.ENDPOINT,
        "n1",
        [],
    )
    assert (routes.type_url, list(routes.resource_names)) == (types.ROUTE, [])


def test_sotw_never_opens_endpoints_with_an_empty_list() -> None:
    assert all(r.type_url != types.ENDPOINT for r in SotwSession(NODE).opening(SidecarState()))


# --- one response in: ACK or NACK ------------------------------------------------


def test_a_bad_response_is_nacked_and_the_last_good_state_stays() -> None:
    made, states = client("sotw")
    session = SotwSession(NODE)
    session.opening(SidecarState())
    good = served()[types.CLUSTER]
    first = DiscoveryResponse(
        type_url=types.CLUSTER,
        version_info="1",
        nonce="a",
        resources=[pack(m) for m in good.values()],
    )
    replies = made.handle(session, first)
    assert isinstance(replies[0], DiscoveryRequest)
    assert (replies[0].version_info, replies[0].response_nonce) == ("1", "a")
    assert not replies[0].HasField("error_detail")
    held = made.state

    bad = Cluster()
    bad.CopyFrom(good[WEB])
    bad.load_balancing_policy.policies[0].typed_extension_config.typed_config.type_url = "x/y.Z"
    second = DiscoveryResponse(
        type_url=types.CLUSTER, version_info="2", nonce="b", resources=[pack(bad)]
    )
    [nack] = made.handle(session, second)
    assert (nack.version_info, nack.response_nonce) == ("1", "b"), (
        "NACK names the last good version"
    )
    assert nack.error_detail.code == 3
    assert nack.error_detail.message == (
        f'Cluster "{WEB}": load_balancing_policy has no policy meshlet supports '
        "(got envoy.load_balancing_policies.round_robin)"
    )
    assert made.state is held
    assert states == [held]
    status = made.status().types[types.CLUSTER]
    assert (status.accepted, status.rejected) == (1, 1)
    assert (status.accepted_version, status.rejected_version) == ("1", "2")
    assert status.last_error == nack.error_detail.message
    assert made.state.clusters[WEB].lb_policy is LbPolicy.ROUND_ROBIN


def test_ready_needs_every_first_response_and_the_endpoints_of_every_cluster() -> None:
    made, states = client()
    session = DeltaSession(NODE)
    resources = served()
    for nonce, type_url in enumerate((types.CLUSTER, types.LISTENER, types.NAME_TABLE), start=1):
        made.handle(session, delta_response(type_url, str(nonce), resources[type_url]))
    assert not made.ready, "the web cluster has no load assignment yet"
    made.handle(session, delta_response(types.ENDPOINT, "4", resources[types.ENDPOINT]))
    assert not made.ready, "the web listener's routes have not come yet"
    made.handle(session, delta_response(types.ROUTE, "5", resources[types.ROUTE]))
    assert made.ready
    assert len(states) == 5
    assert len({id(s) for s in states}) == 5, "every accepted response is a new state"
    status = made.status()
    assert status.config_age(status.types[types.ROUTE].last_accepted_at or 0.0) == 0.0
    dumped = status.as_dict()["types"]
    assert isinstance(dumped, dict)
    assert dumped["eds"]["accepted"] == 1
