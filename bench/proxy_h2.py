"""Requests balanced one by one on an HTTP/2 port: the meshlet sidecar next to Envoy and
no proxy, same node, same client pod, one run.

    python bench/proxy_h2.py [--duration 10] [--rounds 2] [--clients 16] [--streams 10]

The node, the control plane and the peers are bench/proxy.py's (bench/proxy_node.py,
bench/proxy_peers.py): per round, each in a fresh client pod, the meshlet sidecar
and Envoy (`--concurrency 1`, fed by the same control plane over ADS) behind
`meshlet init` capture, pinned to CPU 1, and no proxy (to the backend's pod IP).
The backend is nginx speaking HTTP/2 with prior knowledge (h2c); its Service's
port is named `http2`, so both proxies take each request on its own and send it
upstream as HTTP/2. The loads (h2load, Debian's nghttp2-client, pinned to CPU 0):

- saturation: `h2load -c CLIENTS -m STREAMS`: requests/s, and the proxy's CPU per
  request;
- fixed rate (after the rounds, one run per peer): h2load `--rps` at half of Envoy's
  median saturation over the same clients, one stream each; p50/p90/p99/p99.9 from
  h2load's per-request log;
- memory: the proxy's RSS before and after 200 idle client connections, each with
  its HTTP/2 preface and settings exchanged, before the load: KiB per connection.

This is a benchmark: it asserts nothing. Every process is ended by its PID and the
namespaces are removed, also on failure.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.percentiles import percentile  # noqa: E402
from bench.proxy import (  # noqa: E402
    check_tools,
    cpu_seconds,
    nginx_config,
    profiled,
    start_node_services,
)
from bench.proxy_load import CLIENT_UID, LOAD_CPU, PERCENTILES, Http  # noqa: E402
from bench.proxy_node import node  # noqa: E402
from bench.proxy_peers import DIRECT, ENVOY, MESHLET, Peer, client_pod  # noqa: E402
from meshlet.devmesh.mesh import Pod  # noqa: E402
from tests.envoy_peer import envoy_binary  # noqa: E402
from tests.procs import PYTHON  # noqa: E402

H2_VIP = "10.96.0.14"
H2_PORT = 8081
IDLE_CONNECTIONS = 200
_HOLD = """
import socket, sys, time
import h2.connection, h2.config
held = []
for _ in range(int(sys.argv[3])):
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    conn.receive_data(sock.recv(65536))
    sock.sendall(conn.data_to_send())
    held.append(sock)
print("held", flush=True)
time.sleep(float(sys.argv[4]))
"""


@dataclass
class Load:
    rps: float
    requests: int
    failed: int
    latency_ms: dict[float, float]


def h2load(
    client: Pod, url: str, args: argparse.Namespace, rate: int = 0, log: Path | None = None
) -> Load:
    argv = ["taskset", "-c", LOAD_CPU, "h2load", f"-c{args.clients}", f"-D{args.duration}"]
    if rate:
        argv += ["-m1", f"--rps={max(rate / args.clients, 0.1):g}"]
    else:
        argv += [f"-m{args.streams}"]
    if log is not None:
        argv += [f"--log-file={log}"]
    done = client.run([*argv, url], uid=CLIENT_UID, timeout=args.duration + 60)
    out = done.stdout
    found = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    total = re.search(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored",
        out,
    )
    if found is None or total is None:
        raise RuntimeError(f"h2load printed no result:\n{out}\n{done.stderr}")
    latencies: dict[float, float] = {}
    if log is not None and log.exists():
        # Each line: start time (µs since the epoch), status, request time (µs).
        times = sorted(
            int(line.split()[2]) / 1000 for line in log.read_text().splitlines() if line.strip()
        )
        log.unlink()
        if times:
            latencies = {p: percentile(times, p) for p in PERCENTILES}
    failed = int(total.group(4)) + int(total.group(5))
    return Load(float(found.group(1)), int(total.group(3)), failed, latencies)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory_per_connection(client: Pod, host: str, port: int, pid: int, work: Path) -> float:
    script = work / "hold.py"
    script.write_text(_HOLD)
    before = rss_kib(pid)
    holder = client.spawn(
        [PYTHON, str(script), host, str(port), str(IDLE_CONNECTIONS), "30"],
        work / "hold.log",
        uid=CLIENT_UID,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "held" not in (work / "hold.log").read_text():
            time.sleep(0.2)
        time.sleep(1.0)
        after = rss_kib(pid)
    finally:
        holder.kill()
        holder.wait()
    return (after - before) / IDLE_CONNECTIONS


@dataclass
class Round:
    saturation: Load | Http  # h2load's here, wrk's in bench/proxy_http1.py
    cpu_us: float
    kib_per_connection: float


def wait_h2(client: Pod, url: str, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = client.run(
            [
                "curl",
                "-s",
                "-m",
                "2",
                "--http2-prior-knowledge",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                url,
            ],
            uid=CLIENT_UID,
        )
        if done.stdout.strip() == "200":
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what}: no HTTP/2 answer from {url}")


def target(peer: Peer, backend: Pod) -> tuple[str, str, int]:
    if peer.to_vip:
        return f"http://{H2_VIP}/", H2_VIP, 80
    return f"http://{backend.ip}:{H2_PORT}/", backend.ip, H2_PORT


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per load")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16, help="h2load connections")
    parser.add_argument(
        "--streams", type=int, default=10, help="concurrent streams per connection at saturation"
    )
    parser.add_argument(
        "--fixed-rate", type=int, default=0, help="requests/s (0: half of Envoy's saturation)"
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="record the meshlet sidecar with py-spy at saturation; the stacks are kept in DIR",
    )
    args = parser.parse_args()
    check_tools("bench/proxy_h2.py", ("h2load",), "nghttp2-client nginx-light curl")
    envoy_binary()
    peers = [MESHLET, ENVOY, DIRECT]
    with (
        tempfile.TemporaryDirectory(prefix="meshlet-bench-h2-") as tmp,
        node(with_cluster=False) as the_node,
    ):
        work = args.work = Path(tmp)
        os.chmod(work, 0o777)
        backend = the_node.mesh.add_pod("backend")
        (work / "body").mkdir()
        backend.spawn(
            [
                "taskset",
                "-c",
                LOAD_CPU,
                "nginx",
                "-c",
                str(nginx_config(work, backend.ip, H2_PORT)),
            ],
            work / "nginx.log",
        )
        services = start_node_services(the_node, work, backend)
        services.publish("h2web", H2_VIP, [("http2", 80, H2_PORT)], {backend.ip: True})
        runs: dict[str, list[Round]] = {p.name: [] for p in peers}
        for number in range(1, args.rounds + 1):
            for peer in peers:
                print(f"round {number}: {peer.name} ...", flush=True)
                url, host, port = target(peer, backend)
                with (
                    client_pod(
                        the_node.mesh, f"h2-{peer.name.replace(' ', '-')}-{number}", peer.capture
                    ) as client,
                    peer.start(the_node.mesh, client, the_node.ip, work) as pid,
                ):
                    wait_h2(client, url, peer.name)
                    # Before the load, which would leave the heap grown for them.
                    kib = memory_per_connection(client, host, port, pid, work) if pid else 0.0
                    before = cpu_seconds(pid) if pid else 0.0
                    python = pid if peer is MESHLET else None
                    with profiled(args, python, f"h2-{number}"):
                        load = h2load(client, url, args)
                    cpu = (cpu_seconds(pid) - before) / max(load.requests, 1) * 1e6 if pid else 0.0
                    runs[peer.name].append(Round(load, cpu, kib))
                print(
                    f"    {load.rps:.0f} req/s, {load.failed} failed, {cpu:.1f} us CPU/request,"
                    f" {kib:.1f} KiB/connection",
                    flush=True,
                )
        envoy_rps = statistics.median(r.saturation.rps for r in runs["envoy"])
        rate = args.fixed_rate or round(envoy_rps / 2)
        fixed: dict[str, Load] = {}
        for peer in peers:
            print(f"fixed rate {rate}/s: {peer.name} ...", flush=True)
            url, _, _ = target(peer, backend)
            with (
                client_pod(
                    the_node.mesh, f"h2-{peer.name.replace(' ', '-')}-fixed", peer.capture
                ) as client,
                peer.start(the_node.mesh, client, the_node.ip, work),
            ):
                wait_h2(client, url, peer.name)
                fixed[peer.name] = h2load(
                    client, url, args, rate, work / f"h2load-{peer.name.replace(' ', '-')}.log"
                )
            tail = "/".join(f"{v:.2f}" for v in fixed[peer.name].latency_ms.values())
            done = fixed[peer.name]
            print(
                f"    {done.rps:.0f}/s, p50/90/99/99.9 {tail} ms, {done.failed} failed", flush=True
            )
        report(
            runs,
            fixed,
            f"HTTP/2 (h2c) through each peer: {args.clients} connections x {args.streams}"
            f" streams, {args.duration} s, median of {args.rounds} rounds",
            f"fixed rate {rate}/s over {args.clients} connections, one stream each,"
            f" {args.duration} s",
        )
    return 0


def _median(rounds: list[Round], read: object) -> float:
    return float(statistics.median(read(r) for r in rounds)) if rounds else 0.0  # type: ignore[operator]


def report(
    runs: dict[str, list[Round]],
    fixed: Mapping[str, Load | Http],
    saturation_title: str,
    fixed_title: str,
) -> None:
    """The saturation table, then the fixed rate's, each under its title (what was run)."""
    meshlet, envoy = runs["meshlet"], runs["envoy"]
    print()
    print(saturation_title)
    print(f"{'':34}{'meshlet':>12}{'envoy':>12}{'no proxy':>12}{'meshlet/envoy':>16}")
    rows = [
        ("requests/s at saturation", lambda r: r.saturation.rps),
        ("proxy CPU us/request", lambda r: r.cpu_us),
        ("proxy KiB per idle connection", lambda r: r.kib_per_connection),
    ]
    for label, read in rows:
        m, e, d = (_median(runs[n], read) for n in ("meshlet", "envoy", "no proxy"))
        ratio = f"{m / e:.2f}x" if m and e else "-"
        print(f"{label:34}{m:12.1f}{e:12.1f}{d:12.1f}{ratio:>16}")
    m_cpu, e_cpu = _median(meshlet, lambda r: r.cpu_us), _median(envoy, lambda r: r.cpu_us)
    if m_cpu and e_cpu:
        print(
            f"requests per CPU-second: meshlet {1e6 / m_cpu:.0f}, envoy {1e6 / e_cpu:.0f}"
            f" ({e_cpu / m_cpu:.2f}x Envoy's; goal 1.0x)"
        )
    print()
    print(fixed_title)
    print(f"{'':34}{'meshlet':>12}{'envoy':>12}{'no proxy':>12}{'meshlet/envoy':>16}")
    for p in PERCENTILES:
        values = [
            fixed[n].latency_ms.get(p, 0.0) if n in fixed else 0.0
            for n in ("meshlet", "envoy", "no proxy")
        ]
        ratio = f"{values[0] / values[1]:.2f}x" if values[0] and values[1] else "-"
        print(
            f"{f'  p{p:g} (ms)':34}{values[0]:12.2f}{values[1]:12.2f}{values[2]:12.2f}{ratio:>16}"
        )
    failed = {n: f.failed for n, f in fixed.items()}
    achieved = {n: round(f.rps) for n, f in fixed.items()}
    # h2load waits for each answer before the next request on a stream (vegeta has a
    # bounded number of workers): a peer that cannot keep up sends less, and its
    # percentiles are then not at the rate.
    print(f"requests/s achieved: {achieved}; failed: {failed}")


if __name__ == "__main__":
    sys.exit(main())
