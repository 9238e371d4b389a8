"""What the proxy counts: plain integers bumped on the hot path, read when collected.

One object per cluster (`ClusterCounters`) and one for the proxy's listeners
(`ListenerCounters`); metrics.py and the admin pages read them, nothing else
writes them but the handlers. Histograms are made at a cluster's first use: most
clusters of a large mesh never see a connection from this pod.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from meshlet.buckets import CONNECTION_BUCKETS, LATENCY_BUCKETS, Buckets


@dataclass(slots=True, eq=False)
class ClusterCounters:
    """Totals since the cluster appeared."""

    opened: int = 0  # connections relayed
    connect_failures: int = 0  # connects that failed, retried or not
    local_failures: int = 0  # no socket could be made (out of fds, ...): no endpoint blamed
    retries: int = 0  # connects tried again on another endpoint
    ejections: int = 0  # endpoints ejected by outlier detection
    refused: int = 0  # over the circuit breaker's cap
    no_endpoint: int = 0  # nothing to connect to, or every try failed
    bytes_up: int = 0  # client -> endpoint, of closed connections
    bytes_down: int = 0
    # HTTP: requests (each balanced on its own), answers by status class and by gRPC
    # status, and the pooled upstream connections opened.
    requests: int = 0
    by_status_class: dict[str, int] | None = None  # "2xx" -> count
    by_grpc_status: dict[str, int] | None = None  # "0" -> count
    pool_connections: int = 0
    timeouts: int = 0  # requests cut by the route's timeout
    connect_times: Buckets | None = None  # upstream connects that succeeded
    durations: Buckets | None = None  # relayed connections, once closed
    request_times: Buckets | None = None  # HTTP requests, once answered

    def connected(self, seconds: float) -> None:
        if self.connect_times is None:
            self.connect_times = Buckets(LATENCY_BUCKETS)
        self.connect_times.add(seconds)

    def answered(self, seconds: float) -> None:
        if self.request_times is None:
            self.request_times = Buckets(LATENCY_BUCKETS)
        self.request_times.add(seconds)

    def count_status(self, status: int) -> None:
        counts = self.by_status_class
        if counts is None:
            counts = self.by_status_class = {}
        key = f"{status // 100}xx"
        counts[key] = counts.get(key, 0) + 1

    def count_grpc(self, status: bytes) -> None:
        counts = self.by_grpc_status
        if counts is None:
            counts = self.by_grpc_status = {}
        key = status.decode("latin-1")[:3] if status.isdigit() else "unknown"
        counts[key] = counts.get(key, 0) + 1

    def closed(self, seconds: float, up: int, down: int) -> None:
        self.bytes_up += up
        self.bytes_down += down
        if self.durations is None:
            self.durations = Buckets(CONNECTION_BUCKETS)
        self.durations.add(seconds)


@dataclass(slots=True, eq=False)
class ListenerCounters:
    """Connections refused before any route was looked up."""

    looped: int = 0  # the proxy's own passthrough connect, captured and back
    not_redirected: int = 0  # came to the proxy's port without a redirect
    accept_failures: int = 0  # accept() failed (out of fds, ...)


class ThrottledLog:
    """Errors of this host (out of fds, say) come as fast as connections do: each is
    counted where it happens, and logged at most every `every` seconds for the whole
    proxy, or the log would flood."""

    __slots__ = ("_every", "_last", "_log")

    def __init__(self, log: logging.Logger, every: float = 10.0) -> None:
        self._log = log
        self._every = every
        self._last = float("-inf")

    def error(self, now: float, message: str, *args: object) -> None:
        if now - self._last >= self._every:
            self._last = now
            self._log.error(message, *args)
