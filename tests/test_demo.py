"""`meshlet demo`, run as a user runs it: a whole mesh, traffic, a failure, a scale-up,
a summary, and nothing left behind; and, without root, one clear line and no change."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from meshlet.devmesh import netns
from meshlet.devmesh.demo import example_manifests
from meshlet.devmesh.mesh import STATE_DIR
from tests.netlab import skip_unless_netns_and_nftables

ROOT = Path(__file__).resolve().parent.parent


def machine_state() -> dict[str, set[str]]:
    """What the demo could leave behind: namespaces, links, mesh state files, and
    meshlet processes (by PID and command line)."""
    processes = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "meshlet" in cmdline or "nginx" in cmdline:
            processes.add(f"{proc.name} {cmdline.strip()}")
    return {
        "namespaces": set(netns.names()),
        "per-namespace /etc/netns folders": {p.name for p in netns.NETNS_ETC_DIR.glob("*")},
        "links": set(netns.links()),
        "state files": {p.name for p in STATE_DIR.glob("*")} if STATE_DIR.is_dir() else set(),
        "processes": processes,
    }


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
    processes = set()
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        # Field 6, after the command name in parentheses (which may hold spaces).
        if proc.name.isdigit() and int(stat.rpartition(")")[2].split()[3]) == session:
            processes.add(f"{proc.name} {stat.partition(' ')[2].partition(')')[0]})")
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
        "processes": processes,
    }


def test_the_demo_shows_a_mesh_riding_out_a_failure_and_a_scale_up(tmp_path: Path) -> None:
    skip_unless_netns_and_nftables()
    known = {p.stem for p in STATE_DIR.glob("*.json")} if STATE_DIR.is_dir() else set()
    # The README's one command: it installs what is missing (nothing, here) and runs it.
    with (tmp_path / "out").open("w+b") as stdout, (tmp_path / "err").open("w+b") as stderr:
        demo = subprocess.Popen(
            ["bash", "scripts/demo.sh", "--duration", "20"],
            stdout=stdout,
            stderr=stderr,
            cwd=ROOT,
            start_new_session=True,
        )
        try:
            mesh_id = _mesh_of_run(demo, known)
            demo.wait(timeout=300)
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
        out = (tmp_path / "out").read_text(errors="replace")
        err = (tmp_path / "err").read_text(errors="replace")
    kept = re.search(r"stay in (\S+)", out)
    if kept:  # the manifests and logs it keeps for the user: not for a test run
        shutil.rmtree(kept.group(1), ignore_errors=True)
    assert demo.returncode == 0, f"{out[-3000:]}\n{err[-3000:]}"
    assert mesh_id, "the demo made no mesh state file"
    assert re.search(r"total: \d+ requests, 0 failed", out), out[-3000:]
    assert "web-1 crashed" in out and "api scaled to 3 replicas" in out
    # Every endpoint that was alive got traffic, web-1 too before it died.
    for endpoint in ("web-0", "web-1", "web-2", "api-0", "api-1", "api-2"):
        match = re.search(rf"^\s+{endpoint}\s+(\d+)\s", out, re.M)
        assert match and int(match.group(1)) > 0, f"no traffic to {endpoint}:\n{out[-3000:]}"
    assert "DNS web -> 10.96.0.20" in out and "DNS api -> 10.96.0.30" in out
    assert "/config_dump" in out and "/metrics" in out
    for kind, items in _left_by(mesh_id, demo.pid).items():
        assert not items, f"left behind ({kind}): {items}"


def test_without_root_the_demo_says_so_in_one_line_and_changes_nothing() -> None:
    demo = [sys.executable, "-m", "meshlet", "demo", "--duration", "5"]
    if os.geteuid() == 0:
        # As nobody; reading files stays allowed (the checkout may sit in /root).
        demo = [*netns.setpriv_argv(65534), *demo]
    before = machine_state()
    result = subprocess.run(demo, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "meshlet demo: needs root: it creates network namespaces and nftables rules (try sudo)"
    ]
    assert result.stdout == ""
    assert machine_state() == before


def test_examples_demo_holds_what_the_demo_serves_first() -> None:
    kept = list(yaml.safe_load_all((ROOT / "examples" / "demo" / "mesh.yaml").read_text()))
    assert kept == example_manifests()
