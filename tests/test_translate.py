"""Model -> xDS resources, table-driven: what Envoy, gRPC and the sidecar will read."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.health_check_pb2 import DRAINING, HEALTHY
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_components_pb2 import Route
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpConnectionManager,
)
from envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2 import TcpProxy
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions

from meshlet._proto.meshlet.v1.nametable_pb2 import NameTable
from meshlet.model import (
    Endpoint,
    Health,
    LbPolicy,
    Mesh,
    RoutePolicy,
    Service,
    ServiceKind,
    ServicePort,
)
from meshlet.xds import types
from meshlet.xds.http import HTTP_PROTOCOL_OPTIONS
from meshlet.xds.translate import Generated, translate

DOMAIN = "cluster.local"


def by_name(generated: list[Generated], type_url: str) -> dict[str, object]:
    return {g.name: g.message for g in generated if g.type_url == type_url}


def service(**overrides: object) -> Service:
    fields: dict[str, object] = {
        "name": "web",
        "namespace": "default",
        "cluster_ips": ("10.96.0.10",),
        "ports": (
            ServicePort(
                "http",
                80,
                endpoints=(
                    Endpoint("10.1.0.1", 8080, zone="zone-a"),
                    Endpoint("10.1.0.2", 8080, Health.DRAINING, zone="zone-b"),
                ),
            ),
        ),
    }
    fields.update(overrides)
    return Service(**fields)  # type: ignore[arg-type]


def test_cluster_per_tcp_port_named_like_istio() -> None:
    svc = service(
        ports=(
            ServicePort("http", 80),
            ServicePort("metrics", 9100),
            ServicePort("dns", 53, "UDP"),
        )
    )
    clusters = by_name(translate(Mesh((svc,)), DOMAIN), types.CLUSTER)
    assert sorted(clusters) == [
        types.PASSTHROUGH_CLUSTER,
        "outbound|80||web.default.svc.cluster.local",
        "outbound|9100||web.default.svc.cluster.local",
    ]
    cluster = clusters["outbound|80||web.default.svc.cluster.local"]
    assert isinstance(cluster, Cluster)
    assert cluster.type == Cluster.EDS
    assert cluster.eds_cluster_config.eds_config.HasField("ads")
    assert cluster.connect_timeout.seconds > 0
    assert cluster.circuit_breakers.thresholds[0].max_connections.value > 0
    assert cluster.outlier_detection.consecutive_5xx.value > 0
    meta = cluster.metadata.filter_metadata["meshlet"]
    assert meta["service"] == "web" and meta["namespace"] == "default"


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (LbPolicy.ROUND_ROBIN, ["round_robin.v3.RoundRobin"]),
        (LbPolicy.LEAST_REQUEST, ["least_request.v3.LeastRequest", "round_robin.v3.RoundRobin"]),
        (LbPolicy.RANDOM, ["random.v3.Random", "round_robin.v3.RoundRobin"]),
        (LbPolicy.RING_HASH, ["ring_hash.v3.RingHash", "round_robin.v3.RoundRobin"]),
        (LbPolicy.MAGLEV, ["maglev.v3.Maglev", "round_robin.v3.RoundRobin"]),
    ],
)
def test_lb_policy_list_ends_in_round_robin(policy: LbPolicy, expected: list[str]) -> None:
    clusters = by_name(translate(Mesh((service(lb_policy=policy),)), DOMAIN), types.CLUSTER)
    cluster = clusters["outbound|80||web.default.svc.cluster.local"]
    assert isinstance(cluster, Cluster)
    assert cluster.lb_policy == Cluster.ROUND_ROBIN  # the enum left at its default
    urls = [
        p.typed_extension_config.typed_config.type_url
        for p in cluster.load_balancing_policy.policies
    ]
    prefix = "type.googleapis.com/envoy.extensions.load_balancing_policies."
    assert urls == [prefix + e for e in expected]


def test_load_assignment_localities_health_and_weights() -> None:
    cla = by_name(translate(Mesh((service(),)), DOMAIN), types.ENDPOINT)[
        "outbound|80||web.default.svc.cluster.local"
    ]
    assert isinstance(cla, ClusterLoadAssignment)
    got = [
        (
            loc.locality.zone,
            loc.load_balancing_weight.value,
            [
                (
                    e.endpoint.address.socket_address.address,
                    e.endpoint.address.socket_address.port_value,
                    e.health_status,
                )
                for e in loc.lb_endpoints
            ],
        )
        for loc in cla.endpoints
    ]
    assert got == [
        ("zone-a", 1, [("10.1.0.1", 8080, HEALTHY)]),
        ("zone-b", 1, [("10.1.0.2", 8080, DRAINING)]),
    ]


def test_endpoints_without_zone_still_have_a_locality() -> None:
    svc = service(ports=(ServicePort("http", 80, endpoints=(Endpoint("10.1.0.1", 80),)),))
    cla = by_name(translate(Mesh((svc,)), DOMAIN), types.ENDPOINT)[
        "outbound|80||web.default.svc.cluster.local"
    ]
    assert isinstance(cla, ClusterLoadAssignment)
    # gRPC rejects a locality entry whose `locality` field is absent.
    assert cla.endpoints[0].HasField("locality")
    assert cla.endpoints[0].load_balancing_weight.value == 1


def test_socket_listener_per_cluster_ip_and_port_dual_stack() -> None:
    svc = service(cluster_ips=("10.96.0.10", "fd00::10"), ports=(ServicePort("redis", 80),))
    listeners = by_name(translate(Mesh((svc,)), DOMAIN), types.LISTENER)
    for name, ip in (("10.96.0.10_80", "10.96.0.10"), ("fd00::10_80", "fd00::10")):
        listener = listeners[name]
        assert isinstance(listener, Listener)
        assert listener.address.socket_address.address == ip
        assert listener.address.socket_address.port_value == 80
        assert listener.bind_to_port.value is False
        proxy = TcpProxy()
        assert listener.filter_chains[0].filters[0].typed_config.Unpack(proxy)
        assert proxy.cluster == "outbound|80||web.default.svc.cluster.local"
        assert not proxy.hash_policy


def test_client_ip_affinity_hashes_the_source_ip() -> None:
    svc = service(
        client_ip_affinity=True, lb_policy=LbPolicy.RING_HASH, ports=(ServicePort("redis", 80),)
    )
    generated = translate(Mesh((svc,)), DOMAIN)
    listener = by_name(generated, types.LISTENER)["10.96.0.10_80"]
    assert isinstance(listener, Listener)
    proxy = TcpProxy()
    listener.filter_chains[0].filters[0].typed_config.Unpack(proxy)
    assert proxy.hash_policy[0].HasField("source_ip")
    api = by_name(generated, types.LISTENER)["web.default.svc.cluster.local:80"]
    assert isinstance(api, Listener)
    manager = HttpConnectionManager()
    api.api_listener.api_listener.Unpack(manager)
    route = manager.route_config.virtual_hosts[0].routes[0].route
    assert route.hash_policy[0].filter_state.key == "io.grpc.channel_id"


def test_virtual_outbound_listener_and_passthrough() -> None:
    generated = translate(Mesh(()), DOMAIN, outbound_port=15999)
    listener = by_name(generated, types.LISTENER)[types.OUTBOUND_LISTENER]
    assert isinstance(listener, Listener)
    assert listener.use_original_dst.value is True
    assert listener.address.socket_address.port_value == 15999
    passthrough = by_name(generated, types.CLUSTER)[types.PASSTHROUGH_CLUSTER]
    assert isinstance(passthrough, Cluster)
    assert passthrough.type == Cluster.ORIGINAL_DST


def test_api_listener_is_on_demand_and_routes_to_the_cluster() -> None:
    generated = translate(Mesh((service(),)), DOMAIN)
    [api] = [
        g
        for g in generated
        if g.name == "web.default.svc.cluster.local:80" and g.type_url == types.LISTENER
    ]
    assert api.on_demand
    assert not any(g.on_demand for g in generated if g is not api), "routes go to every sidecar"
    manager = HttpConnectionManager()
    assert isinstance(api.message, Listener)
    assert api.message.api_listener.api_listener.Unpack(manager)
    assert manager.route_config.virtual_hosts[0].domains == ["*"]
    route = manager.route_config.virtual_hosts[0].routes[0]
    assert route.match.prefix == ""
    assert route.route.cluster == "outbound|80||web.default.svc.cluster.local"
    assert manager.http_filters[-1].name == "envoy.filters.http.router"


WEB_CLUSTER = "outbound|80||web.default.svc.cluster.local"
WEB_ROUTES = "web.default.svc.cluster.local:80"


@pytest.mark.parametrize(
    ("port", "http2"),
    [
        (ServicePort("http", 80), False),
        (ServicePort("web", 80, app_protocol="kubernetes.io/h2c"), True),
        (ServicePort("grpc-api", 80), True),
    ],
)
def test_an_http_port_takes_routes_over_rds_and_names_its_upstream_protocol(
    port: ServicePort, http2: bool
) -> None:
    generated = translate(
        Mesh((service(ports=(port,), cluster_ips=("10.96.0.10", "fd00::10")),)), DOMAIN
    )
    for name in ("10.96.0.10_80", "fd00::10_80"):
        listener = by_name(generated, types.LISTENER)[name]
        assert isinstance(listener, Listener)
        [hcm_filter] = listener.filter_chains[0].filters
        assert hcm_filter.name == "envoy.filters.network.http_connection_manager"
        manager = HttpConnectionManager()
        assert hcm_filter.typed_config.Unpack(manager)
        assert manager.rds.route_config_name == WEB_ROUTES, "one per service port, for its VIPs"
        assert manager.rds.config_source.HasField("ads")
        assert [f.name for f in manager.http_filters] == ["envoy.filters.http.router"]
    assert list(by_name(generated, types.ROUTE)) == [WEB_ROUTES]
    cluster = by_name(generated, types.CLUSTER)[WEB_CLUSTER]
    assert isinstance(cluster, Cluster)
    options = HttpProtocolOptions()
    assert cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options") is http2
    assert options.explicit_http_config.HasField("http_protocol_options") is not http2


def test_a_tcp_port_keeps_its_tcp_proxy_and_no_protocol_options() -> None:
    svc = service(ports=(ServicePort("http", 80, app_protocol="mysql"),))
    generated = translate(Mesh((svc,)), DOMAIN)
    listener = by_name(generated, types.LISTENER)["10.96.0.10_80"]
    assert isinstance(listener, Listener)
    assert listener.filter_chains[0].filters[0].name == "envoy.filters.network.tcp_proxy"
    assert by_name(generated, types.ROUTE) == {}
    cluster = by_name(generated, types.CLUSTER)[WEB_CLUSTER]
    assert isinstance(cluster, Cluster)
    assert not cluster.typed_extension_protocol_options


def _routes(policy: RoutePolicy, **overrides: object) -> list[Route]:
    svc = service(route_policy=policy, **overrides)
    config = by_name(translate(Mesh((svc,)), DOMAIN), types.ROUTE)[WEB_ROUTES]
    assert isinstance(config, RouteConfiguration)
    [host] = config.virtual_hosts
    assert list(host.domains) == ["*"]
    return list(host.routes)


def test_routes_retry_what_the_server_never_saw_and_a_503_only_for_idempotent_methods() -> None:
    routes = _routes(RoutePolicy())
    methods = [r.match.headers[0].string_match.exact for r in routes[:-1]]
    assert methods == ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]
    for route in routes[:-1]:
        retry = route.route.retry_policy
        assert retry.retry_on == (
            "connect-failure,refused-stream,reset-before-request,retriable-status-codes,unavailable"
        )
        assert list(retry.retriable_status_codes) == [503]
    last = routes[-1]
    assert not last.match.headers and last.match.prefix == "/"
    assert last.route.retry_policy.retry_on == "connect-failure,refused-stream,reset-before-request"
    assert not last.route.retry_policy.retriable_status_codes
    for route in routes:
        assert route.route.cluster == WEB_CLUSTER
        assert (
            route.route.HasField("timeout")
            and route.route.timeout.ToTimedelta().total_seconds() == 0
        ), "no route timeout: Envoy's 15 s default would cut streams"
        assert route.route.retry_policy.num_retries.value == 2
        assert [p.name for p in route.route.retry_policy.retry_host_predicate] == [
            "envoy.retry_host_predicates.previous_hosts"
        ]


def test_route_policy_from_the_service() -> None:
    policy = RoutePolicy(
        retries=4, per_try_timeout_seconds=0.5, timeout_seconds=3.0, idempotent=True
    )
    [route] = _routes(policy, client_ip_affinity=True)
    assert route.route.timeout.ToTimedelta().total_seconds() == 3.0
    retry = route.route.retry_policy
    assert retry.num_retries.value == 4
    assert retry.per_try_timeout.ToTimedelta().total_seconds() == 0.5
    assert "unavailable" in retry.retry_on.split(","), "every method is idempotent"
    assert route.route.hash_policy[0].connection_properties.source_ip
    [route] = _routes(RoutePolicy(retries=0))
    assert not route.route.HasField("retry_policy")


@pytest.mark.parametrize(
    ("port", "by_default", "expected"),
    [
        (ServicePort("grpc", 80), True, "least_request.v3.LeastRequest"),
        (ServicePort("http", 80), True, "least_request.v3.LeastRequest"),
        (ServicePort("redis", 80), True, "round_robin.v3.RoundRobin"),
        (ServicePort("grpc", 80), False, "round_robin.v3.RoundRobin"),
    ],
)
def test_an_http_port_without_a_chosen_policy_balances_by_least_request(
    port: ServicePort, by_default: bool, expected: str
) -> None:
    svc = service(ports=(port,), lb_policy_default=by_default)
    cluster = by_name(translate(Mesh((svc,)), DOMAIN), types.CLUSTER)[WEB_CLUSTER]
    assert isinstance(cluster, Cluster)
    first = cluster.load_balancing_policy.policies[0].typed_extension_config.typed_config
    assert first.type_url.endswith(expected)


def test_headless_has_cluster_but_no_vip_listener() -> None:
    svc = service(kind=ServiceKind.HEADLESS, cluster_ips=())
    generated = translate(Mesh((svc,)), DOMAIN)
    assert "outbound|80||web.default.svc.cluster.local" in by_name(generated, types.CLUSTER)
    listeners = by_name(generated, types.LISTENER)
    assert not [n for n in listeners if n.endswith("_80")]


def test_external_name_has_no_cluster() -> None:
    svc = Service("db", "default", ServiceKind.EXTERNAL_NAME, external_name="db.example.com.")
    generated = translate(Mesh((svc,)), DOMAIN)
    assert list(by_name(generated, types.CLUSTER)) == [types.PASSTHROUGH_CLUSTER]


def name_table(*services: Service) -> NameTable:
    """The one namespace's table (every service given is of one namespace)."""
    (table,) = by_name(translate(Mesh(services), DOMAIN), types.NAME_TABLE).values()
    assert isinstance(table, NameTable)
    return table


def test_name_table_cluster_ip_service() -> None:
    svc = service(
        cluster_ips=("10.96.0.10", "fd00::10"),
        ports=(
            ServicePort("http", 80),
            ServicePort("dns", 53, "UDP"),
            ServicePort("api", 9090, app_protocol="grpc"),
        ),
    )
    info = name_table(svc).table["web.default.svc.cluster.local"]
    assert list(info.ips) == ["10.96.0.10", "fd00::10"]
    assert [(p.name, p.port, p.protocol, p.app_protocol) for p in info.ports] == [
        ("http", 80, "tcp", "http"),  # by its name's prefix
        ("dns", 53, "udp", ""),
        ("api", 9090, "tcp", "http2"),  # by its appProtocol
    ]
    assert (info.namespace, info.service, info.headless, info.cname) == (
        "default",
        "web",
        False,
        "",
    )


def test_name_table_headless_ready_pods_and_hostnames() -> None:
    pods = (
        Endpoint("10.1.0.1", 0, hostname="web-0"),
        Endpoint("10.1.0.2", 0, Health.DRAINING, hostname="web-1"),
        Endpoint("10.1.0.3", 0),
    )
    svc = service(kind=ServiceKind.HEADLESS, cluster_ips=(), pod_addresses=pods)
    table = name_table(svc).table
    info = table["web.default.svc.cluster.local"]
    assert info.headless
    assert list(info.ips) == ["10.1.0.1", "10.1.0.3"]
    assert list(table["web-0.web.default.svc.cluster.local"].ips) == ["10.1.0.1"]
    assert "web-1.web.default.svc.cluster.local" not in table


def test_name_table_external_name_is_a_cname() -> None:
    svc = Service("DB", "Prod", ServiceKind.EXTERNAL_NAME, external_name="DB.Example.com.")
    info = name_table(svc).table["db.prod.svc.cluster.local"]
    assert info.cname == "db.example.com"
    assert not info.ips
