"""Cheap observers of the DNS server: plain counts, read when metrics are collected.

An OpenTelemetry `Counter.add` with attributes costs about 6.7 us here, more
than answering a query (about 6 us of CPU, most of it in the kernel): calling it
per query would halve the server's throughput. These cost a dict or list
increment; the metrics read them at collection time. Upstream latencies go to
`on_upstream` (forwarded queries that really went upstream are rare next to local
answers and cache hits, so a histogram `record` there is affordable).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from meshlet.buckets import ANSWER_BUCKETS, Buckets
from meshlet.sidecar.dns.observe import Proto, Source


class QueryCounts:
    def __init__(self, on_upstream: Callable[[float], None] | None = None) -> None:
        self._counts: dict[tuple[str, str, str, str], int] = {}
        self._on_upstream = on_upstream

    def __call__(
        self, qtype: str, rcode: str, source: Source, proto: Proto, upstream_seconds: float | None
    ) -> None:
        key = (qtype, rcode, source, proto)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        if upstream_seconds is not None and self._on_upstream is not None:
            self._on_upstream(upstream_seconds)

    def snapshot(self) -> dict[tuple[str, str, str, str], int]:
        """(qtype, rcode, source, proto) -> queries so far (a cumulative counter)."""
        return dict(self._counts)


class DurationCounts:
    """How long local answers took, per protocol, as histogram buckets: a list
    increment per answer (per batch of answers on the batched UDP path)."""

    def __init__(self, bounds: Sequence[float] = ANSWER_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.by_proto: dict[str, Buckets] = {}

    def __call__(self, proto: Proto, seconds: float, answers: int = 1) -> None:
        buckets = self.by_proto.get(proto)
        if buckets is None:
            buckets = self.by_proto[proto] = Buckets(self.bounds)
        buckets.add(seconds, answers)
