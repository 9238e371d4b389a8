"""The sidecar's admin endpoints: readiness, what it accepted, its clusters, metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from meshlet.admin_http import AdminServer, Response, log_level_routes
from meshlet.flags import grpc_address
from meshlet.listen import listening
from meshlet.model import Endpoint
from meshlet.sidecar.proxy.balancer import Host, host_name
from meshlet.sidecar.proxy.router import ClusterRuntime, Router
from meshlet.sidecar.state import SidecarState
from meshlet.sidecar.xds_client import XdsStatus
from meshlet.telemetry import Telemetry
from meshlet.xds import types

log = logging.getLogger(__name__)


def config_dump(state: SidecarState, status: XdsStatus) -> dict[str, object]:
    return {
        "xds": status.as_dict(),
        "resources": {
            types.short_name(type_url): {
                "version": state.type_versions.get(type_url, ""),
                "resources": {
                    name: {"version": r.version, "resource": r.json} for name, r in by_name.items()
                },
            }
            for type_url, by_name in state.accepted.items()
        },
    }


def _endpoint(endpoint: Endpoint, host: Host | None, now: float) -> dict[str, object]:
    out: dict[str, object] = {
        "address": f"{endpoint.address}:{endpoint.port}",
        "health": endpoint.health.value,
        "zone": endpoint.zone,
        "weight": endpoint.weight,
    }
    if host is not None:
        until = host.outlier.ejected_until
        out |= {
            "active_connections": host.active,
            "active_requests": host.requests,
            "connections": host.connections,
            "connect_failures": host.connect_failures,
            "ejected": host.outlier.is_ejected(now),
            "ejected_for_seconds": round(until - now, 3) if until is not None else 0,
            "times_ejected": host.outlier.ejections,
        }
    return out


def _runtime(runtime: ClusterRuntime | None) -> dict[str, object]:
    if runtime is None:
        return {}
    return {
        "active_connections": runtime.active,
        "connections": runtime.counters.opened,
        "connect_failures": runtime.counters.connect_failures,
        "retries": runtime.counters.retries,
        "ejections": runtime.counters.ejections,
        "refused_circuit_breaker": runtime.counters.refused,
        "refused_no_endpoint": runtime.counters.no_endpoint,
        "max_connections": runtime.config.max_connections,
        # HTTP: requests balanced one by one, their answers, the pooled connections.
        "requests": runtime.counters.requests,
        "responses": dict(runtime.counters.by_status_class or {}),
        "grpc_statuses": dict(runtime.counters.by_grpc_status or {}),
        "pool_connections": runtime.counters.pool_connections,
        "timeouts": runtime.counters.timeouts,
    }


def clusters(
    state: SidecarState, runtimes: Mapping[str, ClusterRuntime] | None = None, now: float = 0.0
) -> dict[str, object]:
    """Each cluster, its endpoints and their health; with `runtimes`, what the proxy did."""
    out: dict[str, object] = {}
    for name, cluster in sorted(state.clusters.items()):
        runtime = (runtimes or {}).get(name)
        built = runtime.built if runtime is not None else None
        hosts = {h.name: h for h in built.hosts} if built is not None else {}
        out[name] = {
            "lb_policy": cluster.lb_policy.value,
            "service": f"{cluster.namespace}/{cluster.service}" if cluster.service else "",
            "endpoints": [
                _endpoint(e, hosts.get(host_name(e)), now) for e in state.endpoints.get(name, ())
            ],
            **_runtime(runtime),
        }
    return out


def _ready(status: Callable[[], XdsStatus]) -> Callable[[object], Response]:
    def ready(_: object) -> Response:
        now = status()
        if not now.ready:
            return Response.text("no config accepted yet\n", 503)
        if now.stale:
            # Still ready: the pod keeps serving (and stays in its Services) while the
            # control plane is away.
            return Response.text(f"ready, stale: serving the config saved in {now.restored_from}\n")
        return Response.text("ready\n")

    return ready


def _metrics(telemetry: Telemetry) -> Callable[[object], Response]:
    return lambda _: Response(
        200, telemetry.prometheus_text(), "text/plain; version=0.0.4; charset=utf-8"
    )


def build_admin(
    state: Callable[[], SidecarState],
    status: Callable[[], XdsStatus],
    telemetry: Telemetry,
    router: Router | None = None,
    now: Callable[[], float] = time.monotonic,
    quit: Callable[[], None] | None = None,
) -> AdminServer:
    """The admin port (loopback): everything, and with `quit` POST /quitquitquit to stop
    the sidecar (as Istio's: a classic Job's main container calls it when it is done)."""

    def quitquitquit(_: object, __: bytes) -> Response:
        assert quit is not None
        log.info("asked to quit (POST /quitquitquit)")
        quit()
        return Response.text("stopping\n")

    log_levels, set_log_levels = log_level_routes()
    posts = {**set_log_levels, **({"/quitquitquit": quitquitquit} if quit is not None else {})}
    return AdminServer(
        {
            **log_levels,
            "/ready": _ready(status),
            "/config_dump": lambda _: Response.json(config_dump(state(), status())),
            "/clusters": lambda _: Response.json(
                clusters(state(), router.clusters if router else None, now())
            ),
            "/metrics": _metrics(telemetry),
        },
        post_routes=posts,
        max_body=1024,
        loopback_only=frozenset(set_log_levels),  # also when the port is moved off loopback
    )


# What each read-only server is for, as a port clash names it.
_ROLES = {"health": "health probes", "metrics": "metrics"}


class Probes:
    """The read-only ports on the pod IP: health for the kubelet's probes (as Istio's
    15021 /healthz/ready) and metrics for Prometheus (as its 15020 /stats/prometheus)."""

    def __init__(self, status: Callable[[], XdsStatus], telemetry: Telemetry) -> None:
        metrics = _metrics(telemetry)
        self._servers = {
            "health": AdminServer({"/healthz/ready": _ready(status)}),
            "metrics": AdminServer({"/stats/prometheus": metrics, "/metrics": metrics}),
        }
        self._started: list[AdminServer] = []

    async def start(
        self, health: tuple[str, int] | None, metrics: tuple[str, int] | None
    ) -> list[str]:
        """Serve the ones given an address; says where each listens."""
        where = []
        for name, address in (("health", health), ("metrics", metrics)):
            if address is not None:
                server = self._servers[name]
                with listening(_ROLES[name], *address):
                    port = await server.start(*address)
                self._started.append(server)
                where.append(f"{name} on {grpc_address(address[0], port)}")
        return where

    async def close(self) -> None:
        for server in self._started:
            await server.close()
