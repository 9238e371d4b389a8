"""meshlet.devmesh: pods from network namespaces, and a cleanup that always runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from meshlet.devmesh import netns
from meshlet.devmesh.mesh import STATE_DIR, DevMesh, _machine_lock, clear_stale
from meshlet.devmesh.stack import (
    APP_UID,
    CONTROL_PLANE_UID,
    CP_ADMIN_PORT,
    LocalMesh,
    ServiceSpec,
    http_get,
)
from tests.local_mesh import leftovers
from tests.netlab import skip_unless_netns_and_nftables
from tests.procs import wait_until

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _root_only() -> None:
    skip_unless_netns_and_nftables()


def test_pods_reach_each_other_and_get_their_resolv_conf() -> None:
    with DevMesh() as mesh:
        a = mesh.add_pod(
            "a", resolv_conf="nameserver 10.96.0.10\nsearch default.svc.cluster.local\n"
        )
        b = mesh.add_pod("b")
        assert a.run(["cat", "/etc/resolv.conf"]).stdout.startswith("nameserver 10.96.0.10")
        # Nothing listens on b's port 9: a refusal proves the packets got there and back.
        probe = f"import socket; socket.create_connection(('{b.ip}', 9), 2)"
        assert "ConnectionRefusedError" in a.run([sys.executable, "-c", probe]).stderr
        assert a.run(["id", "-u"], uid=4242).stdout.strip() == "4242"
    assert leftovers(mesh.id) == []


def test_leftovers_are_the_meshs_own_names_only() -> None:
    # Another run's namespace and link, whose names hold this mesh's id, made while it
    # lives: they are not this mesh's, and the leftover check does not count them.
    with DevMesh() as mesh:
        mesh.add_pod("p")
        decoys = (f"ml-other-{mesh.id}-{os.getpid()}", f"mlo{mesh.id}{os.getpid() % 1000}")
        try:
            netns.add(decoys[0])
            netns.ip("link", "add", decoys[1], "type", "bridge")
            assert sorted(leftovers(mesh.id)) == sorted(
                [f"ml-{mesh.id}-p", f"mlb{mesh.id}", f"mlv{mesh.id}0"]
            )
            mesh.close()
            assert leftovers(mesh.id) == []
        finally:
            netns.delete(decoys[0])
            netns.delete_link(decoys[1])
    assert decoys[0] not in netns.names() and decoys[1] not in netns.links()


def test_an_exception_inside_still_cleans_up_everything() -> None:
    with pytest.raises(RuntimeError, match="boom"), DevMesh() as mesh:
        pod = mesh.add_pod("p", resolv_conf="nameserver 10.96.0.10\n")
        sleeper = pod.spawn(["sleep", "600"])
        assert leftovers(mesh.id)
        raise RuntimeError("boom")
    assert sleeper.poll() is not None
    assert leftovers(mesh.id) == []
    assert not mesh.state_file.exists()


def _child(script: str) -> subprocess.Popen[str]:
    code = textwrap.dedent(script)
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def test_sigterm_cleans_up() -> None:
    child = _child(
        """
        import sys, time
        from meshlet.devmesh.mesh import DevMesh
        with DevMesh(cleanup_on_sigterm=True) as mesh:
            mesh.add_pod("p").spawn(["sleep", "600"])
            print(mesh.id, flush=True)
            time.sleep(600)
        """
    )
    with child:
        assert child.stdout is not None
        mesh_id = child.stdout.readline().strip()
        assert leftovers(mesh_id)
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 128 + signal.SIGTERM
    assert leftovers(mesh_id) == []


def test_what_a_killed_run_left_behind_is_cleared_by_the_next() -> None:
    child = _child(
        """
        import os, signal, sys
        from meshlet.devmesh.mesh import DevMesh
        mesh = DevMesh().__enter__()
        sleeper = mesh.add_pod("p").spawn(["sleep", "600"])
        print(mesh.id, sleeper.pid, flush=True)
        sys.stdin.readline()
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup runs
        """
    )
    with child:
        assert child.stdin is not None and child.stdout is not None
        mesh_id, pid = child.stdout.readline().split()
        # Every mesh starting on this machine clears stale ones first, under this lock:
        # held, no other run's mesh clears this one before the check below does.
        with _machine_lock(STATE_DIR):
            child.stdin.write("die\n")
            child.stdin.flush()
            assert child.wait(timeout=30) == -signal.SIGKILL
            assert leftovers(mesh_id), "the killed run should have left its pod behind"
            assert f"{mesh_id}.json" in clear_stale()
    assert leftovers(mesh_id) == []
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(int(pid)), 10, "sleep to end")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def test_a_live_mesh_is_not_cleared_by_another() -> None:
    with DevMesh() as first:
        first.add_pod("p")
        with DevMesh() as second:
            second.add_pod("q")
            assert leftovers(first.id)
            assert first.subnet != second.subnet
        assert leftovers(first.id)


def test_processes_it_did_not_start_itself_end_with_their_pod() -> None:
    with DevMesh() as mesh:
        pod = mesh.add_pod("p")
        # A command that leaves a child behind: the mesh never saw its PID.
        assert (
            pod.run(["sh", "-c", "setsid sleep 600 >/dev/null 2>&1 < /dev/null &"]).returncode == 0
        )
        orphans = wait_until(lambda: _pids_of_sleep_in(pod.namespace), 10, "the orphan to start")
    for pid in orphans:
        wait_until(lambda pid=pid: _gone(pid), 10, f"orphan {pid} to end")
    assert leftovers(mesh.id) == []


def _pids_of_sleep_in(namespace: str) -> list[int]:
    inode = os.stat(netns.NETNS_RUN_DIR / namespace).st_ino
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                same = os.stat(entry / "ns" / "net").st_ino == inode
                if same and (entry / "comm").read_text().strip() == "sleep":
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or _zombie(pid)


def _status(pid: int) -> dict[str, str]:
    """/proc/<pid>/status as a dict (Uid, Gid, CapEff, ...)."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


CAP_DAC_READ_SEARCH = 2


def test_the_demo_runs_its_control_plane_and_backends_without_root(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o755)
    with DevMesh() as mesh:
        local = LocalMesh(mesh, work)
        local.add_backend("web-0", ready=True)
        local.write_services([ServiceSpec("web", "10.96.0.20", 80, ("web-0",))])
        cp = local.start_control_plane()  # returns once ready
        # `ip netns exec` and `setpriv` exec: the PIDs the pods hold are the servers'.
        [control_plane] = cp.processes
        [backend] = local.backends["web-0"].pod.processes
        status = _status(control_plane.pid)
        assert status["Uid"].split() == [str(CONTROL_PLANE_UID)] * 4, status
        assert status["Gid"].split() == [str(CONTROL_PLANE_UID)] * 4, status
        assert status["Groups"] == ""
        # Of root's powers, only reading files is kept (the checkout may sit in /root).
        assert int(status["CapEff"], 16) == 1 << CAP_DAC_READ_SEARCH, status
        assert _status(backend.pid)["Uid"].split() == [str(APP_UID)] * 4
        # It read the manifests folder, and logs to its file.
        code, body = http_get(f"http://{cp.ip}:{CP_ADMIN_PORT}/debug/config")
        assert code == 200 and b"web.default.svc.cluster.local" in body
        assert local.log("control-plane").stat().st_size > 0
    assert leftovers(mesh.id) == []
