"""The ADS server on a real socket, driven by real grpc.aio clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)

from meshlet.controlplane.cache import SnapshotCache
from meshlet.controlplane.metrics import ControlPlaneMetrics
from meshlet.controlplane.server import AdsServer, start_server
from meshlet.telemetry import Telemetry
from meshlet.xds import types
from tests.xds_fixtures import snapshot_of, web

WEB_CLUSTER = "outbound|80||web.default.svc.cluster.local"


class Harness:
    def __init__(self) -> None:
        self.cache = SnapshotCache()
        self.telemetry = Telemetry("test")
        self.ads = AdsServer(self.cache, ControlPlaneMetrics(self.telemetry, lambda: None))


@pytest.fixture
async def served() -> AsyncIterator[tuple[Harness, ads_pb2_grpc.AggregatedDiscoveryServiceStub]]:
    harness = Harness()
    server, port = await start_server(harness.ads, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield harness, ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(grace=None)
        harness.telemetry.shutdown()


def addresses(response: DiscoveryResponse | DeltaDiscoveryResponse) -> list[str]:
    out = []
    for item in response.resources:
        packed = item.resource if isinstance(response, DeltaDiscoveryResponse) else item
        cla = ClusterLoadAssignment()
        assert packed.Unpack(cla)
        out += [
            e.endpoint.address.socket_address.address
            for loc in cla.endpoints
            for e in loc.lb_endpoints
        ]
    return out


async def test_sotw_stream_waits_for_first_snapshot_then_follows_changes(served) -> None:
    harness, stub = served
    requests: asyncio.Queue[DiscoveryRequest] = asyncio.Queue()

    async def outgoing() -> AsyncIterator[DiscoveryRequest]:
        while True:
            yield await requests.get()

    call = stub.StreamAggregatedResources(outgoing())
    first = DiscoveryRequest(type_url=types.ENDPOINT, resource_names=[WEB_CLUSTER])
    first.node.id = "sotw-client"
    await requests.put(first)
    # Subscribed before any snapshot exists: the answer comes when it is published.
    harness.cache.publish(snapshot_of(web("10.1.0.1")))
    response = await asyncio.wait_for(call.read(), 10)
    assert addresses(response) == ["10.1.0.1"]
    await requests.put(
        DiscoveryRequest(
            type_url=types.ENDPOINT,
            resource_names=[WEB_CLUSTER],
            response_nonce=response.nonce,
            version_info=response.version_info,
        )
    )
    harness.cache.publish(snapshot_of(web("10.1.0.2"), previous=harness.cache.snapshot))
    update = await asyncio.wait_for(call.read(), 10)
    assert addresses(update) == ["10.1.0.2"]
    [client] = harness.ads.clients()
    assert client["node"] == "sotw-client" and client["protocol"] == "sotw"
    call.cancel()


async def test_delta_stream_and_clients_listing(served) -> None:
    harness, stub = served
    harness.cache.publish(snapshot_of(web("10.1.0.1")))
    requests: asyncio.Queue[DeltaDiscoveryRequest] = asyncio.Queue()

    async def outgoing() -> AsyncIterator[DeltaDiscoveryRequest]:
        while True:
            yield await requests.get()

    call = stub.DeltaAggregatedResources(outgoing())
    first = DeltaDiscoveryRequest(type_url=types.ENDPOINT, resource_names_subscribe=[WEB_CLUSTER])
    first.node.id = "delta-client"
    await requests.put(first)
    response = await asyncio.wait_for(call.read(), 10)
    assert addresses(response) == ["10.1.0.1"]
    await requests.put(
        DeltaDiscoveryRequest(type_url=types.ENDPOINT, response_nonce=response.nonce)
    )
    harness.cache.publish(snapshot_of(previous=harness.cache.snapshot))
    removal = await asyncio.wait_for(call.read(), 10)
    assert list(removal.removed_resources) == [WEB_CLUSTER]
    [client] = harness.ads.clients()
    assert client["protocol"] == "delta"
    call.cancel()
    # The stream's end removes it from the listing.
    for _ in range(200):
        if not harness.ads.clients():
            break
        await asyncio.sleep(0.01)
    assert harness.ads.clients() == []


async def test_many_streams_share_one_push(served) -> None:
    harness, stub = served
    harness.cache.publish(snapshot_of(web("10.1.0.1")))
    calls = []
    for i in range(20):
        request = DeltaDiscoveryRequest(
            type_url=types.ENDPOINT, resource_names_subscribe=[WEB_CLUSTER]
        )
        request.node.id = f"n{i}"

        async def one(req: DeltaDiscoveryRequest = request) -> AsyncIterator[DeltaDiscoveryRequest]:
            yield req
            await asyncio.Event().wait()

        call = stub.DeltaAggregatedResources(one())
        calls.append(call)
        assert addresses(await asyncio.wait_for(call.read(), 10)) == ["10.1.0.1"]
    harness.cache.publish(snapshot_of(web("10.1.0.9"), previous=harness.cache.snapshot))
    updates = await asyncio.gather(*(asyncio.wait_for(c.read(), 10) for c in calls))
    assert all(addresses(u) == ["10.1.0.9"] for u in updates)
    for call in calls:
        call.cancel()
