"""What bench/proxy.py compares: the paths from a client pod to the web Service.

- meshlet: `meshlet init` capture in the client pod and `meshlet sidecar`;
- envoy: the same capture and Envoy (`--concurrency 1`) on the same control plane;
- kube-proxy: no capture; the node's kube-proxy (nftables) DNATs the ClusterIP;
- direct: no proxy at all, to the backend's pod IP (for scale).

The two sidecars run as the proxy uid, pinned to the proxy CPU; every load
runs on the load CPU. Each run gets a fresh client pod.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from bench.proxy_load import CLIENT_UID
from meshlet.devmesh.mesh import DevMesh, Pod
from tests.envoy_peer import bootstrap, envoy_binary
from tests.procs import PYTHON

PROXY_UID = 1337
PROXY_CPU = "1"
ENVOY_ADMIN_PORT = 15100
MESHLET_ADMIN_PORT = 15000
XDS_PORT = 15010
DNS_VIP = "10.96.0.53"

# Starts the proxy of a client pod (given the mesh, the pod, the control plane's IP and
# a folder for logs), ready when entered; gives the PID whose CPU time is the proxy's.
Start = Callable[[DevMesh, Pod, str, Path], AbstractContextManager[int | None]]


@dataclass(frozen=True)
class Peer:
    name: str
    capture: bool  # `meshlet init` in the client pod
    start: Start
    to_vip: bool = True  # else to the backend's pod IP


def wait_through(client: Pod, url: str, what: str, log: Path | None, timeout: float = 60.0) -> None:
    """Until an HTTP request to `url` succeeds from the client pod."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        argv = ["curl", "-s", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}", url]
        result = client.run(argv, uid=CLIENT_UID)
        if result.stdout.strip() == "200":
            return
        last = result.stdout + result.stderr
        time.sleep(0.2)
    tail = f"\nits log ends:\n{log.read_text(errors='replace')[-3000:]}" if log else ""
    raise RuntimeError(f"{what}: no answer from {url} within {timeout:g}s: {last}{tail}")


@contextmanager
def client_pod(mesh: DevMesh, name: str, capture: bool) -> Iterator[Pod]:
    """A fresh client pod for each run: no TIME_WAIT sockets or conntrack entries of an
    earlier run (a proxy that ran before would slow the next one's connects). The load
    generator may reuse ports in TIME_WAIT and use the whole port range, as a busy
    client is tuned to: at thousands of new connections per second the default 28k
    ports last seconds."""
    client = mesh.add_pod(name, resolv_conf=f"nameserver {DNS_VIP}\n")
    try:
        sysctl = ["sysctl", "-q", "net.ipv4.tcp_tw_reuse=1"]
        client.run([*sysctl, "net.ipv4.ip_local_port_range=1024 65535"])
        if capture:
            init = [PYTHON, "-m", "meshlet", "init", f"--proxy-uid={PROXY_UID}"]
            done = client.run([*init, f"--dns-server={DNS_VIP}"])
            if done.returncode != 0:
                raise RuntimeError(f"meshlet init failed: {done.stderr}")
        yield client
    finally:
        mesh.remove_pod(name)


@contextmanager
def _proxy_in(mesh: DevMesh, client: Pod, argv: list[str], name: str, log: Path) -> Iterator[int]:
    """A proxy process in the client pod as the proxy uid, pinned, until the block ends;
    ready once a request through it is answered (by whatever Service the bench serves)."""
    process = client.spawn(["taskset", "-c", PROXY_CPU, *argv], log, uid=PROXY_UID)
    try:
        wait_through(client, WEB_URL, name, log)
        yield process.pid
    finally:
        mesh.stop(process)


def _meshlet(mesh: DevMesh, client: Pod, cp: str, work: Path) -> AbstractContextManager[int]:
    argv = [PYTHON, "-m", "meshlet", "sidecar", f"--xds-address={cp}:{XDS_PORT}"]
    argv += ["--node-id=bench-meshlet", f"--admin-address=127.0.0.1:{MESHLET_ADMIN_PORT}"]
    argv += ["--upstream-dns=192.0.2.53"]
    return _proxy_in(mesh, client, argv, "meshlet sidecar", work / "meshlet-sidecar.log")


def _envoy(mesh: DevMesh, client: Pod, cp: str, work: Path) -> AbstractContextManager[int]:
    config = work / "envoy.json"
    config.write_text(
        json.dumps(bootstrap("bench-envoy", "DELTA_GRPC", XDS_PORT, cp, ENVOY_ADMIN_PORT))
    )
    argv = [str(envoy_binary()), "-c", str(config), "--concurrency", "1"]
    argv += ["--disable-hot-restart", "--log-level", "warning"]
    return _proxy_in(mesh, client, argv, "Envoy", work / "envoy.log")


def _nothing(mesh: DevMesh, client: Pod, cp: str, work: Path) -> AbstractContextManager[None]:
    return nullcontext()


def _node_rules(mesh: DevMesh, client: Pod, cp: str, work: Path) -> AbstractContextManager[None]:
    wait_through(client, WEB_URL, "kube-proxy", work / "kube-proxy.log")
    return nullcontext()  # kube-proxy runs on the node for the whole bench


WEB_VIP, BULK_VIP = "10.96.0.10", "10.96.0.11"
WEB_URL = f"http://{WEB_VIP}/"
MESHLET = Peer("meshlet", True, _meshlet)
ENVOY = Peer("envoy", True, _envoy)
KUBE_PROXY = Peer("kube-proxy", False, _node_rules)
DIRECT = Peer("no proxy", False, _nothing, to_vip=False)
