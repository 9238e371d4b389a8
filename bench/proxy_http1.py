"""HTTP/1.1 keep-alive requests on an HTTP port: the meshlet sidecar next to Envoy and
no proxy, same node, same client pod, one run.

    python bench/proxy_http1.py [--duration 10] [--rounds 2] [--clients 16]

The node, the control plane and the peers are bench/proxy.py's (bench/proxy_node.py,
bench/proxy_peers.py): per round, each in a fresh client pod, the meshlet sidecar
and Envoy (`--concurrency 1`, fed by the same control plane over ADS) behind
`meshlet init` capture, pinned to CPU 1, and no proxy (to the backend's pod IP).
The backend is bench/proxy.py's nginx speaking HTTP/1.1 (keep-alive, a million
requests per connection); its Service here has its own VIP and a port named
`http`, so both proxies treat it as HTTP/1.1 (bench/proxy.py's `web` port stays L4).
The loads (pinned to CPU 0, with nginx):

- saturation: `wrk -t1 -c CLIENTS` keep-alive: requests/s, and the proxy's CPU per
  request;
- fixed rate (after the rounds, one run per peer): bench/proxy.py's vegeta at half of
  Envoy's median saturation over CLIENTS keep-alive connections: p50/p90/p99/p99.9
  of requests sent on schedule;
- memory: the proxy's RSS before and after 200 idle keep-alive client connections,
  each having done one request (bench/proxy_idle.py), before the load: KiB per
  connection.

This is a benchmark: it asserts nothing. Every process is ended by its PID and the
namespaces are removed, also on failure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.proxy import (  # noqa: E402
    check_tools,
    cpu_seconds,
    nginx_config,
    profiled,
    run_fixed_rate,
    start_node_services,
)
from bench.proxy_h2 import Round, report, rss_kib  # noqa: E402
from bench.proxy_idle import idle_connections  # noqa: E402
from bench.proxy_load import CLIENT_UID, LOAD_CPU, wrk, wrk_script  # noqa: E402
from bench.proxy_node import node  # noqa: E402
from bench.proxy_peers import DIRECT, ENVOY, MESHLET, Peer, client_pod, wait_through  # noqa: E402
from meshlet.devmesh.mesh import Pod  # noqa: E402
from tests.envoy_peer import envoy_binary  # noqa: E402

HTTP1_VIP = "10.96.0.15"
HTTP1_URL = f"http://{HTTP1_VIP}/"
BACKEND_PORT = 8080  # nginx_config's HTTP/1.1 server
IDLE_CONNECTIONS = 200


def target(peer: Peer, backend: Pod) -> tuple[str, str, int]:
    if peer.to_vip:
        return HTTP1_URL, HTTP1_VIP, 80
    return f"http://{backend.ip}:{BACKEND_PORT}/", backend.ip, BACKEND_PORT


def memory_per_connection(client: Pod, host: str, port: int, pid: int) -> float:
    before = rss_kib(pid)
    with idle_connections(client, [(host, port)], IDLE_CONNECTIONS, CLIENT_UID):
        time.sleep(1.0)
        after = rss_kib(pid)
    return (after - before) / IDLE_CONNECTIONS


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per load")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--clients", type=int, default=16, help="keep-alive connections (wrk and vegeta)"
    )
    parser.add_argument(
        "--fixed-rate", type=int, default=0, help="requests/s (0: half of Envoy's saturation)"
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="record the meshlet sidecar with py-spy at saturation and at the fixed rate;"
        " the stacks are kept in DIR",
    )
    args = parser.parse_args()
    check_tools("bench/proxy_http1.py", ("wrk",), "wrk nginx-light curl")
    envoy_binary()
    peers = [MESHLET, ENVOY, DIRECT]
    with (
        tempfile.TemporaryDirectory(prefix="meshlet-bench-http1-") as tmp,
        node(with_cluster=False) as the_node,
    ):
        work = args.work = Path(tmp)
        os.chmod(work, 0o755)
        backend = the_node.mesh.add_pod("backend")
        (work / "body").mkdir()
        backend.spawn(
            ["taskset", "-c", LOAD_CPU, "nginx", "-c", str(nginx_config(work, backend.ip))],
            work / "nginx.log",
        )
        services = start_node_services(the_node, work, backend)
        services.publish("h1web", HTTP1_VIP, [("http", 80, BACKEND_PORT)], {backend.ip: True})
        script = wrk_script(work)
        runs: dict[str, list[Round]] = {p.name: [] for p in peers}
        for number in range(1, args.rounds + 1):
            for peer in peers:
                print(f"round {number}: {peer.name} ...", flush=True)
                url, host, port = target(peer, backend)
                with (
                    client_pod(
                        the_node.mesh, f"h1-{peer.name.replace(' ', '-')}-{number}", peer.capture
                    ) as client,
                    peer.start(the_node.mesh, client, the_node.ip, work) as pid,
                ):
                    wait_through(client, url, peer.name, None)
                    # Before the load, which would leave the heap grown for them.
                    kib = memory_per_connection(client, host, port, pid) if pid else 0.0
                    before = cpu_seconds(pid) if pid else 0.0
                    python = pid if peer is MESHLET else None
                    with profiled(args, python, f"http1-{number}"):
                        load = wrk(client, url, args.duration, args.clients, False, script)
                    cpu = (cpu_seconds(pid) - before) / max(load.requests, 1) * 1e6 if pid else 0.0
                    runs[peer.name].append(Round(load, cpu, kib))
                tail = "/".join(f"{v:.2f}" for v in load.latency_ms.values())
                print(
                    f"    {load.rps:.0f} req/s (p50/90/99/99.9 {tail} ms), {load.failed} failed,"
                    f" {cpu:.1f} us CPU/request, {kib:.1f} KiB/connection",
                    flush=True,
                )
        envoy_rps = statistics.median(r.saturation.rps for r in runs["envoy"])
        rate = args.fixed_rate or round(envoy_rps / 2)
        fixed = run_fixed_rate(the_node, backend, peers, rate, args, HTTP1_URL, args.clients)
        report(
            runs,
            fixed,
            f"HTTP/1.1 keep-alive through each peer (port `http`): wrk -t1 -c{args.clients},"
            f" {args.duration} s, median of {args.rounds} rounds",
            f"fixed rate {rate}/s (vegeta) over {args.clients} keep-alive connections,"
            f" {args.duration} s",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
