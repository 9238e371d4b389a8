"""`meshlet demo`, run as a user runs it: a whole mesh, traffic, a failure, a scale-up,
a summary, and nothing left behind; and, without root, one clear line and no change."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import yaml

from meshlet.devmesh import netns
from meshlet.devmesh.demo import example_manifests
from meshlet.devmesh.mesh import STATE_DIR
from tests.netlab import skip_unless_netns_and_nftables

ROOT = Path(__file__).resolve().parent.parent


def _mesh_things() -> dict[str, set[str]]:
    """What a demo makes besides processes: namespaces, links, mesh state files."""
    return {
        "namespaces": set(netns.names()),
        "per-namespace /etc/netns folders": {p.name for p in netns.NETNS_ETC_DIR.glob("*")},
        "links": set(netns.links()),
        "state files": {p.name for p in STATE_DIR.glob("*.json")} if STATE_DIR.is_dir() else set(),
    }


def _claimed_by_others(pid: int) -> set[str]:
    """The namespaces, links and state files of meshes that process `pid` does not own
    (a mesh writes its state file before it makes anything)."""
    claimed: set[str] = set()
    for path in STATE_DIR.glob("*.json") if STATE_DIR.is_dir() else ():
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("owner") != pid:
            claimed |= {path.name, *record.get("namespaces", ()), *record.get("links", ())}
    return claimed


def _session_processes(session: int) -> set[str]:
    """Processes of a session, by PID and command name."""
    processes = set()
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        # Field 6, after the command name in parentheses (which may hold spaces).
        if proc.name.isdigit() and int(stat.rpartition(")")[2].split()[3]) == session:
            processes.add(f"{proc.name} {stat.partition(' ')[2].partition(')')[0]})")
    return processes


def _mesh_of_run(demo: subprocess.Popen[bytes], known: set[str]) -> str:
    """The id of the mesh the demo makes: its state file is the first new one."""
    while demo.poll() is None:
        made = {p.stem for p in STATE_DIR.glob("*.json")} - known if STATE_DIR.is_dir() else set()
        if made:
            (mesh_id,) = made
            return mesh_id
        time.sleep(0.02)
    return ""


def _left_by(mesh_id: str, session: int) -> dict[str, set[str]]:
    """What is still there of the demo's own: its mesh's namespaces, links and state
    file, and processes of its session (other meshes on the host are not looked at)."""
    prefix = f"ml-{mesh_id}-"
    return {
        "namespaces": {n for n in netns.names() if n.startswith(prefix)},
        "per-namespace /etc/netns folders": {
            p.name for p in netns.NETNS_ETC_DIR.glob(f"{prefix}*")
        },
        "links": {
            link
            for link in netns.links()
            if link == f"mlb{mesh_id}" or link.startswith(f"mlv{mesh_id}")
        },
        "state files": {p.name for p in STATE_DIR.glob(f"{mesh_id}.json")},
        "processes": _session_processes(session),
    }


class _Output:
    """The demo's stdout, a pipe as under a log collector, read as it comes."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.ended = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            with self.changed:
                self.lines.append(raw.decode(errors="replace"))
                self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str] | None:
        """The first match of `pattern` in what came so far, waiting for it (None when the
        output ended or `timeout` passed first)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = re.search(pattern, self.text(), re.M)
                left = deadline - time.monotonic()
                if found or self.ended or left <= 0:
                    return found
                self.changed.wait(left)

    def text(self) -> str:
        return "".join(self.lines)

    def join(self) -> None:
        self._thread.join(timeout=30)


def _meshlet(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshlet", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def _web_addresses(manifests: Path) -> list[str]:
    """The web EndpointSlice's addresses, in the order the demo wrote them (web-0, -1, -2)."""
    for obj in yaml.safe_load_all((manifests / "mesh.yaml").read_text()):
        if obj["kind"] == "EndpointSlice" and obj["metadata"]["name"].startswith("web-"):
            return [e["addresses"][0] for e in obj["endpoints"]]
    return []


def test_the_demo_shows_a_mesh_riding_out_a_failure_and_a_scale_up(tmp_path: Path) -> None:
    skip_unless_netns_and_nftables()
    known = {p.stem for p in STATE_DIR.glob("*.json")} if STATE_DIR.is_dir() else set()
    # The README's one command: it installs what is missing (nothing, here) and runs it.
    with (tmp_path / "err").open("w+b") as stderr:
        demo = subprocess.Popen(
            ["bash", "scripts/demo.sh", "--duration", "20"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=ROOT,
            start_new_session=True,
        )
        assert demo.stdout is not None
        output = _Output(demo.stdout)
        web_at_start: list[str] = []
        try:
            mesh_id = _mesh_of_run(demo, known)
            # At the start, before any traffic, with stdout a pipe: where to look, and
            # the commands to look with, which work while the demo runs.
            head = output.wait_for(r"^\s+meshlet proxy-status .*$", timeout=240)
            at_start = output.text()
            looked = {}
            manifests = re.search(r"^\s+manifests\s+(\S+)", at_start, re.M)
            if head and manifests and demo.poll() is None:
                web_at_start = _web_addresses(Path(manifests.group(1)))
                for command in re.findall(r"^\s+(meshlet proxy-\S+ .*?)  ", at_start, re.M):
                    looked[command] = _meshlet(*shlex.split(command)[1:])
            demo.wait(timeout=300)
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
            output.join()
            demo.stdout.close()
        out = output.text()
        err = (tmp_path / "err").read_text(errors="replace")
    kept = re.search(r"stay in (\S+)", out)
    if kept:  # the manifests and logs it keeps for the user: not for a test run
        shutil.rmtree(kept.group(1), ignore_errors=True)
    assert demo.returncode == 0, f"{out[-3000:]}\n{err[-3000:]}"
    assert mesh_id, "the demo made no mesh state file"
    assert head, f"no commands to look with at the start:\n{at_start}"
    assert re.search(r"^\s+sidecar admin\s+http://[\d.]+:15000/config_dump", at_start, re.M)
    assert re.search(r"^\s+control plane\s+http://[\d.]+:15014/debug/config", at_start, re.M)
    # Before the first line of traffic.
    assert out.index("sidecar admin") < out.index("\n["), out[:3000]
    assert re.search(r"total: \d+ requests, 0 failed", out), out[-3000:]
    assert "web-1 crashed" in out and "api scaled to 3 replicas" in out
    # Every endpoint that was alive got traffic, web-1 too before it died.
    for endpoint in ("web-0", "web-1", "web-2", "api-0", "api-1", "api-2"):
        match = re.search(rf"^\s+{endpoint}\s+(\d+)\s", out, re.M)
        assert match and int(match.group(1)) > 0, f"no traffic to {endpoint}:\n{out[-3000:]}"
    assert "DNS web -> 10.96.0.20" in out and "DNS api -> 10.96.0.30" in out
    assert "/config_dump" in out and "/metrics" in out

    # What the sidecar did: it ejected the crashed replica, and only it, by its address
    # (web-1 is the second address of web's first EndpointSlice), after retrying the
    # connects that failed on it, as it says as it happens and in the summary.
    summary = out[out.index("summary:") :]
    ejected = re.findall(r"^\s+(\S+) \(([\d.]+):8080\) ejected (?:once|\d+ times)", summary, re.M)
    assert len(web_at_start) == 3, web_at_start
    assert ejected == [("web-1", web_at_start[1])], f"{web_at_start}\n{summary}"
    retried = re.search(r"^\s+web: (\d+) connects? failed, (\d+) retried", summary, re.M)
    assert retried and int(retried.group(2)) > 0, summary
    assert re.search(r"^\s+api: no connect failed, nothing retried or ejected", summary, re.M)
    assert f"sidecar ejected web-1 ({web_at_start[1]}:8080) from web after" in out

    # The commands the header named worked while the demo ran.
    assert len(looked) == 3, looked
    for command, result in looked.items():
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    endpoints = next(r.stdout for c, r in looked.items() if "endpoints" in c)
    for address in web_at_start:
        assert f"{address}:8080" in endpoints, endpoints
    status = next(r.stdout for c, r in looked.items() if "proxy-status" in c)
    assert "client" in status and "SYNCED" in status, status
    # The closing hint names the same commands.
    hint = out[out.index("where to look next") :]
    for command in looked:
        assert command in hint, hint
    for kind, items in _left_by(mesh_id, demo.pid).items():
        assert not items, f"left behind ({kind}): {items}"


def test_without_root_the_demo_says_so_in_one_line_and_changes_nothing() -> None:
    demo = [sys.executable, "-m", "meshlet", "demo", "--duration", "5"]
    if os.geteuid() == 0:
        # As nobody; reading files stays allowed (the checkout may sit in /root).
        demo = [*netns.setpriv_argv(65534), *demo]
    before = _mesh_things()
    # In a session of its own: what it might leave running is what is left of that session.
    result = subprocess.Popen(
        demo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        stdout, stderr = result.communicate(timeout=60)
    finally:
        if result.poll() is None:
            os.killpg(result.pid, signal.SIGKILL)
            result.communicate()
    assert result.returncode == 1
    lines = stderr.strip().splitlines()
    assert lines == [
        "meshlet demo: needs root: it creates network namespaces and nftables rules (try sudo)"
    ]
    assert stdout == ""
    # What appeared meanwhile is other meshes' on this host (each in a state file of its
    # own owner), never the demo's.
    claimed = _claimed_by_others(result.pid)
    after = _mesh_things()
    claimed |= _claimed_by_others(result.pid)
    for kind, items in after.items():
        assert items - before[kind] - claimed == set(), kind
    assert _session_processes(result.pid) == set()


def test_examples_demo_holds_what_the_demo_serves_first() -> None:
    kept = list(yaml.safe_load_all((ROOT / "examples" / "demo" / "mesh.yaml").read_text()))
    assert kept == example_manifests()
