"""The loads of bench/proxy.py: wrk (HTTP, its latency distribution and errors) and iperf3.

wrk's own `--latency` table stops at p99, so a Lua `done` hook prints the
percentiles from wrk's histogram (microseconds) and its error counts, one
`key value` line each, after wrk's usual summary.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

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
