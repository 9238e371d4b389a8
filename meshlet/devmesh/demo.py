"""`meshlet demo`: a whole mesh on this machine, with traffic, a failure and a scale-up.

Pods are network namespaces on a bridge (meshlet.devmesh): a control plane, the
`web` service with three replicas and `api` with two, and a client pod with
capture and a sidecar, exactly as the injected sidecar would run. A load
generator in the client pod calls both services by their short names. Part way
through, one `web` replica dies (and a little later leaves its EndpointSlice, as
Kubernetes would remove it), then `api` is scaled to three replicas; the screen
shows traffic moving with no failed requests. At the end: a summary, and
everything the demo made is removed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from meshlet.binaries import find_binary
from meshlet.devmesh.firewall import forward_blocked
from meshlet.devmesh.mesh import DevMesh, DevMeshError
from meshlet.devmesh.netns import NetnsError
from meshlet.devmesh.stack import (
    APP_UID,
    BACKEND_PORT,
    CP_ADMIN_PORT,
    PYTHON,
    SIDECAR_ADMIN_PORT,
    LocalMesh,
    ServiceSpec,
    http_get,
    service_objects,
)
from meshlet.devmesh.view import (
    Rates,
    SidecarRecord,
    header_lines,
    next_steps,
    render,
    summary,
)
from meshlet.flags import grpc_address

WEB_IP, API_IP = "10.96.0.20", "10.96.0.30"
# Requests per second per service; each goes on a new connection, through DNS.
RATE = 40.0
# When things happen, as a share of --duration (or in seconds without one).
KILL_AT, REMOVE_AFTER, SCALE_AT = 0.3, 3.0, 0.6
UNTIMED = {"kill": 10.0, "scale": 20.0}


WEB_REPLICAS = ("web-0", "web-1", "web-2")
API_REPLICAS = ("api-0", "api-1")


def services(web: tuple[str, ...], api: tuple[str, ...]) -> list[ServiceSpec]:
    return [ServiceSpec("web", WEB_IP, 80, web), ServiceSpec("api", API_IP, 8080, api)]


def example_manifests() -> list[dict[str, Any]]:
    """What the demo writes first, with the pod IPs it gets in a fresh first subnet
    (the backends are its first pods): examples/demo/ holds exactly this."""
    first = ipaddress.IPv4Network("10.250.0.0/24")
    order = [*WEB_REPLICAS, *API_REPLICAS]
    return service_objects(
        services(WEB_REPLICAS, API_REPLICAS),
        lambda name: str(first.network_address + 2 + order.index(name)),
    )


def preflight() -> str | None:
    """What the demo cannot do without, in one line; None when it can run."""
    if os.geteuid() != 0:
        return "needs root: it creates network namespaces and nftables rules (try sudo)"
    missing = []
    if find_binary("nft") is None:
        missing.append("nft (apt-get install nftables)")
    if find_binary("ip") is None:
        missing.append("ip (apt-get install iproute2)")
    if shutil.which("setpriv") is None:
        missing.append("setpriv (apt-get install util-linux)")
    if missing:
        return "missing " + ", ".join(missing)
    return None


@dataclass
class Timeline:
    """The demo's script: (at second, what, action), run in order as time passes."""

    steps: list[tuple[float, str, Callable[[], None]]] = field(default_factory=list)
    done: list[str] = field(default_factory=list)

    def add(self, at: float, what: str, action: Callable[[], None]) -> None:
        self.steps.append((at, what, action))
        self.steps.sort(key=lambda step: step[0])

    def run_due(self, elapsed: float) -> list[str]:
        """Runs the steps that are due; what they did, for the screen."""
        happened = []
        while self.steps and self.steps[0][0] <= elapsed:
            at, what, action = self.steps.pop(0)
            action()
            happened.append(f"{at:5.1f}s  {what}")
        self.done += happened
        return happened


def _lines(stream: IO[str], into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


class Demo:
    def __init__(self, local: LocalMesh, duration: float | None, out: IO[str]) -> None:
        self.local = local
        self.duration = duration
        self.out = out
        self.interactive = out.isatty()
        self.timeline = Timeline()
        self.rates = Rates()
        self.report: dict[str, Any] | None = None
        self.sidecar = SidecarRecord()
        # The staged events and what the sidecar did, in order.
        self.happened: list[str] = []
        self._last_print = 0.0

    # --- setting up --------------------------------------------------------------

    def build(self) -> None:
        local = self.local
        self.say("starting the mesh: control plane, web x3, api x2, a client pod with its sidecar")
        for name in (*WEB_REPLICAS, *API_REPLICAS):
            local.add_backend(name)
        local.write_services(services(WEB_REPLICAS, API_REPLICAS))
        local.start_control_plane()
        local.add_client()
        self.plan()
        if not self.interactive:  # on a terminal the live screen shows it on top
            self.out.write("\n".join(self.header()) + "\n")
            self.out.flush()

    def plan(self) -> None:
        def at(share: float, key: str) -> float:
            return self.duration * share if self.duration else UNTIMED[key]

        kill = at(KILL_AT, "kill")
        self.timeline.add(
            kill, "web-1 crashed (its pod and IP stay; nothing listens there now)", self.kill_web
        )
        self.timeline.add(
            kill + REMOVE_AFTER,
            "web-1 left the EndpointSlice (as Kubernetes removes a failed pod)",
            self.remove_web,
        )
        self.timeline.add(
            at(SCALE_AT, "scale"), "api scaled to 3 replicas (api-2 added)", self.scale_api
        )

    def kill_web(self) -> None:
        self.local.kill_backend("web-1")

    def remove_web(self) -> None:
        self.local.write_services(services(("web-0", "web-2"), self._api))

    def scale_api(self) -> None:
        self.local.add_backend("api-2", ready=True)
        self._api = ("api-0", "api-1", "api-2")
        self.local.write_services(services(self._web, self._api))

    @property
    def _web(self) -> tuple[str, ...]:
        return tuple(b for b in WEB_REPLICAS if self.local.backends[b].process)

    _api: tuple[str, ...] = API_REPLICAS

    # --- running -------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        client = self.local.client
        assert client is not None
        argv = [PYTHON, "-m", "meshlet.devmesh.load", "--target=web=http://web/"]
        argv += ["--target=api=http://api:8080/", f"--rate={RATE}", "--concurrency=2"]
        argv += ["--report-every=0.5", f"--duration={self.duration or 10**9}"]
        load = subprocess.Popen(
            client.argv(argv, uid=APP_UID),
            stdout=subprocess.PIPE,
            stderr=open(self.local.log("load"), "ab"),  # noqa: SIM115  (closed with the process)
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_lines, args=(load.stdout, lines), daemon=True)
        reader.start()
        try:
            while True:
                try:
                    line = lines.get(timeout=0.2)
                except queue.Empty:
                    continue
                if line is None:
                    break
                self.take(line)
        except KeyboardInterrupt:
            load.terminate()  # it prints its final report and ends
            while (line := lines.get(timeout=30)) is not None:
                self.take(line)
        finally:
            if load.poll() is None:
                load.terminate()
            load.wait(timeout=30)
            if load.stderr is not None:
                load.stderr.close()
        if self.report is None:
            raise DevMeshError(f"the load generator reported nothing:\n{self.local.log('load')}")
        return self.report

    def take(self, line: str) -> None:
        if not line.startswith("{"):
            return
        report = json.loads(line)
        self.report = report
        self.rates.update(report)
        elapsed = float(report["elapsed"])
        events = self.timeline.run_due(elapsed)
        events += self.watch_sidecar(elapsed)
        self.happened += events
        if not self.interactive:
            for event in events:
                self.out.write(f"[{event.strip()}]\n")
        self.show(report)

    def watch_sidecar(self, elapsed: float) -> list[str]:
        """Reads the client's sidecar's /clusters; what it did since the last read, as
        events at `elapsed` (nothing when it cannot be read now: the next read catches up,
        its counters are totals)."""
        try:
            status, body = http_get(self.local.sidecar_url("/clusters"), timeout=1.0)
            page = json.loads(body) if status == 200 else None
        except (OSError, ValueError):
            page = None
        if not isinstance(page, dict):
            return []
        names = {
            grpc_address(b.pod.ip, BACKEND_PORT): name for name, b in self.local.backends.items()
        }
        return [f"{elapsed:5.1f}s  {event}" for event in self.sidecar.update(page, names)]

    def addresses(self) -> tuple[str, str]:
        """The sidecar's and the control plane's admin addresses, HOST:PORT."""
        client = self.local.client
        cp = self.local.control_plane
        assert client is not None and cp is not None
        return grpc_address(client.ip, SIDECAR_ADMIN_PORT), grpc_address(cp.ip, CP_ADMIN_PORT)

    def header(self) -> list[str]:
        length = f"{self.duration:g}s" if self.duration else "until Ctrl-C"
        return header_lines(length, RATE, *self.addresses(), str(self.local.manifests))

    def show(self, report: dict[str, Any]) -> None:
        screen = render(report, self.rates, self.happened, self.header(), self.sidecar)
        if self.interactive:
            self.out.write("\x1b[H\x1b[2J" + screen + "\n")
            self.out.flush()
            return
        # Not a terminal (a log, a test): a line per second, and every event once.
        now = time.monotonic()
        if now - self._last_print >= 1.0 or report.get("final"):
            self._last_print = now
            parts = []
            for name, target in report["targets"].items():
                rate = self.rates.per_second.get(name, 0.0)
                parts.append(f"{name} {rate:5.1f}/s ok {target['ok']} failed {target['errors']}")
            self.out.write(f"[{float(report['elapsed']):6.1f}s] " + "; ".join(parts) + "\n")
            self.out.flush()

    def say(self, text: str) -> None:
        self.out.write(f"meshlet demo: {text}\n")
        self.out.flush()


def run(duration: float | None = None, out: IO[str] = sys.stdout) -> int:
    problem = preflight()
    if problem is not None:
        print(f"meshlet demo: {problem}", file=sys.stderr)
        return 1
    nft = find_binary("nft")
    warning = forward_blocked(nft) if nft is not None else None
    if warning is not None:
        print(f"meshlet demo: warning: {warning}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="meshlet-demo-"))
    work.chmod(0o755)
    try:
        with DevMesh(cleanup_on_sigterm=True) as mesh:
            local = LocalMesh(mesh, work)
            demo = Demo(local, duration, out)
            demo.build()
            final = demo.run()
            demo.happened += demo.watch_sidecar(float(final["elapsed"]))  # once traffic ended
            sidecar_admin, plane_admin = demo.addresses()
            out.write("\n" + "\n".join(demo.header()[:1]) + "\n")
            out.write("\n".join(f"  {event}" for event in demo.happened) + "\n")
            out.write("\n".join(summary(final, demo.sidecar)) + "\n")
    except KeyboardInterrupt:  # before the traffic started: nothing to sum up
        print("meshlet demo: interrupted; everything it made is removed", file=sys.stderr)
        return 130
    except (DevMeshError, NetnsError, OSError, subprocess.SubprocessError) as exc:
        print(f"meshlet demo: {exc}", file=sys.stderr)
        if warning is not None:
            print(f"meshlet demo: this may be why: {warning}", file=sys.stderr)
        return 1
    failed = sum(t["errors"] for t in final["targets"].values())
    out.write("\n" + "\n".join(next_steps(sidecar_admin, plane_admin, str(work))) + "\n")
    if failed:
        out.write(f"meshlet demo: {failed} requests failed\n")
        if warning is not None:
            out.write(f"meshlet demo: this may be why: {warning}\n")
        return 1
    return 0
