"""A change costs the control plane what it touches, not the size of the mesh (counted).

10,000 Services with a slice each go through the real registry, builder and
ADS server (real gRPC streams). One EndpointSlice change must rebuild and
serialize that one service's resources, and wake only the streams that
subscribe to them; a sidecar that takes it rebuilds that cluster's balancer
alone. A changed manifest file among many is parsed alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
)
from google.protobuf import any_pb2

from meshlet.controlplane.app import ControlPlane, ControlPlaneConfig
from meshlet.controlplane.cache import Resource
from meshlet.controlplane.metrics import ControlPlaneMetrics
from meshlet.controlplane.registry import Registry
from meshlet.controlplane.server import AdsServer, start_server
from meshlet.controlplane.sources.base import Kind, ObjectEvent, ObjectKey
from meshlet.controlplane.sources.manifests import ManifestSource
from meshlet.sidecar.proxy.router import Router
from meshlet.sidecar.state import SidecarState
from meshlet.sidecar.validate import Received, Update, apply_update
from meshlet.telemetry import Telemetry
from meshlet.xds import types
from tests.test_manifests import service_yaml, slice_yaml

SERVICES = 10_000


def _service(i: int, headless: bool = False) -> dict[str, object]:
    ip = "None" if headless else f"10.96.{i // 256}.{i % 256}"
    return {
        "metadata": {"name": f"svc-{i}", "namespace": f"ns-{i % 20}"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }


def _slice(i: int, endpoints: int = 3) -> dict[str, object]:
    return {
        "metadata": {
            "name": f"svc-{i}-1",
            "namespace": f"ns-{i % 20}",
            "labels": {"kubernetes.io/service-name": f"svc-{i}"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": [_pod_ip(i * 8 + k)]} for k in range(endpoints)],
    }


def _pod_ip(n: int) -> str:
    return f"10.{1 + n // 65536}.{n // 256 % 256}.{n % 256}"


def _slice_event(i: int, endpoints: int) -> ObjectEvent:
    key = ObjectKey(Kind.ENDPOINT_SLICE, f"ns-{i % 20}", f"svc-{i}-1")
    return ObjectEvent(key, _slice(i, endpoints))


def _cluster(i: int) -> str:
    return f"outbound|80||svc-{i}.ns-{i % 20}.svc.cluster.local"


def _mesh_of(count: int) -> Registry:
    registry = Registry()
    events = []
    for i in range(count):
        service = ObjectKey(Kind.SERVICE, f"ns-{i % 20}", f"svc-{i}")
        events.append(ObjectEvent(service, _service(i, headless=i % 10 == 3)))
        events.append(_slice_event(i, 3))
    registry.apply(events)
    registry.synced()
    return registry


def _plane() -> ControlPlane:
    return ControlPlane(ControlPlaneConfig(("127.0.0.1", 0), ("127.0.0.1", 0)))


def _serialized(plane: ControlPlane) -> Mapping[str, list[str]]:
    return {t: sorted(n) for t, n in plane.builder.report.serialized.items()}


class _DeltaClient:
    """A real delta ADS stream that subscribes to EDS by name."""

    def __init__(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, names: list[str]):
        self._requests: asyncio.Queue[DeltaDiscoveryRequest] = asyncio.Queue()
        first = DeltaDiscoveryRequest(type_url=types.ENDPOINT, resource_names_subscribe=names)
        first.node.id = f"client-of-{names[0]}"
        self._requests.put_nowait(first)
        self.call = stub.DeltaAggregatedResources(self._outgoing())

    async def _outgoing(self) -> AsyncIterator[DeltaDiscoveryRequest]:
        while True:
            yield await self._requests.get()

    async def read(self) -> DeltaDiscoveryResponse:
        response: DeltaDiscoveryResponse = await asyncio.wait_for(self.call.read(), 30)
        ack = DeltaDiscoveryRequest(type_url=response.type_url, response_nonce=response.nonce)
        await self._requests.put(ack)
        return response


async def test_one_endpoint_change_at_10000_services_costs_that_service() -> None:
    registry = _mesh_of(SERVICES)
    plane = _plane()
    start = registry.result()
    assert start.errors == ()
    plane.apply(start, 0.0)
    assert len(plane.builder.report.services) == SERVICES
    first = plane.cache.snapshot
    assert first is not None

    telemetry = Telemetry("test")
    ads = AdsServer(plane.cache, ControlPlaneMetrics(telemetry, lambda: plane.cache.snapshot))
    server, port = await start_server(ads, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        watcher = _DeltaClient(stub, [_cluster(5)])
        bystander = _DeltaClient(stub, [_cluster(7), _cluster(8)])
        assert [r.name for r in (await watcher.read()).resources] == [_cluster(5)]
        assert len((await bystander.read()).resources) == 2

        # One more endpoint for svc-5, a ClusterIP service.
        decoded = registry.decoded
        registry.apply([_slice_event(5, 4)])
        assert registry.decoded - decoded == 1
        result = registry.result()
        assert result.changed == {"ns-5/svc-5"}
        plane.apply(result, 0.0)
        assert plane.builder.report.services == ("ns-5/svc-5",)
        # Its own resources alone are serialized again (the translation of one service);
        # only its load assignment differs, so only that is new in the snapshot.
        assert _serialized(plane) == {
            types.CLUSTER: [_cluster(5)],
            types.ENDPOINT: [_cluster(5)],
            types.LISTENER: ["10.96.0.5_80", "svc-5.ns-5.svc.cluster.local:80"],
            types.ROUTE: ["svc-5.ns-5.svc.cluster.local:80"],
        }
        changed = plane.cache.snapshot.changed if plane.cache.snapshot else {}
        assert {t: set(n) for t, n in changed.items() if n} == {types.ENDPOINT: {_cluster(5)}}
        # Everything else is the very object of the snapshot before.
        second = plane.cache.snapshot
        assert second is not None
        for type_url in types.SERVED:
            same = [
                n
                for n, r in second.of_type(type_url).items()
                if first.of_type(type_url).get(n) is r
            ]
            assert len(same) == len(first.of_type(type_url)) - (type_url == types.ENDPOINT)

        update = await watcher.read()
        assert [r.name for r in update.resources] == [_cluster(5)]
        # The bystander was not woken for it: the first thing it receives after is
        # a change of its own cluster, made next.
        registry.apply([_slice_event(7, 5)])
        plane.apply(registry.result(), 0.0)
        later = await bystander.read()
        assert [r.name for r in later.resources] == [_cluster(7)]

        # A headless service's endpoints are names too: its share of its namespace's
        # NameTable is serialized again, and that one table joined from its services' bytes.
        registry.apply([_slice_event(3, 4)])
        plane.apply(registry.result(), 0.0)
        assert plane.builder.report.services == ("ns-3/svc-3",)
        serialized = _serialized(plane)
        # Its namespace's table alone: the other 19 namespaces' are not touched.
        assert serialized[types.NAME_TABLE] == ["ns-3"]
        assert serialized[types.ENDPOINT] == [_cluster(3)]
    finally:
        await channel.close()
        await server.stop(grace=None)
        telemetry.shutdown()


async def test_the_table_joined_from_services_is_the_table_of_the_whole_mesh() -> None:
    registry = _mesh_of(200)
    plane = _plane()
    plane.apply(registry.result(), 0.0)
    for i in (3, 13, 40):  # headless (3, 13) and ClusterIP: endpoints and names change
        registry.apply([_slice_event(i, 5)])
        plane.apply(registry.result(), 0.0)
    registry.apply([ObjectEvent(ObjectKey(Kind.SERVICE, "ns-1", "svc-21"), None)])
    result = registry.result()
    plane.apply(result, 0.0)

    # A builder that starts from the same services at once serves exactly the same.
    fresh = _plane()
    fresh.apply(result, 0.0)
    built, whole = plane.cache.snapshot, fresh.cache.snapshot
    assert built is not None and whole is not None
    for type_url in types.SERVED:
        versions = {n: r.version for n, r in built.of_type(type_url).items()}
        assert versions == {n: r.version for n, r in whole.of_type(type_url).items()}
    assert built.type_versions == whole.type_versions
    assert _cluster(21) not in built.of_type(types.CLUSTER)


def test_a_changed_manifest_file_among_many_is_parsed_alone(tmp_path: Path) -> None:
    for i in range(50):
        text = service_yaml(f"svc-{i}", f"10.96.1.{i}") + "---\n"
        text += slice_yaml(f"svc-{i}", f"10.1.1.{i}")
        (tmp_path / f"svc-{i}.yaml").write_text(text)
    registry = Registry()
    plane = _plane()
    source = ManifestSource(tmp_path, registry)
    source.load()
    assert registry.decoded == 100
    plane.apply(registry.result(), 0.0)

    changed = tmp_path / "svc-17.yaml"
    text = service_yaml("svc-17", "10.96.1.17") + "---\n"
    changed.write_text(text + slice_yaml("svc-17", "10.1.1.17", "10.1.2.17"))
    source.load()
    # The file's two objects, and no other file's: the Service is equal and dropped,
    # the slice joins its one Service again.
    assert registry.decoded == 102
    result = registry.result()
    assert result.changed == {"shop/svc-17"}
    plane.apply(result, 0.0)
    assert plane.builder.report.services == ("shop/svc-17",)


def test_a_sidecar_rebuilds_the_balancer_of_the_one_cluster_whose_endpoints_changed() -> None:
    registry = _mesh_of(2_000)
    plane = _plane()
    plane.apply(registry.result(), 0.0)
    snapshot = plane.cache.snapshot
    assert snapshot is not None
    state = SidecarState()
    for type_url in (types.CLUSTER, types.ENDPOINT, types.LISTENER, types.NAME_TABLE):
        held = [r for r in snapshot.of_type(type_url).values() if not r.on_demand]
        update = Update(type_url, "1", [Received(r.name, r.version, _any(r)) for r in held])
        state = apply_update(state, update, "cluster.local")
    router = Router()
    router.update(state)
    used = [_cluster(i) for i in (4, 5, 6)]
    built = {name: router.clusters[name].balancer() for name in used}
    routes = router.routes

    registry.apply([_slice_event(5, 4)])
    plane.apply(registry.result(), 0.0)
    changed = plane.cache.snapshot
    assert changed is not None
    (name,) = changed.changed[types.ENDPOINT]
    resource = changed.of_type(types.ENDPOINT)[name]
    update = Update(types.ENDPOINT, "2", [Received(name, resource.version, _any(resource))])
    router.update(apply_update(state, update, "cluster.local"))

    assert router.routes is routes, "an EDS update leaves the routes as they are"
    assert router.clusters[_cluster(5)].balancer() is not built[_cluster(5)]
    assert len(router.clusters[_cluster(5)].endpoints) == 4
    for other in (_cluster(4), _cluster(6)):
        assert router.clusters[other].balancer() is built[other]
    # The 1,997 balancers never asked for are still not built.
    assert sum(r.built is not None for r in router.clusters.values()) == 3


def _any(resource: Resource) -> any_pb2.Any:
    return any_pb2.Any.FromString(resource.any_bytes)
