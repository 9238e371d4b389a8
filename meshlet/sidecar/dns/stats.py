"""A cheap `on_query` observer: counts in a dict, read when metrics are collected.

An OpenTelemetry `Counter.add` with attributes costs about 6.7 us here, more
than answering a query (about 6 us of CPU, most of it in the kernel): calling it
per query would halve the server's throughput. This observer costs a dict
increment (about 0.2 us); an observable counter reads `snapshot()` at collection
time. Upstream latencies go to `on_upstream` (forwarded queries that really
went upstream are rare next to local answers and cache hits, so a histogram
`record` there is affordable).
"""

from __future__ import annotations

from collections.abc import Callable

from meshlet.sidecar.dns.observe import Source


class QueryCounts:
    def __init__(self, on_upstream: Callable[[float], None] | None = None) -> None:
        self._counts: dict[tuple[str, str, str], int] = {}
        self._on_upstream = on_upstream

    def __call__(
        self, qtype: str, rcode: str, source: Source, upstream_seconds: float | None
    ) -> None:
        key = (qtype, rcode, source)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        if upstream_seconds is not None and self._on_upstream is not None:
            self._on_upstream(upstream_seconds)

    def snapshot(self) -> dict[tuple[str, str, str], int]:
        """(qtype, rcode, source) -> queries so far (monotonic: a cumulative counter)."""
        return dict(self._counts)
