"""The Kubernetes source in-process against the real API server: the shared table, config."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshlet.controlplane.registry import Registry
from meshlet.controlplane.sources.base import Kind
from meshlet.controlplane.sources.kube_client import KubeConfigError, load_client
from meshlet.controlplane.sources.kubernetes import KubernetesSource, WatchOptions
from tests import source_table
from tests.k8s.cluster import Cluster
from tests.tcp_relay import relay

pytestmark = pytest.mark.timeout(300)  # the first one to run starts the test cluster

# Short enough that a test sees a watch end and resume.
QUICK = WatchOptions(min_watch_seconds=2, read_timeout=5.0)


async def eventually(check: Callable[[], Any], seconds: float, what: str) -> Any:
    """Await until `check()` is truthy (the source's threads post to this loop meanwhile)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        last = check()
        if last:
            return last
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def watching(
    kube: Cluster,
    namespaces: tuple[str, ...],
    kubeconfig: Path | None = None,
    options: WatchOptions = QUICK,
) -> AsyncIterator[tuple[KubernetesSource, Registry]]:
    registry = Registry()
    client = load_client(str(kubeconfig or kube.admin_kubeconfig))
    source = KubernetesSource(client, registry, namespaces, options)
    task = asyncio.create_task(source.run())
    try:
        yield source, registry
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def kubectl(kube: Cluster, *args: str, input: str | None = None) -> None:
    await asyncio.to_thread(kube.kubectl, *args, input=input)


async def test_the_table_through_the_kubernetes_api(kube: Cluster, namespace: str) -> None:
    steps = source_table.table(namespace, ("10.96.101.10", "10.96.101.11", "10.96.101.12"))
    async with watching(kube, (namespace,)) as (_, registry):
        await eventually(lambda: registry.is_synced, 30, "the first lists")
        # --watch-namespace: default/kubernetes (and every other test's) is not seen.
        assert registry.counts() == {Kind.SERVICE: 0, Kind.ENDPOINT_SLICE: 0}
        for step in steps:
            if step.put:
                await kubectl(kube, "apply", "-f", "-", input=yaml.safe_dump_all(step.put))
            for obj in step.delete:
                name = obj["metadata"]["name"]
                await kubectl(kube, "delete", "-n", namespace, obj["kind"].lower(), name)

            def settled(step: source_table.Step = step) -> bool:
                result = registry.result()
                return source_table.observed(
                    result.mesh, namespace
                ) == step.mesh and source_table.matches(step.problems, result.errors)

            try:
                await eventually(settled, 15, step.what)
            except AssertionError:
                result = registry.result()
                print(source_table.observed(result.mesh, namespace), result.errors)
                raise


async def test_watches_end_and_resume_without_telling_anything_again(
    kube: Cluster, namespace: str
) -> None:
    changes: list[int] = []
    obj = source_table.service(namespace, "web", "10.96.101.20")
    await kubectl(kube, "apply", "-f", "-", input=yaml.safe_dump(obj))
    async with watching(kube, (namespace,)) as (source, registry):
        await eventually(lambda: registry.is_synced, 30, "the first lists")
        registry.on_change = lambda: changes.append(registry.generation)
        # Each watch times out on the server after 2-3 s; wait for a few to end.
        await eventually(
            lambda: all(s.watches >= 3 for s in source.status()), 30, "resumed watches"
        )
        assert changes == []
        assert all(s.lists == 1 and s.relists == 0 and not s.problem for s in source.status())
        # And a change after all that still arrives.
        obj["spec"]["ports"][0]["port"] = 81
        await kubectl(kube, "apply", "-f", "-", input=yaml.safe_dump(obj))
        await eventually(
            lambda: registry.result().mesh.services[0].ports[0].port == 81, 10, "the change"
        )


async def test_a_broken_watch_resumes_where_it_was(kube: Cluster, namespace: str) -> None:
    """Cut mid-watch, after an object came and went: the resumed watch starts from the
    last version told, so nothing is told again (no ghost of the deleted object)."""
    port = int(kube.server.rsplit(":", 1)[1])
    long_watches = WatchOptions(min_watch_seconds=120, read_timeout=30.0)
    with relay(("127.0.0.1", port)) as cuttable:
        kubeconfig = kube.admin_kubeconfig_via(f"https://127.0.0.1:{cuttable.port}")
        async with watching(kube, (namespace,), kubeconfig, long_watches) as (source, registry):
            await eventually(lambda: registry.is_synced, 30, "the first lists")
            stay = source_table.service(namespace, "stay", "10.96.101.30")
            ghost = source_table.service(namespace, "ghost", "10.96.101.31")
            await kubectl(kube, "apply", "-f", "-", input=yaml.safe_dump_all([stay, ghost]))
            await kubectl(kube, "delete", "-n", namespace, "service", "ghost")
            services = next(s for s in source.status() if s.resource == "services")
            await eventually(lambda: services.events == 3, 15, "stay, ghost and its deletion")
            assert [s.name for s in registry.result().mesh.services] == ["stay"]

            changes: list[int] = []
            registry.on_change = lambda: changes.append(registry.generation)
            watches = {s.resource: s.watches for s in source.status()}
            assert cuttable.cut() >= 2  # both watches were on it
            await eventually(
                lambda: all(s.watches > watches[s.resource] for s in source.status()),
                30,
                "both watches to resume",
            )
            # A change after the cut arrives, and it is the only news.
            stay["spec"]["ports"][0]["port"] = 81
            await kubectl(kube, "apply", "-f", "-", input=yaml.safe_dump(stay))
            await eventually(
                lambda: registry.result().mesh.services[0].ports[0].port == 81, 15, "the change"
            )
            assert services.events == 4, "something told before the cut was told again"
            assert len(changes) == 1
            assert all(s.lists == 1 and s.relists == 0 for s in source.status())


def test_config_order(kube: Cluster, tmp_path: Path) -> None:
    token_dir = tmp_path / "serviceaccount"
    token_dir.mkdir()
    (token_dir / "token").write_text("not-a-real-token")
    (token_dir / "ca.crt").write_text(kube.ca.read_text())
    in_pod = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    explicit = load_client(str(kube.admin_kubeconfig), environ={**in_pod, "HOME": str(tmp_path)})
    assert (explicit.server, explicit.origin) == (
        kube.server,
        f"kubeconfig {kube.admin_kubeconfig}",
    )
    from_env = load_client(None, environ={**in_pod, "KUBECONFIG": str(kube.admin_kubeconfig)})
    assert from_env.server == kube.server
    in_cluster = load_client(None, environ=in_pod, service_account_dir=str(token_dir))
    assert in_cluster.server == "https://10.96.0.1:443"
    assert in_cluster.origin == f"in-cluster service account ({token_dir})"
    with pytest.raises(KubeConfigError, match="in-cluster configuration"):
        load_client(None, environ=in_pod, service_account_dir=str(tmp_path / "missing"))
    with pytest.raises(KubeConfigError, match="no Kubernetes configuration"):
        load_client(None, environ={"HOME": str(tmp_path)})
