"""DNS benchmark: meshlet's DNS server, unbound (one thread) and CoreDNS (its kubernetes
plugin on the test cluster, one core), same names, one run.

    python bench/dns.py [--services 1000] [--duration 10] [--rounds 3] [--memory-services 10000]
    python bench/dns.py --no-coredns                              # without the test cluster
    python bench/dns.py --udp-modes mmsg recvfrom protocol thread   # why the UDP loop is what it is
    python bench/dns.py --profile /tmp/dns-profile                  # py-spy on the meshlet server

All servers hold the same S services (svc-<i>.ns-<i % 20>.svc.cluster.local, one
ClusterIP each, one named port) - meshlet from a NameTable, unbound as `local-data`,
CoreDNS from the test cluster's API server, where the script creates them (their
ClusterIPs are what the API server gave them; without the cluster, synthetic ones,
every 10th also IPv6) - and dnsperf sends each the same query file: A for every
service, AAAA for every 10th, SRV for every 20th, in a seeded random order. CoreDNS
runs with kubeadm's Corefile, the cache off (it answers from its informer's store,
as the sidecar answers from its table) and GOMAXPROCS=1. Runs alternate (meshlet,
unbound, CoreDNS, meshlet, ...) and the median of the rounds is printed:
queries per second, dnsperf's average latency, and the server's CPU time per query
(from /proc, which depends less on how the 2 CPUs are shared with dnsperf). dnsperf
2.10 prints no percentiles, so latency percentiles come from a second, paced run
(-Q, dnsperf -v prints every query's latency). Then one meshlet server with
--memory-services names reports its VmRSS, idle and after a query load.

The meshlet server runs in a subprocess of this script (`serve`), on uvloop, as the
sidecar runs it; every process is ended by its PID, also on failure or Ctrl-C.
This is a benchmark, not a test: it asserts nothing and prints what it saw.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMESPACES = 20
DOMAIN = "cluster.local"
SIDECAR_NAMESPACE = "ns-0"
TTL = 5
UNBOUND_QPS_REFERENCE = 155_000  # one thread, this machine class (issue 3)
COREDNS_QPS_PER_VCPU = 17_000  # CoreDNS's published figure


# --- The synthetic mesh ---------------------------------------------------------------


def service_name(i: int) -> str:
    return f"svc-{i}.ns-{i % NAMESPACES}.svc.{DOMAIN}"


def synthetic_ips(services: int) -> list[list[str]]:
    """ClusterIPs for services 0..S-1 when there is no cluster to give them."""
    out = []
    for i in range(services):
        ips = [
            f"10.96.{i >> 8 & 255}.{i & 255}" if i < 65536 else f"10.97.{i >> 8 & 255}.{i & 255}"
        ]
        if i % 10 == 0:
            ips.append(f"fd00:10:96::{i:x}")
        out.append(ips)
    return out


def name_table(ips: list[list[str]]) -> object:
    from meshlet._proto.meshlet.v1.nametable_pb2 import NameInfo, NameTable, Port

    table = NameTable()
    for i, service_ips in enumerate(ips):
        table.table[service_name(i)].CopyFrom(
            NameInfo(
                ips=service_ips,
                ports=[Port(name="http", port=80, protocol="tcp")],
                namespace=f"ns-{i % NAMESPACES}",
                service=f"svc-{i}",
            )
        )
    return table


def query_lines(services: int, seed: int = 3) -> list[str]:
    lines = [f"{service_name(i)} A" for i in range(services)]
    lines += [f"{service_name(i)} AAAA" for i in range(0, services, 10)]
    lines += [f"_http._tcp.{service_name(i)} SRV" for i in range(0, services, 20)]
    random.Random(seed).shuffle(lines)
    return lines


def unbound_config(folder: str, port: int, ips: list[list[str]]) -> str:
    lines = [
        "server:",
        f'  directory: "{folder}"',
        f"  interface: 127.0.0.1@{port}",
        f"  port: {port}",
        "  num-threads: 1",
        "  do-daemonize: no",
        '  username: ""',
        '  chroot: ""',
        "  use-syslog: no",
        '  logfile: ""',
        '  pidfile: ""',
        "  do-ip6: no",
        "  verbosity: 0",
        "  access-control: 127.0.0.0/8 allow",
        '  local-zone: "." refuse',
        f'  local-zone: "{DOMAIN}." static',
    ]
    for i, service_ips in enumerate(ips):
        name = service_name(i)
        for ip in service_ips:
            rtype = "AAAA" if ":" in ip else "A"
            lines.append(f'  local-data: "{name}. {TTL} IN {rtype} {ip}"')
        lines.append(f'  local-data: "_http._tcp.{name}. {TTL} IN SRV 0 100 80 {name}."')
    lines += ["remote-control:", "  control-enable: no"]
    return "\n".join(lines) + "\n"


# --- `serve`: the meshlet DNS server in this process ------------------------------------


def observer(kind: str) -> object:
    """What the server reports each query to: nothing, a dict count, or an OTel counter."""
    if kind == "counts":
        from meshlet.sidecar.dns import QueryCounts

        return QueryCounts()
    if kind == "otel":  # what calling an OpenTelemetry counter per query costs
        from meshlet.telemetry import Telemetry

        counter = Telemetry("bench").meter.create_counter("meshlet.dns.queries")
        attributes: dict[tuple[str, str, str, str], dict[str, str]] = {}

        def add(qtype: str, rcode: str, source: str, proto: str, seconds: float | None) -> None:
            key = (qtype, rcode, source, proto)
            if key not in attributes:
                attributes[key] = {"type": qtype, "rcode": rcode, "source": source, "proto": proto}
            counter.add(1, attributes[key])

        return add
    return None


def answer_timer(kind: str) -> object:
    """What the server reports local answer times to: with `counts`, what the sidecar uses."""
    if kind == "counts":
        from meshlet.sidecar.dns.stats import DurationCounts

        return DurationCounts()
    return None


def serve(ips_file: str, port: int, udp_mode: str, observe: str) -> None:
    import uvloop

    from meshlet.sidecar.dns import DnsServer, Forwarder, build_dns_table, replay
    from meshlet.sidecar.dns.answer import answer

    with open(ips_file) as f:
        table_proto = name_table(json.load(f))
    started = time.perf_counter()
    table = build_dns_table(table_proto, SIDECAR_NAMESPACE, DOMAIN, TTL)  # type: ignore[arg-type]
    build_seconds = time.perf_counter() - started
    gc.collect()
    gc.freeze()  # the table lives as long as the process: keep it out of GC passes

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        forwarder = Forwarder([])
        if udp_mode == "mmsg-no-replay":
            # Nothing kept: every query goes through answer(), and only the labels remain.
            replay.Replay.keep = lambda _self, query, response: replay.labels(query, response)  # type: ignore[method-assign]
        server = DnsServer(
            lambda: table,
            forwarder,
            udp_batching=udp_mode != "recvfrom",
            on_query=observer(observe),  # type: ignore[arg-type]
            on_answered=answer_timer(observe),  # type: ignore[arg-type]
        )
        if udp_mode in ("mmsg", "mmsg-no-replay", "recvfrom"):
            await server.start("127.0.0.1", port)
        elif udp_mode == "protocol":  # asyncio's DatagramProtocol, for comparison
            await loop.create_datagram_endpoint(
                lambda: _AnswerProtocol(lambda data: answer(data, table, 1232)),
                local_addr=("127.0.0.1", port),
            )
        elif udp_mode == "thread":  # a blocking recvfrom/sendto loop in a thread
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", port))
            threading.Thread(target=_thread_loop, args=(sock, table, answer), daemon=True).start()
        info = {"port": port, "build_seconds": build_seconds, "answers": len(table.answers)}
        print(json.dumps(info), flush=True)
        await stop.wait()
        await server.close()

    uvloop.run(main())


class _AnswerProtocol(asyncio.DatagramProtocol):
    def __init__(self, handle: object) -> None:
        self.handle = handle
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        response = self.handle(data)  # type: ignore[operator]
        if isinstance(response, bytes) and self.transport is not None:
            self.transport.sendto(response, addr)


def _thread_loop(sock: socket.socket, table: object, answer: object) -> None:
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while True:
        data, addr = recvfrom(4096)
        response = answer(data, table, 1232)  # type: ignore[operator]
        if isinstance(response, bytes):
            sendto(response, addr)


# --- Processes ------------------------------------------------------------------------------


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp_sock:
                try:
                    udp_sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def meshlet_server(
    ips_file: str, udp_mode: str, log: str, observe: str = "none"
) -> Iterator[tuple[int, int, dict[str, float]]]:
    """(pid, port, what it printed) of a `serve` subprocess."""
    port = free_port()
    argv = [sys.executable, os.path.abspath(__file__), "serve", "--ips", ips_file]
    argv += ["--port", str(port), "--udp-mode", udp_mode, "--observer", observe]
    with open(log, "wb") as err:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            with open(log) as f:
                raise RuntimeError(f"meshlet DNS server exited: {f.read()[-3000:]}")
        yield process.pid, port, json.loads(line)
    finally:
        stop(process)
        if process.stdout is not None:
            process.stdout.close()


@contextlib.contextmanager
def unbound_server(folder: str, ips: list[list[str]], log: str) -> Iterator[tuple[int, int]]:
    exe = shutil.which("unbound") or shutil.which("unbound", path="/usr/sbin:/usr/local/sbin")
    if exe is None:
        raise RuntimeError("unbound is not installed (apt-get install unbound)")
    port = free_port()
    config = os.path.join(folder, f"unbound-{len(ips)}.conf")
    with open(config, "w") as f:
        f.write(unbound_config(folder, port, ips))
    with open(log, "wb") as err:
        process = subprocess.Popen([exe, "-d", "-c", config], stdout=err, stderr=err)
    try:
        wait_answering(port, service_name(0), process)
        yield process.pid, port
    finally:
        stop(process)


def wait_answering(port: int, name: str, process: subprocess.Popen[bytes]) -> None:
    """Until an A query for `name` gets an answer (raw socket: this file is named dns.py,
    so dnspython's `import dns` would import this script)."""
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split("."))
    query = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + question + b"\x00\x00\x01\x00\x01"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.5)
            with contextlib.suppress(OSError):
                sock.sendto(query, ("127.0.0.1", port))
                response = sock.recv(4096)
                if len(response) >= 12 and struct.unpack("!H", response[6:8])[0] > 0:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"nothing answers on 127.0.0.1:{port}")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --- dnsperf ----------------------------------------------------------------------------------


@dataclass
class Throughput:
    qps: float
    avg_ms: float
    stddev_ms: float
    max_ms: float
    completed: int
    lost: int
    cpu_us: float  # server CPU per completed query


def _field(text: str, label: str) -> str:
    match = re.search(rf"{label}:\s+([0-9.]+)", text)
    return match.group(1) if match else "nan"


def throughput(pid: int, port: int, queries: str, duration: float, outstanding: int) -> Throughput:
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", queries, "-l", str(duration)]
    argv += ["-c", "1", "-q", str(outstanding)]
    before = cpu_seconds(pid)
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    used = cpu_seconds(pid) - before
    completed = int(float(_field(out, "Queries completed")))
    max_match = re.search(r"Average Latency \(s\):.*max ([0-9.]+)", out)
    return Throughput(
        qps=float(_field(out, "Queries per second")),
        avg_ms=float(_field(out, r"Average Latency \(s\)")) * 1000,
        stddev_ms=float(_field(out, r"Latency StdDev \(s\)")) * 1000,
        max_ms=float(max_match.group(1)) * 1000 if max_match else float("nan"),
        completed=completed,
        lost=int(float(_field(out, "Queries lost"))),
        cpu_us=used / max(completed, 1) * 1e6,
    )


def latencies(port: int, queries: str, rate: int, duration: float) -> dict[str, float]:
    """Per-query latency at a fixed rate: p50, p99, p99.9, max in ms (dnsperf -v)."""
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", queries, "-l", str(duration)]
    argv += ["-c", "1", "-q", "100", "-Q", str(rate), "-v"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    values = sorted(
        float(line.split()[-1]) * 1000 for line in out.splitlines() if line.startswith("> ")
    )
    if not values:
        return {}

    def pct(p: float) -> float:
        return values[min(len(values) - 1, int(p / 100 * len(values)))]

    return {"p50": pct(50), "p99": pct(99), "p99.9": pct(99.9), "max": values[-1], "n": len(values)}


def load(port: int, queries: str, duration: float) -> None:
    argv = [
        "dnsperf",
        "-s",
        "127.0.0.1",
        "-p",
        str(port),
        "-d",
        queries,
        "-l",
        str(duration),
        "-q",
        "100",
    ]
    subprocess.run(argv, capture_output=True, check=True)


# --- Profiling (optional) --------------------------------------------------------------------


def profile(pid: int, port: int, queries: str, duration: float, folder: str) -> list[str]:
    exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(exe):
        return ["  (py-spy is not installed: pip install py-spy)"]
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "meshlet-dns.txt")
    argv = [exe, "record", "--pid", str(pid), "--rate", "500", "--format", "raw", "--nonblocking"]
    argv += ["--duration", str(int(duration)), "--output", path]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # let it attach
        load(port, queries, duration)
        spy.wait(duration + 30)
    finally:
        stop(spy)
    own: collections.Counter[str] = collections.Counter()
    total = 0
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if stack and count.isdigit():
                total += int(count)
                own[stack.split(";")[-1]] += int(count)
    lines = [f"  {total} samples ({path}); self time, top frames:"]
    lines += [f"    {100 * n / max(total, 1):5.1f}%  {frame}" for frame, n in own.most_common(12)]
    return lines


# --- The run --------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(name: str, runs: list[Throughput], lat: list[dict[str, float]]) -> str:
    def pct(key: str) -> float:
        return median([m[key] for m in lat if key in m])

    return (
        f"{name:<30} {median([r.qps for r in runs]):>10,.0f}"
        f" {median([r.avg_ms for r in runs]):>8.3f}"
        f" {median([r.stddev_ms for r in runs]):>8.3f} {median([r.cpu_us for r in runs]):>9.2f}"
        f" {sum(r.lost for r in runs):>6}"
        f" {pct('p50'):>8.3f} {pct('p99'):>8.3f} {pct('p99.9'):>8.3f}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "serve"])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--memory-services", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per dnsperf run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--outstanding", type=int, default=100, help="dnsperf -q")
    parser.add_argument("--latency-rate", type=int, default=20_000, help="qps of the paced run")
    parser.add_argument(
        "--udp-modes",
        nargs="+",
        default=["mmsg", "mmsg-no-replay"],
        choices=["mmsg", "mmsg-no-replay", "recvfrom", "protocol", "thread"],
        help="meshlet's loop (mmsg, recvfrom: DnsServer; mmsg-no-replay: without replaying "
        "answers already given, see dns/replay.py) or a bare alternative around answer()",
    )
    parser.add_argument(
        "--observers",
        nargs="+",
        default=["none", "counts"],
        choices=["none", "counts", "otel"],
        help="what the server reports each query to (counts: QueryCounts and DurationCounts, as "
        "the sidecar; otel: Counter.add)",
    )
    parser.add_argument("--profile", metavar="DIR", help="record the meshlet server with py-spy")
    parser.add_argument(
        "--coredns",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run CoreDNS on the test cluster (built by tests/k8s/build.py)",
    )
    parser.add_argument("--ips", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--udp-mode", default="mmsg", help=argparse.SUPPRESS)
    parser.add_argument("--observer", default="none", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode == "serve":
        serve(args.ips, args.port, args.udp_mode, args.observer)
        return
    if shutil.which("dnsperf") is None:
        sys.exit("dnsperf is not installed (apt-get install dnsperf)")

    folder = tempfile.mkdtemp(prefix="meshlet-bench-dns-")
    try:
        run(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def variants(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(row name, UDP mode, observer): every mode without observer, mmsg with each observer."""
    out = [(f"meshlet ({mode})", mode, "none") for mode in args.udp_modes]
    out += [
        (f"meshlet (mmsg, on_query={kind})", "mmsg", kind)
        for kind in args.observers
        if kind != "none"
    ]
    if "none" not in args.observers and "mmsg" in args.udp_modes:
        out = [v for v in out if v[1:] != ("mmsg", "none")]
    return out


@contextlib.contextmanager
def coredns_on_cluster(services: int, folder: str) -> Iterator[tuple[list[list[str]], int, int]]:
    """The test cluster with the S services in it, and CoreDNS on it: (their ClusterIPs,
    CoreDNS's pid, its port). Raises RuntimeError when the cluster cannot run here."""
    sys.path.insert(0, ROOT)  # the test cluster lives in tests/k8s
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from tests.k8s import build
    from tests.k8s.cluster import running_cluster
    from tests.k8s.coredns import coredns

    binaries = build.binaries()
    if isinstance(binaries, str):
        raise RuntimeError(binaries)
    with running_cluster(binaries) as kube:
        core = kube.core
        for n in range(NAMESPACES):
            core.create_namespace({"metadata": {"name": f"ns-{n}"}})

        def create(i: int) -> list[str]:
            body = {
                "metadata": {"name": f"svc-{i}"},
                "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
            }
            made = core.create_namespaced_service(f"ns-{i % NAMESPACES}", body)
            return list(made.spec.cluster_ips)

        with ThreadPoolExecutor(8) as pool:
            ips = list(pool.map(create, range(services)))
        with coredns(kube, "ns-0", Path(folder), gomaxprocs=1) as server:
            wait_answering(server.port, service_name(services - 1), server.process.popen)
            yield ips, server.process.pid, server.port


def run(args: argparse.Namespace, folder: str) -> None:
    with contextlib.ExitStack() as stack:
        ips = synthetic_ips(args.services)
        reference: tuple[int, int] | None = None
        if args.coredns:
            try:
                ips, pid, port = stack.enter_context(coredns_on_cluster(args.services, folder))
                reference = (pid, port)
            except RuntimeError as exc:
                print(f"CoreDNS left out: {exc}")
        compare(args, folder, ips, reference)
    memory(args, folder)


def compare(
    args: argparse.Namespace, folder: str, ips: list[list[str]], coredns: tuple[int, int] | None
) -> None:
    ips_file = os.path.join(folder, "ips.json")
    with open(ips_file, "w") as f:
        json.dump(ips, f)
    queries = os.path.join(folder, "queries.txt")
    lines = query_lines(args.services)
    with open(queries, "w") as f:
        f.write("\n".join(lines) + "\n")
    kinds = collections.Counter(line.split()[-1] for line in lines)
    with open("/proc/cpuinfo") as f:
        models = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
    peers = "unbound (num-threads 1)" + (", CoreDNS (GOMAXPROCS=1, no cache)" if coredns else "")
    print(
        f"DNS: meshlet vs {peers}; {args.services} services,"
        f" {len(lines)} query names "
        f"({', '.join(f'{k} {v}' for k, v in kinds.most_common())}); "
        f"dnsperf -c 1 -q {args.outstanding} -l {args.duration:g}; {args.rounds} rounds, medians"
    )
    print(
        f"machine: {os.cpu_count()} vCPU, {models[0] if models else '?'};"
        f" Python {sys.version.split()[0]}, uvloop"
    )

    rows = variants(args)
    results: dict[str, list[Throughput]] = {name: [] for name, _, _ in rows}
    results["unbound"] = []
    if coredns is not None:
        results["coredns"] = []
    lat: dict[str, list[dict[str, float]]] = {name: [] for name in results}
    profile_lines: list[str] = []
    unbound_log = os.path.join(folder, "unbound.log")
    with unbound_server(folder, ips, unbound_log) as (u_pid, u_port):
        for round_ in range(args.rounds):
            for name, mode, observe in rows:
                log = os.path.join(folder, f"meshlet-{mode}-{observe}.log")
                with meshlet_server(ips_file, mode, log, observe) as (pid, port, _):
                    load(port, queries, 1)  # warm up
                    results[name].append(
                        throughput(pid, port, queries, args.duration, args.outstanding)
                    )
                    lat[name].append(latencies(port, queries, args.latency_rate, 3))
                    if round_ == 0 and args.profile and name == rows[0][0]:
                        profile_lines = profile(pid, port, queries, args.duration, args.profile)
            if round_ == 0:
                load(u_port, queries, 1)
            results["unbound"].append(
                throughput(u_pid, u_port, queries, args.duration, args.outstanding)
            )
            lat["unbound"].append(latencies(u_port, queries, args.latency_rate, 3))
            if coredns is not None:
                c_pid, c_port = coredns
                if round_ == 0:
                    load(c_port, queries, 1)
                results["coredns"].append(
                    throughput(c_pid, c_port, queries, args.duration, args.outstanding)
                )
                lat["coredns"].append(latencies(c_port, queries, args.latency_rate, 3))

    print()
    print(
        f"{'':<30} {'qps':>10} {'avg ms':>8} {'sd ms':>8} {'CPU us/q':>9} {'lost':>6}"
        f" {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>8}"
    )
    for name, runs in results.items():
        print(summarize(name, runs, lat[name]))
    print(
        f"  qps, avg/sd latency: dnsperf at full speed (-q {args.outstanding}); CPU us/q: the"
        f" server's CPU time per answered query; p50/p99/p99.9: paced runs at"
        f" {args.latency_rate:,} qps (dnsperf -v), median over rounds"
    )
    for name, runs in results.items():
        print(f"  rounds, {name}: {', '.join(f'{r.qps:,.0f}' for r in runs)} qps")
    for peer in [p for p in ("unbound", "coredns") if p in results]:
        peer_qps = median([r.qps for r in results[peer]])
        peer_cpu = median([r.cpu_us for r in results[peer]])
        for name, _, _ in rows:
            runs = results[name]
            ratio = median([r.qps for r in runs]) / peer_qps
            cpu_ratio = peer_cpu / median([r.cpu_us for r in runs])
            verdict = "PASS" if ratio >= 1.0 else "MISS"
            print(
                f"ratio {name}/{peer}: {ratio:.2f} in qps, {cpu_ratio:.2f} in queries per"
                f" CPU-second   goal >= 1.0: {verdict}"
            )
    print(
        f"  for scale: unbound one thread ~{UNBOUND_QPS_REFERENCE:,} qps on this machine class"
        f" with its own cores; CoreDNS ~{COREDNS_QPS_PER_VCPU:,} qps per vCPU. Here dnsperf"
        f" shares the {os.cpu_count()} vCPUs with the server."
    )

    if profile_lines:
        print(f"\npy-spy, {rows[0][0]} under dnsperf:")
        print("\n".join(profile_lines))


def memory(args: argparse.Namespace, folder: str) -> None:
    print()
    n = args.memory_services
    ips = synthetic_ips(n)
    ips_file = os.path.join(folder, "memory-ips.json")
    with open(ips_file, "w") as f:
        json.dump(ips, f)
    mem_queries = os.path.join(folder, "memory-queries.txt")
    with open(mem_queries, "w") as f:
        f.write("\n".join(query_lines(n)) + "\n")
    with meshlet_server(ips_file, "mmsg", os.path.join(folder, "meshlet-memory.log")) as (
        pid,
        port,
        info,
    ):
        idle = rss_mb(pid)
        load(port, mem_queries, 3)
        loaded = rss_mb(pid)
    with unbound_server(folder, ips, os.path.join(folder, "unbound-memory.log")) as (u_pid, _):
        unbound_rss = rss_mb(u_pid)
    verdict = "PASS" if max(idle, loaded) < 60 else "MISS"
    print(
        f"memory, {n:,} services ({info['answers']:,} precomputed answers): meshlet DNS "
        f"process VmRSS {idle:.1f} MB idle, {loaded:.1f} MB after 3 s of queries   goal < 60 MB: "
        f"{verdict}; table built in {info['build_seconds']:.2f} s; unbound with the same names: "
        f"{unbound_rss:.1f} MB"
    )


if __name__ == "__main__":
    main()
