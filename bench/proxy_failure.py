"""The failure round of bench/proxy.py: one of three backends killed under load.

Three fresh nginx pods serve the `fail` Service. wrk runs against it; part way
through one backend's nginx is killed (SIGKILL: its sockets close, its pod IP
stays, new connections to it are refused, as after a container crash), and 3 s
later its endpoint is marked NotReady in the EndpointSlice, as a readiness
probe with period 1 s and failureThreshold 3 would have it. wrk runs on a few
seconds after that; every request it saw fail (socket errors and non-2xx) is
counted: with the slice updated, none should fail any more.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from bench.proxy_load import CLIENT_UID, LOAD_CPU, Http, parse_wrk
from bench.proxy_services import Services
from meshlet.devmesh.mesh import DevMesh, Pod

FAIL_VIP = "10.96.0.12"
PORTS = [("web", 80, 8080)]
BACKENDS = 3
KILL_AT = 2.0  # seconds into the load
PROBE_DELAY = 3.0  # period 1 s x failureThreshold 3
AFTER = 4.0  # load after the slice changed


@dataclass
class Failure:
    load: Http
    seconds: float


def nginx_single(work: Path, name: str, ip: str) -> Path:
    """One nginx process (no master): killing its PID kills the backend."""
    folder = work / name
    (folder / "body").mkdir(parents=True, exist_ok=True)
    path = folder / "nginx.conf"
    path.write_text(
        f"""master_process off;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {folder}/body;
    server {{
        listen {ip}:8080 backlog=4096 reuseport;
        location / {{ return 200 "hello from {name}\\n"; }}
    }}
}}
"""
    )
    return path


def spread(client: Pod, names: list[str], timeout: float = 30.0) -> None:
    """Until requests to the VIP from the client reach every backend (the path has all
    three endpoints, whichever proxy it is)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = client.run(["curl", "-s", "-m", "2", f"http://{FAIL_VIP}/"], uid=CLIENT_UID).stdout
        seen.update(n for n in names if out.strip() == f"hello from {n}")
        if seen == set(names):
            return
        time.sleep(0.05)
    raise RuntimeError(f"requests to {FAIL_VIP} reached only {sorted(seen)} of {names}")


def failure_round(
    mesh: DevMesh,
    services: Services,
    client: Callable[[], AbstractContextManager[Pod]],
    work: Path,
    tag: str,
    connections: int,
    close: bool,
    script: Path,
) -> Failure:
    """One run; `client` gives a fresh client pod with its proxy ready."""
    names = [f"fail-{tag}-{i}" for i in range(BACKENDS)]
    pods = [mesh.add_pod(n) for n in names]
    try:
        nginx = [
            p.spawn(
                ["taskset", "-c", LOAD_CPU, "nginx", "-c", str(nginx_single(work, n, p.ip))],
                work / f"{n}.log",
            )
            for n, p in zip(names, pods, strict=True)
        ]
        ready = {p.ip: True for p in pods}
        services.publish("fail", FAIL_VIP, PORTS, ready)
        with client() as pod:
            spread(pod, names)
            seconds = KILL_AT + PROBE_DELAY + AFTER
            log = work / f"wrk-{tag}.log"
            argv = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}"]
            argv += [f"-d{seconds:g}s", "-s", str(script), "--timeout=2s"]
            argv += [*(["-H", "Connection: close"] if close else []), f"http://{FAIL_VIP}/"]
            load = pod.spawn(argv, log, uid=CLIENT_UID)
            time.sleep(KILL_AT)
            nginx[0].kill()  # SIGKILL, by its PID
            killed = time.monotonic()
            time.sleep(max(0.0, killed + PROBE_DELAY - time.monotonic()))
            services.set_ready("fail", {**ready, pods[0].ip: False})
            try:
                load.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                load.kill()
                raise
            return Failure(parse_wrk(log.read_text(errors="replace")), seconds)
    finally:
        for name in names:
            mesh.remove_pod(name)
