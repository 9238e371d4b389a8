"""OpenTelemetry metrics for a meshlet process: Prometheus text always, OTLP when asked.

OTLP export switches on with the standard OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_METRICS_ENDPOINT) and reads the other OTEL_* variables itself.
"""

from __future__ import annotations

import logging
import os

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from meshlet import buckets, build_info, otlp_protos

log = logging.getLogger(__name__)

# The buckets every OpenTelemetry histogram of meshlet's uses (re-exported).
LATENCY_BUCKETS = buckets.LATENCY_BUCKETS


def _otlp_enabled() -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    )


def _otlp_reader() -> MetricReader | None:
    # xds-protos ships an old copy of opentelemetry/proto that replaces
    # opentelemetry-proto's files in a plain pip install: use meshlet's copy then.
    otlp_protos.make_importable()
    try:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter,
        )
    except (ImportError, AttributeError) as exc:
        # An exporter newer than meshlet's copy (a missing module, or a message missing
        # from one), say: serve on without OTLP and say why.
        log.error("OTLP export is off: %s; repair the install: %s", exc, otlp_protos.FIX)
        return None
    return PeriodicExportingMetricReader(OTLPMetricExporter())


class Telemetry:
    """One meter provider per process, with its own Prometheus registry."""

    def __init__(self, service_name: str) -> None:
        # A registry of our own, not prometheus_client's global one, so several
        # providers (tests, embedded use) never collide.
        self.registry = CollectorRegistry(auto_describe=True)
        # No otel_scope_* labels: one scope ("meshlet") would repeat them on every series.
        prometheus = PrometheusMetricReader(registry=self.registry, scope_info_enabled=False)
        readers: list[MetricReader] = [prometheus]
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds...:
        # the names every Prometheus user knows, read from /proc at each scrape.
        ProcessCollector(registry=self.registry)
        if _otlp_enabled():
            otlp = _otlp_reader()
            if otlp is not None:
                readers.append(otlp)
        self.provider = MeterProvider(
            resource=Resource.create({"service.name": service_name}), metric_readers=readers
        )
        self.meter: Meter = self.provider.get_meter("meshlet")
        info = build_info()
        self.meter.create_observable_gauge(
            "meshlet_build_info",
            callbacks=[lambda _: [Observation(1, info)]],
            description="1, with the version of this build as labels",
        )

    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        self.provider.shutdown()
