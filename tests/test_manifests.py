"""The manifest source on real files: loading, bad files, and watching for changes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from meshlet.controlplane.registry import LoadResult, Registry
from meshlet.controlplane.sources import inotify
from meshlet.controlplane.sources.manifests import ManifestSource
from meshlet.model import Endpoint, Health, LbPolicy, Mesh, ServicePort

DATA = Path(__file__).parent / "data"
WAIT = 3.0  # seconds a change may take before the test fails; changes take well under 1


def service_yaml(
    name: str, ip: str, port: int = 80, namespace: str = "shop", created: str = ""
) -> str:
    # Unquoted, as kubectl prints it: YAML reads it as a timestamp.
    timestamp = f"\n          creationTimestamp: {created}" if created else ""
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Service
        metadata:
          name: {name}
          namespace: {namespace}{timestamp}
        spec:
          clusterIP: {ip}
          ports:
          - name: http
            port: {port}
            targetPort: 8080
        """
    )


def slice_yaml(service: str, *addresses: str, namespace: str = "shop") -> str:
    endpoints = "".join(f"- addresses: [{a}]\n" for a in addresses)
    return (
        textwrap.dedent(
            f"""\
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata:
              name: {service}-1
              namespace: {namespace}
              labels:
                kubernetes.io/service-name: {service}
            addressType: IPv4
            ports:
            - name: http
              port: 8080
            endpoints:
            """
        )
        + endpoints
    )


class Loaded:
    """A manifest source and its registry, wired as the control plane wires them."""

    def __init__(self, path: Path) -> None:
        self.registry = Registry()
        self.source = ManifestSource(path, self.registry)

    def load(self) -> LoadResult:
        self.source.load()
        return self.registry.result()


def keys(mesh: Mesh) -> list[str]:
    return [s.key for s in mesh.services]


def addresses(mesh: Mesh, key: str) -> list[str]:
    (svc,) = (s for s in mesh.services if s.key == key)
    return [e.address for e in svc.ports[0].endpoints]


# --- Loading -------------------------------------------------------------------


def test_kubectl_list_sample() -> None:
    result = Loaded(DATA / "kubectl-list.yaml").load()
    assert result.errors == ()
    mesh = result.mesh
    assert keys(mesh) == ["default/kubernetes", "kube-system/kube-dns", "shop/web"]
    kubernetes, kube_dns, web = mesh.services

    assert kubernetes.cluster_ips == ("10.96.0.1",)
    assert kubernetes.ports == (ServicePort("https", 443, "TCP", (Endpoint("172.18.0.2", 6443),)),)

    coredns = ("10.244.0.3", "10.244.0.4")
    assert kube_dns.cluster_ips == ("10.96.0.10",)
    assert [(p.name, p.port, p.protocol) for p in kube_dns.ports] == [
        ("dns", 53, "UDP"),
        ("dns-tcp", 53, "TCP"),
        ("metrics", 9153, "TCP"),
    ]
    for port, number in zip(kube_dns.ports, (53, 53, 9153), strict=True):
        assert port.endpoints == tuple(
            Endpoint(a, number, Health.HEALTHY, "europe-west1-b") for a in coredns
        )

    # targetPort "http" resolved through the slice's port named http.
    assert web.lb_policy is LbPolicy.LEAST_REQUEST
    assert web.prefer_same_zone
    assert web.ports[0].endpoints == (
        Endpoint("10.244.1.17", 8080, Health.HEALTHY, "europe-west1-b"),
        Endpoint("10.244.1.23", 8080, Health.DRAINING, "europe-west1-b"),
        Endpoint("10.244.2.9", 8080, Health.HEALTHY, "europe-west1-c"),
    )


def test_folder_recursive_with_filters(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(service_yaml("web", "10.96.0.1"))
    (tmp_path / "team" / "deep").mkdir(parents=True)
    (tmp_path / "team" / "deep" / "api.yml").write_text(service_yaml("api", "10.96.0.2"))
    (tmp_path / "db.json").write_text(
        '{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},'
        ' "spec": {"clusterIP": "10.96.0.3", "ports": [{"port": 5432}]}}'
    )
    # Not manifests: other suffixes, hidden files and hidden folders.
    (tmp_path / "README.md").write_text("not: [yaml")
    (tmp_path / ".draft.yaml").write_text(service_yaml("draft", "10.96.0.9"))
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "old.yaml").write_text(service_yaml("old", "10.96.0.8"))

    result = Loaded(tmp_path).load()
    assert result.errors == ()
    assert keys(result.mesh) == ["default/db", "shop/api", "shop/web"]


def test_mounted_configmap_layout_read_once(tmp_path: Path) -> None:
    # What kubelet makes of a ConfigMap volume: visible symlinks into `..data`.
    version = tmp_path / "..2025_01_20_14_02_51.123456789"
    version.mkdir()
    (version / "web.yaml").write_text(service_yaml("web", "10.96.0.1"))
    (tmp_path / "..data").symlink_to(version.name)
    (tmp_path / "web.yaml").symlink_to("..data/web.yaml")

    result = Loaded(tmp_path).load()
    assert result.errors == ()
    assert keys(result.mesh) == ["shop/web"]


def test_single_file_multi_document(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "---\n"
        + service_yaml("web", "10.96.0.1")
        + "---\n"
        + "---\n# only a comment\n---\n"
        + "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n---\n"
        + slice_yaml("web", "10.1.0.2", "10.1.0.1")
        + "---\n"
    )
    result = Loaded(path).load()
    assert result.errors == ()
    assert addresses(result.mesh, "shop/web") == ["10.1.0.1", "10.1.0.2"]


def test_api_style_lists_without_item_kinds(tmp_path: Path) -> None:
    # How the API answers a list call: items carry neither kind nor apiVersion.
    (tmp_path / "services.yaml").write_text(
        "apiVersion: v1\nkind: ServiceList\nmetadata: {}\nitems:\n"
        "- metadata: {name: web, namespace: shop}\n"
        "  spec: {clusterIP: 10.96.0.1, ports: [{port: 80, targetPort: 8080}]}\n"
    )
    (tmp_path / "slices.yaml").write_text(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSliceList\nitems:\n"
        "- metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\n"
        "  addressType: IPv4\n  endpoints: [{addresses: [10.1.0.1]}]\n"
    )
    result = Loaded(tmp_path).load()
    assert result.errors == ()
    assert addresses(result.mesh, "shop/web") == ["10.1.0.1"]


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        pytest.param(
            "bad.yaml",
            service_yaml("web", "10.96.0.1", port=70000),
            "{path}: document 1 (Service shop/web):"
            " spec.ports[0].port 70000 is out of range 1-65535",
            id="invalid object",
        ),
        pytest.param(
            "bad.yaml",
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n"
            "  metadata: {name: web}\n  spec: {clusterIP: 10.96.0.1}\n",
            "{path}: document 1, items[0] (Service default/web):"
            " spec.ports is empty: a ClusterIP service needs at least one port",
            id="invalid list item",
        ),
        pytest.param(
            "bad.yaml",
            "- web\n- api\n",
            "{path}: document 1: expected a Kubernetes object (a mapping), got a list",
            id="not an object",
        ),
        pytest.param(
            "bad.yaml",
            "metadata: {name: web}\n",
            "{path}: document 1 (object default/web): apiVersion and kind are required",
            id="no kind",
        ),
        pytest.param(
            "bad.json",
            '{"apiVersion": "v1",',
            "{path}: invalid JSON: Expecting property name enclosed in double quotes"
            " at line 1, column 21",
            id="JSON syntax",
        ),
    ],
)
def test_bad_file_reported_and_never_good_contributes_nothing(
    tmp_path: Path, name: str, text: str, error: str
) -> None:
    (tmp_path / "good.yaml").write_text(service_yaml("api", "10.96.0.2"))
    (tmp_path / name).write_text(text)
    result = Loaded(tmp_path).load()
    assert result.errors == (error.format(path=tmp_path / name),)
    assert keys(result.mesh) == ["shop/api"]


def test_yaml_syntax_error_names_file_document_and_line(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(service_yaml("web", "10.96.0.1") + "---\nkind: Service\n  name: [oops\n")
    (error,) = Loaded(tmp_path).load().errors
    # libyaml and PyYAML word the problem slightly differently.
    assert re.fullmatch(
        f"{re.escape(str(path))}: document 2: invalid YAML: mapping values are not allowed"
        " (here|in this context) at line 14, column 7",
        error,
    )


def test_broken_file_keeps_its_last_good_objects(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(service_yaml("web", "10.96.0.1") + "---\n" + slice_yaml("web", "10.1.0.1"))
    source = Loaded(tmp_path)
    good = source.load()
    assert good.errors == ()

    path.write_text(service_yaml("web", "10.96.0.1") + "---\n" + slice_yaml("web", "10.1.0.999"))
    broken = source.load()
    assert broken.errors == (
        f"{path}: document 2 (EndpointSlice shop/web-1):"
        ' endpoints[0].addresses[0] "10.1.0.999" is not an IP address',
    )
    assert broken.mesh == good.mesh
    # Still broken: still reported, so the caller always sees the current problems.
    assert source.load().errors == broken.errors

    path.write_text(service_yaml("web", "10.96.0.1") + "---\n" + slice_yaml("web", "10.1.0.7"))
    fixed = source.load()
    assert fixed.errors == ()
    assert addresses(fixed.mesh, "shop/web") == ["10.1.0.7"]


def test_one_bad_object_in_a_file_never_holds_back_the_others(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(service_yaml("web", "10.96.0.1") + "---\n" + slice_yaml("web", "10.1.0.1"))
    source = Loaded(tmp_path)
    assert source.load().errors == ()

    # The Service turns invalid while its slice moves on: the slice's change applies,
    # the Service keeps its last good version.
    path.write_text(
        service_yaml("web", "10.96.0.1", port=70000) + "---\n" + slice_yaml("web", "10.1.0.2")
    )
    result = source.load()
    assert result.errors == (
        f"{path}: document 1 (Service shop/web): spec.ports[0].port 70000 is out of range 1-65535",
    )
    (web,) = result.mesh.services
    assert web.ports[0].port == 80
    assert addresses(result.mesh, "shop/web") == ["10.1.0.2"]


def test_an_object_twice_in_one_file_keeps_the_first(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(service_yaml("web", "10.96.0.1") + "---\n" + service_yaml("web", "10.96.0.2"))
    result = Loaded(tmp_path).load()
    assert result.errors == (
        f"{path}: document 2: Service shop/web is defined twice (also in {path}: document 1)",
    )
    assert result.mesh.services[0].cluster_ips == ("10.96.0.1",)


def test_deleted_file_drops_out(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(service_yaml("web", "10.96.0.1"))
    (tmp_path / "api.yaml").write_text(service_yaml("api", "10.96.0.2"))
    source = Loaded(tmp_path)
    assert keys(source.load().mesh) == ["shop/api", "shop/web"]
    (tmp_path / "web.yaml").unlink()
    assert keys(source.load().mesh) == ["shop/api"]


def test_a_cluster_ip_conflict_serves_the_older_service_and_everything_else(
    tmp_path: Path,
) -> None:
    # The older Service is in the file read last, so reading order cannot be what decides.
    older, newer = tmp_path / "z-web.yaml", tmp_path / "a-api.yaml"
    older.write_text(service_yaml("web", "10.96.0.1", created="2024-01-01T00:00:00Z"))
    (tmp_path / "db.yaml").write_text(service_yaml("db", "10.96.0.3"))
    source = Loaded(tmp_path)
    assert keys(source.load().mesh) == ["shop/db", "shop/web"]

    newer.write_text(service_yaml("api", "10.96.0.1", created="2024-02-01T00:00:00Z"))
    result = source.load()
    assert keys(result.mesh) == ["shop/db", "shop/web"]
    assert result.errors == (
        f"{newer}: document 1 (Service shop/api): ClusterIP 10.96.0.1 is Service shop/web's"
        f" (in {older}: document 1), which is older (metadata.creationTimestamp); this"
        " Service is left out",
    )
    # A restart reads the same folder to the same choice.
    assert Loaded(tmp_path).load() == result
    # Everything else goes on: a change to another Service is served.
    (tmp_path / "db.yaml").write_text(service_yaml("db", "10.96.0.3", port=81))
    changed = source.load()
    assert changed.mesh.services[0].ports[0].port == 81
    assert changed.errors == result.errors
    # The problem is the newer file's: fixing it clears it.
    newer.write_text(service_yaml("api", "10.96.0.2", created="2024-02-01T00:00:00Z"))
    fixed = source.load()
    assert keys(fixed.mesh) == ["shop/api", "shop/db", "shop/web"]
    assert fixed.errors == ()


def test_missing_path_is_an_error_and_keeps_the_mesh(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    source = Loaded(folder)
    assert source.load().errors == (f"{folder}: cannot read: No such file or directory",)

    folder.mkdir()
    (folder / "web.yaml").write_text(service_yaml("web", "10.96.0.1"))
    good = source.load()
    assert good.errors == ()
    (folder / "web.yaml").unlink()
    folder.rmdir()
    gone = source.load()
    assert gone.errors == (f"{folder}: cannot read: No such file or directory",)
    assert gone.mesh == good.mesh


def test_only_changed_files_are_read_again(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(service_yaml("web", "10.96.0.1"))
    old = 1_600_000_000_000_000_000  # long settled: not within the racy window
    os.utime(path, ns=(old, old))
    source = Loaded(tmp_path)
    assert addresses(source.load().mesh, "shop/web") == []

    # Same size, same inode, same mtime: the stamp says unchanged, so it is not read.
    with path.open("r+") as file:
        file.write(service_yaml("web", "10.96.0.2"))
    os.utime(path, ns=(old, old))
    assert source.load().mesh.services[0].cluster_ips == ("10.96.0.1",)

    os.utime(path)  # touched: read again
    assert source.load().mesh.services[0].cluster_ips == ("10.96.0.2",)


def test_rewrite_within_one_timestamp_tick_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(service_yaml("web", "10.96.0.1"))
    source = Loaded(tmp_path)
    source.load()
    stat = path.stat()
    with path.open("r+") as file:
        file.write(service_yaml("web", "10.96.0.2"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as if in the same tick
    assert source.load().mesh.services[0].cluster_ips == ("10.96.0.2",)


# --- Watching ------------------------------------------------------------------


class Changes:
    """Counts on_change calls and lets a test await the next one."""

    def __init__(self) -> None:
        self.count = 0
        self._event = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self._event.set()

    async def next(self) -> None:
        await asyncio.wait_for(self._event.wait(), WAIT)
        self._event.clear()


@asynccontextmanager
async def watching(path: Path, use_inotify: bool, **options: float) -> AsyncIterator[Changes]:
    changes = Changes()
    options.setdefault("poll_interval", 0.1)  # polling mode: quicker than the 0.5 s default
    watched = ManifestSource(path, Registry())
    # A change is one since this pass read PATH, whenever the watch gets to look.
    watched.load()
    task = asyncio.create_task(watched.watch(changes, use_inotify=use_inotify, **options))
    await asyncio.sleep(0)  # one turn of the loop: the watch has opened inotify
    try:
        yield changes
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


modes = pytest.mark.parametrize("use_inotify", [True, False], ids=["inotify", "polling"])


@modes
async def test_watch_notices_new_changed_and_deleted_files(
    tmp_path: Path, use_inotify: bool
) -> None:
    source = Loaded(tmp_path)
    async with watching(tmp_path, use_inotify) as changes:
        (tmp_path / "web.yaml").write_text(service_yaml("web", "10.96.0.1"))
        await changes.next()
        assert keys(source.load().mesh) == ["shop/web"]

        (tmp_path / "web.yaml").write_text(service_yaml("web", "10.96.0.1", port=8000))
        await changes.next()
        assert source.load().mesh.services[0].ports[0].port == 8000

        (tmp_path / "web.yaml").unlink()
        await changes.next()
        assert keys(source.load().mesh) == []


@modes
async def test_watch_sees_files_in_new_subfolders(tmp_path: Path, use_inotify: bool) -> None:
    source = Loaded(tmp_path)
    async with watching(tmp_path, use_inotify) as changes:
        (tmp_path / "team").mkdir()
        (tmp_path / "team" / "keep.yaml").write_text("")
        await changes.next()
        (tmp_path / "team" / "web.yaml").write_text(service_yaml("web", "10.96.0.1"))
        await changes.next()
        assert keys(source.load().mesh) == ["shop/web"]


@modes
async def test_watch_single_file_replaced_by_rename(tmp_path: Path, use_inotify: bool) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(service_yaml("web", "10.96.0.1"))
    source = Loaded(path)
    source.load()
    async with watching(path, use_inotify) as changes:
        # How editors and `kubectl ... > tmp && mv` write: a new inode renamed over the old.
        (tmp_path / "mesh.yaml.tmp").write_text(service_yaml("api", "10.96.0.2"))
        os.replace(tmp_path / "mesh.yaml.tmp", path)
        await changes.next()
        assert keys(source.load().mesh) == ["shop/api"]


@modes
async def test_watch_coalesces_a_burst(tmp_path: Path, use_inotify: bool) -> None:
    path = tmp_path / "web.yaml"
    source = Loaded(tmp_path)
    async with watching(tmp_path, use_inotify, quiet=0.05) as changes:
        for port in range(8001, 8021):  # 20 writes, 5 ms apart: well inside 50 ms of quiet
            path.write_text(service_yaml("web", "10.96.0.1", port=port))
            await asyncio.sleep(0.005)
        while True:
            await changes.next()
            mesh = source.load().mesh
            if mesh.services and mesh.services[0].ports[0].port == 8020:
                break
        print(f"{changes.count} callbacks")
        assert changes.count <= 3


async def test_watch_calls_back_during_an_endless_burst(tmp_path: Path) -> None:
    # Writes every 20 ms never leave 50 ms of quiet; the 500 ms cap must still fire.
    path = tmp_path / "web.yaml"
    async with watching(tmp_path, use_inotify=True, quiet=0.05, max_delay=0.5) as changes:
        loop = asyncio.get_running_loop()
        end = loop.time() + 2.0
        port = 8000
        while changes.count == 0 and loop.time() < end:
            port += 1
            path.write_text(service_yaml("web", "10.96.0.1", port=port))
            await asyncio.sleep(0.02)
        assert changes.count >= 1


async def test_watch_closes_inotify_on_cancel(tmp_path: Path) -> None:
    def inotify_fds() -> int:
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            # The fd listdir itself used is closed by now.
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
        return count

    before = inotify_fds()
    async with watching(tmp_path, use_inotify=True):
        assert inotify_fds() == before + 1
    assert inotify_fds() == before


def test_inotify_drain_says_whether_anything_happened(tmp_path: Path) -> None:
    with inotify.Inotify() as watcher:
        watcher.add_watch(str(tmp_path))
        assert not watcher.drain()
        for n in range(100):
            (tmp_path / f"f{n}.yaml").write_text("x")
        assert watcher.drain()
        assert not watcher.drain()  # all were read


def test_inotify_add_watch_error(tmp_path: Path) -> None:
    with inotify.Inotify() as watcher, pytest.raises(FileNotFoundError):
        watcher.add_watch(str(tmp_path / "missing"))


def test_deeply_nested_json_is_a_reported_problem(tmp_path: Path) -> None:
    (tmp_path / "deep.json").write_text("[" * 50_000 + "]" * 50_000)
    result = Loaded(tmp_path).load()
    assert any("deep.json" in e and "nested too deeply" in e for e in result.errors)


async def test_a_failing_callback_does_not_end_the_watch(tmp_path: Path) -> None:
    calls = 0
    first, second = asyncio.Event(), asyncio.Event()

    def on_change() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            first.set()
            raise RuntimeError("a reload that went wrong")
        second.set()

    watched = ManifestSource(tmp_path, Registry())
    watched.load()  # what the watch compares with
    task = asyncio.create_task(watched.watch(on_change, quiet=0.01))
    try:
        (tmp_path / "a.yaml").write_text(service_yaml("web", "10.96.0.1"))
        await asyncio.wait_for(first.wait(), 10)
        (tmp_path / "a.yaml").write_text(service_yaml("web", "10.96.0.2"))
        await asyncio.wait_for(second.wait(), 10)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
