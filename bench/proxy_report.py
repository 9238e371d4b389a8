"""The tables bench/proxy.py prints: medians over rounds, ratios, goals, the failure round."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from bench.proxy_failure import Failure
from bench.proxy_load import PERCENTILES, Http


@dataclass
class Result:
    keep_alive: Http
    new_connections: Http
    gbps: float
    cpu_per_request_us: float = 0.0  # the proxy's CPU (user+system) per keep-alive request


Read = Callable[[Result], float]


def summary(r: Result) -> str:
    def http(h: Http) -> str:
        tail = "/".join(f"{h.latency_ms[p]:.2f}" for p in PERCENTILES)
        return f"{h.rps:.0f}/s, p50/90/99/99.9 {tail} ms"

    keep_alive, new = http(r.keep_alive), http(r.new_connections)
    return f"keep-alive {keep_alive}; new connections {new}; bulk {r.gbps:.2f} Gbit/s"


def _rows() -> list[tuple[str, Read, bool]]:
    rows: list[tuple[str, Read, bool]] = []
    for label, load in (
        ("keep-alive requests/s", "keep_alive"),
        ("new connections/s", "new_connections"),
    ):
        rows.append((label, lambda r, load=load: getattr(r, load).rps, True))
        for p in PERCENTILES:
            rows.append(
                (f"  p{p:g} (ms)", lambda r, load=load, p=p: getattr(r, load).latency_ms[p], False)
            )
    rows.append(("bulk Gbit/s (iperf3)", lambda r: r.gbps, True))
    rows.append(("proxy CPU us/request", lambda r: r.cpu_per_request_us, False))
    return rows


def median(results: list[Result], read: Read) -> float:
    return float(statistics.median(read(r) for r in results)) if results else 0.0


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def report(
    runs: dict[str, list[Result]], connections: int, duration: int, rounds: int, idle: int
) -> None:
    kube = bool(runs.get("kube-proxy"))
    print()
    print(
        f"proxy: meshlet sidecar vs Envoy --concurrency 1 (same pod, same redirect, same control "
        f"plane){' and kube-proxy (nftables, the node)' if kube else ''}; wrk -c{connections}, "
        f"{duration}s per load, {rounds} rounds, medians"
        + (f"; {idle} idle keep-alive connections held through each path" if idle else "")
    )
    names = ["meshlet", "envoy", *(["kube-proxy"] if kube else []), "no proxy"]
    header = f"{'':24}" + "".join(f"{n:>12}" for n in names) + f"{'meshlet/envoy':>15}"
    header += f"{'meshlet/kube-proxy':>20}" if kube else ""
    print(header)
    print("-" * len(header))
    for label, read, higher_is_better in _rows():
        values = {n: median(runs[n], read) for n in names}
        if "CPU" in label:
            values = {n: v for n, v in values.items() if n in ("meshlet", "envoy")}
        line = f"{label:24}" + "".join(
            f"{values[n]:12.2f}" if n in values else f"{'':12}" for n in names
        )
        line += f"{_ratio(values['meshlet'], values['envoy']):>15}"
        if kube:
            line += f"{_ratio(values['meshlet'], values.get('kube-proxy', 0.0)):>20}"
        print(line + ("" if higher_is_better else "  (lower is better)"))
    print()
    print("goals (issue 4): meshlet at least equal to Envoy:")
    for label, read in (
        ("keep-alive requests/s", lambda r: r.keep_alive.rps),
        ("new connections/s", lambda r: r.new_connections.rps),
        ("bulk throughput", lambda r: r.gbps),
    ):
        ratio = median(runs["meshlet"], read) / median(runs["envoy"], read)
        print(f"  {label}: {ratio:.2f}x  {'PASS' if ratio >= 1.0 else 'MISS'}")
    p99 = median(runs["envoy"], _p99) / median(runs["meshlet"], _p99)
    verdict = "PASS" if p99 >= 1.0 else "MISS"
    print(f"goal (issue 12): keep-alive p99 at most Envoy's: envoy/meshlet {p99:.2f}x  {verdict}")
    if kube:
        print(
            "kube-proxy is the kernel's limit for this path: a DNAT in the node, no process "
            "in between (its cost lands on the sending CPU, the load CPU here)."
        )


def _p99(r: Result) -> float:
    return r.keep_alive.latency_ms[99.0]


def report_fixed_rate(fixed: dict[str, Http], rate: int, connections: int, seconds: int) -> None:
    if not fixed:
        return
    print()
    print(
        f"fixed rate: vegeta at {rate} requests/s over {connections} keep-alive connections, "
        f"{seconds}s, one run each (latency of requests sent on schedule)"
    )
    names = [n for n in ("meshlet", "envoy", "no proxy") if n in fixed]
    header = f"{'':24}" + "".join(f"{n:>12}" for n in names) + f"{'meshlet/envoy':>15}"
    print(header)
    print("-" * len(header))
    for p in PERCENTILES:
        values = {n: fixed[n].latency_ms[p] for n in names}
        line = f"{f'  p{p:g} (ms)':24}" + "".join(f"{values[n]:12.2f}" for n in names)
        print(line + f"{_ratio(values.get('meshlet', 0.0), values.get('envoy', 0.0)):>15}")
    print(f"{'  failed':24}" + "".join(f"{fixed[n].failed:12d}" for n in names))
    if "meshlet" in fixed and "envoy" in fixed:
        m, e = fixed["meshlet"].latency_ms[99.0], fixed["envoy"].latency_ms[99.0]
        verdict = "PASS" if m <= e else "MISS"
        print(
            "goal (issue 19): p99 at the fixed rate at most Envoy's: "
            f"envoy/meshlet {e / m:.2f}x  {verdict}"
        )


def report_failures(failures: dict[tuple[str, str], Failure], source: str) -> None:
    if not failures:
        return
    peers = sorted({peer for peer, _ in failures}, key=lambda p: p != "kube-proxy")
    print()
    print(
        "failure round: 3 backends, one killed (SIGKILL) mid-run, its endpoint NotReady in the "
        "EndpointSlice 3 s later; failed requests = wrk socket errors + non-2xx over the run"
    )
    print(f"meshlet's control plane read the change from {source}")
    header = f"{'':24}" + "".join(f"{p:>26}" for p in peers)
    print(header)
    print("-" * len(header))
    for load in ("keep-alive", "new connections"):
        cells = []
        for peer in peers:
            f = failures.get((peer, load))
            cells.append(f"{f.load.failed} of {f.load.requests}" if f is not None else "-")
        print(f"{load + ' failed':24}" + "".join(f"{c:>26}" for c in cells))
