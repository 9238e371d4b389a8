"""The Tiltfile's cluster mode for real, on the tests' node (tests/k8s/node.py): a
containerd node without Docker, under the context `meshlet-containerd`, where Tilt
builds both images with buildah and loads them into the node's containerd
(scripts/buildah-load.sh). `tilt ci` deploys the chart and the demo to green; then
under `tilt up` a changed .py file of the control plane is live-updated into the
running container: the new code answers, and no image was built for it.

Tilt runs in a copy of the checkout (its files as they are now), so the change is
made there and never in the checkout; its state (~/.tilt-dev) is the test's own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import images, pods
from tests.k8s import node_images, pki
from tests.k8s.node import Node
from tests.procs import free_port, wait_until

# The node's first start builds its images too; tilt ci, tilt up, and the cleanup.
pytestmark = pytest.mark.timeout(1200)

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = "meshlet-containerd"
SYSTEM, DEMO = pods.SYSTEM, "meshlet-demo"
CONTROL_PLANE_IMAGE = node_images.CONTROL_PLANE.rsplit(":", 1)[0]
SIDECAR_IMAGE = node_images.SIDECAR.rsplit(":", 1)[0]
HANDLER = Path("meshlet/controlplane/admin.py")
HEALTHZ = '"/healthz": lambda _: Response.text("ok\\n"),'


def copy_of_checkout(folder: Path) -> Path:
    """The checkout's files as they are now (tracked and new, not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if not source.is_file():  # deleted in the working tree
            continue
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return folder


def tilt_env(node: Node, home: Path) -> dict[str, str]:
    binaries = node.cluster.binaries
    admin = pki.KeyPair(node.cluster.root / "admin.crt", node.cluster.root / "admin.key")
    kubeconfig = node.cluster.kubeconfig(CONTEXT, cert=admin)
    tools = sorted({str(binaries["helm"].parent), str(binaries["kubectl"].parent)})
    return {
        "HOME": str(home),
        "PATH": ":".join(
            [*tools, "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        ),
        "KUBECONFIG": str(kubeconfig),
        "TMPDIR": str(home),
        "MESHLET_BUILDAH_FLAGS": " ".join(images._store_flags()),
        # The node's own build passes VERSION: the same layers, from the cache.
        "MESHLET_BUILDAH_BUILD_FLAGS": " ".join(
            [*images.build_flags(), "--build-arg", "VERSION=0.1.0"]
        ),
        "MESHLET_CONTAINERD_ADDRESS": node.ctr[node.ctr.index("--address") + 1],
        "MESHLET_CTR": node.ctr[0],
    }


def tilt(
    node: Node, env: dict[str, str], cwd: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    with subprocess.Popen(
        [str(node.cluster.binaries["tilt"]), *args], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env, start_new_session=True,
    ) as process:  # fmt: skip
        try:
            out, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            end_group(process)
            out, _ = process.communicate()
            raise AssertionError(f"tilt {' '.join(args)} timed out:\n{out[-6000:]}") from None
    return subprocess.CompletedProcess(process.args, process.returncode, out, "")


def end_group(process: subprocess.Popen[str]) -> None:
    """The process's session (Tilt and what it started), by its PID."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def control_plane_pod(node: Node) -> Any:
    (found,) = pods.pods(node, SYSTEM, pods.CONTROL_PLANE_SELECTOR)
    return found


def container(pod: Any) -> Any:
    (status,) = pod.status.container_statuses
    return status


def healthz(ip: str) -> str:
    with urllib.request.urlopen(f"http://{ip}:15014/healthz", timeout=3) as response:
        return str(response.read().decode())


def tilt_refs(node: Node) -> list[str]:
    listed = subprocess.run(
        [*node.ctr, "-n", "k8s.io", "images", "ls", "-q"],
        capture_output=True, text=True, timeout=60,
    ).stdout.split()  # fmt: skip
    return [r for r in listed if r.startswith((CONTROL_PLANE_IMAGE + ":tilt-",
                                               SIDECAR_IMAGE + ":tilt-"))]  # fmt: skip


@pytest.fixture
def workdir(node: Node, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A copy of the checkout and Tilt's environment; everything Tilt made goes after."""
    copy = copy_of_checkout(tmp_path / "repo")
    home = tmp_path / "home"
    home.mkdir()
    env = tilt_env(node, home)
    # Fixed names, as the Tiltfile's: an earlier run may still be deleting them.
    for name in (SYSTEM, DEMO):
        pods.delete_namespace(node, name, wait=180)
    try:
        yield copy, env
    finally:
        down = tilt(node, env, copy, "down", "--delete-namespaces", timeout=300)
        print(down.stdout[-3000:])
        for name in (DEMO, SYSTEM):
            pods.delete_namespace(node, name, wait=180)
        node.kubectl("delete", "mutatingwebhookconfiguration", "meshlet-injector",
                     "--ignore-not-found", check=False)  # fmt: skip
        refs = tilt_refs(node)
        if refs:
            subprocess.run([*node.ctr, "-n", "k8s.io", "images", "rm", *refs],
                           capture_output=True, timeout=120)  # fmt: skip
        images.remove(*refs)


def test_tilt_ci_then_a_live_update_on_a_containerd_node(
    node: Node, workdir: tuple[Path, dict[str, str]]
) -> None:
    copy, env = workdir
    admin_port = free_port()
    started = time.monotonic()
    ci = tilt(node, env, copy, "ci", "--port=0", "--timeout=10m", "--",
              f"--admin-port={admin_port}", timeout=720)  # fmt: skip
    print(f"tilt ci: exit {ci.returncode} in {time.monotonic() - started:.0f}s")
    assert ci.returncode == 0, ci.stdout[-8000:]
    assert "SUCCESS. All workloads are healthy." in ci.stdout, ci.stdout[-8000:]
    # The chart's control plane Ready, on the image Tilt built and loaded; the demo up
    # (its pods injected, on the sidecar image Tilt built too).
    node.wait_ready(SYSTEM, pods.CONTROL_PLANE_SELECTOR, 1, timeout=60)
    plane = control_plane_pod(node)
    assert plane.spec.containers[0].image.startswith(CONTROL_PLANE_IMAGE + ":tilt-")
    node.wait_ready(DEMO, "app=client", 1, timeout=60)
    node.wait_ready(DEMO, "app=web", 3, timeout=60)
    (client,) = pods.pods(node, DEMO, "app=client")
    assert client.spec.containers[0].image.startswith(SIDECAR_IMAGE + ":tilt-")
    assert any(c.name == "meshlet-proxy" for c in client.spec.init_containers or ())

    # The client's load reports (meshlet.devmesh.load): web answers through the mesh.
    def answered() -> dict[str, Any]:
        logs = node.kubectl("logs", "-n", DEMO, client.metadata.name, "-c", "client").stdout
        reports = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        return reports[-1]["targets"]["web"] if reports else {"ok": 0}

    web = wait_until(lambda report: report["ok"] > 0, 60, "the client's requests answered",
                     observe=answered, ignoring=(OSError, ValueError))  # fmt: skip
    print(f"client: {web}")
    assert all(name.startswith("web-") for name in web["endpoints"]), web

    # The live update: tilt up, a changed handler, the new code answering in the same
    # container.
    port = free_port()
    log = (copy.parent / "tilt-up.log").open("w")
    up = subprocess.Popen(
        [str(node.cluster.binaries["tilt"]), "up", f"--port={port}", "--stream=true", "--",
         f"--admin-port={admin_port}"],
        stdout=log, stderr=subprocess.STDOUT, text=True, cwd=copy, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda done: done.returncode == 0, 120, "tilt up's API",
                   observe=lambda: tilt(node, env, copy, "get", f"--port={port}",
                                        "uiresource", "meshlet"),
                   interval=1)  # fmt: skip
        wait = tilt(node, env, copy, "wait", f"--port={port}", "--for=condition=Ready",
                    "--timeout=400s", "uiresource/meshlet", "uiresource/client",
                    timeout=420)  # fmt: skip
        assert wait.returncode == 0, wait.stdout + (copy.parent / "tilt-up.log").read_text()[-6000:]
        # tilt up built and deployed again (new tags): the old pod gone, the new Ready.
        node.wait_ready(SYSTEM, pods.CONTROL_PLANE_SELECTOR, 1, timeout=180)
        before = control_plane_pod(node)
        ip = before.status.pod_ip
        wait_until(lambda body: body == "ok\n", 60, "the control plane's /healthz",
                   observe=lambda: healthz(ip), ignoring=(OSError,))  # fmt: skip
        image, container_id = before.spec.containers[0].image, container(before).container_id
        refs = sorted(tilt_refs(node))

        mark = f"live-{uuid.uuid4().hex[:8]}"
        handler = copy / HANDLER
        source = handler.read_text()
        assert HEALTHZ in source
        handler.write_text(source.replace(HEALTHZ, HEALTHZ.replace("ok\\n", f"ok {mark}\\n")))
        wait_until(lambda body: body == f"ok {mark}\n", 180, "the new code's /healthz",
                   observe=lambda: healthz(ip), ignoring=(OSError,))  # fmt: skip

        after = control_plane_pod(node)
        assert after.metadata.uid == before.metadata.uid
        assert after.spec.containers[0].image == image
        assert container(after).container_id == container_id  # same container, no restart
        assert container(after).restart_count == container(before).restart_count
        assert sorted(tilt_refs(node)) == refs  # no image built for it
        out = (copy.parent / "tilt-up.log").read_text()
        print(out[-3000:])
        resource = json.loads(tilt(node, env, copy, "get", f"--port={port}", "-o", "json",
                                   "uiresource", "meshlet").stdout)  # fmt: skip
        last = resource["status"]["buildHistory"][0]
        assert last.get("error") in (None, ""), last
    finally:
        end_group(up)
        log.close()
