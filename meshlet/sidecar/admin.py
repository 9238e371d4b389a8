"""The sidecar's admin endpoints: readiness, what it accepted, its clusters, metrics."""

from __future__ import annotations

from collections.abc import Callable

from meshlet.admin_http import AdminServer, Response
from meshlet.model import Endpoint
from meshlet.sidecar.state import SidecarState
from meshlet.sidecar.xds_client import XdsStatus
from meshlet.telemetry import Telemetry
from meshlet.xds import types


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


def _endpoint(endpoint: Endpoint) -> dict[str, object]:
    return {
        "address": f"{endpoint.address}:{endpoint.port}",
        "health": endpoint.health.value,
        "zone": endpoint.zone,
        "weight": endpoint.weight,
    }


def clusters(state: SidecarState) -> dict[str, object]:
    return {
        name: {
            "lb_policy": cluster.lb_policy.value,
            "service": f"{cluster.namespace}/{cluster.service}" if cluster.service else "",
            "endpoints": [_endpoint(e) for e in state.endpoints.get(name, ())],
        }
        for name, cluster in sorted(state.clusters.items())
    }


def build_admin(
    state: Callable[[], SidecarState], status: Callable[[], XdsStatus], telemetry: Telemetry
) -> AdminServer:
    def ready(_: object) -> Response:
        if not status().ready:
            return Response.text("no config accepted yet\n", 503)
        return Response.text("ready\n")

    return AdminServer(
        {
            "/ready": ready,
            "/config_dump": lambda _: Response.json(config_dump(state(), status())),
            "/clusters": lambda _: Response.json(clusters(state())),
            "/metrics": lambda _: Response(
                200, telemetry.prometheus_text(), "text/plain; version=0.0.4; charset=utf-8"
            ),
        }
    )
