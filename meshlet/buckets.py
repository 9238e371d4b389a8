"""Histograms counted as plain integers on the hot path, exported at collection time.

An OpenTelemetry `Histogram.record` costs microseconds, as much as a DNS answer or a
relayed read: a `Buckets.add` is a bisect and a list increment. `HistogramCollector`
turns them into Prometheus histograms when scraped (the OpenTelemetry SDK has no
histogram that reads counts at collection time, so these are Prometheus only).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client.core import HistogramMetricFamily

# Seconds: from sub-millisecond DNS answers to multi-second pushes.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Local DNS answers take tens of microseconds: finer at the low end.
ANSWER_BUCKETS = (0.00005, 0.0001, 0.00025, *LATENCY_BUCKETS)
# How long a proxied connection stays open: a request to a long-lived stream.
CONNECTION_BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0)


class Buckets:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: over every bound
        self.sum = 0.0

    def add(self, seconds: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += times
        self.sum += seconds * times

    def cumulative(self) -> list[int]:
        """The count at or under each bound, then the total (Prometheus' `le` order)."""
        out, running = [], 0
        for count in self.counts:
            running += count
            out.append(running)
        return out


class HistogramCollector:
    """One Prometheus histogram, a series per label value, read from `series()`."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        series: Callable[[], Iterable[tuple[str, Buckets]]],
    ) -> None:
        self._name, self._documentation, self._label = name, documentation, label
        self._series = series

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=[self._label])
        for value, buckets in self._series():
            bounds = [*map(str, buckets.bounds), "+Inf"]
            family.add_metric(
                [value], list(zip(bounds, buckets.cumulative(), strict=True)), buckets.sum
            )
        yield family
