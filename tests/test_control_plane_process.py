"""The control-plane process as an operator meets it: bad edits, admin endpoints, OTLP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from tests.procs import (
    control_plane,
    endpoint_slice_manifest,
    free_port,
    service_manifest,
    wait_until,
    write_atomically,
    write_manifests,
)

WEB_CLUSTER = "outbound|80||web.default.svc.cluster.local"


def web(*addresses: str) -> list[dict[str, Any]]:
    return [
        service_manifest("web", "default", "10.96.0.10", [("http", 80, "http")]),
        endpoint_slice_manifest("web", "default", [("http", 8080)], addresses),
    ]


def endpoints_served(config: dict[str, Any]) -> list[str]:
    cla = config["eds"]["resources"][WEB_CLUSTER]["resource"]
    return [
        e["endpoint"]["address"]["socketAddress"]["address"]
        for locality in cla["endpoints"]
        for e in locality["lbEndpoints"]
    ]


def test_a_bad_edit_is_reported_and_the_last_good_state_keeps_serving(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1", "10.1.0.2"))
    with control_plane(folder, tmp_path) as plane:
        assert endpoints_served(plane.config()) == ["10.1.0.1", "10.1.0.2"]
        write_atomically(folder / "web.yaml", "kind: Service\n  bad: [indent\n")
        problems = wait_until(
            bool,
            10,
            "the broken file to be reported",
            observe=lambda: plane.get_json("/debug/problems"),
        )
        assert "web.yaml" in problems[0]
        assert endpoints_served(plane.config()) == ["10.1.0.1", "10.1.0.2"]
        assert plane.get("/readyz")[0] == 200
        # Fixing it clears the problem and applies the new content.
        write_manifests(folder / "web.yaml", *web("10.1.0.3"))
        wait_until(
            lambda eps: eps == ["10.1.0.3"],
            10,
            "the fixed file to be served",
            observe=lambda: endpoints_served(plane.config()),
        )
        assert plane.get_json("/debug/problems") == []
        assert "Traceback" not in plane.process.log_text()


def test_a_service_claiming_an_older_ones_cluster_ip_is_left_out(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    older = web("10.1.0.1")
    older[0]["metadata"]["creationTimestamp"] = "2024-01-01T00:00:00Z"
    write_manifests(folder / "web.yaml", *older)
    with control_plane(folder, tmp_path) as plane:
        # "other" sorts before "web", but has no creationTimestamp: web is older.
        write_manifests(
            folder / "other.yaml",
            service_manifest("other", "default", "10.96.0.10", [("http", 80, 80)]),
        )
        write_manifests(
            folder / "db.yaml",
            service_manifest("db", "default", "10.96.0.30", [("tcp", 5432, 5432)]),
        )
        problems = wait_until(
            bool,
            10,
            "the conflict to be reported",
            observe=lambda: plane.get_json("/debug/problems"),
        )
        assert problems == [
            f"{folder / 'other.yaml'}: document 1 (Service default/other): ClusterIP 10.96.0.10"
            f" is Service default/web's (in {folder / 'web.yaml'}: document 1), which has a"
            " creationTimestamp and this one has none; this Service is left out"
        ]
        clusters = wait_until(
            lambda names: "outbound|5432||db.default.svc.cluster.local" in names,
            10,
            "the other services to be served",
            observe=lambda: set(plane.config()["cds"]["resources"]),
        )
        assert WEB_CLUSTER in clusters
        assert not any("other" in name for name in clusters)
        assert endpoints_served(plane.config()) == ["10.1.0.1"]


def test_health_endpoints_and_metrics(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1"))
    with control_plane(folder, tmp_path) as plane:
        assert plane.get("/healthz") == (200, "ok\n")
        metrics = plane.metrics()
        assert "meshlet_xds_resources{" in metrics
        assert 'type="cds"} 2.0' in metrics  # web's cluster and PassthroughCluster
        assert plane.get("/nope")[0] == 404


class _Collector(metrics_service_pb2_grpc.MetricsServiceServicer):
    """A real OTLP/gRPC metrics receiver: records the metric names it is sent."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            for resource in request.resource_metrics:
                for scope in resource.scope_metrics:
                    self.names.update(m.name for m in scope.metrics)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[_Collector, int]]:
    servicer = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(servicer, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(grace=None).wait()


def test_otlp_export_switches_on_with_the_standard_variable(
    tmp_path: Path, collector: tuple[_Collector, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer, port = collector
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1"))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "300")
    with control_plane(folder, tmp_path):

        def received() -> set[str]:
            with servicer.lock:
                return set(servicer.names)

        names = wait_until(
            lambda n: "meshlet.xds.resources" in n,
            20,
            "the control plane to export over OTLP",
            observe=received,
        )
        assert "meshlet.xds.resources" in names
