"""The control plane's metrics (OpenTelemetry instruments, exported as Prometheus text)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, Observation

from meshlet.controlplane.cache import Snapshot
from meshlet.controlplane.stream_state import Push
from meshlet.telemetry import LATENCY_BUCKETS, Telemetry
from meshlet.xds import types

if TYPE_CHECKING:  # the kubernetes client is the control-plane extra's; not loaded for this
    from meshlet.controlplane.sources.kubernetes import ReflectorStatus


_SourceRead = Callable[["ReflectorStatus"], float]
_SOURCE_COUNTERS: tuple[tuple[str, str, _SourceRead], ...] = (
    ("lists", "Complete lists read, by resource and namespace", lambda r: r.lists),
    ("relists", "Lists again after a watch's version was gone (410)", lambda r: r.relists),
    ("watches", "Watches started (each ends after minutes and starts again)", lambda r: r.watches),
    ("failures", "Lists or watches that failed or broke off", lambda r: r.failures),
)
_SOURCE_GAUGES: tuple[tuple[str, str, _SourceRead], ...] = (
    ("synced", "1 once the first complete list was read, else 0", lambda r: float(r.synced)),
    ("objects", "Objects held, by resource and namespace", lambda r: r.objects),
    (
        "seconds.since.heard",
        "Seconds since the API server last sent a list, events or a bookmark (-1: never)",
        lambda r: time.monotonic() - r.heard_at if r.heard_at else -1.0,
    ),
)


class ControlPlaneMetrics:
    def __init__(self, telemetry: Telemetry, snapshot: Callable[[], Snapshot | None]) -> None:
        meter = self._meter = telemetry.meter
        self._snapshot = snapshot
        self._reflectors: Callable[[], list[ReflectorStatus]] = list
        self._clients = meter.create_up_down_counter(
            "meshlet.xds.clients", description="Connected ADS streams"
        )
        # Counted in a dict per push, read at collection: a Counter.add per response
        # cost several microseconds times every stream of a fan-out.
        self._push_counts: dict[str, int] = {}
        meter.create_observable_counter(
            "meshlet.xds.pushes",
            callbacks=[self._observe_pushes],
            description="Responses sent, by resource type",
        )
        self._latency = meter.create_histogram(
            "meshlet.xds.push.latency",
            unit="s",
            description="From a source change being seen to its response being written",
            explicit_bucket_boundaries_advisory=list(LATENCY_BUCKETS),
        )
        # Every served type from 0: an alert on increase() sees the first NACK too.
        self._nack_counts = {types.short_name(t): 0 for t in types.SERVED}
        meter.create_observable_counter(
            "meshlet.xds.nacks",
            callbacks=[
                lambda _: [Observation(n, {"type": t}) for t, n in self._nack_counts.items()]
            ],
            description="Responses rejected by clients, by resource type",
        )
        meter.create_observable_gauge(
            "meshlet.xds.resources",
            callbacks=[self._observe_resources],
            description="Resources in the current snapshot, by type",
        )

    def watch_sources(self, reflectors: Callable[[], list[ReflectorStatus]]) -> None:
        """The Kubernetes source's health, per watched resource and namespace."""
        meter, self._reflectors = self._meter, reflectors
        for name, what, read in _SOURCE_COUNTERS:
            meter.create_observable_counter(
                f"meshlet.source.{name}", callbacks=[self._per_reflector(read)], description=what
            )
        for name, what, read in _SOURCE_GAUGES:
            meter.create_observable_gauge(
                f"meshlet.source.{name}", callbacks=[self._per_reflector(read)], description=what
            )

    def _per_reflector(
        self, read: Callable[[ReflectorStatus], float]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(read(r), {"resource": r.resource, "namespace": r.namespace or "*"})
                for r in self._reflectors()
            ]

        return observe

    def connected(self, protocol: str, delta: int) -> None:
        self._clients.add(delta, {"protocol": protocol})

    def pushed(self, push: Push, triggered_by_change: bool) -> None:
        name = types.short_name(push.type_url)
        counts = self._push_counts
        counts[name] = counts.get(name, 0) + 1
        if triggered_by_change:
            self._latency.record(time.monotonic() - push.built_at, {"type": name})

    def _observe_pushes(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"type": t}) for t, n in self._push_counts.items()]

    def nacked(self, type_url: str) -> None:
        name = types.short_name(type_url)
        self._nack_counts[name] = self._nack_counts.get(name, 0) + 1

    def _observe_resources(self, _options: CallbackOptions) -> Iterable[Observation]:
        snapshot = self._snapshot()
        if snapshot is None:
            return []
        return [
            Observation(count, {"type": types.short_name(t)})
            for t, count in snapshot.counts().items()
        ]
