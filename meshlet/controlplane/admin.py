"""The control plane's admin endpoints: health, readiness, metrics, and what it serves."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf import any_pb2, json_format

from meshlet import build_info
from meshlet.admin_http import AdminServer, Response, log_level_routes
from meshlet.controlplane.cache import SnapshotCache
from meshlet.controlplane.server import AdsServer
from meshlet.telemetry import Telemetry
from meshlet.xds import types


def _config(cache: SnapshotCache) -> Response:
    snapshot = cache.snapshot
    if snapshot is None:
        return Response.json({"error": "no snapshot yet"}, 503)
    out: dict[str, object] = {"generation": snapshot.generation}
    for type_url, by_name in snapshot.resources.items():
        out[types.short_name(type_url)] = {
            "version": snapshot.type_versions[type_url],
            "resources": {
                name: {
                    "version": r.version,
                    "on_demand": r.on_demand,
                    "resource": json_format.MessageToDict(any_pb2.Any.FromString(r.any_bytes)),
                }
                for name, r in by_name.items()
            },
        }
    return Response.json(out)


def _versions(cache: SnapshotCache) -> Response:
    """What the control plane serves now, per type: a client that ACKed it is in sync.
    A few fields whatever the cluster's size (`/debug/config` has every resource)."""
    snapshot = cache.snapshot
    if snapshot is None:
        return Response.json({"error": "no snapshot yet"}, 503)
    return Response.json(
        {
            "generation": snapshot.generation,
            "types": {types.short_name(t): v for t, v in sorted(snapshot.type_versions.items())},
        }
    )


def build_admin(
    cache: SnapshotCache,
    ads: AdsServer,
    telemetry: Telemetry,
    problems: list[str],
    sources: Callable[[], object],
    not_ready: str = "no snapshot yet",
    also_ready: Callable[[], str] = lambda: "",
) -> AdminServer:
    """`problems` is the live list of source errors (empty when all is well); `sources`
    says what the source is doing; `not_ready` is what /readyz says before the first
    snapshot; `also_ready` says why the rest is not ready yet ("" when it is)."""

    def ready(_: object) -> Response:
        if cache.snapshot is None:
            return Response.text(f"{not_ready}\n", 503)
        waiting = also_ready()
        if waiting:
            return Response.text(f"{waiting}\n", 503)
        return Response.text("ready\n")

    log_levels, set_log_levels = log_level_routes()
    return AdminServer(
        {
            **log_levels,
            "/healthz": lambda _: Response.text("ok\n"),
            "/version": lambda _: Response.json(build_info()),
            "/readyz": ready,
            "/metrics": lambda _: Response(
                200, telemetry.prometheus_text(), "text/plain; version=0.0.4; charset=utf-8"
            ),
            "/debug/config": lambda _: _config(cache),
            "/debug/clients": lambda _: Response.json(ads.clients()),
            "/debug/versions": lambda _: _versions(cache),
            "/debug/problems": lambda _: Response.json(problems),
            "/debug/sources": lambda _: Response.json(sources()),
        },
        post_routes=set_log_levels,
        loopback_only=frozenset(set_log_levels),  # /readyz and /metrics are for the cluster
    )
