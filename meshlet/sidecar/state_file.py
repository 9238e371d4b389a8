"""The saved config on disk (`--state-dir`): read once at start, written after accepts.

Writes are coalesced: after an accepted update the file is written once the
quiet period has passed, with whatever is latest by then, so a burst of endpoint
changes is one write, not one per change. Each write goes to a temporary file
that replaces the old one (rename is atomic), so a crash leaves the old file or
the new one, never half of one. Encoding and writing run off the event loop.
Nothing here stops the sidecar: a file that cannot be read or written is one
log line, and the sidecar goes on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable

from meshlet.defaults import STATE_FILE_MAX_BYTES
from meshlet.sidecar.saved_state import FILE_NAME, Saved, SavedStateError, decode, encode
from meshlet.sidecar.state import SidecarState

log = logging.getLogger(__name__)


def _read_regular(path: str, limit: int) -> bytes:
    # O_NONBLOCK: a FIFO put in our place must not hang the start.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SavedStateError("it is not a regular file")
        if info.st_size > limit:
            raise SavedStateError(f"it is {info.st_size} bytes, over {limit}")
        return f.read(limit + 1)


def _temporary(path: str, pid: int | str) -> str:
    return os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{pid}.tmp")


def _remove_leftovers(path: str) -> None:
    """Temporary files of an earlier run that died mid-write: they count against the
    emptyDir's size."""
    directory, prefix = os.path.dirname(path) or ".", f".{os.path.basename(path)}."
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _write_atomic(path: str, data: bytes) -> None:
    directory = os.path.dirname(path) or "."
    temporary = _temporary(path, os.getpid())
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def _why(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, SavedStateError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"  # a file no check foresaw


class StateFile:
    def __init__(
        self,
        directory: str,
        cluster_domain: str,
        *,
        quiet_seconds: float = 1.0,
        max_bytes: int = STATE_FILE_MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.path.join(directory, FILE_NAME)
        self._directory = directory
        self._domain = cluster_domain
        self._quiet = quiet_seconds
        self._max_bytes = max_bytes
        self._inflight: asyncio.Future[None] | None = None
        self._clock = clock
        self._latest: SidecarState | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_error = ""
        self.writes = 0  # files written, for the admin page and tests

    def load(self) -> Saved | None:
        """The saved config, or None (said in one log line) when there is none to use."""
        _remove_leftovers(self.path)
        try:
            data = _read_regular(self.path, self._max_bytes)
            saved = decode(data, self._domain)
        except FileNotFoundError:
            log.info("no saved config at %s: waiting for the control plane", self.path)
            return None
        except Exception as exc:  # whatever the file holds, the start goes on
            log.warning(
                "saved config %s not used (%s): waiting for the control plane",
                self.path,
                _why(exc),
            )
            return None
        age = "" if saved.written_at is None else f", {self._clock() - saved.written_at:.0f}s old"
        log.info(
            "serving the config saved at %s (%d resources%s) until the control plane answers",
            self.path,
            sum(len(r) for r in saved.state.accepted.values()),
            age,
        )
        return saved

    def note(self, state: SidecarState) -> None:
        """A newly accepted state: written once the quiet period has passed."""
        self._latest = state
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._write_soon())

    async def _write_soon(self) -> None:
        while self._latest is not None:
            await asyncio.sleep(self._quiet)
            state, self._latest = self._latest, None
            if state is not None:
                # Shielded: a write under way finishes even when this task is cancelled
                # (close waits for it).
                self._inflight = asyncio.ensure_future(asyncio.to_thread(self._write, state))
                await asyncio.shield(self._inflight)

    def _write(self, state: SidecarState) -> None:
        # One write at a time: the next waits for this one, and so does close.
        data = encode(state, self._domain, self._clock())
        try:
            if len(data) > self._max_bytes:
                # Over the emptyDir's room. An older file must not outlive it: after a
                # restart it would send connections to endpoints long gone.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                # No size in the text: it is logged once however the size changes.
                raise OSError(
                    f"the config is over {self._max_bytes} bytes; the older saved one is removed"
                )
            os.makedirs(self._directory, exist_ok=True)
            _write_atomic(self.path, data)
        except OSError as exc:
            error = f"{exc.strerror or exc}"
            if error != self._last_error:  # once per distinct failure, not once per update
                log.warning("cannot save the config to %s: %s", self.path, error)
            self._last_error = error
            return
        self._last_error = ""
        self.writes += 1

    async def close(self) -> None:
        """Waits for a write under way, writes what is pending now (on shutdown), stops."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._inflight is not None:
            await self._inflight
        state, self._latest = self._latest, None
        if state is not None:
            await asyncio.to_thread(self._write, state)
