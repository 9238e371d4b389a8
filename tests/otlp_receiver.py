"""A real OTLP/gRPC receiver for tests: opentelemetry-proto's own service stubs served
by grpcio on loopback, recording the metric names and the spans it is sent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Spans(trace_service_pb2_grpc.TraceServiceServicer):
    """Records the spans exported to it."""

    def __init__(self) -> None:
        self._spans: list[Any] = []
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self._spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[Any]:
        with self.lock:
            return list(self._spans)


class Receiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    """Records the names of the metrics exported to it; `traces` the spans."""

    def __init__(self) -> None:
        self._names: set[str] = set()
        self.lock = threading.Lock()
        self.traces = Spans()

    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            for resource in request.resource_metrics:
                for scope in resource.scope_metrics:
                    self._names.update(m.name for m in scope.metrics)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def names(self) -> set[str]:
        with self.lock:
            return set(self._names)

    def clear(self) -> None:
        with self.lock:
            self._names.clear()


@contextmanager
def receiving(host: str = "127.0.0.1") -> Iterator[tuple[Receiver, int]]:
    """A receiver listening on `host` for the block, and its port."""
    servicer = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(servicer, server)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer.traces, server)
    port = server.add_insecure_port(f"{host}:0")  # the port it bound: no race for it
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(grace=None).wait()


def otlp_env(port: int, host: str = "127.0.0.1") -> dict[str, str]:
    """The standard variables that send a meshlet process's metrics (and a sidecar's
    spans) to the receiver."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{host}:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
