"""Helpers for tests that run real processes: free ports, processes ended by PID, polling.

Every process started here is ended by its own PID (terminate, wait, then kill),
also when the test fails; its output goes to a file under the test's tmp_path
and is printed when it ends, so pytest shows it with a failing test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Re-exported: the tests build their manifests with the local mesh's helpers.
from meshlet.devmesh.manifests import endpoint_slice_manifest as endpoint_slice_manifest
from meshlet.devmesh.manifests import service_manifest as service_manifest
from meshlet.devmesh.manifests import write_atomically as write_atomically
from meshlet.devmesh.manifests import write_manifests as write_manifests

PYTHON = sys.executable
# How much of a process's log to print when it ends (the end is what matters).
LOG_TAIL_CHARS = 30_000


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on at `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ProcessDied(AssertionError):
    """A process a test relies on exited; never retried by `wait_until`."""


def wait_until(
    predicate: Callable[..., object],
    timeout: float,
    what: str,
    *,
    observe: Callable[[], object] | None = None,
    interval: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (OSError,),
) -> Any:
    """Poll a real condition until it holds; return what was observed then.

    Without `observe`, `predicate()` is the observation and holds when truthy.
    With it, `observe()` is the observation and `predicate(observation)` decides.
    Exceptions of the `ignoring` types (connection refused, ...) count as "not
    yet" and are reported as the last observation on timeout.
    """
    deadline = time.monotonic() + timeout
    last: object = "<nothing observed>"
    while True:
        try:
            if observe is None:
                last = predicate()
                if last:
                    return last
            else:
                last = observe()
                if predicate(last):
                    return last
        except ProcessDied:
            raise
        except ignoring as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what}; last observed: {last!r}"
            )
        time.sleep(interval)


# --- Processes ---------------------------------------------------------------


@dataclass
class Process:
    """A running child process, its log file, and a short name for messages."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise ProcessDied(
                f"{self.name} (pid {self.pid}) exited with code {code}; its log ends:\n"
                f"{self.log_text()[-LOG_TAIL_CHARS:]}"
            )


def stop_process(popen: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """End one process by its PID: SIGTERM, wait, then SIGKILL. Returns its exit code."""
    if popen.poll() is None:
        popen.terminate()
        try:
            return popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
    return popen.wait(timeout=timeout)


@contextlib.contextmanager
def running(
    argv: Sequence[str],
    name: str,
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Iterator[Process]:
    """Run `argv` for the duration of the block, stderr (and stdout unless piped) to `log`.

    The process is ended by its PID when the block ends, however it ends, and
    the end of its log is printed (pytest shows it when the test fails).
    """
    with open(log, "wb") as log_file:
        popen = subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=log_file if stdout is None else stdout,
            stderr=log_file,
            env=None if env is None else {**os.environ, **env},
            cwd=cwd,
        )
    process = Process(name, popen, log)
    try:
        yield process
    finally:
        code = stop_process(popen)
        for stream in (popen.stdin, popen.stdout):
            if stream is not None:
                stream.close()
        print(f"--- {name} (pid {popen.pid}, exit {code}) log {log} ---")
        print(process.log_text()[-LOG_TAIL_CHARS:])


# --- HTTP --------------------------------------------------------------------


def peer_certificate(port: int, context: ssl.SSLContext, host: str = "127.0.0.1") -> bytes:
    """The DER certificate a TLS server on HOST:PORT presents (verified by `context`)."""
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; an HTTP error status is returned, not raised."""
    return _http(urllib.request.Request(url), timeout)


def http_post(url: str, body: bytes = b"", timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a POST; an HTTP error status is returned, not raised."""
    return _http(urllib.request.Request(url, data=body, method="POST"), timeout)


def _http(request: urllib.request.Request, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode(errors="replace")


def get_json(url: str, timeout: float = 5.0) -> Any:
    status, body = http_get(url, timeout)
    if status != 200:
        raise AssertionError(f"GET {url}: HTTP {status}: {body[:2000]}")
    return json.loads(body)


# --- The meshlet control plane -----------------------------------------------


@dataclass
class ControlPlane:
    process: Process
    manifests: Path | None
    xds_port: int
    admin_port: int
    outbound_port: int

    @property
    def xds_address(self) -> str:
        return f"127.0.0.1:{self.xds_port}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        self.process.check_alive()
        return http_get(self.url(path))

    def get_json(self, path: str) -> Any:
        self.process.check_alive()
        return get_json(self.url(path))

    def config(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json("/debug/config")
        return result

    def clients(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get_json("/debug/clients")
        return result

    def client(self, node_id: str) -> dict[str, Any] | None:
        """The status of the (last) stream whose node id is `node_id`, if connected."""
        found = [c for c in self.clients() if c.get("node") == node_id]
        return found[-1] if found else None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /readyz answers 200; a control plane that exits fails at once."""

        def ready() -> int:
            self.process.check_alive()
            return http_get(self.url("/readyz"), timeout=2)[0]

        wait_until(lambda status: status == 200, timeout, "/readyz to be 200", observe=ready)

    def metrics(self) -> str:
        status, body = self.get("/metrics")
        if status != 200:
            raise AssertionError(f"/metrics: HTTP {status}: {body[:2000]}")
        return body


@contextlib.contextmanager
def control_plane(
    manifests: Path | None,
    tmp_path: Path,
    *,
    kubeconfig: Path | None = None,
    outbound_port: int | None = None,
    xds_port: int | None = None,
    extra_args: Sequence[str] = (),
    ready_timeout: float = 30.0,
    wait_ready: bool = True,
    argv_prefix: Sequence[str] = (),
) -> Iterator[ControlPlane]:
    """Run `meshlet control-plane` until the block ends, on `manifests` or else on the
    Kubernetes API of `kubeconfig`; ready when yielded (unless not `wait_ready`).
    `argv_prefix` runs it under another program (setpriv, say)."""
    # A fixed xds_port lets a test restart the control plane where clients expect it.
    xds_port = xds_port or free_port()
    admin_port = free_port()
    if outbound_port is None:
        outbound_port = free_port("0.0.0.0")
    argv = [
        *argv_prefix,
        PYTHON,
        "-m",
        "meshlet",
        "control-plane",
        f"--manifests={manifests}" if manifests is not None else f"--kubeconfig={kubeconfig}",
        f"--xds-address=127.0.0.1:{xds_port}",
        f"--admin-address=127.0.0.1:{admin_port}",
        f"--outbound-port={outbound_port}",
        # The injection webhook only where a test asks for it (its own port and RBAC).
        *(
            []
            if any(a.startswith("--webhook-address") for a in extra_args)
            else ["--webhook-address=off"]
        ),
        *extra_args,
    ]
    log = tmp_path / f"control-plane-{admin_port}.log"
    with running(argv, "meshlet control-plane", log) as process:
        plane = ControlPlane(process, manifests, xds_port, admin_port, outbound_port)
        if wait_ready:
            plane.wait_ready(ready_timeout)
        yield plane


def without_root_powers() -> list[str]:
    """A prefix for a child's argv under which a folder of mode 0 cannot be listed: root
    can list any, so root's child runs without the capabilities that allow it."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and no setpriv (util-linux) to drop CAP_DAC_*")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
