"""The sidecar's metrics (OpenTelemetry instruments, exported as Prometheus text)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from meshlet.buckets import HistogramCollector
from meshlet.sidecar.dns.forwarder import Forwarder
from meshlet.sidecar.dns.stats import DurationCounts, QueryCounts
from meshlet.sidecar.xds_client import XdsStatus
from meshlet.telemetry import LATENCY_BUCKETS, Telemetry
from meshlet.xds import types


class SidecarMetrics:
    def __init__(self, telemetry: Telemetry, xds_status: Callable[[], XdsStatus]) -> None:
        meter = telemetry.meter
        self._xds_status = xds_status
        self._upstream = meter.create_histogram(
            "meshlet.dns.upstream.latency",
            unit="s",
            description="Time the upstream resolvers took to answer forwarded queries",
            explicit_bucket_boundaries_advisory=list(LATENCY_BUCKETS),
        )
        # Counted in a dict on the hot path, read when metrics are collected:
        # a Counter.add per query would cost more than answering it.
        self.dns_queries = QueryCounts(on_upstream=self._upstream.record)
        meter.create_observable_counter(
            "meshlet.dns.queries",
            callbacks=[self._observe_queries],
            description="DNS queries, by type, rcode, proto and whether answered locally or "
            "forwarded",
        )
        # Bucketed as counted (a list increment), exported straight to Prometheus: the
        # OpenTelemetry SDK has no histogram that reads counts at collection time.
        self.dns_durations = DurationCounts()
        telemetry.registry.register(
            HistogramCollector(
                "meshlet_dns_request_duration_seconds",
                "Time from reading a query to sending its local answer, by proto",
                "proto",
                lambda: sorted(self.dns_durations.by_proto.items()),
            )
        )
        self._forward_attempts = meter.create_histogram(
            "meshlet.dns.forward.request.duration",
            unit="s",
            description="Each query sent to an upstream, by upstream and outcome (its rcode, "
            "timeout or error)",
            explicit_bucket_boundaries_advisory=list(LATENCY_BUCKETS),
        )
        self._forwarder: Forwarder | None = None
        meter.create_observable_counter(
            "meshlet.dns.forward.requests",
            callbacks=[self._observe_forwarded],
            description="Queries sent to each upstream (retries too)",
        )
        meter.create_observable_counter(
            "meshlet.dns.cache.hits",
            callbacks=[lambda _: self._of_forwarder(lambda f: f.cache_hits)],
            description="Forwarded queries answered from the cache",
        )
        meter.create_observable_counter(
            "meshlet.dns.cache.misses",
            callbacks=[lambda _: self._of_forwarder(lambda f: f.cache_misses)],
            description="Forwarded queries the cache could not answer",
        )
        meter.create_observable_counter(
            "meshlet.xds.updates",
            callbacks=[self._observe_updates],
            description="xDS responses accepted or rejected, by resource type",
        )
        meter.create_observable_counter(
            "meshlet.xds.stream.failures",
            callbacks=[lambda _: [Observation(self._xds_status().stream_failures)]],
            description="xDS streams to the control plane that ended or could not be opened "
            "(each is followed by a reconnect)",
        )
        meter.create_observable_gauge(
            "meshlet.xds.config.age",
            callbacks=[self._observe_age],
            unit="s",
            description="Seconds since the last accepted xDS update",
        )

        meter.create_observable_gauge(
            "meshlet.xds.config.stale",
            callbacks=[self._observe_stale],
            description="1 while serving a config saved by an earlier run that the control "
            "plane has not confirmed yet, else 0",
        )

    def forward_attempt(self, to: str, outcome: str, seconds: float) -> None:
        """The forwarder's `on_attempt`."""
        self._forward_attempts.record(seconds, {"to": to, "rcode": outcome})

    def observe_forwarder(self, forwarder: Forwarder) -> None:
        self._forwarder = forwarder

    def _observe_forwarded(self, _options: CallbackOptions) -> Iterable[Observation]:
        # A copy (made in C, whole): OTLP export collects from its own thread.
        sent = dict(self._forwarder.sent) if self._forwarder else {}
        return [Observation(count, {"to": to}) for to, count in sent.items()]

    def _of_forwarder(self, read: Callable[[Forwarder], int]) -> Iterable[Observation]:
        return [] if self._forwarder is None else [Observation(read(self._forwarder))]

    def _observe_queries(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(count, {"type": qtype, "rcode": rcode, "source": source, "proto": proto})
            for (qtype, rcode, source, proto), count in self.dns_queries.snapshot().items()
        ]

    def _observe_updates(self, _options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for type_url, status in self._xds_status().types.items():
            name = types.short_name(type_url)
            out.append(Observation(status.accepted, {"type": name, "result": "accepted"}))
            out.append(Observation(status.rejected, {"type": name, "result": "rejected"}))
        return out

    def _observe_age(self, _options: CallbackOptions) -> Iterable[Observation]:
        age = self._xds_status().config_age(time.time())
        return [] if age is None else [Observation(age)]

    def _observe_stale(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(1 if self._xds_status().stale else 0)]
