"""End to end: a sidecar that restarts while the control plane is gone serves the config
it saved, and picks up changes once the control plane is back.

Pods are network namespaces (meshlet.devmesh); the client's sidecar keeps its config in
a directory that outlives its process, as an emptyDir outlives a container. Needs root;
the whole mesh is removed after the test, also when it fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlet.devmesh.stack import APP_UID, PYTHON, LocalMesh, ServiceSpec, http_get
from meshlet.sidecar.saved_state import FILE_NAME
from tests.local_mesh import local_mesh
from tests.procs import wait_until

WEB_IP = "10.96.0.20"
LEGACY_IP = "10.96.200.200"  # in the service CIDR, but no service the sidecar knows
WEB = ServiceSpec("web", WEB_IP, 80, ("web-0", "web-1", "web-2"))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalMesh]:
    with local_mesh(tmp_path, WEB) as local:
        yield local


def _xds(stack: LocalMesh) -> dict[str, Any]:
    status: dict[str, Any] = stack.sidecar_json("/config_dump")["xds"]
    return status


def _served_by(stack: LocalMesh, count: int) -> dict[str, int]:
    report = stack.load(["web=http://web/"], f"--count={count}")
    web: dict[str, Any] = report["targets"]["web"]
    assert web["errors"] == 0, web["last_error"]
    by_backend: dict[str, int] = web["endpoints"]
    return by_backend


def test_a_sidecar_restarted_without_its_control_plane_serves_its_saved_config(
    stack: LocalMesh,
) -> None:
    assert stack.client is not None and stack.sidecar is not None
    saved = stack.state_dir() / FILE_NAME
    wait_until(saved.exists, timeout=30, what="the sidecar's saved config")

    stack.stop_control_plane()
    # A crash, not a drain: only what was written after the accepts is there.
    crashed = stack.sidecar
    crashed.kill()
    stack.mesh.stop(crashed)
    stack.start_sidecar()  # returns once /ready answers 200: ready from the file alone

    status, body = http_get(stack.sidecar_url("/ready"))
    assert status == 200 and b"stale" in body, body
    xds = _xds(stack)
    assert xds["stale"] and xds["restored_from"] == str(saved) and not xds["connected"]
    _, metrics = http_get(stack.sidecar_url("/metrics"))
    assert b"meshlet_xds_config_stale 1" in metrics.replace(b".0", b"")

    result = stack.client.run(["getent", "hosts", "web"], uid=APP_UID)
    assert result.returncode == 0 and result.stdout.split()[0] == WEB_IP, result
    assert set(_served_by(stack, 60)) == set(WEB.backends)

    # The control plane is back: the sidecar resumes from the versions it holds, so
    # nothing unchanged comes again, and it is current once more.
    stack.start_control_plane()
    wait_until(lambda: not _xds(stack)["stale"], timeout=60, what="the sidecar to reconnect")
    resumed = _xds(stack)["types"]
    assert resumed["cds"]["last_received"] == 0 and resumed["lds"]["last_received"] == 0, resumed
    status, body = http_get(stack.sidecar_url("/ready"))
    assert (status, body) == (200, b"ready\n")

    # A change reaches it: web-2 leaves the service.
    stack.write_services([ServiceSpec("web", WEB_IP, 80, ("web-0", "web-1"))])
    wait_until(lambda: len(stack.cluster_endpoints("web", 80)) == 2, timeout=60, what="web-2 to go")
    assert set(_served_by(stack, 40)) == {"web-0", "web-1"}


def test_before_any_config_a_service_connection_passes_through_to_its_destination(
    stack: LocalMesh,
) -> None:
    """A sidecar with no config yet (a new pod while the control plane is away) is not
    ready, and hands a captured connection to a ClusterIP on to where it was going: the
    node's kube-proxy serves it there. A pod holding the IP itself stands in for that."""
    assert stack.client is not None
    legacy = stack.mesh.add_pod("legacy", extra_addresses=[LEGACY_IP])
    argv = [PYTHON, "-m", "meshlet.devmesh.backend", "--name=legacy", f"--listen={LEGACY_IP}:8080"]
    legacy.spawn(argv, stack.log("legacy"), uid=APP_UID)
    stack.stop_control_plane()
    stack.stop_sidecar()
    (stack.state_dir() / FILE_NAME).unlink()
    stack.start_sidecar(ready=False)
    assert http_get(stack.sidecar_url("/ready"))[0] == 503

    target = f"legacy=http://{LEGACY_IP}:8080/"
    report = wait_until(  # until the legacy server listens
        lambda report: report["targets"]["legacy"]["ok"] == 3,
        30,
        "a captured connection to pass through",
        observe=lambda: stack.load([target], "--count=3"),
    )
    assert report["targets"]["legacy"]["endpoints"] == {"legacy": 3}
    _, metrics = http_get(stack.sidecar_url("/metrics"))
    passed = [
        line
        for line in metrics.decode().splitlines()
        if line.startswith("meshlet_proxy_connections_total") and "PassthroughCluster" in line
    ]
    assert passed and float(passed[0].rsplit(" ", 1)[1]) >= 3, passed
