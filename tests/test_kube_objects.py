"""Services and EndpointSlices (plain dicts, as kubectl prints them) into the Mesh."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest

from meshlet.controlplane.sources.kube_objects import (
    ManifestError,
    PortSpec,
    ServiceSpec,
    SliceEndpoint,
    SlicePort,
    SliceSpec,
    join_service,
    parse_endpoint_slice,
    parse_service,
)
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

HEALTHY, DRAINING = Health.HEALTHY, Health.DRAINING

# --- Builders: the smallest objects the API server accepts, changed per case ----


def service(
    name: str = "web",
    namespace: str | None = "shop",
    *,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    spec.setdefault("clusterIP", "10.96.0.20")
    spec.setdefault("ports", [{"name": "http", "port": 80, "targetPort": 8080}])
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def endpoint(
    address: str, zone: str = "", hostname: str = "", **conditions: bool
) -> dict[str, Any]:
    ep: dict[str, Any] = {"addresses": [address], "conditions": conditions}
    if zone:
        ep["zone"] = zone
    if hostname:
        ep["hostname"] = hostname
    return ep


def endpoint_slice(
    name: str = "web-abc12",
    service_name: str | None = "web",
    *,
    namespace: str = "shop",
    address_type: str = "IPv4",
    ports: list[dict[str, Any]] | None = None,
    endpoints: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    labels = {} if service_name is None else {"kubernetes.io/service-name": service_name}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "addressType": address_type,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}] if ports is None else ports,
        "endpoints": [endpoint("10.1.0.1")] if endpoints is None else endpoints,
    }


def build_mesh(services: list[ServiceSpec], slices: list[SliceSpec]) -> Mesh:
    """Each Service joined to its slices, as the registry joins them one at a time."""
    joined = [
        join_service(svc, [s for s in slices if (s.namespace, s.service_name) == svc_id])
        for svc in services
        for svc_id in ((svc.namespace, svc.name),)
    ]
    return Mesh(tuple(sorted(joined, key=lambda s: (s.namespace, s.name))))


def mesh_of(services: list[dict[str, Any]], slices: list[dict[str, Any]]) -> Mesh:
    return build_mesh(
        [parse_service(s) for s in services], [parse_endpoint_slice(s) for s in slices]
    )


def only_service(services: list[dict[str, Any]], slices: list[dict[str, Any]]) -> Service:
    (svc,) = mesh_of(services, slices).services
    return svc


def with_(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of obj with the dotted path set (`spec.ports.0.port`); `...` deletes it."""
    obj = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node: Any = obj
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if isinstance(node, list):
        node[int(last)] = value
    elif value is ...:
        del node[last]
    else:
        node[last] = value
    return obj


# --- parse_service ---------------------------------------------------------------


def test_service_defaults() -> None:
    spec = parse_service(service(namespace=None))
    assert spec.namespace == "default"
    assert spec.kind is ServiceKind.CLUSTER_IP
    assert spec.cluster_ips == ("10.96.0.20",)
    assert spec.ports == (PortSpec("http", 80, "TCP", 8080),)
    assert spec.lb_policy is LbPolicy.ROUND_ROBIN
    assert not spec.client_ip_affinity
    assert not spec.prefer_same_zone
    assert not spec.publish_not_ready


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        pytest.param(
            [{"port": 80}],
            (PortSpec("", 80, "TCP", 80),),
            id="targetPort absent defaults to the port",
        ),
        pytest.param(
            [{"port": 80, "targetPort": "http"}],
            (PortSpec("", 80, "TCP", "http"),),
            id="named targetPort",
        ),
        pytest.param(
            [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
            ],
            (
                PortSpec("dns", 53, "UDP", 53),
                PortSpec("dns-tcp", 53, "TCP", 53),
                PortSpec("metrics", 9153, "TCP", 9153),
            ),
            id="several ports, one number over UDP and TCP",
        ),
        pytest.param(
            [
                {"name": "api", "port": 9090, "appProtocol": "kubernetes.io/h2c"},
                {"name": "web", "port": 80, "appProtocol": "http"},
            ],
            (
                PortSpec("api", 9090, "TCP", 9090, "kubernetes.io/h2c"),
                PortSpec("web", 80, "TCP", 80, "http"),
            ),
            id="appProtocol, plain and prefixed",
        ),
        pytest.param(
            [{"name": "assoc", "port": 3868, "protocol": "SCTP"}],
            (PortSpec("assoc", 3868, "SCTP", 3868),),
            id="SCTP",
        ),
    ],
)
def test_service_ports(ports: list[dict[str, Any]], expected: tuple[PortSpec, ...]) -> None:
    assert parse_service(service(ports=ports)).ports == expected


@pytest.mark.parametrize(
    ("spec", "kind", "cluster_ips"),
    [
        pytest.param({"clusterIP": "10.96.0.20"}, ServiceKind.CLUSTER_IP, ("10.96.0.20",), id="v4"),
        pytest.param(
            {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00:10:96::0014"]},
            ServiceKind.CLUSTER_IP,
            ("10.96.0.20", "fd00:10:96::14"),
            id="dual-stack, IPv6 normalized",
        ),
        pytest.param(
            {"clusterIP": "fd00:10:96::14", "clusterIPs": ["fd00:10:96::14", "10.96.0.20"]},
            ServiceKind.CLUSTER_IP,
            ("fd00:10:96::14", "10.96.0.20"),
            id="dual-stack, IPv6 first",
        ),
        pytest.param(
            {"clusterIP": "", "clusterIPs": ["fd00:10:96::14"]},
            ServiceKind.CLUSTER_IP,
            ("fd00:10:96::14",),
            id="clusterIPs only",
        ),
        pytest.param({"clusterIP": ""}, ServiceKind.CLUSTER_IP, (), id="not allocated"),
        pytest.param({"type": "NodePort"}, ServiceKind.CLUSTER_IP, ("10.96.0.20",), id="NodePort"),
        pytest.param(
            {"type": "LoadBalancer"}, ServiceKind.CLUSTER_IP, ("10.96.0.20",), id="LoadBalancer"
        ),
        pytest.param(
            {"clusterIP": "None", "clusterIPs": ["None"]}, ServiceKind.HEADLESS, (), id="headless"
        ),
        pytest.param(
            {"clusterIP": "None", "ports": []}, ServiceKind.HEADLESS, (), id="headless, no ports"
        ),
    ],
)
def test_service_kind(spec: dict[str, Any], kind: ServiceKind, cluster_ips: tuple[str]) -> None:
    parsed = parse_service(service(**spec))
    assert (parsed.kind, parsed.cluster_ips) == (kind, cluster_ips)


def test_external_name() -> None:
    parsed = parse_service(
        service(type="ExternalName", externalName="db.example.com.", clusterIP="", ports=[])
    )
    assert parsed.kind is ServiceKind.EXTERNAL_NAME
    assert parsed.external_name == "db.example.com"
    assert parsed.cluster_ips == ()


@pytest.mark.parametrize(
    ("annotation", "affinity", "policy", "client_ip"),
    [
        pytest.param(None, None, LbPolicy.ROUND_ROBIN, False, id="default"),
        pytest.param("round-robin", None, LbPolicy.ROUND_ROBIN, False, id="round-robin"),
        pytest.param("least-request", None, LbPolicy.LEAST_REQUEST, False, id="least-request"),
        pytest.param("random", None, LbPolicy.RANDOM, False, id="random"),
        pytest.param("ring-hash", None, LbPolicy.RING_HASH, False, id="ring-hash"),
        pytest.param("maglev", None, LbPolicy.MAGLEV, False, id="maglev"),
        pytest.param(None, "None", LbPolicy.ROUND_ROBIN, False, id="affinity None"),
        pytest.param(None, "ClientIP", LbPolicy.RING_HASH, True, id="ClientIP -> ring hash"),
        pytest.param("maglev", "ClientIP", LbPolicy.MAGLEV, True, id="ClientIP + annotation"),
    ],
)
def test_lb_policy(
    annotation: str | None, affinity: str | None, policy: LbPolicy, client_ip: bool
) -> None:
    annotations = None if annotation is None else {"meshlet.io/lb-policy": annotation}
    spec = {} if affinity is None else {"sessionAffinity": affinity}
    parsed = parse_service(service(annotations=annotations, **spec))
    assert (parsed.lb_policy, parsed.client_ip_affinity) == (policy, client_ip)
    assert parsed.lb_policy_default is (annotation is None)


@pytest.mark.parametrize(
    ("value", "prefer"),
    [(None, False), ("PreferClose", True), ("PreferSameZone", True), ("SomethingNew", False)],
)
def test_traffic_distribution(value: str | None, prefer: bool) -> None:
    spec: dict[str, Any] = {} if value is None else {"trafficDistribution": value}
    assert parse_service(service(**spec)).prefer_same_zone is prefer


@pytest.mark.parametrize(
    ("annotations", "policy"),
    [
        pytest.param(None, RoutePolicy(), id="defaults"),
        pytest.param(
            {
                "meshlet.io/retries": "0",
                "meshlet.io/timeout": "1m30s",
                "meshlet.io/per-try-timeout": "250ms",
                "meshlet.io/idempotent": "true",
            },
            RoutePolicy(0, 0.25, 90.0, True),
            id="all four",
        ),
        pytest.param({"meshlet.io/timeout": "0"}, RoutePolicy(), id="timeout 0 is none"),
        pytest.param({"meshlet.io/per-try-timeout": "1.5s"}, RoutePolicy(2, 1.5), id="no timeout"),
    ],
)
def test_route_policy_annotations(annotations: dict[str, str] | None, policy: RoutePolicy) -> None:
    parsed = parse_service(service(annotations=annotations))
    assert parsed.route_policy == policy
    assert join_service(parsed, ()).route_policy == policy


def test_publish_not_ready_addresses() -> None:
    assert parse_service(service(publishNotReadyAddresses=True)).publish_not_ready


BASE = service()


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (with_(BASE, "metadata.name", ...), "metadata.name is missing"),
        (
            with_(BASE, "metadata.name", "Web"),
            'metadata.name "Web" is not a DNS-1035 label',
        ),
        (
            with_(BASE, "metadata.name", "1web"),
            'metadata.name "1web" is not a DNS-1035 label',
        ),
        (
            with_(BASE, "metadata.namespace", "Shop_1"),
            'metadata.namespace "Shop_1" is not a DNS-1123 label',
        ),
        (with_(BASE, "metadata", ["web"]), "metadata must be a mapping, not a list"),
        (
            with_(BASE, "spec.ports.0.port", 70000),
            "spec.ports[0].port 70000 is out of range 1-65535",
        ),
        (with_(BASE, "spec.ports.0.port", 0), "spec.ports[0].port 0 is out of range 1-65535"),
        (with_(BASE, "spec.ports.0.port", "80"), 'spec.ports[0].port must be a number, not "80"'),
        (with_(BASE, "spec.ports.0.port", True), "spec.ports[0].port must be a number, not true"),
        (with_(BASE, "spec.ports.0", {"name": "http"}), "spec.ports[0].port is missing"),
        (
            with_(BASE, "spec.ports.0.targetPort", 65536),
            "spec.ports[0].targetPort 65536 is out of range 1-65535",
        ),
        (
            with_(BASE, "spec.ports.0.targetPort", "http_alt"),
            'spec.ports[0].targetPort "http_alt" is neither a number 1-65535 nor a port name'
            " (at most 15 lowercase letters, digits and '-')",
        ),
        (
            with_(BASE, "spec.ports.0.targetPort", "8080"),
            'spec.ports[0].targetPort "8080" is a string: write a number without quotes',
        ),
        (
            with_(BASE, "spec.ports.0.protocol", "HTTP"),
            'spec.ports[0].protocol "HTTP" is not one of TCP, UDP, SCTP',
        ),
        (
            with_(BASE, "spec.ports.0.appProtocol", "h2 c"),
            'spec.ports[0].appProtocol "h2 c" is not a qualified name'
            ' (such as "grpc", "http" or "kubernetes.io/h2c")',
        ),
        (
            with_(BASE, "spec.ports.0.appProtocol", "/grpc"),
            'spec.ports[0].appProtocol "/grpc" is not a qualified name'
            ' (such as "grpc", "http" or "kubernetes.io/h2c")',
        ),
        (
            with_(BASE, "spec.ports.0.appProtocol", 2),
            "spec.ports[0].appProtocol must be a string, not 2",
        ),
        (
            with_(BASE, "spec.ports.0.name", "HTTP"),
            'spec.ports[0].name "HTTP" is not a valid DNS-1123 label',
        ),
        (
            with_(BASE, "spec.ports", [{"name": "a", "port": 80}, {"name": "a", "port": 81}]),
            'spec.ports[1].name "a" is a duplicate of spec.ports[0].name',
        ),
        (
            with_(BASE, "spec.ports", [{"name": "a", "port": 80}, {"name": "b", "port": 80}]),
            "spec.ports[1] duplicates port 80/TCP of spec.ports[0]",
        ),
        (
            with_(BASE, "spec.ports", [{"name": "a", "port": 80}, {"port": 81}]),
            "spec.ports[1].name is required when a service has more than one port",
        ),
        (
            with_(BASE, "spec.ports", []),
            "spec.ports is empty: a ClusterIP service needs at least one port",
        ),
        (
            with_(with_(BASE, "spec.ports", ...), "spec.type", "LoadBalancer"),
            "spec.ports is empty: a LoadBalancer service needs at least one port",
        ),
        (with_(BASE, "spec.ports", {"http": 80}), "spec.ports must be a list, not a mapping"),
        (
            with_(BASE, "spec.clusterIP", "10.96.0.300"),
            'spec.clusterIP "10.96.0.300" is not an IP address',
        ),
        (
            with_(BASE, "spec.clusterIPs", ["10.96.0.21"]),
            'spec.clusterIPs[0] "10.96.0.21" does not match spec.clusterIP "10.96.0.20"',
        ),
        (
            with_(BASE, "spec.clusterIPs", ["10.96.0.20", "10.96.0.21"]),
            "spec.clusterIPs 10.96.0.20, 10.96.0.21 must be one IPv4 and one IPv6 address"
            " (dual-stack)",
        ),
        (
            with_(BASE, "spec.clusterIPs", ["10.96.0.20", "fd00::1", "fd00::2"]),
            "spec.clusterIPs has 3 addresses, at most 2 are allowed",
        ),
        (
            with_(BASE, "spec.clusterIPs", ["10.96.0.20", "fd00::zz"]),
            'spec.clusterIPs[1] "fd00::zz" is not an IP address',
        ),
        (
            with_(with_(BASE, "spec.clusterIP", "None"), "spec.clusterIPs", ["None", "fd00::1"]),
            'spec.clusterIPs: "None" must be the only value',
        ),
        (
            with_(with_(BASE, "spec.clusterIP", "None"), "spec.type", "NodePort"),
            'spec.clusterIP "None" (headless) is not allowed for NodePort',
        ),
        (
            with_(with_(BASE, "spec.type", "ExternalName"), "spec.clusterIP", ""),
            "spec.externalName is required for type ExternalName",
        ),
        (
            with_(with_(BASE, "spec.type", "ExternalName"), "spec.externalName", "db.example.com"),
            "spec.clusterIP must be empty for type ExternalName",
        ),
        (
            with_(
                with_(with_(BASE, "spec.type", "ExternalName"), "spec.clusterIP", ""),
                "spec.externalName",
                "db_1.example.com",
            ),
            'spec.externalName "db_1.example.com" is not a valid DNS name',
        ),
        (
            with_(BASE, "spec.type", "Internal"),
            'spec.type "Internal" is not one of ClusterIP, NodePort, LoadBalancer, ExternalName',
        ),
        (
            with_(BASE, "spec.sessionAffinity", "Cookie"),
            'spec.sessionAffinity "Cookie" is not one of None, ClientIP',
        ),
        (
            with_(BASE, "spec.publishNotReadyAddresses", "yes please"),
            'spec.publishNotReadyAddresses must be true or false, not "yes please"',
        ),
        (
            service(annotations={"meshlet.io/lb-policy": "fastest"}),
            'metadata.annotations["meshlet.io/lb-policy"] "fastest" is not one of'
            " round-robin, least-request, random, ring-hash, maglev",
        ),
        (
            service(annotations={"meshlet.io/lb-policy": 3}),  # type: ignore[dict-item]
            'metadata.annotations["meshlet.io/lb-policy"] must be a string, not 3',
        ),
        (
            service(annotations={"meshlet.io/retries": "many"}),
            'metadata.annotations["meshlet.io/retries"] "many" is not a number 0-10',
        ),
        (
            service(annotations={"meshlet.io/retries": "11"}),
            'metadata.annotations["meshlet.io/retries"] "11" is not a number 0-10',
        ),
        (
            service(annotations={"meshlet.io/timeout": "10"}),
            'metadata.annotations["meshlet.io/timeout"] "10" is not a duration such as "500ms"'
            ' or "2s"',
        ),
        (
            service(annotations={"meshlet.io/timeout": "25h"}),
            'metadata.annotations["meshlet.io/timeout"] "25h" is over a day; "0" means no limit',
        ),
        (
            service(annotations={"meshlet.io/timeout": "1s", "meshlet.io/per-try-timeout": "2s"}),
            'metadata.annotations["meshlet.io/per-try-timeout"] is longer than'
            ' metadata.annotations["meshlet.io/timeout"]',
        ),
        (
            service(annotations={"meshlet.io/idempotent": "yes"}),
            'metadata.annotations["meshlet.io/idempotent"] "yes" must be "true" or "false"',
        ),
        (
            service(annotations={"meshlet.io/retries": 2}),  # type: ignore[dict-item]
            'metadata.annotations["meshlet.io/retries"] must be a string, not 2',
        ),
    ],
)
def test_invalid_service(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_service(obj)
    assert caught.value.message == message
    assert str(caught.value) == message  # no location: the loader adds it


def test_manifest_error_str_with_location() -> None:
    error = ManifestError("spec.ports[0].port 70000 is out of range 1-65535", "web.yaml")
    assert str(error) == "web.yaml: spec.ports[0].port 70000 is out of range 1-65535"
    assert isinstance(error, ValueError)


# --- parse_endpoint_slice --------------------------------------------------------


def test_slice_parsed() -> None:
    parsed = parse_endpoint_slice(
        endpoint_slice(
            ports=[{"name": "http", "port": 8080}, {"port": 9090, "protocol": "UDP", "name": None}],
            endpoints=[
                endpoint("10.1.0.1", zone="z1", hostname="web-0"),
                {"addresses": ["10.1.0.2", "10.1.0.3"]},
            ],
        )
    )
    assert (parsed.name, parsed.namespace, parsed.service_name) == ("web-abc12", "shop", "web")
    assert parsed.ports == (SlicePort("http", 8080, "TCP"), SlicePort("", 9090, "UDP"))
    assert parsed.endpoints == (
        SliceEndpoint(("10.1.0.1",), True, True, False, "z1", "web-0"),
        SliceEndpoint(("10.1.0.2", "10.1.0.3"), True, True, False),
    )


@pytest.mark.parametrize(
    ("conditions", "ready", "serving", "terminating"),
    [
        pytest.param({}, True, True, False, id="all nil: ready"),
        pytest.param({"ready": False}, False, False, False, id="serving nil follows ready"),
        pytest.param({"ready": True}, True, True, False, id="ready"),
        pytest.param(
            {"ready": False, "serving": True, "terminating": True}, False, True, True, id="draining"
        ),
        pytest.param({"serving": False}, True, False, False, id="explicit serving wins"),
    ],
)
def test_slice_condition_defaults(
    conditions: dict[str, bool], ready: bool, serving: bool, terminating: bool
) -> None:
    obj = endpoint_slice(endpoints=[{"addresses": ["10.1.0.1"], "conditions": conditions}])
    (ep,) = parse_endpoint_slice(obj).endpoints
    assert (ep.ready, ep.serving, ep.terminating) == (ready, serving, terminating)


def test_a_slice_at_the_api_servers_caps_is_read() -> None:
    addresses = [f"10.1.0.{n}" for n in range(1, 101)]
    endpoints = [{"addresses": addresses}] * 1000
    spec = parse_endpoint_slice(endpoint_slice(endpoints=endpoints))
    assert len(spec.endpoints) == 1000
    assert spec.endpoints[0].addresses == tuple(addresses)


def test_slice_without_ports_and_endpoints() -> None:
    obj = endpoint_slice()
    obj["ports"] = None
    del obj["endpoints"]
    parsed = parse_endpoint_slice(obj)
    assert (parsed.ports, parsed.endpoints) == ((), ())


def test_slice_port_without_number_is_unrestricted() -> None:
    parsed = parse_endpoint_slice(endpoint_slice(ports=[{"name": "http", "port": None}]))
    assert parsed.ports == ()


def test_fqdn_slice_is_ignored_not_an_error() -> None:
    obj = endpoint_slice(address_type="FQDN", endpoints=[{"addresses": ["db.example.com"]}])
    parsed = parse_endpoint_slice(obj)
    assert (parsed.address_type, parsed.endpoints) == ("FQDN", ())


def test_ipv6_slice() -> None:
    parsed = parse_endpoint_slice(
        endpoint_slice(address_type="IPv6", endpoints=[endpoint("fd00:1::0a")])
    )
    assert parsed.endpoints[0].addresses == ("fd00:1::a",)


SLICE = endpoint_slice()


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (
            endpoint_slice(service_name=None),
            'metadata.labels["kubernetes.io/service-name"] is missing: it names the slice\'s'
            " Service",
        ),
        (with_(SLICE, "metadata.name", ...), "metadata.name is missing"),
        (
            with_(SLICE, "metadata.name", "web_abc"),
            'metadata.name "web_abc" is not a DNS-1123 subdomain',
        ),
        (with_(SLICE, "addressType", ...), "addressType is missing"),
        (
            with_(SLICE, "addressType", "IPv5"),
            'addressType "IPv5" is not one of IPv4, IPv6, FQDN',
        ),
        (
            endpoint_slice(endpoints=[endpoint("10.1.0.1"), endpoint("fd00::1")]),
            'endpoints[1].addresses[0] "fd00::1" is not an IPv4 address',
        ),
        (
            endpoint_slice(address_type="IPv6", endpoints=[endpoint("10.1.0.1")]),
            'endpoints[0].addresses[0] "10.1.0.1" is not an IPv6 address',
        ),
        (
            endpoint_slice(endpoints=[endpoint("10.1.0.256")]),
            'endpoints[0].addresses[0] "10.1.0.256" is not an IP address',
        ),
        (
            endpoint_slice(endpoints=[{"addresses": []}]),
            "endpoints[0].addresses is empty: an endpoint needs an address",
        ),
        (
            endpoint_slice(endpoints=[{"addresses": ["10.1.0.1"], "conditions": {"ready": "yes"}}]),
            'endpoints[0].conditions.ready must be true or false, not "yes"',
        ),
        (
            endpoint_slice(endpoints=[endpoint("10.1.0.1", hostname="Web.0")]),
            'endpoints[0].hostname "Web.0" is not a valid DNS-1123 label',
        ),
        (
            endpoint_slice(ports=[{"name": "http", "port": 99999}]),
            "ports[0].port 99999 is out of range 1-65535",
        ),
        (
            endpoint_slice(ports=[{"name": "http", "port": 80}, {"name": "http", "port": 81}]),
            'ports[1].name "http" is a duplicate of ports[0].name',
        ),
        (
            endpoint_slice(ports=[{"name": "http", "port": 80, "protocol": "QUIC"}]),
            'ports[0].protocol "QUIC" is not one of TCP, UDP, SCTP',
        ),
        (with_(SLICE, "endpoints", "10.1.0.1"), 'endpoints must be a list, not "10.1.0.1"'),
        # The API server's caps, before any entry is looked at.
        (
            endpoint_slice(endpoints=[endpoint("10.1.0.1")] * 1001),
            "endpoints has 1,001 entries, at most 1,000 are allowed",
        ),
        (
            endpoint_slice(address_type="FQDN", endpoints=[endpoint("a.example")] * 1001),
            "endpoints has 1,001 entries, at most 1,000 are allowed",
        ),
        (
            endpoint_slice(endpoints=[{"addresses": ["10.1.0.1"] * 101}]),
            "endpoints[0].addresses has 101 entries, at most 100 are allowed",
        ),
        (
            endpoint_slice(ports=[{"name": "http", "port": 80}] * 20_001),
            "ports has 20,001 entries, at most 20,000 are allowed",
        ),
    ],
)
def test_invalid_slice(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_endpoint_slice(obj)
    assert caught.value.message == message


# --- build_mesh: the join ----------------------------------------------------


def test_simple_join() -> None:
    svc = only_service([service()], [endpoint_slice()])
    assert svc == Service(
        name="web",
        namespace="shop",
        kind=ServiceKind.CLUSTER_IP,
        cluster_ips=("10.96.0.20",),
        ports=(ServicePort("http", 80, "TCP", (Endpoint("10.1.0.1", 8080),)),),
        # No meshlet.io/lb-policy: the http port will balance by least request.
        lb_policy_default=True,
        pod_addresses=(Endpoint("10.1.0.1", 0),),
    )


def test_several_ports_resolved_by_name_and_protocol() -> None:
    kube_dns = service(
        "kube-dns",
        "kube-system",
        ports=[
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 5353},
            {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
        ],
    )
    slice_ = endpoint_slice(
        "kube-dns-x",
        "kube-dns",
        namespace="kube-system",
        ports=[
            {"name": "dns-tcp", "port": 5353, "protocol": "TCP"},
            {"name": "dns", "port": 5353, "protocol": "UDP"},
            {"name": "metrics", "port": 9153, "protocol": "TCP"},
        ],
        endpoints=[endpoint("10.244.0.4"), endpoint("10.244.0.3")],
    )
    svc = only_service([kube_dns], [slice_])
    both = (Endpoint("10.244.0.3", 5353), Endpoint("10.244.0.4", 5353))
    assert svc.ports == (
        ServicePort("dns", 53, "UDP", both),
        ServicePort("dns-tcp", 53, "TCP", both),
        ServicePort(
            "metrics", 9153, "TCP", (Endpoint("10.244.0.3", 9153), Endpoint("10.244.0.4", 9153))
        ),
    )


def test_named_target_port_differs_per_slice() -> None:
    # A rollout that renumbered the container port: old pods on 8080, new on 9080.
    web = service(ports=[{"name": "http", "port": 80, "targetPort": "web"}])
    old = endpoint_slice(
        "web-old", endpoints=[endpoint("10.1.0.1")], ports=[{"name": "http", "port": 8080}]
    )
    new = endpoint_slice(
        "web-new", endpoints=[endpoint("10.1.0.2")], ports=[{"name": "http", "port": 9080}]
    )
    svc = only_service([web], [old, new])
    assert svc.ports[0].endpoints == (Endpoint("10.1.0.1", 8080), Endpoint("10.1.0.2", 9080))


@pytest.mark.parametrize(
    ("service_port", "slice_ports", "endpoints"),
    [
        pytest.param(
            {"name": "http", "port": 80, "targetPort": 8080},
            [],
            (Endpoint("10.1.0.1", 8080),),
            id="no slice port: numeric targetPort",
        ),
        pytest.param(
            {"name": "http", "port": 80},
            [],
            (Endpoint("10.1.0.1", 80),),
            id="no slice port, no targetPort: the port itself",
        ),
        pytest.param(
            {"name": "http", "port": 80, "targetPort": 8080},
            [{"name": "admin", "port": 9000}],
            (Endpoint("10.1.0.1", 8080),),
            id="other slice port names: numeric targetPort",
        ),
        pytest.param(
            {"name": "http", "port": 80, "targetPort": "web"},
            [{"name": "admin", "port": 9000}],
            (),
            id="named targetPort without a slice port: nothing",
        ),
        pytest.param(
            {"name": "http", "port": 80, "targetPort": 8080},
            [{"name": "http", "port": 8080, "protocol": "UDP"}],
            (Endpoint("10.1.0.1", 8080),),
            id="slice port of another protocol does not match",
        ),
        pytest.param(
            {"port": 80, "targetPort": "web"},
            [{"port": 8081}],
            (Endpoint("10.1.0.1", 8081),),
            id="unnamed port matches the unnamed slice port",
        ),
    ],
)
def test_endpoint_port_resolution(
    service_port: dict[str, Any],
    slice_ports: list[dict[str, Any]],
    endpoints: tuple[Endpoint, ...],
) -> None:
    svc = only_service([service(ports=[service_port])], [endpoint_slice(ports=slice_ports)])
    assert svc.ports[0].endpoints == endpoints


@pytest.mark.parametrize(
    ("conditions", "publish_not_ready", "health"),
    [
        pytest.param({}, False, HEALTHY, id="nil conditions: ready"),
        pytest.param({"ready": True, "serving": True}, False, HEALTHY, id="ready"),
        pytest.param(
            {"ready": False, "serving": True, "terminating": True},
            False,
            DRAINING,
            id="serving and terminating: draining",
        ),
        pytest.param(
            {"ready": False, "serving": False, "terminating": True},
            False,
            None,
            id="terminating, not serving: left out",
        ),
        pytest.param({"ready": False}, False, None, id="not ready: left out"),
        pytest.param(
            {"ready": False, "serving": True}, False, None, id="serving but not ready: left out"
        ),
        pytest.param({"ready": False}, True, HEALTHY, id="publishNotReady: not ready included"),
        pytest.param(
            {"ready": True, "serving": True, "terminating": True},
            True,
            DRAINING,
            id="publishNotReady: terminating drains",
        ),
        pytest.param(
            {"ready": False, "serving": False, "terminating": True},
            True,
            DRAINING,
            id="publishNotReady: even not serving",
        ),
    ],
)
def test_conditions_to_health(
    conditions: dict[str, bool], publish_not_ready: bool, health: Health | None
) -> None:
    svc = only_service(
        [service(publishNotReadyAddresses=publish_not_ready)],
        [endpoint_slice(endpoints=[{"addresses": ["10.1.0.1"], "conditions": conditions}])],
    )
    expected = () if health is None else (Endpoint("10.1.0.1", 8080, health),)
    assert svc.ports[0].endpoints == expected
    assert svc.pod_addresses == tuple(Endpoint(e.address, 0, e.health) for e in expected)


def test_zones_hostnames_and_numeric_order() -> None:
    svc = only_service(
        [service()],
        [
            endpoint_slice(
                endpoints=[
                    endpoint("10.1.0.10", zone="zone-b", hostname="web-2"),
                    endpoint("10.1.0.9", zone="zone-a", hostname="web-1"),
                    endpoint("10.1.0.100", zone="zone-a", hostname="web-3"),
                ]
            )
        ],
    )
    assert svc.ports[0].endpoints == (
        Endpoint("10.1.0.9", 8080, HEALTHY, "zone-a", "web-1"),
        Endpoint("10.1.0.10", 8080, HEALTHY, "zone-b", "web-2"),
        Endpoint("10.1.0.100", 8080, HEALTHY, "zone-a", "web-3"),
    )
    assert [e.hostname for e in svc.pod_addresses] == ["web-1", "web-2", "web-3"]


def test_same_endpoint_in_two_slices_kept_once_with_better_health() -> None:
    draining = endpoint("10.1.0.1", zone="z1", ready=False, serving=True, terminating=True)
    slices = [
        endpoint_slice("web-a", endpoints=[draining, endpoint("10.1.0.2")]),
        endpoint_slice("web-b", endpoints=[endpoint("10.1.0.1", zone="z1"), endpoint("10.1.0.2")]),
    ]
    svc = only_service([service()], slices)
    assert svc.ports[0].endpoints == (
        Endpoint("10.1.0.1", 8080, HEALTHY, "z1"),
        Endpoint("10.1.0.2", 8080, HEALTHY),
    )
    assert svc.pod_addresses == (Endpoint("10.1.0.1", 0, HEALTHY, "z1"), Endpoint("10.1.0.2", 0))


def test_dual_stack_service_joins_both_families() -> None:
    web = service(clusterIPs=["10.96.0.20", "fd00:96::20"])
    slices = [
        endpoint_slice("web-v4", endpoints=[endpoint("10.1.0.1")]),
        endpoint_slice("web-v6", address_type="IPv6", endpoints=[endpoint("fd00:1::1")]),
    ]
    svc = only_service([web], slices)
    assert svc.cluster_ips == ("10.96.0.20", "fd00:96::20")
    assert svc.ports[0].endpoints == (Endpoint("10.1.0.1", 8080), Endpoint("fd00:1::1", 8080))


def test_headless_service_gets_pod_addresses() -> None:
    db = service("db", clusterIP="None", ports=[])
    slice_ = endpoint_slice(
        "db-1",
        "db",
        ports=[],
        endpoints=[
            endpoint("10.1.0.5", zone="z1", hostname="db-0"),
            endpoint("10.1.0.6", zone="z2", hostname="db-1", ready=False),
            endpoint(
                "10.1.0.7", zone="z2", hostname="db-2", ready=False, serving=True, terminating=True
            ),
        ],
    )
    svc = only_service([db], [slice_])
    assert (svc.kind, svc.cluster_ips, svc.ports) == (ServiceKind.HEADLESS, (), ())
    assert svc.pod_addresses == (
        Endpoint("10.1.0.5", 0, HEALTHY, "z1", "db-0"),
        Endpoint("10.1.0.7", 0, DRAINING, "z2", "db-2"),
    )


def test_external_name_service_in_mesh() -> None:
    svc = only_service(
        [service("db", type="ExternalName", externalName="db.example.com", clusterIP="", ports=[])],
        [],
    )
    assert (svc.kind, svc.external_name, svc.cluster_ips) == (
        ServiceKind.EXTERNAL_NAME,
        "db.example.com",
        (),
    )


def test_service_settings_carried_into_the_mesh() -> None:
    svc = only_service([service(sessionAffinity="ClientIP", trafficDistribution="PreferClose")], [])
    assert (svc.lb_policy, svc.client_ip_affinity, svc.prefer_same_zone) == (
        LbPolicy.RING_HASH,
        True,
        True,
    )


def test_services_sorted_and_stray_slices_ignored() -> None:
    mesh = mesh_of(
        [
            service("web", "shop", clusterIP="10.96.0.3"),
            service("api", "shop", clusterIP="10.96.0.2"),
            service("web", "alpha", clusterIP="10.96.0.1"),
        ],
        [
            endpoint_slice("gone-1", "gone"),  # its Service does not exist
            endpoint_slice("web-1", "web", namespace="other"),  # same name, other namespace
            endpoint_slice("fqdn-1", "web", address_type="FQDN", endpoints=[]),
        ],
    )
    assert [s.key for s in mesh.services] == ["alpha/web", "shop/api", "shop/web"]
    assert all(not p.endpoints for s in mesh.services for p in s.ports)


def test_empty_mesh() -> None:
    assert build_mesh([], []) == Mesh()


# Conflicting objects (a name or a ClusterIP twice) are resolved before the join:
# tests/test_claims.py.


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("2024-05-01T12:00:00Z", 1714564800.0),  # as the API returns it (JSON text)
        ("2024-05-01T14:00:00+02:00", 1714564800.0),
        (datetime.datetime(2024, 5, 1, 12, 0), 1714564800.0),  # unquoted in YAML: UTC
        (datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC), 1714564800.0),
    ],
)
def test_creation_timestamp(written: object, seconds: float) -> None:
    obj = with_(service(), "metadata.creationTimestamp", written)
    assert parse_service(obj).created == seconds
    slice_ = with_(endpoint_slice(), "metadata.creationTimestamp", written)
    assert parse_endpoint_slice(slice_).created == seconds


def test_no_creation_timestamp() -> None:
    assert parse_service(service()).created is None
    assert parse_endpoint_slice(endpoint_slice()).created is None


@pytest.mark.parametrize("written", ["yesterday", 1714564800, datetime.date(2024, 5, 1)])
def test_a_creation_timestamp_that_is_no_time(written: object) -> None:
    with pytest.raises(ManifestError, match=r"metadata.creationTimestamp .* is not a time"):
        parse_service(with_(service(), "metadata.creationTimestamp", written))
