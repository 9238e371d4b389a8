"""A NACK from a real gRPC ADS client shows in /debug/clients and in the NACK metric.

The client is grpcio's generated AggregatedDiscoveryService stub over a real
socket to the control-plane process, once over SotW and once over delta.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DiscoveryRequest,
)
from google.protobuf import any_pb2
from google.rpc.status_pb2 import Status
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import (
    ControlPlane,
    control_plane,
    endpoint_slice_manifest,
    service_manifest,
    wait_until,
    write_manifests,
)

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
REASON = "test rejects this"
INVALID_ARGUMENT = 3
CONVERGE = 30.0
RPC_DEADLINE = 60.0  # bounds a hang; a healthy exchange takes milliseconds

_END = object()


class AdsStream:
    """One ADS stream: requests go in through a queue, responses come out in order."""

    def __init__(self, channel: grpc.Channel, delta: bool) -> None:
        self._requests: queue.Queue[object] = queue.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self.call = method(self._iterate(), timeout=RPC_DEADLINE)

    def _iterate(self) -> Iterator[Any]:
        while (request := self._requests.get()) is not _END:
            yield request

    def send(self, request: Any) -> None:
        self._requests.put(request)

    def receive(self) -> Any:
        return next(self.call)

    def close(self) -> None:
        self._requests.put(_END)
        self.call.cancel()


@contextlib.contextmanager
def ads_stream(plane: ControlPlane, delta: bool) -> Iterator[AdsStream]:
    with grpc.insecure_channel(plane.xds_address) as channel:
        stream = AdsStream(channel, delta)
        try:
            yield stream
        finally:
            stream.close()


def cluster_name(resource: any_pb2.Any) -> str:
    cluster = Cluster()
    assert resource.Unpack(cluster), resource.type_url
    return cluster.name


def nack_count(metrics_text: str, type_name: str) -> float:
    """meshlet_xds_nacks_total summed over the series of one resource type."""
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "meshlet_xds_nacks_total" and sample.labels.get("type") == type_name:
                total += sample.value
    return total


def manifests_with_one_service(tmp_path: Path) -> Path:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_manifests(
        manifests / "web.yaml",
        service_manifest("web", "default", "10.96.0.10", [("http", 80, "http")]),
        endpoint_slice_manifest("web", "default", [("http", 8080)], ["10.1.0.1"]),
    )
    return manifests


@pytest.mark.parametrize("protocol", ["sotw", "delta"])
def test_a_nack_shows_in_debug_clients_and_metrics(tmp_path: Path, protocol: str) -> None:
    node_id = f"nack-{protocol}"
    node = Node(id=node_id, cluster="nack-test")
    rejection = Status(code=INVALID_ARGUMENT, message=REASON)

    with control_plane(manifests_with_one_service(tmp_path), tmp_path) as plane:
        assert nack_count(plane.metrics(), "cds") == 0
        with ads_stream(plane, delta=protocol == "delta") as stream:
            if protocol == "delta":
                stream.send(DeltaDiscoveryRequest(node=node, type_url=CDS))
                response = stream.receive()
                names = {r.name for r in response.resources}
                version = response.system_version_info
                stream.send(
                    DeltaDiscoveryRequest(
                        type_url=CDS, response_nonce=response.nonce, error_detail=rejection
                    )
                )
            else:
                stream.send(DiscoveryRequest(node=node, type_url=CDS))
                response = stream.receive()
                names = {cluster_name(r) for r in response.resources}
                version = response.version_info
                stream.send(
                    DiscoveryRequest(
                        type_url=CDS,
                        version_info="",  # nothing accepted before
                        response_nonce=response.nonce,
                        error_detail=rejection,
                    )
                )
            assert response.type_url == CDS
            assert "outbound|80||web.default.svc.cluster.local" in names

            def cds_status() -> dict[str, Any] | None:
                client = plane.client(node_id)
                return client["types"].get("cds") if client else None

            status = wait_until(
                lambda cds: cds is not None and cds["nacks"] >= 1,
                CONVERGE,
                f"/debug/clients to show {node_id}'s NACK of CDS",
                observe=cds_status,
            )
            assert status["last_nack"] == REASON
            assert status["nacks"] == 1
            assert version
            assert status["version_nacked"] == status["version_sent"] == version
            assert status["version_acked"] == ""

            client = plane.client(node_id)
            assert client is not None
            assert client["protocol"] == protocol

            wait_until(
                lambda count: count == 1,
                CONVERGE,
                'meshlet_xds_nacks_total{type="cds"} to be 1',
                observe=lambda: nack_count(plane.metrics(), "cds"),
            )
            assert nack_count(plane.metrics(), "eds") == 0
