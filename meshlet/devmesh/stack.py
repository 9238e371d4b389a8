"""A meshlet mesh in pods of a DevMesh: control plane, backends, and a client pod with
capture and a sidecar. Used by `meshlet demo` and by the end-to-end tests.

The client pod is set up as the injected sidecar would set up a real one: its
resolv.conf names the cluster DNS VIP with the Kubernetes search path, `meshlet
init` (as root, like an init container) redirects its service traffic and DNS,
and the sidecar runs as the proxy uid, so its own connections pass untouched.
Only `meshlet init` runs as root: the control plane and the backends run as
uids of their own (keeping, as every process under another uid here, the right
to read files: see netns.exec_argv). Admin ports listen on the pod IPs, so the
host can look at them over the bridge.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshlet import defaults
from meshlet.devmesh.manifests import endpoint_slice_manifest, service_manifest, write_manifests
from meshlet.devmesh.mesh import DevMesh, DevMeshError, Pod

PYTHON = sys.executable
PROXY_UID = defaults.PROXY_UID
APP_UID = 1000
# nobody: the control plane needs no privilege; and not the proxy uid, which
# capture lets through.
CONTROL_PLANE_UID = 65534
CLUSTER_DNS_VIP = "10.96.0.10"
BACKEND_PORT = 8080
XDS_PORT = defaults.XDS_PORT
CP_ADMIN_PORT = defaults.CONTROL_PLANE_ADMIN_PORT
SIDECAR_ADMIN_PORT = defaults.SIDECAR_ADMIN_PORT


def pod_resolv_conf(namespace: str = "default") -> str:
    return (
        f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local\n"
        f"nameserver {CLUSTER_DNS_VIP}\n"
        "options ndots:5\n"
    )


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    cluster_ip: str
    port: int
    backends: tuple[str, ...]  # backend pod names
    namespace: str = "default"
    client_ip_affinity: bool = False  # sessionAffinity: ClientIP
    lb_policy: str = ""  # the meshlet.io/lb-policy annotation; empty: none
    port_name: str = "http"  # HTTP: each request balanced; another name: each connection


def service_objects(
    services: Sequence[ServiceSpec], ip_of: Callable[[str], str]
) -> list[dict[str, Any]]:
    """A Service and an EndpointSlice per service; `ip_of` gives a backend pod's IP."""
    objects: list[dict[str, Any]] = []
    for s in services:
        annotations = {"meshlet.io/lb-policy": s.lb_policy} if s.lb_policy else None
        ports = [(s.port_name, s.port, "http")]
        service = service_manifest(s.name, s.namespace, s.cluster_ip, ports, annotations)
        if s.client_ip_affinity:
            service["spec"]["sessionAffinity"] = "ClientIP"
        objects.append(service)
        addresses = [ip_of(b) for b in s.backends]
        objects.append(
            endpoint_slice_manifest(s.name, s.namespace, [(s.port_name, BACKEND_PORT)], addresses)
        )
    return objects


def http_get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def wait_for(
    url: str, what: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0
) -> None:
    """Until `url` answers 200; fails early, with the log's end, if the process exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DevMeshError(f"{what} exited with code {process.returncode}:\n{tail(log)}")
        try:
            status, body = http_get(url, timeout=1.0)
            if status == 200:
                return
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise DevMeshError(f"{what} not ready within {timeout:g}s ({url}: {last}):\n{tail(log)}")


def tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@dataclass
class Backend:
    name: str
    pod: Pod
    process: subprocess.Popen[bytes] | None


@dataclass
class LocalMesh:
    mesh: DevMesh
    work: Path
    backends: dict[str, Backend] = field(default_factory=dict)
    control_plane: Pod | None = None
    client: Pod | None = None
    sidecar: subprocess.Popen[bytes] | None = None
    control_plane_process: subprocess.Popen[bytes] | None = None
    _sidecar_argv: list[str] = field(default_factory=list)

    @property
    def manifests(self) -> Path:
        return self.work / "manifests"

    def log(self, name: str) -> Path:
        return self.work / f"{name}.log"

    # --- pieces ----------------------------------------------------------------------

    def add_backend(self, name: str, ready: bool = False) -> Backend:
        """A backend pod; with `ready`, return once it accepts connections (as a pod that
        passed its readiness probe, before it goes into an EndpointSlice)."""
        pod = self.mesh.add_pod(name, resolv_conf=pod_resolv_conf())
        argv = [PYTHON, "-m", "meshlet.devmesh.backend", f"--name={name}"]
        argv.append(f"--listen={pod.ip}:{BACKEND_PORT}")
        log = self.log(name)
        process = pod.spawn(argv, log, uid=APP_UID)
        backend = Backend(name, pod, process)
        self.backends[name] = backend
        if ready:
            wait_for(f"http://{pod.ip}:{BACKEND_PORT}/", name, process, log)
        return backend

    def kill_backend(self, name: str) -> None:
        """The backend's server process dies; its pod (and IP) stays, as a crashed container's."""
        backend = self.backends[name]
        if backend.process is not None:
            self.mesh.stop(backend.process)
            backend.process = None

    def write_services(self, services: Sequence[ServiceSpec], file: str = "mesh.yaml") -> Path:
        self.manifests.mkdir(exist_ok=True)
        path = self.manifests / file
        write_manifests(path, *service_objects(services, lambda b: self.backends[b].pod.ip))
        return path

    def start_control_plane(self) -> Pod:
        """The control plane's pod and process (after `stop_control_plane`: the same pod)."""
        pod = self.control_plane or self.mesh.add_pod("cp")
        argv = [PYTHON, "-m", "meshlet", "control-plane", f"--manifests={self.manifests}"]
        argv += [f"--xds-address={pod.ip}:{XDS_PORT}", f"--admin-address={pod.ip}:{CP_ADMIN_PORT}"]
        log = self.log("control-plane")
        process = pod.spawn(argv, log, uid=CONTROL_PLANE_UID)
        wait_for(f"http://{pod.ip}:{CP_ADMIN_PORT}/readyz", "the control plane", process, log)
        self.control_plane = pod
        self.control_plane_process = process
        return pod

    def stop_control_plane(self) -> None:
        """The control plane's process ends; its pod (and IP) stays, unreachable."""
        if self.control_plane_process is not None:
            self.mesh.stop(self.control_plane_process)
            self.control_plane_process = None

    def state_dir(self, name: str = "client") -> Path:
        """Where a client's sidecar keeps its config (an emptyDir: the pod's, not the
        container's)."""
        return self.work / f"sidecar-{name}-state"

    def add_client(self, name: str = "client", zone: str = "") -> Pod:
        """A pod with capture (meshlet init) and a ready sidecar running as the proxy uid."""
        if self.control_plane is None:
            raise DevMeshError("start the control plane before the client")
        pod = self.mesh.add_pod(name, resolv_conf=pod_resolv_conf())
        init = pod.run([PYTHON, "-m", "meshlet", "init", f"--proxy-uid={PROXY_UID}"])
        if init.returncode != 0:
            raise DevMeshError(f"meshlet init failed in {name}: {init.stderr.strip()}")
        argv = [PYTHON, "-m", "meshlet", "sidecar", f"--node-id={name}", "--namespace=default"]
        argv += [f"--xds-address={self.control_plane.ip}:{XDS_PORT}"]
        argv += [f"--admin-address={pod.ip}:{SIDECAR_ADMIN_PORT}"]
        if zone:
            argv.append(f"--zone={zone}")
        state = self.state_dir(name)
        state.mkdir(exist_ok=True)
        os.chown(state, PROXY_UID, PROXY_UID)
        argv.append(f"--state-dir={state}")
        self.client = pod
        self._sidecar_argv = argv
        self.start_sidecar()
        return pod

    def start_sidecar(self, ready: bool = True) -> None:
        """The client's sidecar process, with the flags `add_client` gave it; returns once
        it is ready (`ready` False: once its admin port answers, ready or not)."""
        assert self.client is not None
        log = self.log(f"sidecar-{self.client.name}")
        self.sidecar = self.client.spawn(self._sidecar_argv, log, uid=PROXY_UID)
        url = self.sidecar_url("/ready" if ready else "/config_dump")
        wait_for(url, "the sidecar", self.sidecar, log)

    def stop_sidecar(self) -> None:
        """The client's sidecar ends as on SIGTERM (it drains, saves its config, exits)."""
        if self.sidecar is not None:
            self.mesh.stop(self.sidecar)
            self.sidecar = None

    def sidecar_url(self, path: str) -> str:
        pod = self.client or self.mesh.pods["client"]
        return f"http://{pod.ip}:{SIDECAR_ADMIN_PORT}{path}"

    def sidecar_json(self, path: str) -> Any:
        status, body = http_get(self.sidecar_url(path))
        if status != 200:
            raise DevMeshError(f"sidecar {path}: HTTP {status}")
        return json.loads(body)

    def cluster_endpoints(self, service: str, port: int, namespace: str = "default") -> list[str]:
        """The endpoint addresses the sidecar holds for a service port."""
        clusters = self.sidecar_json("/clusters")
        name = f"outbound|{port}||{service}.{namespace}.svc.cluster.local"
        return [e["address"] for e in clusters.get(name, {}).get("endpoints", [])]

    def load(
        self, targets: Sequence[str], *extra: str, uid: int = APP_UID, timeout: float = 120.0
    ) -> dict[str, Any]:
        """Run the load generator in the client pod as an application uid; its final report."""
        assert self.client is not None
        argv = [PYTHON, "-m", "meshlet.devmesh.load", *(f"--target={t}" for t in targets), *extra]
        result = self.client.run(argv, uid=uid, timeout=timeout)
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        if result.returncode != 0 or not lines:
            raise DevMeshError(f"load failed ({result.returncode}): {result.stderr[-2000:]}")
        final: dict[str, Any] = json.loads(lines[-1])
        return final
