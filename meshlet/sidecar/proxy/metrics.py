"""The proxy's metrics: read from its counters when collected, never counted per byte.

The hot path only bumps integers on the cluster runtimes and hosts (see
router.py); these observable instruments turn them into OpenTelemetry points at
collection time, as the DNS query counts do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from meshlet.buckets import Buckets, HistogramCollector
from meshlet.sidecar.proxy.router import ClusterRuntime, Router
from meshlet.sidecar.proxy.server import OutboundProxy
from meshlet.telemetry import Telemetry

_Read = Callable[[ClusterRuntime], int]

_CLUSTER_COUNTERS: tuple[tuple[str, str, _Read], ...] = (
    ("connections", "Connections relayed, by cluster", lambda c: c.counters.opened),
    (
        "connect_failures",
        "Upstream connects that failed, by cluster",
        lambda c: c.counters.connect_failures,
    ),
    (
        "local_failures",
        "Connects that failed on this host before reaching the network (out of fds, no free "
        "source port, ...), by cluster; no endpoint is blamed for them",
        lambda c: c.counters.local_failures,
    ),
    (
        "retries",
        "Connects and requests tried again on another endpoint, by cluster",
        lambda c: c.counters.retries,
    ),
    (
        "requests",
        "HTTP requests balanced one by one (Envoy's upstream_rq_total), by cluster",
        lambda c: c.counters.requests,
    ),
    (
        "timeouts",
        "HTTP requests cut by their route's timeout (Envoy's upstream_rq_timeout), by cluster",
        lambda c: c.counters.timeouts,
    ),
    (
        "pool_connections",
        "Pooled HTTP connections opened to endpoints (Envoy's upstream_cx_http2_total and "
        "upstream_cx_http1_total), by cluster",
        lambda c: c.counters.pool_connections,
    ),
    (
        "ejections",
        "Endpoints ejected by outlier detection, by cluster",
        lambda c: c.counters.ejections,
    ),
)


def _open_requests(cluster: ClusterRuntime) -> int:
    return sum(h.requests for h in cluster.built.hosts) if cluster.built else 0


class ProxyMetrics:
    def __init__(
        self, telemetry: Telemetry, router: Router, proxy: Callable[[], OutboundProxy | None]
    ) -> None:
        meter = telemetry.meter
        self._router = router
        self._proxy = proxy
        for name, what, read in (
            (
                "meshlet_proxy_connect_duration_seconds",
                "Time to connect to an endpoint (connects that succeeded), by cluster",
                lambda c: c.counters.connect_times,
            ),
            (
                "meshlet_proxy_connection_duration_seconds",
                "How long relayed connections stayed open (once closed), by cluster",
                lambda c: c.counters.durations,
            ),
            (
                "meshlet_proxy_request_duration_seconds",
                "HTTP requests from the first header in to the last byte out, retries "
                "included (Envoy's upstream_rq_time), by cluster",
                lambda c: c.counters.request_times,
            ),
        ):
            telemetry.registry.register(
                HistogramCollector(name, what, "cluster", self._buckets(read))
            )
        for name, description, read in _CLUSTER_COUNTERS:
            meter.create_observable_counter(
                f"meshlet.proxy.{name}",
                callbacks=[self._per_cluster(read)],
                description=description,
            )
        meter.create_observable_gauge(
            "meshlet.proxy.connections.active",
            callbacks=[self._per_cluster(lambda c: c.active)],
            description="Open connections (and connects in progress), by cluster",
        )
        meter.create_observable_gauge(
            "meshlet.proxy.requests.active",
            callbacks=[self._per_cluster(_open_requests)],
            description="HTTP requests open now (Envoy's upstream_rq_active), by cluster",
        )
        meter.create_observable_counter(
            "meshlet.proxy.responses",
            callbacks=[self._responses],
            description="HTTP answers by status class (Envoy's upstream_rq_2xx, ...) and, "
            "for gRPC, by grpc-status, by cluster; the sidecar's own answers included",
        )
        meter.create_observable_gauge(
            "meshlet.proxy.endpoints.ejected",
            callbacks=[self._ejected],
            description="Endpoints ejected now, by cluster",
        )
        meter.create_observable_counter(
            "meshlet.proxy.refused",
            callbacks=[self._refused],
            description="Connections refused: over the circuit breaker (circuit_breaker) or "
            "with no endpoint left to try (no_endpoint), by cluster",
        )
        meter.create_observable_counter(
            "meshlet.proxy.bytes",
            callbacks=[self._bytes],
            unit="By",
            description="Bytes relayed, by cluster and direction "
            "(upstream: client to endpoint, downstream: endpoint to client)",
        )
        meter.create_observable_counter(
            "meshlet.proxy.downstream_refused",
            callbacks=[self._downstream_refused],
            description="Connections refused before any route: the proxy's own passthrough "
            "connect captured and back (looped), one that came to the proxy's port without a "
            "redirect (not_redirected), and accept() failures (accept_failed)",
        )
        meter.create_observable_counter(
            "meshlet.proxy.protocol_errors",
            callbacks=[self._protocol_errors],
            description="HTTP client connections ended for what the protocol forbids, by "
            "protocol (http1: a request refused with 400, 431, 501 or 505, or an endpoint's "
            "malformed answer; http2: a frame the protocol forbids) and the HTTP/2 "
            "rapid-reset floods (reason rapid_reset)",
        )
        meter.create_observable_counter(
            "meshlet.proxy.endpoint.connections",
            callbacks=[self._per_endpoint],
            description="Connections made to each endpoint, by cluster and endpoint",
        )

    def _buckets(
        self, read: Callable[[ClusterRuntime], Buckets | None]
    ) -> Callable[[], list[tuple[str, Buckets]]]:
        def series() -> list[tuple[str, Buckets]]:
            return [(c.name, b) for c in self._clusters() if (b := read(c)) is not None]

        return series

    def _clusters(self) -> list[ClusterRuntime]:
        """The clusters a connection has used: a sidecar of a mesh of 10,000 services
        talks to a few, and a series per cluster for every one of them would cost every
        scrape (and Prometheus) in proportion to the mesh, not to the pod's traffic."""
        clusters = self._router.clusters
        passthrough = self._router.passthrough.cluster
        extra = [] if passthrough.name in clusters else [passthrough]
        return [c for c in (*clusters.values(), *extra) if c.used]

    def _per_cluster(self, read: _Read) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(read(c), {"cluster": c.name}) for c in self._clusters()]

        return observe

    def _responses(self, _options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for c in self._clusters():
            for status_class, count in (c.counters.by_status_class or {}).items():
                out.append(Observation(count, {"cluster": c.name, "status_class": status_class}))
            for grpc_status, count in (c.counters.by_grpc_status or {}).items():
                out.append(Observation(count, {"cluster": c.name, "grpc_status": grpc_status}))
        return out

    def _ejected(self, _options: CallbackOptions) -> Iterable[Observation]:
        proxy = self._proxy()
        if proxy is None:
            return []
        now = proxy.loop.time()
        return [
            Observation(len(c.built.ejected(now)) if c.built else 0, {"cluster": c.name})
            for c in self._clusters()
        ]

    def _refused(self, _options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for c in self._clusters():
            out.append(
                Observation(c.counters.refused, {"cluster": c.name, "reason": "circuit_breaker"})
            )
            out.append(
                Observation(c.counters.no_endpoint, {"cluster": c.name, "reason": "no_endpoint"})
            )
        return out

    def _bytes(self, _options: CallbackOptions) -> Iterable[Observation]:
        proxy = self._proxy()
        live = proxy.live_bytes() if proxy is not None else {}
        out = []
        for c in self._clusters():
            up, down = live.get(c.name, (0, 0))
            out.append(
                Observation(c.counters.bytes_up + up, {"cluster": c.name, "direction": "upstream"})
            )
            out.append(
                Observation(
                    c.counters.bytes_down + down, {"cluster": c.name, "direction": "downstream"}
                )
            )
        return out

    def _downstream_refused(self, _options: CallbackOptions) -> Iterable[Observation]:
        proxy = self._proxy()
        if proxy is None:
            return []
        counters = proxy.counters
        return [
            Observation(counters.looped, {"reason": "looped"}),
            Observation(counters.not_redirected, {"reason": "not_redirected"}),
            Observation(counters.accept_failures, {"reason": "accept_failed"}),
        ]

    def _protocol_errors(self, _options: CallbackOptions) -> Iterable[Observation]:
        proxy = self._proxy()
        if proxy is None:
            return []
        return [
            Observation(proxy.http1.protocol_errors, {"protocol": "http1", "reason": "malformed"}),
            Observation(proxy.http2.protocol_errors, {"protocol": "http2", "reason": "malformed"}),
            Observation(proxy.http2.reset_floods, {"protocol": "http2", "reason": "rapid_reset"}),
        ]

    def _per_endpoint(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(h.connections, {"cluster": c.name, "endpoint": h.name})
            for c in self._clusters()
            for h in (c.built.hosts if c.built else ())
        ]
