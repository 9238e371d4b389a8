"""Network namespaces, links and commands inside them: thin wrappers over iproute2.

Every call runs `ip` and raises NetnsError with the command and what it printed
when it fails, so a broken setup says exactly which step broke.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from meshlet.binaries import find_binary

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")
NETNS_ETC_DIR = Path("/etc/netns")


class NetnsError(RuntimeError):
    pass


def ip_binary() -> str:
    """iproute2's `ip`, also where PATH lacks the sbin folders."""
    return find_binary("ip") or "ip"


def ip(*args: str, namespace: str | None = None, check: bool = True) -> str:
    argv = [ip_binary(), *(["-n", namespace] if namespace else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {(result.stderr or result.stdout).strip()}")
    return result.stdout


def exists(namespace: str) -> bool:
    return (NETNS_RUN_DIR / namespace).exists()


def names() -> list[str]:
    """Every named network namespace on the machine."""
    if not NETNS_RUN_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_RUN_DIR.iterdir())


def links() -> list[str]:
    """Every link in this (the root) namespace."""
    out = []
    for line in ip("-o", "link", "show").splitlines():
        # "12: name@peer: <FLAGS> ..."
        name = line.split(":", 2)[1].strip().split("@")[0]
        out.append(name)
    return out


def add(namespace: str) -> None:
    ip("netns", "add", namespace)
    ip("link", "set", "lo", "up", namespace=namespace)


def delete(namespace: str) -> None:
    """Deletes the namespace (its links go with it) and its /etc/netns folder."""
    if exists(namespace):
        ip("netns", "delete", namespace, check=False)
    shutil.rmtree(NETNS_ETC_DIR / namespace, ignore_errors=True)


def delete_link(name: str) -> None:
    ip("link", "delete", name, check=False)


def write_resolv_conf(namespace: str, text: str) -> Path:
    """/etc/netns/<ns>/resolv.conf: `ip netns exec` mounts it over /etc/resolv.conf."""
    folder = NETNS_ETC_DIR / namespace
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "resolv.conf"
    path.write_text(text)
    return path


def exec_argv(
    namespace: str, argv: Sequence[str], uid: int | None = None, gid: int | None = None
) -> list[str]:
    """argv that runs `argv` inside the namespace (with its resolv.conf), as uid/gid if given.

    `ip netns exec` and `setpriv` both exec, so the process's PID is the command's.
    A process under another uid keeps one capability, CAP_DAC_READ_SEARCH (read any
    file): the Python and the checkout it runs may sit in a folder private to root
    (pyenv under /root). It is no network capability: its sockets belong to `uid`,
    which is what the capture rules match.
    """
    prefix = [ip_binary(), "netns", "exec", namespace]
    if uid is not None or gid is not None:
        prefix += setpriv_argv(uid, gid)
    return [*prefix, *argv]


def setpriv_argv(uid: int | None, gid: int | None = None) -> list[str]:
    """The setpriv prefix that runs a command as uid/gid (see exec_argv)."""
    argv = ["setpriv"]
    if uid is not None:
        argv.append(f"--reuid={uid}")
    argv += [f"--regid={gid if gid is not None else uid}", "--clear-groups"]
    return [*argv, "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--"]


_libc = ctypes.CDLL(None, use_errno=True)
_enter_lock = threading.Lock()


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise NetnsError(f"setns: {os.strerror(error)}")


@contextlib.contextmanager
def entered(namespace: str) -> Iterator[None]:
    """Run this thread inside `namespace` for the block: sockets made in it belong there.

    Only the calling thread moves; it comes back to where it was, also on errors.
    """
    with _enter_lock:
        home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        try:
            target = os.open(NETNS_RUN_DIR / namespace, os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
        except BaseException:
            os.close(home)
            raise
    try:
        yield
    finally:
        try:
            _setns(home)
        finally:
            os.close(home)
