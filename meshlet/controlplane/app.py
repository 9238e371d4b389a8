"""`meshlet control-plane`: source -> registry -> Mesh -> resources -> snapshot -> ADS streams."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from meshlet import defaults
from meshlet.controlplane import change_log
from meshlet.controlplane.admin import build_admin
from meshlet.controlplane.builder import SnapshotBuilder
from meshlet.controlplane.cache import SnapshotCache
from meshlet.controlplane.injection import WebhookConfig, WebhookRunner
from meshlet.controlplane.metrics import ControlPlaneMetrics
from meshlet.controlplane.registry import LoadResult, Registry
from meshlet.controlplane.server import AdsServer, start_server
from meshlet.controlplane.sources.kube_client import KubeConfigError, load_client
from meshlet.controlplane.sources.kubernetes import KubernetesSource
from meshlet.controlplane.sources.manifests import ManifestSource
from meshlet.flags import grpc_address
from meshlet.inject.settings import SettingsError
from meshlet.listen import ListenError, listening
from meshlet.process import run_until_signal
from meshlet.telemetry import Telemetry

log = logging.getLogger(__name__)

# Registry changes this close together make one snapshot (an API watch sends a
# Deployment's rollout as a burst of slice updates).
COALESCE_SECONDS = 0.005


@dataclass(frozen=True)
class ControlPlaneConfig:
    xds_address: tuple[str, int]
    admin_address: tuple[str, int]
    # A folder of manifests, or None: the Kubernetes API.
    manifests: str | None = None
    max_manifest_bytes: int = defaults.MAX_MANIFEST_BYTES
    kubeconfig: str | None = None
    watch_namespaces: tuple[str, ...] = ()
    cluster_domain: str = defaults.CLUSTER_DOMAIN
    outbound_port: int = defaults.OUTBOUND_PORT
    webhook: WebhookConfig | None = None
    max_stream_age: float = defaults.XDS_MAX_STREAM_AGE_SECONDS


class ControlPlane:
    """Turns each change of the Services into a snapshot; the streams take it from there."""

    def __init__(self, config: ControlPlaneConfig) -> None:
        self.config = config
        self.cache = SnapshotCache()
        self.problems: list[str] = []
        self.builder = SnapshotBuilder(config.cluster_domain, config.outbound_port)
        # After a failed build the registry's news of it is gone: look at everything.
        self._look_at_all = True

    def report(self, errors: tuple[str, ...], synced: bool = True) -> None:
        """The problems there are now; each new one is logged once."""
        if list(errors) == self.problems:
            return
        if synced:
            consequence = "the last good state keeps being served"
        else:
            consequence = "nothing is served until the sources are read whole"
        for problem in errors:
            if problem not in self.problems:
                log.error("%s (%s)", problem, consequence)
        if self.problems and not errors:
            log.info("all problems fixed")
        self.problems[:] = errors

    def apply(self, result: LoadResult, seen_at: float) -> None:
        self.report(result.errors)
        changed = None if self._look_at_all else result.changed
        self._look_at_all = True
        snapshot = self.builder.build(result.services, changed, seen_at)
        self._look_at_all = False
        if snapshot is None:
            return
        first = self.cache.snapshot is None
        self.cache.publish(snapshot)
        built = self.builder.report
        log.info(
            "snapshot %d: %d services (%d rebuilt, %d resources serialized), %s",
            snapshot.generation,
            len(result.services),
            len(built.services),
            built.count(),
            ", ".join(f"{n} {t.rsplit('.', 1)[-1]}" for t, n in snapshot.counts().items()),
        )
        if not first and built.changes:
            log.info("pushed: %s", change_log.summary(built.changes))
        if first:
            # The snapshot and the parsed objects live for the whole run: keep the
            # collector from re-scanning them on every full collection.
            gc.freeze()


class _Rebuilds:
    """Registry changes -> one apply() soon after, with when the first change was seen."""

    def __init__(self, plane: ControlPlane, registry: Registry) -> None:
        self._plane = plane
        self._registry = registry
        self._seen_at: float | None = None

    def changed(self) -> None:
        """The registry changed (objects, problems or sync): apply it soon."""
        if self._seen_at is None:
            self._seen_at = time.monotonic()
            asyncio.get_running_loop().call_later(COALESCE_SECONDS, self.run)

    def seen_since(self, since: float) -> None:
        """A change pending now was there when reading it began, at `since`: push
        latency counts the reading too. No change pending: nothing to do."""
        if self._seen_at is not None:
            self._seen_at = min(self._seen_at, since)

    def run(self) -> None:
        seen_at, self._seen_at = self._seen_at or time.monotonic(), None
        result = self._registry.result()
        if not self._registry.is_synced:
            # Never a partial config: nothing is served before every first list.
            self._plane.report(result.errors, synced=False)
            return
        try:
            self._plane.apply(result, seen_at)
        except Exception as exc:
            log.exception("building a snapshot failed; the last good one keeps being served")
            self._plane.problems[:] = [
                *result.errors,
                f"internal error building the snapshot: {exc}",
            ]


async def serve(config: ControlPlaneConfig, stop: asyncio.Event) -> int:
    plane = ControlPlane(config)
    registry = Registry()
    rebuilds = _Rebuilds(plane, registry)
    sources_status: Callable[[], object]
    api = None
    manifests: ManifestSource | None = None
    kubernetes: KubernetesSource | None = None
    if config.manifests is not None:
        try:
            os.stat(config.manifests)
        except OSError as exc:
            print(
                f"meshlet control-plane: --manifests {config.manifests}: {exc.strerror}",
                file=sys.stderr,
            )
            return 2
        source = manifests = ManifestSource(config.manifests, registry, config.max_manifest_bytes)
        await source.reload()
        # A wrong object at start is reported and the rest served, as on any later
        # reload. A file not read whole (nor the folder) holds the source's `synced`
        # back: nothing is served (a restarted control plane never tells clients that
        # the services of an unreadable file are gone) until a reload reads it.
        rebuilds.run()
        registry.on_change = rebuilds.changed

        async def reload() -> None:
            started = time.monotonic()
            await source.reload()
            rebuilds.seen_since(started)

        watch = source.watch(reload)
        sources_status = lambda: {"manifests": source.path}  # noqa: E731
        not_ready = "waiting for every manifest file to be read whole (see /debug/problems)"
    else:
        try:
            client = load_client(config.kubeconfig)
        except KubeConfigError as exc:
            print(f"meshlet control-plane: {exc}", file=sys.stderr)
            return 2
        api = client.api
        registry.on_change = rebuilds.changed
        kubernetes = KubernetesSource(client, registry, config.watch_namespaces)
        watch = kubernetes.run()
        sources_status = lambda: {  # noqa: E731
            "kubernetes": {
                "server": client.server,
                "config": client.origin,
                "reflectors": [dataclasses.asdict(s) for s in kubernetes.status()],
            }
        }
        not_ready = "waiting for the first complete list of Services and EndpointSlices"

    webhook = None
    if config.webhook is not None and (api is not None or config.webhook.cert_file):
        webhook = WebhookRunner(config.webhook, api, registry.source_problems)
        try:
            await webhook.start()
        except ListenError:
            await webhook.close()
            raise
        except (SettingsError, ValueError, OSError) as exc:
            print(f"meshlet control-plane: webhook: {exc}", file=sys.stderr)
            await webhook.close()
            return 2
    elif config.webhook is not None:
        log.info("injection webhook off: serving manifests, and no --webhook-cert-file given")
    telemetry = Telemetry("meshlet-control-plane")
    metrics = ControlPlaneMetrics(telemetry, lambda: plane.cache.snapshot)
    if kubernetes is not None:
        metrics.watch_sources(kubernetes.status)
    ads = AdsServer(plane.cache, metrics)
    try:
        grpc_server, xds_port = await start_server(
            ads, grpc_address(*config.xds_address), max_stream_age=config.max_stream_age
        )
    except OSError:
        if webhook is not None:
            await webhook.close()
        raise

    def webhook_ready() -> str:
        # A replica is an endpoint of the Service the API server calls: ready only once
        # its webhook answers, or a failurePolicy Fail would refuse pods meanwhile.
        if webhook is None or webhook.listening:
            return ""
        return "the injection webhook has no certificate yet"

    admin = build_admin(
        plane.cache, ads, telemetry, plane.problems, sources_status, not_ready, webhook_ready
    )
    try:
        with listening("admin", *config.admin_address):
            admin_port = await admin.start(*config.admin_address)
    except OSError:
        if webhook is not None:
            await webhook.close()
        await grpc_server.stop(grace=None)
        raise
    log.info(
        "serving xDS on %s:%d, admin on %s:%d",
        config.xds_address[0],
        xds_port,
        config.admin_address[0],
        admin_port,
    )
    watcher = asyncio.create_task(watch)
    try:
        await stop.wait()
    finally:
        if manifests is not None:
            manifests.stop()  # a parse in progress (a child process) ends now
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if webhook is not None:
            await webhook.close()
        await grpc_server.stop(grace=1)
        await admin.close()
        telemetry.shutdown()
    return 0


def run(config: ControlPlaneConfig) -> int:
    return run_until_signal("control-plane", lambda stop: serve(config, stop))
