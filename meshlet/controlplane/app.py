"""`meshlet control-plane`: manifests -> mesh -> resources -> snapshot -> ADS streams."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
from dataclasses import dataclass

from meshlet import defaults
from meshlet.controlplane.admin import build_admin
from meshlet.controlplane.cache import SnapshotCache, build_snapshot
from meshlet.controlplane.metrics import ControlPlaneMetrics
from meshlet.controlplane.server import AdsServer, start_server
from meshlet.controlplane.sources.manifests import LoadResult, ManifestSource
from meshlet.flags import grpc_address
from meshlet.model import Mesh
from meshlet.process import run_until_signal
from meshlet.telemetry import Telemetry
from meshlet.xds.translate import translate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControlPlaneConfig:
    manifests: str
    xds_address: tuple[str, int]
    admin_address: tuple[str, int]
    cluster_domain: str = defaults.CLUSTER_DOMAIN
    outbound_port: int = defaults.OUTBOUND_PORT


class ControlPlane:
    """Turns each new Mesh into a snapshot; the streams take it from there."""

    def __init__(self, config: ControlPlaneConfig) -> None:
        self.config = config
        self.cache = SnapshotCache()
        self.problems: list[str] = []
        self._mesh: Mesh | None = None

    def apply(self, result: LoadResult, seen_at: float) -> None:
        if list(result.errors) != self.problems:
            for problem in result.errors:
                log.error("manifests: %s (the last good state keeps being served)", problem)
            if self.problems and not result.errors:
                log.info("manifests: all problems fixed")
            self.problems[:] = result.errors
        if result.mesh == self._mesh:
            return
        self._mesh = result.mesh
        generated = translate(result.mesh, self.config.cluster_domain, self.config.outbound_port)
        snapshot = build_snapshot(generated, self.cache.snapshot, seen_at)
        self.cache.publish(snapshot)
        log.info(
            "snapshot %d: %d services, %s",
            snapshot.generation,
            len(result.mesh.services),
            ", ".join(f"{n} {t.rsplit('.', 1)[-1]}" for t, n in snapshot.counts().items()),
        )


async def serve(config: ControlPlaneConfig, stop: asyncio.Event) -> int:
    source = ManifestSource(config.manifests)
    first = source.load()
    if first.errors:
        for problem in first.errors:
            print(f"meshlet control-plane: {problem}", file=sys.stderr)
        print("meshlet control-plane: fix the manifests above; nothing was served", file=sys.stderr)
        return 2
    plane = ControlPlane(config)
    plane.apply(first, time.monotonic())
    # The snapshot and the parsed objects live for the whole run: keep the
    # collector from re-scanning them on every full collection.
    gc.freeze()
    telemetry = Telemetry("meshlet-control-plane")
    ads = AdsServer(plane.cache, ControlPlaneMetrics(telemetry, lambda: plane.cache.snapshot))
    grpc_server, xds_port = await start_server(ads, grpc_address(*config.xds_address))
    admin = build_admin(plane.cache, ads, telemetry, plane.problems)
    admin_port = await admin.start(*config.admin_address)
    log.info(
        "serving xDS on %s:%d, admin on %s:%d",
        config.xds_address[0],
        xds_port,
        config.admin_address[0],
        admin_port,
    )

    def reload() -> None:
        seen_at = time.monotonic()  # push latency counts parsing and translating too
        result = source.load()
        try:
            plane.apply(result, seen_at)
        except Exception as exc:
            log.exception("building a snapshot failed; the last good one keeps being served")
            plane.problems[:] = [*result.errors, f"internal error building the snapshot: {exc}"]

    watcher = asyncio.create_task(source.watch(reload))
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await grpc_server.stop(grace=1)
        await admin.close()
        telemetry.shutdown()
    return 0


def run(config: ControlPlaneConfig) -> int:
    return run_until_signal("control-plane", lambda stop: serve(config, stop))
