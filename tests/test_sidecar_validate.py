"""Sidecar validation, table-driven: good resources from translate, bad ones made by hand.

Good resources are what the control plane serves (meshlet.xds.translate on a small
mesh); each bad one is a good one with one thing broken, and the exact NACK
message is asserted, since an operator reads it in /debug/clients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_components_pb2 import Route
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2 import TcpProxy
from envoy.extensions.load_balancing_policies.maglev.v3.maglev_pb2 import Maglev
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions
from google.protobuf import any_pb2
from google.protobuf.message import Message

from meshlet._proto.meshlet.v1.nametable_pb2 import NameTable
from meshlet.model import Endpoint, Health, LbPolicy, Mesh, Service, ServicePort
from meshlet.sidecar.state import (
    ClusterConfig,
    HttpConfig,
    ListenerConfig,
    OutlierConfig,
    RetryPolicy,
    RouteConfig,
    RouteRule,
    SidecarState,
)
from meshlet.sidecar.validate import (
    Received,
    Update,
    ValidationError,
    apply_update,
    decode_cluster,
    decode_load_assignment,
)
from meshlet.xds import types
from meshlet.xds.http import HTTP_PROTOCOL_OPTIONS
from meshlet.xds.translate import translate
from meshlet.xds.wire import pack

DOMAIN = "cluster.local"
WEB = "outbound|80||web.default.svc.cluster.local"
API = "outbound|9090||api.shop.svc.cluster.local"
API_ROUTES = "api.shop.svc.cluster.local:9090"
OUTBOUND_PORT = 15001


def mesh() -> Mesh:
    web = Service(
        "web",
        "default",
        cluster_ips=("10.96.0.10",),
        ports=(
            ServicePort(
                "http",
                80,
                # Marked TCP, so its listener is a tcp_proxy (api's port is HTTP/2).
                app_protocol="tcp",
                endpoints=(
                    Endpoint("10.1.0.1", 8080, zone="zone-a"),
                    Endpoint("10.1.0.2", 8080, Health.DRAINING, zone="zone-b", weight=3),
                ),
            ),
        ),
        lb_policy=LbPolicy.LEAST_REQUEST,
        prefer_same_zone=True,
    )
    api = Service(
        "api",
        "shop",
        cluster_ips=("10.96.0.20",),
        ports=(ServicePort("grpc", 9090, endpoints=(Endpoint("10.2.0.1", 9090),)),),
        lb_policy=LbPolicy.RING_HASH,
        client_ip_affinity=True,
    )
    return Mesh((api, web))


def served(domain: str = DOMAIN) -> dict[str, dict[str, Message]]:
    """type URL -> name -> message, as the control plane serves them."""
    out: dict[str, dict[str, Message]] = {}
    for generated in translate(mesh(), domain, OUTBOUND_PORT):
        out.setdefault(generated.type_url, {})[generated.name] = generated.message
    return out


def delta(type_url: str, messages: dict[str, Message], removed: tuple[str, ...] = ()) -> Update:
    """A delta response: every resource named, versions made up from the names."""
    resources = [Received(n, f"v-{n}", pack(m)) for n, m in messages.items()]
    return Update(type_url, f"system-{type_url[-8:]}", resources, removed)


def sotw(type_url: str, messages: list[Message], version: str = "1") -> Update:
    return Update(
        type_url,
        version,
        [Received(None, version, pack(m)) for m in messages],
        full_state=type_url in types.FULL_STATE_TYPES,
    )


def socket_listeners(resources: dict[str, dict[str, Message]]) -> dict[str, Message]:
    """The listeners a wildcard subscriber gets: no API listeners."""
    return {n: m for n, m in resources[types.LISTENER].items() if not n.endswith((":80", ":9090"))}


def full_state(domain: str = DOMAIN) -> SidecarState:
    resources = served(domain)
    state = SidecarState()
    for update in (
        delta(types.CLUSTER, resources[types.CLUSTER]),
        delta(types.ENDPOINT, resources[types.ENDPOINT]),
        delta(types.LISTENER, socket_listeners(resources)),
        delta(types.ROUTE, resources[types.ROUTE]),
        delta(types.NAME_TABLE, resources[types.NAME_TABLE]),
    ):
        state = apply_update(state, update, DOMAIN)
    return state


# --- good resources -------------------------------------------------------------


def test_what_the_control_plane_serves_becomes_plain_configs() -> None:
    state = full_state()
    outlier = OutlierConfig(True, 5, 5.0, 30.0, 50)
    assert state.clusters == {
        types.PASSTHROUGH_CLUSTER: ClusterConfig(
            types.PASSTHROUGH_CLUSTER,
            outlier=OutlierConfig(enabled=False),
            original_destination=True,
        ),
        WEB: ClusterConfig(
            WEB,
            LbPolicy.LEAST_REQUEST,
            5.0,
            1024,
            outlier,
            prefer_same_zone=True,
            service="web",
            namespace="default",
        ),
        API: ClusterConfig(
            API,
            LbPolicy.RING_HASH,
            5.0,
            1024,
            outlier,
            service="api",
            namespace="shop",
            client_ip_affinity=True,
            http2=True,
        ),
    }
    assert state.endpoints == {
        WEB: (
            Endpoint("10.1.0.1", 8080, Health.HEALTHY, "zone-a"),
            Endpoint("10.1.0.2", 8080, Health.DRAINING, "zone-b", weight=3),
        ),
        API: (Endpoint("10.2.0.1", 9090),),
    }
    assert state.listeners == {
        ("10.96.0.10", 80): ListenerConfig("10.96.0.10_80", "10.96.0.10", 80, WEB),
        ("10.96.0.20", 9090): ListenerConfig(
            "10.96.0.20_9090",
            "10.96.0.20",
            9090,
            "",
            http=HttpConfig(API_ROUTES, upgrades=frozenset({"websocket"})),
        ),
    }
    # The port's routes: one per idempotent method, which alone retries a 503, then
    # the catch-all; no timeout (0), and the client's IP hashed (ClientIP affinity).
    unseen = frozenset({"connect-failure", "refused-stream", "reset-before-request"})
    answered = unseen | {"retriable-status-codes", "unavailable"}
    by_method = RetryPolicy(answered, 2, retriable_status_codes=frozenset({503}))
    assert state.routes == {
        API_ROUTES: RouteConfig(
            API_ROUTES,
            (
                *(
                    RouteRule(API, frozenset({m}), 0.0, by_method, True)
                    for m in ("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE")
                ),
                RouteRule(API, None, 0.0, RetryPolicy(unseen, 2), True),
            ),
        )
    }
    assert state.outbound_listener == ListenerConfig(
        types.OUTBOUND_LISTENER,
        "0.0.0.0",
        OUTBOUND_PORT,
        types.PASSTHROUGH_CLUSTER,
        use_original_dst=True,
    )
    assert {n: sorted(t.table) for n, t in state.name_tables.items()} == {
        "default": ["web.default.svc.cluster.local"],
        "shop": ["api.shop.svc.cluster.local"],
    }
    assert state.type_versions[types.CLUSTER] == "system-.Cluster"
    assert state.accepted[types.CLUSTER][WEB].version == f"v-{WEB}"
    dumped = state.accepted[types.LISTENER]["10.96.0.10_80"].json
    assert dumped["@type"] == types.LISTENER
    assert dumped["name"] == "10.96.0.10_80"


def test_sotw_names_resources_from_their_content() -> None:
    resources = served()
    state = apply_update(
        SidecarState(), sotw(types.CLUSTER, list(resources[types.CLUSTER].values())), DOMAIN
    )
    state = apply_update(
        state, sotw(types.NAME_TABLE, list(resources[types.NAME_TABLE].values())), DOMAIN
    )
    assert set(state.clusters) == {types.PASSTHROUGH_CLUSTER, WEB, API}
    # A NameTable is named by its names' namespace.
    assert set(state.accepted[types.NAME_TABLE]) == {"default", "shop"}
    assert state.type_versions == {types.CLUSTER: "1", types.NAME_TABLE: "1"}


def _cluster(configure: Callable[[Cluster], None]) -> Cluster:
    cluster = Cluster()
    cluster.CopyFrom(served()[types.CLUSTER][WEB])
    configure(cluster)
    return cluster


def _policies(*entries: tuple[str, any_pb2.Any]) -> Callable[[Cluster], None]:
    def configure(cluster: Cluster) -> None:
        del cluster.load_balancing_policy.policies[:]
        for name, config in entries:
            entry = cluster.load_balancing_policy.policies.add()
            entry.typed_extension_config.name = name
            entry.typed_extension_config.typed_config.CopyFrom(config)

    return configure


def _enum_policy(policy: int) -> Callable[[Cluster], None]:
    def configure(cluster: Cluster) -> None:
        cluster.ClearField("load_balancing_policy")
        cluster.lb_policy = policy  # type: ignore[assignment,unused-ignore]

    return configure


UNKNOWN_POLICY = any_pb2.Any(type_url="type.googleapis.com/example.Foo")


@pytest.mark.parametrize(
    ("configure", "expected"),
    [
        pytest.param(lambda c: None, LbPolicy.LEAST_REQUEST, id="as-served"),
        pytest.param(
            _policies(("foo", UNKNOWN_POLICY), ("m", pack(Maglev()))),
            LbPolicy.MAGLEV,
            id="first-supported-entry",
        ),
        pytest.param(_enum_policy(Cluster.RANDOM), LbPolicy.RANDOM, id="deprecated-enum"),
        pytest.param(_enum_policy(Cluster.MAGLEV), LbPolicy.MAGLEV, id="deprecated-enum-maglev"),
    ],
)
def test_load_balancing_policy(configure: Callable[[Cluster], None], expected: LbPolicy) -> None:
    assert decode_cluster(WEB, _cluster(configure)).lb_policy is expected


def test_endpoint_health_maps_to_what_the_balancer_uses() -> None:
    assignment = ClusterLoadAssignment(cluster_name=WEB)
    locality = assignment.endpoints.add()
    locality.locality.zone = "zone-a"
    for i, status in enumerate(
        (
            health_check_pb2.UNKNOWN,
            health_check_pb2.HEALTHY,
            health_check_pb2.DRAINING,
            health_check_pb2.UNHEALTHY,
            health_check_pb2.TIMEOUT,
            health_check_pb2.DEGRADED,
        )
    ):
        lb_endpoint = locality.lb_endpoints.add(health_status=status)
        lb_endpoint.endpoint.address.socket_address.address = f"10.1.0.{i}"
        lb_endpoint.endpoint.address.socket_address.port_value = 80
    assert decode_load_assignment(WEB, assignment) == (
        Endpoint("10.1.0.0", 80, Health.HEALTHY, "zone-a"),
        Endpoint("10.1.0.1", 80, Health.HEALTHY, "zone-a"),
        Endpoint("10.1.0.2", 80, Health.DRAINING, "zone-a"),
    )


def test_an_api_listener_is_ignored_not_nacked() -> None:
    state = full_state()
    api_listeners = {
        n: m for n, m in served()[types.LISTENER].items() if n.endswith((":80", ":9090"))
    }
    assert len(api_listeners) == 2
    after = apply_update(state, delta(types.LISTENER, api_listeners), DOMAIN)
    assert after.listeners == state.listeners
    assert after.accepted[types.LISTENER].keys() == state.accepted[types.LISTENER].keys()


# --- bad resources: the exact NACK messages --------------------------------------------


@dataclass(frozen=True)
class Bad:
    type_url: str
    name: str
    break_it: Callable[[Message], None]
    message: str


def _set_address(path: str, value: str) -> Callable[[Message], None]:
    def break_it(message: Message) -> None:
        assert isinstance(message, ClusterLoadAssignment)
        socket = message.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
        setattr(socket, path, value if path == "address" else int(value))

    return break_it


M = TypeVar("M", bound=Message)


def _as(kind: type[M], change: Callable[[M], None]) -> Callable[[Message], None]:
    """`change` for a resource of `kind`, as the cases' mutators take it."""

    def break_it(message: Message) -> None:
        assert isinstance(message, kind)
        change(message)

    return break_it


def _listener(change: Callable[[Listener], None]) -> Callable[[Message], None]:
    return _as(Listener, change)


def _tcp_proxy(change: Callable[[TcpProxy], None]) -> Callable[[Listener], None]:
    def break_it(listener: Listener) -> None:
        proxy = TcpProxy()
        assert listener.filter_chains[0].filters[0].typed_config.Unpack(proxy)
        change(proxy)
        listener.filter_chains[0].filters[0].typed_config.CopyFrom(pack(proxy))

    return break_it


def _hcm(change: Callable[[hcm_pb2.HttpConnectionManager], None]) -> Callable[[Message], None]:
    def break_it(listener: Listener) -> None:
        manager = hcm_pb2.HttpConnectionManager()
        assert listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
        change(manager)
        listener.filter_chains[0].filters[0].typed_config.CopyFrom(pack(manager))

    return _listener(break_it)


def _routes(change: Callable[[RouteConfiguration], None]) -> Callable[[Message], None]:
    return _as(RouteConfiguration, change)


def _catch_all(change: Callable[[Route], None]) -> Callable[[Message], None]:
    """`change` on the last route, the one every request matches."""
    return _routes(lambda config: change(config.virtual_hosts[0].routes[-1]))


def _http_options(change: Callable[[HttpProtocolOptions], None]) -> Callable[[Message], None]:
    def break_it(cluster: Cluster) -> None:
        packed = cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS]
        options = HttpProtocolOptions()
        assert packed.Unpack(options)
        change(options)
        packed.CopyFrom(pack(options))

    return _as(Cluster, break_it)


def _cluster_change(change: Callable[[Cluster], None]) -> Callable[[Message], None]:
    return _as(Cluster, change)


def _name_table(change: Callable[[NameTable], None]) -> Callable[[Message], None]:
    return _as(NameTable, change)


def _add_name(
    name: str, ip: str = "10.96.0.99", namespace: str = ""
) -> Callable[[NameTable], None]:
    def change(table: NameTable) -> None:
        table.table[name].ips.append(ip)
        table.table[name].namespace = namespace or name.split(".")[1]

    return change


A = f'Cluster "{API}": '
FAULT_FILTER = "envoy.filters.http.fault"
HL = 'Listener "10.96.0.20_9090": filter_chains[0].filters[0] http_connection_manager'
R = f'RouteConfiguration "{API_ROUTES}": '
LAST = "virtual_hosts[0].routes[6]"
W = f'Cluster "{WEB}": '
E = f'ClusterLoadAssignment "{WEB}": endpoints[0].lb_endpoints[0].endpoint.address.socket_address.'
L = 'Listener "10.96.0.10_80": '
N = 'NameTable "default": '
FIRST_FILTER = "filter_chains[0].filters[0] tcp_proxy"


def _http_filter(listener: Listener) -> None:
    listener.filter_chains[0].filters[0].name = "envoy.filters.network.http"
    listener.filter_chains[0].filters[0].typed_config.CopyFrom(pack(ClusterLoadAssignment()))


def _srv_port_zero(table: NameTable) -> None:
    table.table["web.default.svc.cluster.local"].ports[0].port = 0


def _app_protocol_spdy(table: NameTable) -> None:
    table.table["web.default.svc.cluster.local"].ports[0].app_protocol = "spdy"


def _srv_port_name(name: str) -> Callable[[NameTable], None]:
    def change(table: NameTable) -> None:
        table.table["web.default.svc.cluster.local"].ports[0].name = name

    return change


# A valid name of 245 characters: no room for "_http._tcp." or a pod's dashed IP before it.
LONG = ".".join(["a" * 57] * 3 + ["a" * 45]) + ".default.svc.cluster.local"


def _long_name(headless: bool) -> Callable[[NameTable], None]:
    def change(table: NameTable) -> None:
        entry = table.table[LONG]
        entry.namespace = "default"
        entry.headless = headless
        entry.ips.append("fd00::1:2:3:4")
        entry.ports.add(name="http", port=80, protocol="tcp")

    return change


def _assignment(change: Callable[[ClusterLoadAssignment], None]) -> Callable[[Message], None]:
    return _as(ClusterLoadAssignment, change)


def _heavy_locality(assignment: ClusterLoadAssignment) -> None:
    locality = assignment.endpoints[0]
    locality.lb_endpoints[0].load_balancing_weight.value = 2**32 - 1
    locality.lb_endpoints.add().CopyFrom(locality.lb_endpoints[0])


BAD = {
    "unknown-lb-policy-only": Bad(
        types.CLUSTER,
        WEB,
        _cluster_change(_policies(("envoy.load_balancing_policies.foo", UNKNOWN_POLICY))),
        W + "load_balancing_policy has no policy meshlet supports "
        "(got envoy.load_balancing_policies.foo)",
    ),
    "unsupported-enum-policy": Bad(
        types.CLUSTER,
        WEB,
        _cluster_change(_enum_policy(Cluster.CLUSTER_PROVIDED)),
        W + "lb_policy CLUSTER_PROVIDED is not supported",
    ),
    "static-cluster": Bad(
        types.CLUSTER,
        WEB,
        _cluster_change(lambda c: setattr(c, "type", Cluster.STATIC)),
        W + "type STATIC is not supported (meshlet supports EDS over ADS and ORIGINAL_DST)",
    ),
    "eds-not-over-ads": Bad(
        types.CLUSTER,
        WEB,
        _cluster_change(lambda c: setattr(c.eds_cluster_config.eds_config, "path", "/eds.yaml")),
        W + "eds_cluster_config.eds_config must be ADS (got path)",
    ),
    "zero-connect-timeout": Bad(
        types.CLUSTER,
        WEB,
        _cluster_change(lambda c: c.connect_timeout.Clear()),
        W + "connect_timeout must be positive (got 0s)",
    ),
    "metadata-of-the-wrong-kind": Bad(
        types.CLUSTER,
        WEB,
        _cluster_change(
            lambda c: c.metadata.filter_metadata["meshlet"].update({"prefer_same_zone": "yes"})
        ),
        W + 'metadata.filter_metadata["meshlet"].prefer_same_zone must be a bool',
    ),
    "endpoint-address-does-not-parse": Bad(
        types.ENDPOINT,
        WEB,
        _set_address("address", "10.1.0.300"),
        E + 'address "10.1.0.300" is not an IP address',
    ),
    "endpoint-port-zero": Bad(
        types.ENDPOINT,
        WEB,
        _set_address("port_value", "0"),
        E + "port_value 0 is out of range 1-65535",
    ),
    "endpoint-port-too-big": Bad(
        types.ENDPOINT,
        WEB,
        _set_address("port_value", "70000"),
        E + "port_value 70000 is out of range 1-65535",
    ),
    "listener-to-a-missing-cluster": Bad(
        types.LISTENER,
        "10.96.0.10_80",
        _listener(
            _tcp_proxy(lambda p: setattr(p, "cluster", "outbound|80||gone.x.svc.cluster.local"))
        ),
        L + 'tcp_proxy points at cluster "outbound|80||gone.x.svc.cluster.local" '
        "that the sidecar does not have",
    ),
    "listener-address-does-not-parse": Bad(
        types.LISTENER,
        "10.96.0.10_80",
        _listener(lambda lis: setattr(lis.address.socket_address, "address", "web")),
        L + 'address.socket_address.address "web" is not an IP address',
    ),
    "listener-port-out-of-range": Bad(
        types.LISTENER,
        "10.96.0.10_80",
        _listener(lambda lis: setattr(lis.address.socket_address, "port_value", 70000)),
        L + "address.socket_address.port_value 70000 is out of range 1-65535",
    ),
    "listener-with-an-http-filter": Bad(
        types.LISTENER,
        "10.96.0.10_80",
        _listener(_http_filter),
        L + "filter_chains[0].filters must be a single tcp_proxy or http_connection_manager"
        " (got envoy.filters.network.http)",
    ),
    "hcm-with-inline-routes": Bad(
        types.LISTENER,
        "10.96.0.20_9090",
        _hcm(lambda m: m.route_config.SetInParent()),
        HL + " must take its routes from rds (got route_config)",
    ),
    "hcm-rds-not-over-ads": Bad(
        types.LISTENER,
        "10.96.0.20_9090",
        _hcm(lambda m: setattr(m.rds.config_source.path_config_source, "path", "/etc/rds")),
        HL + ".rds.config_source must be ADS (got path_config_source)",
    ),
    "hcm-without-route-name": Bad(
        types.LISTENER,
        "10.96.0.20_9090",
        _hcm(lambda m: setattr(m.rds, "route_config_name", "")),
        HL + ".rds.route_config_name is empty",
    ),
    "hcm-with-another-http-filter": Bad(
        types.LISTENER,
        "10.96.0.20_9090",
        _hcm(
            lambda m: m.http_filters.insert(0, hcm_pb2.HttpFilter(name="envoy.filters.http.fault"))
        ),
        HL + ".http_filters must be the router alone (got envoy.filters.http.fault, "
        "envoy.filters.http.router)",
    ),
    "hcm-with-http3": Bad(
        types.LISTENER,
        "10.96.0.20_9090",
        _hcm(lambda m: setattr(m, "codec_type", hcm_pb2.HttpConnectionManager.HTTP3)),
        HL + ".codec_type HTTP3 is not supported",
    ),
    "hcm-with-tracing": Bad(
        types.LISTENER,
        "10.96.0.20_9090",
        _hcm(lambda m: m.tracing.SetInParent()),
        HL + ".tracing is not supported",
    ),
    "hcm-upgrading-to-h2c": Bad(
        types.LISTENER,
        "10.96.0.20_9090",
        _hcm(lambda m: m.upgrade_configs.add(upgrade_type="h2c")),
        HL + '.upgrade_configs[1] "h2c" is not supported (only websocket, without filters)',
    ),
    "hcm-header-limit-out-of-range": Bad(
        types.LISTENER,
        "10.96.0.20_9090",
        _hcm(lambda m: setattr(m.max_request_headers_kb, "value", 9000)),
        HL + ".max_request_headers_kb 9000 is out of range 1-8192",
    ),
    "routes-for-two-virtual-hosts": Bad(
        types.ROUTE,
        API_ROUTES,
        _routes(lambda c: c.virtual_hosts.add(name="other", domains=["a.example"])),
        R + 'virtual_hosts must be one virtual host for the domain "*" '
        f'(got "{API_ROUTES}", "other")',
    ),
    "routes-to-a-missing-cluster": Bad(
        types.ROUTE,
        API_ROUTES,
        _catch_all(lambda r: setattr(r.route, "cluster", "nowhere")),
        R + f'{LAST} points at cluster "nowhere" that the sidecar does not have',
    ),
    "route-matching-a-path": Bad(
        types.ROUTE,
        API_ROUTES,
        _catch_all(lambda r: setattr(r.match, "prefix", "/admin")),
        R + f'{LAST}.match must match the prefix "/" (got prefix "/admin")',
    ),
    "route-matching-another-header": Bad(
        types.ROUTE,
        API_ROUTES,
        _routes(lambda c: setattr(c.virtual_hosts[0].routes[0].match.headers[0], "name", "x-user")),
        R + 'virtual_hosts[0].routes[0].match.headers[0] matches "x-user"'
        " (only :method is supported)",
    ),
    "last-route-not-a-catch-all": Bad(
        types.ROUTE,
        API_ROUTES,
        _routes(lambda c: c.virtual_hosts[0].routes.pop()),
        R
        + "virtual_hosts[0].routes[5] is the last route and must match every request (no headers)",
    ),
    "route-redirecting": Bad(
        types.ROUTE,
        API_ROUTES,
        _catch_all(lambda r: r.redirect.SetInParent()),
        R + f"{LAST} redirect is not supported (only route)",
    ),
    "route-rewriting-the-path": Bad(
        types.ROUTE,
        API_ROUTES,
        _catch_all(lambda r: setattr(r.route, "prefix_rewrite", "/v2")),
        R + f"{LAST}.route.prefix_rewrite is not supported",
    ),
    "route-retrying-after-a-reset": Bad(
        types.ROUTE,
        API_ROUTES,
        _catch_all(lambda r: setattr(r.route.retry_policy, "retry_on", "reset,connect-failure")),
        R + f'{LAST}.route.retry_policy.retry_on "reset" is not supported (meshlet retries what'
        " the server never saw, and the responses a policy names)",
    ),
    "route-retrying-a-non-status": Bad(
        types.ROUTE,
        API_ROUTES,
        _catch_all(lambda r: r.route.retry_policy.retriable_status_codes.append(42)),
        R + f"{LAST}.route.retry_policy.retriable_status_codes[0] 42 is not an HTTP status",
    ),
    "route-with-a-negative-timeout": Bad(
        types.ROUTE,
        API_ROUTES,
        _catch_all(lambda r: setattr(r.route.timeout, "seconds", -1)),
        R + f"{LAST}.route.timeout must not be negative",
    ),
    "route-hashing-a-header": Bad(
        types.ROUTE,
        API_ROUTES,
        _catch_all(lambda r: setattr(r.route.hash_policy[0].header, "header_name", "x-user")),
        R + f"{LAST}.route.hash_policy[0] header is not supported (only connection_properties"
        " source_ip)",
    ),
    "cluster-with-upstream-http3": Bad(
        types.CLUSTER,
        API,
        _http_options(lambda o: o.explicit_http_config.http3_protocol_options.SetInParent()),
        A + f'typed_extension_protocol_options["{HTTP_PROTOCOL_OPTIONS}"]'
        ".explicit_http_config.http3_protocol_options is not supported",
    ),
    "cluster-following-the-downstream-protocol": Bad(
        types.CLUSTER,
        API,
        _http_options(lambda o: o.use_downstream_protocol_config.SetInParent()),
        A + f'typed_extension_protocol_options["{HTTP_PROTOCOL_OPTIONS}"] upstream protocol'
        " use_downstream_protocol_config is not supported (explicit_http_config only)",
    ),
    "cluster-with-other-protocol-options": Bad(
        types.CLUSTER,
        API,
        _as(
            Cluster,
            lambda c: c.typed_extension_protocol_options["envoy.x"].CopyFrom(pack(Maglev())),
        ),
        A + 'typed_extension_protocol_options["envoy.x"] is not supported',
    ),
    "listener-hashing-on-filter-state": Bad(
        types.LISTENER,
        "10.96.0.10_80",
        _listener(_tcp_proxy(lambda p: setattr(p.hash_policy.add().filter_state, "key", "k"))),
        L + f"{FIRST_FILTER}.hash_policy[0] filter_state is not supported (only source_ip)",
    ),
    "listener-with-weighted-clusters": Bad(
        types.LISTENER,
        "10.96.0.10_80",
        _listener(_tcp_proxy(lambda p: p.weighted_clusters.clusters.add(name=WEB, weight=1))),
        L + f"{FIRST_FILTER} must name one cluster (weighted_clusters is not supported)",
    ),
    "listener-with-a-negative-idle-timeout": Bad(
        types.LISTENER,
        "10.96.0.10_80",
        _listener(_tcp_proxy(lambda p: setattr(p.idle_timeout, "seconds", -1))),
        L + f"{FIRST_FILTER}.idle_timeout must not be negative",
    ),
    "name-outside-the-domain": Bad(
        types.NAME_TABLE,
        "default",
        _name_table(_add_name("web.default.svc.example.org")),
        N + "name web.default.svc.example.org is outside the cluster domain cluster.local",
    ),
    "name-of-another-namespace": Bad(
        types.NAME_TABLE,
        "default",
        _name_table(_add_name("db.prod.svc.cluster.local", namespace="default")),
        N + "name db.prod.svc.cluster.local is not of namespace default",
    ),
    "name-not-lower-case": Bad(
        types.NAME_TABLE,
        "default",
        _name_table(_add_name("Web.default.svc.cluster.local")),
        N + "name Web.default.svc.cluster.local is not lower case",
    ),
    "name-not-a-dns-name": Bad(
        types.NAME_TABLE,
        "default",
        _name_table(_add_name("web_1.default.svc.cluster.local")),
        N + 'name "web_1.default.svc.cluster.local" is not a valid DNS name',
    ),
    "name-with-an-ip-that-does-not-parse": Bad(
        types.NAME_TABLE,
        "default",
        _name_table(_add_name("db.default.svc.cluster.local", "10.96.0")),
        N + 'table["db.default.svc.cluster.local"].ips[0] "10.96.0" is not an IP address',
    ),
    "srv-port-out-of-range": Bad(
        types.NAME_TABLE,
        "default",
        _name_table(_srv_port_zero),
        N + 'table["web.default.svc.cluster.local"].ports[0].port 0 is out of range 1-65535',
    ),
    # What a hostile peer tries: numbers no enum names, values out of range, empty strings.
    "lb-policy-no-enum-names": Bad(
        types.CLUSTER,
        WEB,
        _cluster_change(_enum_policy(99)),
        W + "lb_policy 99 is not a value of LbPolicy",
    ),
    "discovery-type-no-enum-names": Bad(
        types.CLUSTER,
        WEB,
        _cluster_change(lambda c: setattr(c, "type", 42)),
        W + "type 42 is not a value of DiscoveryType",
    ),
    "circuit-breaker-priority-no-enum-names": Bad(
        types.CLUSTER,
        WEB,
        _cluster_change(lambda c: setattr(c.circuit_breakers.thresholds[0], "priority", 7)),
        W + "circuit_breakers.thresholds[0].priority 7 is not a value of RoutingPriority",
    ),
    "connect-timeout-beyond-any-duration": Bad(
        types.CLUSTER,
        WEB,
        _cluster_change(lambda c: setattr(c.connect_timeout, "seconds", 10**12)),
        W + "connect_timeout (1000000000000s, 0ns) is not a valid duration",
    ),
    "outlier-interval-of-two-signs": Bad(
        types.CLUSTER,
        WEB,
        _cluster_change(lambda c: setattr(c.outlier_detection.interval, "nanos", -1)),
        W + "outlier_detection.interval (5s, -1ns) is not a valid duration",
    ),
    "metadata-service-empty": Bad(
        types.CLUSTER,
        WEB,
        _cluster_change(lambda c: c.metadata.filter_metadata["meshlet"].update({"service": ""})),
        W + 'metadata.filter_metadata["meshlet"].service "" is not a Kubernetes object name',
    ),
    "health-status-no-enum-names": Bad(
        types.ENDPOINT,
        WEB,
        _assignment(lambda a: setattr(a.endpoints[0].lb_endpoints[0], "health_status", 42)),
        f'ClusterLoadAssignment "{WEB}": endpoints[0].lb_endpoints[0].health_status 42 '
        "is not a value of HealthStatus",
    ),
    "locality-weights-over-uint32": Bad(
        types.ENDPOINT,
        WEB,
        _assignment(_heavy_locality),
        f'ClusterLoadAssignment "{WEB}": endpoints[0] has weights that add up to over 2^32 - 1',
    ),
    "endpoint-address-empty": Bad(
        types.ENDPOINT,
        WEB,
        _set_address("address", ""),
        E + 'address "" is not an IP address',
    ),
    "endpoint-address-with-a-scope": Bad(
        types.ENDPOINT,
        WEB,
        _set_address("address", "fe80::1%eth0"),
        E + 'address "fe80::1%eth0" has a scope, which no mesh address has',
    ),
    "listener-address-empty": Bad(
        types.LISTENER,
        "10.96.0.10_80",
        _listener(lambda lis: setattr(lis.address.socket_address, "address", "")),
        L + 'address.socket_address.address "" is not an IP address',
    ),
    "listener-to-an-empty-cluster-name": Bad(
        types.LISTENER,
        "10.96.0.10_80",
        _listener(_tcp_proxy(lambda p: setattr(p, "cluster", ""))),
        L + f"{FIRST_FILTER} must name one cluster (weighted_clusters is not supported)",
    ),
    "listener-idle-timeout-beyond-nanos": Bad(
        types.LISTENER,
        "10.96.0.10_80",
        _listener(_tcp_proxy(lambda p: setattr(p.idle_timeout, "nanos", 2_000_000_000))),
        L + f"{FIRST_FILTER}.idle_timeout (0s, 2000000000ns) is not a valid duration",
    ),
    "srv-port-name-not-a-label": Bad(
        types.NAME_TABLE,
        "default",
        _name_table(_srv_port_name("http.x")),
        N + 'table["web.default.svc.cluster.local"].ports[0].name "http.x" is not a DNS label',
    ),
    "app-protocol-unknown": Bad(
        types.NAME_TABLE,
        "default",
        _name_table(_app_protocol_spdy),
        N + 'table["web.default.svc.cluster.local"].ports[0].app_protocol "spdy" is not http, '
        "http2 or empty",
    ),
    "srv-name-too-long": Bad(
        types.NAME_TABLE,
        "default",
        _name_table(_long_name(headless=False)),
        N + f'table["{LONG}"].ports[0] makes an SRV name over 253 characters',
    ),
    "headless-pod-name-too-long": Bad(
        types.NAME_TABLE,
        "default",
        _name_table(_long_name(headless=True)),
        N + f'table["{LONG}"].ips[0] makes a pod name over 253 characters',
    ),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_a_bad_resource_is_rejected_with_what_and_where(case: Bad) -> None:
    state = full_state()
    message = type(served()[case.type_url][case.name])()
    message.CopyFrom(served()[case.type_url][case.name])
    case.break_it(message)
    for update in (
        delta(case.type_url, {case.name: message}),
        sotw(case.type_url, [message]),
    ):
        with pytest.raises(ValidationError) as raised:
            apply_update(state, update, DOMAIN)
        assert str(raised.value) == case.message


def test_the_name_table_of_another_cluster_domain_is_rejected() -> None:
    """What a sidecar with the wrong --cluster-domain sees: the first name out of place."""
    table = served("example.org")[types.NAME_TABLE]
    with pytest.raises(ValidationError) as raised:
        apply_update(SidecarState(), delta(types.NAME_TABLE, table), DOMAIN)
    assert str(raised.value) == (
        'NameTable "shop": name api.shop.svc.example.org is outside the cluster domain '
        "cluster.local"
    )


def test_a_resource_of_another_type_is_rejected() -> None:
    update = Update(
        types.CLUSTER, "1", [Received("x", "1", pack(ClusterLoadAssignment(cluster_name="x")))]
    )
    with pytest.raises(ValidationError) as raised:
        apply_update(SidecarState(), update, DOMAIN)
    assert str(raised.value) == f'Cluster "x": is of type {types.ENDPOINT}, not {types.CLUSTER}'


def test_a_nack_quotes_what_the_peer_chose_shortened() -> None:
    """An 8 MB name is not echoed back: names are cut with an ellipsis, messages bounded."""
    huge = "outbound|80||" + "a" * 8_000_000
    cluster = _cluster(lambda c: setattr(c.eds_cluster_config, "service_name", "b" * 10_000))
    cluster.name = huge
    for update in (delta(types.CLUSTER, {huge: cluster}), sotw(types.CLUSTER, [cluster])):
        with pytest.raises(ValidationError) as raised:
            apply_update(SidecarState(), update, DOMAIN)
        assert str(raised.value) == (
            f'Cluster "{huge[:299]}…": eds_cluster_config.service_name "{"b" * 299}…" '
            "is not supported (the load assignment must have the cluster's name)"
        )
    update = Update("type.googleapis.com/" + "x" * 100_000, "1", [])
    with pytest.raises(ValidationError) as raised:
        apply_update(SidecarState(), update, DOMAIN)
    assert len(str(raised.value)) < 400


def test_two_listeners_for_one_address_are_rejected() -> None:
    state = full_state()
    twin = Listener()
    twin.CopyFrom(served()[types.LISTENER]["10.96.0.10_80"])
    twin.name = "twin"
    with pytest.raises(ValidationError) as raised:
        apply_update(state, delta(types.LISTENER, {"twin": twin}), DOMAIN)
    assert str(raised.value) == (
        'Listener "twin": has the address 10.96.0.10:80 of listener "10.96.0.10_80"'
    )


# --- how updates change the state ----------------------------------------------


def test_a_rejected_update_leaves_the_state_as_it_was() -> None:
    state = full_state()
    before = (dict(state.clusters), dict(state.endpoints), dict(state.type_versions))
    bad = _cluster(_policies(("foo", UNKNOWN_POLICY)))
    with pytest.raises(ValidationError):
        apply_update(state, delta(types.CLUSTER, {WEB: bad}), DOMAIN)
    assert (dict(state.clusters), dict(state.endpoints), dict(state.type_versions)) == before


def test_an_accepted_update_makes_a_new_state_and_leaves_the_old_one() -> None:
    state = full_state()
    endpoints_before = dict(state.endpoints)
    assignment = ClusterLoadAssignment(cluster_name=WEB)
    after = apply_update(state, delta(types.ENDPOINT, {WEB: assignment}), DOMAIN)
    assert after.endpoints[WEB] == ()
    assert state.endpoints == endpoints_before
    # What the update did not touch is the very same object, so readers can skip work.
    assert after.name_tables is state.name_tables
    assert after.clusters is state.clusters


def test_delta_removals() -> None:
    state = full_state()
    after = apply_update(state, delta(types.CLUSTER, {}, removed=(API,)), DOMAIN)
    assert API not in after.clusters
    assert API not in after.endpoints, "a cluster's endpoints go with it"
    assert API not in after.accepted[types.ENDPOINT]
    after = apply_update(after, delta(types.LISTENER, {}, removed=("10.96.0.20_9090",)), DOMAIN)
    assert set(after.listeners) == {("10.96.0.10", 80)}
    assert after.outbound_listener is not None
    after = apply_update(after, delta(types.NAME_TABLE, {}, removed=("shop",)), DOMAIN)
    assert set(after.name_tables) == {"default"}


def test_delta_eds_removal_of_a_held_cluster_leaves_it_without_endpoints() -> None:
    state = full_state()
    after = apply_update(state, delta(types.ENDPOINT, {}, removed=(WEB,)), DOMAIN)
    assert after.endpoints[WEB] == ()
    assert WEB not in after.accepted[types.ENDPOINT]


def test_endpoints_of_a_cluster_the_sidecar_lacks_are_ignored() -> None:
    assignment = ClusterLoadAssignment(cluster_name="outbound|1||late.x.svc.cluster.local")
    state = full_state()
    after = apply_update(state, sotw(types.ENDPOINT, [assignment]), DOMAIN)
    assert after.endpoints == state.endpoints


def test_sotw_cluster_response_replaces_every_cluster() -> None:
    state = full_state()
    kept = [served()[types.CLUSTER][n] for n in (types.PASSTHROUGH_CLUSTER, WEB)]
    after = apply_update(state, sotw(types.CLUSTER, kept, "2"), DOMAIN)
    assert set(after.clusters) == {types.PASSTHROUGH_CLUSTER, WEB}
    assert set(after.endpoints) == {WEB}
    assert set(after.accepted[types.CLUSTER]) == {types.PASSTHROUGH_CLUSTER, WEB}
    assert after.type_versions[types.CLUSTER] == "2"


def test_consecutive_5xx_of_zero_turns_ejection_off_as_in_envoy() -> None:
    cluster = Cluster()
    cluster.CopyFrom(served()[types.CLUSTER][WEB])
    cluster.outlier_detection.consecutive_5xx.value = 0
    assert decode_cluster(WEB, cluster).outlier == OutlierConfig(enabled=False)


def test_routes_go_with_the_last_listener_that_names_them() -> None:
    state = full_state()
    gone = apply_update(state, delta(types.LISTENER, {}, removed=("10.96.0.20_9090",)), DOMAIN)
    assert gone.routes == {}
    assert API_ROUTES not in gone.accepted[types.ROUTE]
    late = apply_update(gone, sotw(types.ROUTE, list(served()[types.ROUTE].values())), DOMAIN)
    assert late.routes == {}, "routes nobody names are a late answer, not kept"


def test_a_route_removal_leaves_its_listener_waiting_for_routes() -> None:
    state = full_state()
    after = apply_update(state, delta(types.ROUTE, {}, removed=(API_ROUTES,)), DOMAIN)
    assert after.routes == {}
    assert ("10.96.0.20", 9090) in after.listeners
