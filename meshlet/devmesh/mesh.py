"""Pods out of network namespaces: a bridge, a veth per pod, processes inside them.

    with DevMesh() as mesh:
        web = mesh.add_pod("web-0")
        web.spawn(["python", "-m", "http.server"], "web-0", log_path)
        client = mesh.add_pod("client", resolv_conf=POD_RESOLV_CONF)
        client.run(["getent", "hosts", "web"], uid=1000)

Each mesh gets a short random id; everything it makes is named after it
(namespaces `ml-<id>-<pod>`, links `mlb<id>` and `mlv<id><n>`) and listed in a
state file under /run/meshlet-devmesh, rewritten as things are made. Cleanup
ends the mesh's processes by PID, deletes its namespaces, links and /etc/netns
folders, and removes the state file: on a normal exit, on an exception, on
Ctrl-C, and (with `cleanup_on_sigterm`) on SIGTERM. A mesh whose owner died
without cleaning up (SIGKILL, a crash) is cleared by the next DevMesh that
starts on the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from meshlet.devmesh import netns

log = logging.getLogger(__name__)

STATE_DIR = Path("/run/meshlet-devmesh")
# Pod subnets are /24s taken from here, one not in use by the machine.
SUBNET_POOL = ipaddress.IPv4Network("10.250.0.0/16")


class DevMeshError(RuntimeError):
    pass


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/<pid>/stat): with the
    PID, it names one process, even after the PID is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    return start is not None and _start_time(pid) == start


def _stop_pid(pid: int, start: str | None, timeout: float = 5.0) -> None:
    """SIGTERM, wait, SIGKILL: only the process that has this PID and start time."""
    if not _alive(pid, start):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid, start):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@dataclass
class _Record:
    """What one mesh made, as written to its state file."""

    owner: int
    owner_start: str | None
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    processes: list[tuple[int, str | None]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps(self.__dict__))
        os.replace(temp, path)

    @classmethod
    def load(cls, path: Path) -> _Record:
        data = json.loads(path.read_text())
        data["processes"] = [tuple(p) for p in data.get("processes", [])]
        return cls(**data)

    def clear(self) -> None:
        """Ends the processes, then deletes namespaces and links; every step is tried even
        when one fails (the first error is raised at the end)."""
        errors: list[Exception] = []

        def attempt(step: Callable[..., None], *args: Any) -> None:
            try:
                step(*args)
            except Exception as exc:  # keep clearing; report the first afterwards
                errors.append(exc)

        for pid, start in reversed(self.processes):
            attempt(_stop_pid, pid, start)
        # Whatever else runs in the pods (a command's children, a helper the owner did not
        # record): every process inside them, found by namespace, as `ip netns pids` does.
        for namespace in self.namespaces:
            for pid, start in _processes_in(namespace):
                attempt(_stop_pid, pid, start)
        for namespace in self.namespaces:
            attempt(netns.delete, namespace)
        present = set(netns.links())
        for link in self.links:
            if link in present:
                attempt(netns.delete_link, link)
        if errors:
            raise errors[0]


def _processes_in(namespace: str) -> list[tuple[int, str | None]]:
    """(pid, start time) of every process whose network namespace is `namespace`."""
    try:
        target = os.stat(netns.NETNS_RUN_DIR / namespace).st_ino
    except OSError:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.stat(entry / "ns" / "net").st_ino == target:
                found.append((int(entry.name), _start_time(int(entry.name))))
        except OSError:
            continue  # gone, or not ours to look at
    return found


@contextlib.contextmanager
def _machine_lock(state_dir: Path) -> Iterator[None]:
    """One mesh at a time picks its subnet and id: two starting together must not pick the
    same."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def clear_stale(state_dir: Path = STATE_DIR) -> list[str]:
    """Clears what meshes whose owner is gone left behind; returns their state files' names."""
    cleared: list[str] = []
    if not state_dir.is_dir():
        return cleared
    for path in sorted(state_dir.glob("*.json")):
        try:
            record = _Record.load(path)
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if _alive(record.owner, record.owner_start):
            continue
        log.info("clearing a mesh left behind by pid %d: %s", record.owner, path.name)
        record.clear()
        path.unlink(missing_ok=True)
        cleared.append(path.name)
    return cleared


def _used_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for line in netns.ip("-o", "-4", "addr", "show").splitlines():
        words = line.split()
        if "inet" in words:
            out.append(ipaddress.ip_interface(words[words.index("inet") + 1]).network)
    for line in netns.ip("-4", "route", "show").splitlines():
        word = line.split()[0]
        if word != "default":
            with contextlib.suppress(ValueError):
                out.append(ipaddress.ip_network(word, strict=False))
    return out


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    for subnet in SUBNET_POOL.subnets(new_prefix=24):
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise DevMeshError(f"no free /24 left in {SUBNET_POOL}")


@dataclass
class Pod:
    mesh: DevMesh
    name: str
    namespace: str
    ip: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def argv(
        self, argv: Sequence[str], uid: int | None = None, gid: int | None = None
    ) -> list[str]:
        return netns.exec_argv(self.namespace, argv, uid, gid)

    def run(
        self,
        argv: Sequence[str],
        uid: int | None = None,
        gid: int | None = None,
        timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the pod to its end; its output is returned, not checked."""
        return subprocess.run(
            self.argv(argv, uid, gid),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else {**os.environ, **env},
        )

    def spawn(
        self,
        argv: Sequence[str],
        log_file: Path | IO[bytes] | None = None,
        uid: int | None = None,
        gid: int | None = None,
        env: Mapping[str, str] | None = None,
        stdout: int | IO[bytes] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process in the pod; the mesh ends it on cleanup."""
        return self.mesh.spawn(
            self.argv(argv, uid, gid), log_file, env=env, stdout=stdout, pod=self
        )


class DevMesh:
    def __init__(self, state_dir: Path = STATE_DIR, cleanup_on_sigterm: bool = False) -> None:
        self.id = secrets.token_hex(2)
        self.state_dir = state_dir
        self.state_file = state_dir / f"{self.id}.json"
        self.bridge = f"mlb{self.id}"
        self.subnet: ipaddress.IPv4Network | None = None
        self.pods: dict[str, Pod] = {}
        self._next_index = 0  # pod IPs and link names are never reused within a mesh
        self._record = _Record(os.getpid(), _start_time(os.getpid()))
        self._processes: list[subprocess.Popen[bytes]] = []
        self._cleanup_on_sigterm = cleanup_on_sigterm
        self._previous_sigterm: object = None
        self._closed = False

    # --- life cycle --------------------------------------------------------------

    def __enter__(self) -> DevMesh:
        if self._cleanup_on_sigterm:
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through __exit__, which cleans up

    def start(self) -> None:
        with _machine_lock(self.state_dir):
            clear_stale(self.state_dir)
            self._claim_id()
            self.subnet = _free_subnet()
            self._record.links.append(self.bridge)
            self._save()
            netns.ip("link", "add", self.bridge, "type", "bridge")
            netns.ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        netns.ip("link", "set", self.bridge, "up")

    def _claim_id(self) -> None:
        """An id no other mesh holds, and no namespace or link on the machine uses."""
        taken = " ".join([*netns.names(), *netns.links()])
        for _ in range(100):
            state_file = self.state_dir / f"{self.id}.json"
            if self.id not in taken:
                try:
                    os.close(os.open(state_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                except FileExistsError:
                    pass
                else:
                    self.state_file = state_file
                    self.bridge = f"mlb{self.id}"
                    return
            self.id = secrets.token_hex(2)
        raise DevMeshError("no free mesh id")

    @property
    def gateway(self) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # A second Ctrl-C or SIGTERM must not cut the cleanup short (signals can only be
        # set from the main thread; elsewhere they go to it anyway).
        held = {}
        if threading.current_thread() is threading.main_thread():
            held = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for process in reversed(self._processes):
                with contextlib.suppress(Exception):
                    self.stop(process)
            self._record.clear()
            self.state_file.unlink(missing_ok=True)
        finally:
            for sig, handler in held.items():
                signal.signal(sig, handler)
            if self._cleanup_on_sigterm and self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)  # type: ignore[arg-type]

    def _save(self) -> None:
        self._record.save(self.state_file)

    # --- pods and processes --------------------------------------------------------

    def add_pod(
        self,
        name: str,
        resolv_conf: str | None = None,
        extra_addresses: Sequence[str] = (),
    ) -> Pod:
        """A namespace on the bridge with the next free IP; `extra_addresses` are also its own
        (every other pod reaches them over the bridge)."""
        assert self.subnet is not None
        if name in self.pods:
            raise DevMeshError(f"pod {name} exists")
        index = self._next_index
        self._next_index += 1
        ip = str(self.subnet.network_address + 2 + index)
        namespace = f"ml-{self.id}-{name}"
        link = f"mlv{self.id}{index}"
        self._record.namespaces.append(namespace)
        self._record.links.append(link)
        self._save()
        netns.add(namespace)
        netns.ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        netns.ip("link", "set", link, "master", self.bridge, "up")
        prefix = self.subnet.prefixlen
        netns.ip("addr", "add", f"{ip}/{prefix}", "dev", "eth0", namespace=namespace)
        for extra in extra_addresses:
            netns.ip("addr", "add", f"{extra}/32", "dev", "eth0", namespace=namespace)
        netns.ip("link", "set", "eth0", "up", namespace=namespace)
        netns.ip("route", "add", "default", "via", self.gateway, namespace=namespace)
        pod = Pod(self, name, namespace, ip)
        for other in self.pods.values():
            for extra in extra_addresses:
                netns.ip("route", "add", f"{extra}/32", "dev", "eth0", namespace=other.namespace)
        self.pods[name] = pod
        if resolv_conf is not None:
            netns.write_resolv_conf(namespace, resolv_conf)
        return pod

    def remove_pod(self, name: str) -> None:
        """Stop the pod's processes and delete its namespace (its veth goes with it)."""
        pod = self.pods.pop(name)
        for process in reversed(pod.processes):
            self.stop(process)
        netns.delete(pod.namespace)
        self._record.namespaces.remove(pod.namespace)
        self._save()

    def spawn(
        self,
        argv: Sequence[str],
        log_file: Path | IO[bytes] | None = None,
        env: Mapping[str, str] | None = None,
        stdout: int | IO[bytes] | None = None,
        pod: Pod | None = None,
    ) -> subprocess.Popen[bytes]:
        with contextlib.ExitStack() as stack:
            out: IO[bytes] | int = subprocess.DEVNULL
            if isinstance(log_file, Path):
                out = stack.enter_context(open(log_file, "ab"))
            elif log_file is not None:
                out = log_file
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out if stdout is None else stdout,
                stderr=out,
                env=None if env is None else {**os.environ, **env},
            )
        self._processes.append(process)
        if pod is not None:
            pod.processes.append(process)
        self._record.processes.append((process.pid, _start_time(process.pid)))
        self._save()
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
        """End one process by its PID: SIGTERM, wait, SIGKILL."""
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        code = process.wait(timeout=timeout)
        self._record.processes = [p for p in self._record.processes if p[0] != process.pid]
        if not self._closed:
            self._save()
        return code
