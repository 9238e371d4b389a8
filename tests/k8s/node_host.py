"""What the real node changes on the host, recorded before it starts and put back when
it stops: by the run that made it, or, if that run died, by the next one.

The record (`/run/lock/meshlet-test-node.json`) names the run's PID, its folder,
network namespace, veth, cgroup root and the sysctls as they were before its kubelet
rewrote them. Putting back is a list of independent steps: one that fails does not
keep the others from running, and its error is raised once all have run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from meshlet.devmesh import netns

LOCK = Path("/run/lock/meshlet-test-node.lock")
RECORD = LOCK.with_suffix(".json")
CGROUPS = Path("/sys/fs/cgroup")
POD_LOG_LINKS = Path("/var/log/containers")
# libcni's cache of what it gave each sandbox (the network's name is ours).
CNI_RESULTS = Path("/var/lib/cni/results")
NETWORK = "meshlet-test"
# What the kubelet rewrites machine-wide (its kernel tunables).
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)


@dataclass(frozen=True)
class HostState:
    pid: int
    root: str
    namespace: str
    link: str
    cgroup_root: str
    sysctls: dict[str, str | None]

    @classmethod
    def new(cls, root: Path) -> HostState:
        pid = os.getpid()
        sysctls = {name: read_sysctl(name) for name in SYSCTLS}
        return cls(pid, str(root), f"mln-{pid}", f"mlnh{pid}", f"meshlet-node-{pid}", sysctls)

    def save(self) -> None:
        RECORD.write_text(json.dumps(dataclasses.asdict(self)))


@contextlib.contextmanager
def node_lock(timeout: float = 1800) -> Iterator[None]:
    """One real node on the machine at a time (its addresses are fixed); what a dead
    run left is put back first."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as busy:
                if time.monotonic() > deadline:
                    what = f"another run holds {LOCK} for over {timeout:.0f} s"
                    raise AssertionError(what) from busy
                time.sleep(1)
        clear_stale()
        yield


def clear_stale() -> None:
    """The record of a run that died without putting the host back: put it back now,
    with the sysctls as they were before that run."""
    try:
        stale = HostState(**json.loads(RECORD.read_text()))
    except (OSError, ValueError, TypeError):
        return
    if stale.pid != os.getpid() and not _alive(stale.pid):
        put_back(stale)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def put_back(state: HostState, before: Callable[[], None] | None = None) -> None:
    """Every step runs; the errors of those that failed are raised together after."""
    root = Path(state.root)
    steps: list[tuple[str, Callable[[], object]]] = [
        ("stop the node's processes", before or (lambda: None)),
        ("end containerd's shims", lambda: kill_shims(root)),
        ("kill what is left in the node's cgroups", lambda: kill_cgroup_tree(state.cgroup_root)),
        ("unmount under the node's folder", lambda: unmount_under(root)),
        ("remove the node's cgroups", lambda: remove_cgroup_root(state.cgroup_root)),
        ("remove the pod log links", lambda: remove_pod_log_links(root)),
        ("remove libcni's cached results", lambda: remove_cni_results(root)),
        ("delete the node's network namespace", lambda: netns.delete(state.namespace)),
        ("delete the host's veth", lambda: netns.delete_link(state.link)),
        ("restore the sysctls", lambda: restore_sysctls(state.sysctls)),
        ("remove the node's folder", lambda: remove_folder(root)),
        ("remove the record", lambda: RECORD.unlink(missing_ok=True)),
    ]
    failed = []
    for what, step in steps:
        try:
            step()
        except Exception as error:
            failed.append(f"{what}: {error!r}")
    if failed:
        raise AssertionError("the real node did not put the host back:\n" + "\n".join(failed))


def read_sysctl(name: str) -> str | None:
    try:
        return _sysctl_path(name).read_text().strip()
    except OSError:
        return None


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def restore_sysctls(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is not None and read_sysctl(name) != value:
            _sysctl_path(name).write_text(value)


def hierarchies() -> list[Path]:
    """Every cgroup hierarchy mounted here (v1 controllers, name=systemd, unified)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype in ("cgroup", "cgroup2") and fields[4].startswith(str(CGROUPS)):
            found.append(Path(fields[4]))
    return found


def make_cgroup_root(name: str) -> None:
    """The kubelet's cgroupRoot in every hierarchy, as a node's init system would make it;
    cpuset needs its cpus and mems before anything joins."""
    for hierarchy in hierarchies():
        folder = hierarchy / name
        folder.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (hierarchy / knob).exists():
                (folder / knob).write_text((hierarchy / knob).read_text())


def _pids_in(name: str) -> set[int]:
    pids = set()
    for hierarchy in hierarchies():
        for procs in (hierarchy / name).rglob("cgroup.procs"):
            with contextlib.suppress(OSError):  # a cgroup removed meanwhile
                pids.update(int(pid) for pid in procs.read_text().split())
    return pids


def kill_cgroup_tree(name: str, timeout: float = 30) -> None:
    """SIGKILL every process in the node's cgroups (the pods' containers, whatever
    containerd and its shims did or did not do), by PID, until none is left."""
    deadline = time.monotonic() + timeout
    while pids := _pids_in(name):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes {sorted(pids)} stay in cgroup {name}")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        time.sleep(0.2)


def remove_cgroup_root(name: str) -> None:
    """Removes the tree in every hierarchy, deepest first."""
    left = []
    for hierarchy in hierarchies():
        top = hierarchy / name
        if not top.is_dir():
            continue
        folders = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for folder in [*folders, top]:
            for _ in range(20):
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)  # a process still leaving it
            else:
                left.append(str(folder))
    if left:
        raise AssertionError(f"cgroups left: {left[:5]}")


def mounts_under(root: Path) -> list[str]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(f"{root}/"):
            found.append(point)
    return found


def unmount_under(root: Path) -> None:
    """Every mount under `root` (volumes, rootfs, netns files), deepest first."""
    for point in sorted(mounts_under(root), key=lambda p: -len(p)):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def remove_folder(root: Path) -> None:
    # Never through a mount that is still there: that would delete what it shows.
    left = mounts_under(root)
    if left:
        raise AssertionError(f"still mounted under {root}: {left[:5]}")
    shutil.rmtree(root, ignore_errors=True)


def remove_pod_log_links(root: Path) -> None:
    """The kubelet's links in /var/log/containers into the node's folder."""
    for link in POD_LOG_LINKS.glob("*.log") if POD_LOG_LINKS.is_dir() else ():
        with contextlib.suppress(OSError):
            if str(link.readlink()).startswith(f"{root}/"):
                link.unlink()


def _bundles(root: Path) -> list[Path]:
    """The node's containers that containerd did not clean up (named by their IDs)."""
    tasks = root / "containerd" / "state" / "io.containerd.runtime.v2.task" / "k8s.io"
    return list(tasks.glob("*")) if tasks.is_dir() else []


def remove_cni_results(root: Path) -> None:
    """What libcni cached for the node's sandboxes: its network's, and the loopback's of
    sandboxes containerd did not tear down."""
    if not CNI_RESULTS.is_dir():
        return
    for cached in CNI_RESULTS.glob(f"{NETWORK}-*"):
        cached.unlink(missing_ok=True)
    for bundle in _bundles(root):
        for cached in CNI_RESULTS.glob(f"cni-loopback-{bundle.name}-*"):
            cached.unlink(missing_ok=True)


def kill_shims(root: Path) -> None:
    """containerd's shims outlive it by design: end ours (they name our socket) by PID,
    and remove the sockets they listened on (under /run/containerd/s)."""
    address = f"{root}/containerd.sock"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"containerd-shim-runc-v2" in argv[0] and address.encode() in argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), 9)
    for bundle in _bundles(root):
        with contextlib.suppress(OSError, ValueError):
            socket = (bundle / "address").read_text().strip().removeprefix("unix://")
            if socket.startswith("/run/containerd/s/"):
                Path(socket).unlink(missing_ok=True)
