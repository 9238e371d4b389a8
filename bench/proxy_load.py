"""The loads of bench/proxy.py: wrk (HTTP at saturation, its latency distribution and
errors), vegeta (HTTP at a fixed rate) and iperf3.

wrk's own `--latency` table stops at p99, so a Lua `done` hook prints the
percentiles from wrk's histogram (microseconds) and its error counts, one
`key value` line each, after wrk's usual summary.

wrk sends as fast as answers come, so its latencies at saturation are mostly
queueing. vegeta (bench/vegeta, built from its Go module) sends at a fixed rate
over keep-alive connections whatever the answers do, so its latencies are what
a request waits at that load, with no coordinated omission; every result is
read back to compute the same percentiles.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from bench.percentiles import percentile
from meshlet.devmesh.mesh import Pod

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
LOAD_CPU = "0"
CLIENT_UID = 1000

_DONE_HOOK = """
done = function(summary, latency, requests)
  for _, p in ipairs({%s}) do
    io.write(string.format("bench-latency %%g %%d\\n", p, latency:percentile(p)))
  end
  local e = summary.errors
  io.write(string.format("bench-requests %%d\\n", summary.requests))
  io.write(string.format("bench-errors %%d %%d %%d %%d %%d\\n",
    e.connect, e.read, e.write, e.timeout, e.status))
end
"""


@dataclass
class Http:
    """One wrk run: requests/s, latency percentiles (ms) and what failed."""

    rps: float
    latency_ms: dict[float, float]
    requests: int
    socket_errors: int  # connect, read, write errors and timeouts
    non_2xx: int  # responses with a status of 400 or more (wrk counts > 399)

    @property
    def failed(self) -> int:
        return self.socket_errors + self.non_2xx


def wrk_script(folder: Path) -> Path:
    path = folder / "wrk-done.lua"
    path.write_text(_DONE_HOOK % ", ".join(f"{p:g}" for p in PERCENTILES))
    return path


def wrk(
    client: Pod,
    url: str,
    seconds: float,
    connections: int,
    close: bool,
    script: Path,
    timeout_s: float = 2.0,
) -> Http:
    argv = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s"]
    argv += ["-s", str(script), f"--timeout={timeout_s:g}s"]
    argv += [*(["-H", "Connection: close"] if close else []), url]
    result = client.run(argv, uid=CLIENT_UID, timeout=seconds + 60)
    return parse_wrk(result.stdout, result.stderr)


def parse_wrk(out: str, err: str = "") -> Http:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    latency = {
        float(p): int(us) / 1000 for p, us in re.findall(r"^bench-latency (\S+) (\d+)$", out, re.M)
    }
    requests = re.search(r"^bench-requests (\d+)$", out, re.M)
    errors = re.search(r"^bench-errors (\d+) (\d+) (\d+) (\d+) (\d+)$", out, re.M)
    if rps is None or requests is None or errors is None or set(latency) != set(PERCENTILES):
        raise RuntimeError(f"wrk printed no result:\n{out}\n{err}")
    connect, read, write, timeout, status = (int(n) for n in errors.groups())
    return Http(
        rps=float(rps.group(1)),
        latency_ms=latency,
        requests=int(requests.group(1)),
        socket_errors=connect + read + write + timeout,
        non_2xx=status,
    )


def fixed_rate(
    client: Pod,
    vegeta: str,
    url: str,
    rate: int,
    seconds: float,
    connections: int,
    work: Path,
    tag: str,
) -> Http:
    """`rate` requests/s for `seconds` over at most `connections` keep-alive connections."""
    results = work / f"vegeta-{tag}.bin"
    argv = ["taskset", "-c", LOAD_CPU, vegeta, "attack", f"-rate={rate}/s"]
    argv += [f"-duration={seconds:g}s"]
    argv += [f"-connections={connections}", f"-max-connections={connections}", "-keepalive=true"]
    argv += [f"-workers={connections}", f"-max-workers={connections * 4}", "-timeout=2s"]
    argv += [f"-output={results}"]
    targets = work / "vegeta-targets.txt"
    targets.write_text(f"GET {url}\n")
    os.chmod(results.parent, 0o777)
    attack = client.run([*argv, f"-targets={targets}"], uid=CLIENT_UID, timeout=seconds + 60)
    if attack.returncode != 0:
        raise RuntimeError(f"vegeta attack failed:\n{attack.stderr[-2000:]}")
    encoded = client.run([vegeta, "encode", "--to", "csv", str(results)], timeout=120)
    results.unlink(missing_ok=True)
    latencies: list[float] = []
    failed = 0
    for row in csv.reader(io.StringIO(encoded.stdout)):
        code, latency_ns = int(row[1]), int(row[2])
        if code == 0 or code >= 400:  # 0: no answer (refused, reset or timed out)
            failed += 1
        latencies.append(latency_ns / 1e6)
    if not latencies:
        raise RuntimeError(f"vegeta recorded no request:\n{encoded.stderr[-2000:]}")
    latencies.sort()
    return Http(
        rps=len(latencies) / seconds,
        latency_ms={p: percentile(latencies, p) for p in PERCENTILES},
        requests=len(latencies),
        socket_errors=failed,
        non_2xx=0,
    )


def iperf(client: Pod, address: str, seconds: int) -> float:
    """Gbit/s of one iperf3 stream to `address`."""
    argv = ["taskset", "-c", LOAD_CPU, "iperf3", "-c", address, "-p", "5201"]
    argv += ["-t", str(seconds), "-J"]
    result = client.run(argv, uid=CLIENT_UID, timeout=seconds + 60)
    try:
        report = json.loads(result.stdout)
        return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9
    except (ValueError, KeyError) as exc:
        raise RuntimeError(f"iperf3 printed no result ({exc}):\n{result.stdout[-2000:]}") from None
