"""What an injected sidecar adds for its pod: the read-only health and metrics ports on
the pod IP, `meshlet wait` (the classic app's postStart hook), POST /quitquitquit (a
Job's way to stop a classic sidecar), and a drain that keeps serving beside an app
shutting down (a native sidecar's drain, which refuses new connections, is shown end
to end in test_mesh.py)."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import (
    PYTHON,
    Process,
    control_plane,
    free_port,
    http_get,
    http_post,
    running,
    wait_until,
    write_manifests,
)
from tests.test_sidecar_process import web


@contextlib.contextmanager
def pod_sidecar(
    tmp_path: Path, xds_port: int, *extra: str
) -> Iterator[tuple[Process, dict[str, int]]]:
    ports = {name: free_port() for name in ("admin", "health", "metrics", "dns", "outbound")}
    argv = [
        PYTHON,
        "-m",
        "meshlet",
        "sidecar",
        f"--xds-address=localhost:{xds_port}",
        f"--admin-address=127.0.0.1:{ports['admin']}",
        f"--health-address=127.0.0.1:{ports['health']}",
        f"--metrics-address=127.0.0.1:{ports['metrics']}",
        f"--dns-address=127.0.0.1:{ports['dns']}",
        f"--outbound-address=127.0.0.1:{ports['outbound']}",
        f"--upstream-dns=127.0.0.1:{free_port()}",
        *extra,
    ]
    with running(argv, "meshlet sidecar", tmp_path / f"sidecar-{ports['admin']}.log") as process:
        wait_until(
            lambda status: status in (200, 503),
            30,
            "the health port",
            observe=lambda: http_get(f"http://127.0.0.1:{ports['health']}/healthz/ready")[0],
        )
        yield process, ports


def meshlet_wait(url: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "meshlet", "wait", f"--url={url}", f"--timeout={timeout}"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_health_and_metrics_ports_and_meshlet_wait(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web())
    xds_port = free_port()
    with pod_sidecar(tmp_path, xds_port) as (process, ports):
        health = f"http://127.0.0.1:{ports['health']}/healthz/ready"
        # No control plane yet: not ready, and `meshlet wait` says so when its time is up.
        assert http_get(health)[0] == 503
        held = meshlet_wait(health, 0.5)
        assert held.returncode == 1
        assert f"{health} not ready after 0.5s (HTTP 503)" in held.stderr
        with control_plane(folder, tmp_path, xds_port=xds_port):
            # The app's hook returns as soon as the sidecar serves config.
            assert meshlet_wait(health, 30).returncode == 0
            assert http_get(health) == (200, "ready\n")
        metrics = http_get(f"http://127.0.0.1:{ports['metrics']}/stats/prometheus")
        assert metrics[0] == 200 and "meshlet_xds_updates_total" in metrics[1]
        also = http_get(f"http://127.0.0.1:{ports['metrics']}/metrics")
        assert also[0] == 200 and "meshlet_xds_updates_total" in also[1]
        # Read-only: what the admin port has is not on the pod-IP ports.
        for port in (ports["health"], ports["metrics"]):
            assert http_get(f"http://127.0.0.1:{port}/config_dump")[0] == 404
            assert http_get(f"http://127.0.0.1:{port}/quitquitquit")[0] == 404
        process.check_alive()


def post(url: str) -> int:
    return http_post(url)[0]


def curl_post(url: str) -> tuple[int, str]:
    """(status, body) of the real `curl -X POST URL`, which sends neither Content-Length
    nor a body: the classic Job's way to stop its sidecar."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    done = subprocess.run(
        [curl, "-sS", "--max-time", "10", "-X", "POST", "-w", "\n%{http_code}", url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def test_quitquitquit_stops_a_classic_sidecar(tmp_path: Path) -> None:
    with pod_sidecar(tmp_path, free_port(), "--drain-seconds=1", "--quit-endpoint") as (
        process,
        ports,
    ):
        admin = f"http://127.0.0.1:{ports['admin']}/quitquitquit"
        assert http_get(admin)[0] == 405  # a GET (a probe, a curious browser) stops nothing
        process.check_alive()
        assert post(admin) == 200
        assert process.popen.wait(timeout=15) == 0
        assert "asked to quit (POST /quitquitquit)" in process.log_text()


def test_curl_x_post_changes_the_log_level_and_quits_a_classic_sidecar(tmp_path: Path) -> None:
    with pod_sidecar(tmp_path, free_port(), "--drain-seconds=1", "--quit-endpoint") as (
        process,
        ports,
    ):
        admin = f"http://127.0.0.1:{ports['admin']}"
        status, body = curl_post(f"{admin}/logging?level=debug")
        assert status == 200, body
        assert json.loads(body)["root"] == "debug"
        assert json.loads(http_get(f"{admin}/logging")[1])["root"] == "debug"
        # As a classic Job's main container calls it when done (the README's pattern).
        assert curl_post(f"{admin}/quitquitquit")[0] == 200
        assert process.popen.wait(timeout=15) == 0
        assert "asked to quit (POST /quitquitquit)" in process.log_text()


def test_a_native_sidecar_has_no_quit_endpoint(tmp_path: Path) -> None:
    with pod_sidecar(tmp_path, free_port()) as (process, ports):
        assert post(f"http://127.0.0.1:{ports['admin']}/quitquitquit") == 404
        process.check_alive()


def connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def test_a_classic_drain_keeps_taking_connections_for_the_window(tmp_path: Path) -> None:
    with pod_sidecar(tmp_path, free_port(), "--drain-accept", "--drain-seconds=6") as (
        process,
        ports,
    ):
        wait_until(bool, 10, "the outbound listener", observe=lambda: connects(ports["outbound"]))
        started = time.monotonic()
        process.popen.send_signal(signal.SIGTERM)
        wait_until(
            lambda text: "still taking new connections" in text,
            10,
            "the drain to start",
            observe=process.log_text,
        )
        # Within the window the app, shutting down beside it, can still open connections.
        wait_until(
            bool, 3, "a connection while draining", observe=lambda: connects(ports["outbound"])
        )
        assert process.popen.poll() is None
        assert process.popen.wait(timeout=20) == 0
        assert time.monotonic() - started >= 6
