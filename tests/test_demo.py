"""`meshlet demo`, run as a user runs it: a whole mesh, traffic, a failure, a scale-up,
a summary, and nothing left behind; and, without root, one clear line and no change."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
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


def test_the_demo_shows_a_mesh_riding_out_a_failure_and_a_scale_up() -> None:
    skip_unless_netns_and_nftables()
    before = machine_state()
    # The README's one command: it installs what is missing (nothing, here) and runs it.
    result = subprocess.run(
        ["bash", "scripts/demo.sh", "--duration", "20"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    out = result.stdout
    kept = re.search(r"stay in (\S+)", out)
    if kept:  # the manifests and logs it keeps for the user: not for a test run
        shutil.rmtree(kept.group(1), ignore_errors=True)
    assert result.returncode == 0, f"{out[-3000:]}\n{result.stderr[-3000:]}"
    assert re.search(r"total: \d+ requests, 0 failed", out), out[-3000:]
    assert "web-1 crashed" in out and "api scaled to 3 replicas" in out
    # Every endpoint that was alive got traffic, web-1 too before it died.
    for endpoint in ("web-0", "web-1", "web-2", "api-0", "api-1", "api-2"):
        match = re.search(rf"^\s+{endpoint}\s+(\d+)\s", out, re.M)
        assert match and int(match.group(1)) > 0, f"no traffic to {endpoint}:\n{out[-3000:]}"
    assert "DNS web -> 10.96.0.20" in out and "DNS api -> 10.96.0.30" in out
    assert "/config_dump" in out and "/metrics" in out
    after = machine_state()
    for kind, items in after.items():
        assert items <= before[kind], f"left behind ({kind}): {items - before[kind]}"


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
