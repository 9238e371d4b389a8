"""Parsing big manifests in a child process, so a hostile file costs the child, not the loop.

YAML parsing holds the GIL: in a thread it would still take turns with the
control plane's event loop, and the collections of the millions of objects a
big file makes would pause the loop too. In a child process it runs beside the
loop, and the memory a parse takes is the child's, given back when the child
ends with the pass that started it. The parent sends (file name, bytes) on the
child's stdin and reads the `Parsed` back, pickled, from its stdout.

Run as `python -m meshlet.controlplane.sources.parse_worker` by `ParserProcess`.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import struct
import subprocess
import sys
import threading
from types import TracebackType
from typing import IO

from meshlet.controlplane.sources.kube_objects import ManifestError
from meshlet.controlplane.sources.manifest_parse import Parsed, parse_manifest

_LENGTH = struct.Struct(">Q")
# How long a child may take to end once its stdin is closed, before it is killed.
_END_SECONDS = 5.0


class ParserProcess:
    """One child process for the big files of one pass, started on the first of them and
    ended when the pass leaves the `with` block. `parse` is called from that pass's
    thread; `kill` may come from any thread (the control plane is stopping)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self.killed = False

    def __enter__(self) -> ParserProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            child, self._child = self._child, None
        if child is not None:
            _end(child)

    @property
    def pid(self) -> int | None:
        child = self._child
        return None if child is None else child.pid

    def parse(self, data: bytes, filename: str) -> Parsed:
        with self._lock:
            if self.killed:
                return _failed(filename, "not parsed: the control plane is stopping")
            if self._child is None:
                self._child = subprocess.Popen(
                    [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE
                )
            child = self._child
        assert child.stdin is not None and child.stdout is not None
        try:
            _write_frame(child.stdin, pickle.dumps((filename, data), pickle.HIGHEST_PROTOCOL))
            reply = _read_frame(child.stdout)
        except (OSError, ValueError):
            reply = None
        if reply is None:
            code = child.wait()
            with self._lock:
                if self._child is child:
                    self._child = None
            _end(child)
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            return _failed(filename, f"not parsed: the parser process {how} (out of memory?)")
        parsed = pickle.loads(reply)
        assert isinstance(parsed, Parsed)
        return parsed

    def kill(self) -> None:
        """End the child now, by its PID; the parse waiting for it returns at once."""
        with self._lock:
            self.killed = True
            child = self._child
        if child is not None:
            child.kill()


def _failed(filename: str, message: str) -> Parsed:
    return Parsed(errors=(ManifestError(message, filename),), complete=False)


def _end(child: subprocess.Popen[bytes]) -> None:
    assert child.stdin is not None and child.stdout is not None
    # The child's sign to end; a broken pipe means it has ended already.
    with contextlib.suppress(OSError):
        child.stdin.close()
    try:
        child.wait(_END_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    child.stdout.close()


def _write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_LENGTH.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> bytes | None:
    """One frame, or None at the end of the stream."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(header)
    payload = stream.read(length)
    return payload if len(payload) == length else None


def main() -> None:
    """The child: parse each file sent until stdin ends."""
    # Ctrl-C reaches the whole process group; the parent ends this child itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (request := _read_frame(stdin)) is not None:
        filename, data = pickle.loads(request)
        parsed = parse_manifest(data, filename)  # never raises: a failure is the file's problem
        try:
            _write_frame(stdout, pickle.dumps(parsed, pickle.HIGHEST_PROTOCOL))
        except BrokenPipeError:
            return  # the parent is gone


if __name__ == "__main__":
    main()
