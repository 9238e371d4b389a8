"""Linux inotify through ctypes: just enough to learn that something in a folder changed.

No third-party watcher: the control plane needs only "wake me when a file under
these folders changes", and a non-blocking fd fits `loop.add_reader`.
"""

from __future__ import annotations

import ctypes
import os
from types import TracebackType
from typing import NoReturn

IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800

# Everything that can change what a folder of manifests holds. Plain writes are
# seen at close (IN_CLOSE_WRITE); IN_ATTRIB catches `touch` and link-count changes.
CHANGES = (
    IN_CLOSE_WRITE
    | IN_MOVED_TO
    | IN_MOVED_FROM
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ATTRIB
)

# Room for at least one event with the longest name (NAME_MAX 255).
_READ_SIZE = 64 * 1024
# Reads per `drain`: a folder changed without pause (a hostile loop of creates and
# deletes) must not keep the event loop in one callback; the rest waits a turn.
_DRAIN_READS = 16


class Inotify:
    """One inotify instance; raises OSError where inotify is unavailable."""

    def __init__(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            init1 = libc.inotify_init1
            self._add = libc.inotify_add_watch
            self._rm = libc.inotify_rm_watch
        except (OSError, AttributeError) as exc:
            raise OSError(f"inotify is not available: {exc}") from None
        init1.argtypes = [ctypes.c_int]
        init1.restype = ctypes.c_int
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add.restype = ctypes.c_int
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        self._rm.restype = ctypes.c_int
        # The inotify flags are the open(2) flags of the same names.
        fd = int(init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if fd < 0:
            _raise_errno("inotify_init1")
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def add_watch(self, path: str, mask: int = CHANGES) -> int:
        """Watch a folder (or file); the same inode again gives the same descriptor."""
        wd = int(self._add(self._fd, os.fsencode(path), mask))
        if wd < 0:
            _raise_errno("inotify_add_watch", path)
        return wd

    def rm_watch(self, wd: int) -> None:
        # Fails harmlessly when the kernel already dropped it (folder deleted).
        self._rm(self._fd, wd)

    def drain(self) -> bool:
        """Whether anything happened: the queued events are read and dropped, at most
        `_DRAIN_READS` reads of them (the fd stays readable when more are left)."""
        happened = False
        for _ in range(_DRAIN_READS):
            try:
                happened |= bool(os.read(self._fd, _READ_SIZE))
            except BlockingIOError:
                break
        return happened

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _raise_errno(call: str, path: str | None = None) -> NoReturn:
    code = ctypes.get_errno()
    raise OSError(code, f"{call}: {os.strerror(code)}", path)
