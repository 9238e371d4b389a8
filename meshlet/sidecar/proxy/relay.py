"""Relaying the bytes of one proxied connection, both ways, with os.splice.

Bytes move socket -> pipe -> socket inside the kernel and never enter Python.
A direction holds a pipe only while bytes are in flight: it takes one from a
shared pool when it reads and gives it back once the pipe is drained, so an
idle connection holds no pipe, and a thousand connections do not hold two
thousand.

Backpressure: a direction reads only when its pipe is empty. When the
destination cannot take everything, the direction stops and waits for the
destination to become writable, so a slow reader holds at most one pipe's worth
of bytes here (the kernel's socket buffers do the rest).

Half-close: end of stream from one side becomes shutdown(SHUT_WR) towards the
other once its bytes are delivered; the connection closes when both directions
have ended. An error on either side (reset, broken pipe) closes both, and the
other side sees a reset too, as it would without the proxy in between.

Interest in each socket follows what the relay needs (reactor.py): reading
while the direction from it has room, writing while the direction to it waits.
A socket the relay needs for nothing at the moment leaves the epoll set until
it is needed again: epoll reports a hang-up whatever the interest, so a socket
that has hung up while the other side drains slowly would otherwise wake the
loop for ever.

Hot path: the objects of a connection hold no reference cycles (directions are
plain state; the relay does the work), so they are freed by reference counting
the moment the connection closes, and the cyclic garbage collector never runs
for them.
"""

from __future__ import annotations

import _socket
import contextlib
import fcntl
import os
import select
import socket
import struct
from collections.abc import Callable

from meshlet.sidecar.proxy.reactor import FAILED, READ, WRITE, Handler, Reactor

_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
# As much as a pipe holds; one splice moves at most that.
_CHUNK = 1 << 20
# A read this big suggests more is waiting: read again, up to _BUDGET times,
# before returning to the loop.
_FULL_PIPE = 65536
_BUDGET = 8
_COPY_CHUNK = 65536
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST

Socket = _socket.socket


class PipePool:
    """Pipes (read fd, write fd) to splice through, reused between connections.

    Pipes are made 1 MiB (the most an unprivileged process may ask for) so a bulk
    transfer moves up to 1 MiB per splice instead of 64 KiB: about a quarter more
    throughput here. The kernel counts pipe capacity per user (16,384 pages by
    default), so the pool keeps few of them; past that limit it makes pipes of the
    size the kernel allows, which still work.
    """

    def __init__(self, keep: int = 32, size: int = 1 << 20) -> None:
        self._free: list[tuple[int, int]] = []
        self._keep = keep
        self._size = size

    def take(self) -> tuple[int, int]:
        if self._free:
            return self._free.pop()
        pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # EPERM over the per-user limit: keep the default
            fcntl.fcntl(pipe[1], fcntl.F_SETPIPE_SZ, self._size)
        return pipe

    def give(self, pipe: tuple[int, int]) -> None:
        """Back to the pool; only for an empty pipe."""
        if len(self._free) < self._keep:
            self._free.append(pipe)
        else:
            close_pipe(pipe)

    def close(self) -> None:
        while self._free:
            close_pipe(self._free.pop())


def close_pipe(pipe: tuple[int, int]) -> None:
    os.close(pipe[0])
    os.close(pipe[1])


def reset(sock: Socket) -> None:
    """Close with a TCP reset (the client sees "connection reset", not a clean end)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    sock.close()


class Clock:
    """The time relays stamp on activity; advanced by the proxy's idle sweep, not per read."""

    __slots__ = ("now",)

    def __init__(self, now: float) -> None:
        self.now = now


class Direction:
    """src -> dst: the state of one way of a relay."""

    __slots__ = ("copy", "dst", "dst_fd", "ended", "eof", "moved", "pending", "pipe", "src_fd")

    def __init__(self, src: Socket, dst: Socket) -> None:
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.dst = dst
        self.pipe: tuple[int, int] | None = None
        self.copy = b""  # without a pipe: the bytes read, of which `pending` are unwritten
        self.pending = 0  # bytes in the pipe that dst could not take yet
        self.moved = 0  # bytes delivered to dst
        self.eof = False  # src has ended
        self.ended = False  # ... and everything it sent was delivered


class Relay:
    """Both directions between a client socket and an upstream socket, already connected."""

    __slots__ = (
        "client",
        "client_interest",
        "clock",
        "closed",
        "down",
        "idle_second",
        "idle_timeout",
        "on_close",
        "pipes",
        "reactor",
        "touched",
        "up",
        "upstream",
        "upstream_interest",
    )

    def __init__(
        self,
        reactor: Reactor,
        client: Socket,
        upstream: Socket,
        pipes: PipePool,
        clock: Clock,
        idle_timeout: float,
        on_close: Callable[[Relay], None],
    ) -> None:
        self.reactor = reactor
        self.client, self.upstream = client, upstream
        self.pipes = pipes
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.touched = clock.now
        self.idle_second = 0  # where the proxy's IdleWheel filed it
        self.on_close = on_close
        self.closed = False
        self.up = Direction(client, upstream)
        self.down = Direction(upstream, client)
        self.client_interest = READ
        self.upstream_interest = READ

    def start(self, upstream_events: int) -> None:
        """Begin relaying; `upstream_events` are what the connect's last event reported
        (a server may speak first). The upstream socket is watched (for the connect)."""
        reactor = self.reactor
        reactor.add(self.client.fileno(), self._client_events, READ)
        reactor.replace(self.upstream.fileno(), self._upstream_events)
        reactor.modify(self.upstream.fileno(), READ)
        if upstream_events & READ:
            self._pump(self.down)

    # --- events ------------------------------------------------------------------

    def _client_events(self, events: int) -> None:
        if events & WRITE:
            self._pump(self.down)
        if events & READ:
            self._pump(self.up)
        if events & FAILED:
            self._failed(events, self.up)

    def _upstream_events(self, events: int) -> None:
        if events & WRITE:
            self._pump(self.up)
        if events & READ:
            self._pump(self.down)
        if events & FAILED:
            self._failed(events, self.down)

    def _failed(self, events: int, reading: Direction) -> None:
        """An error or hang-up on the socket `reading` reads from."""
        self._pump(reading)  # a read reports the error, or the end, and acts on it
        if not self.closed and events & select.EPOLLERR:
            self.abort()

    # --- moving bytes ----------------------------------------------------------------

    def _pump(self, d: Direction) -> None:
        """Move what can be moved now; called when d's src is readable or its dst writable."""
        if self.closed or d.ended:
            return
        if d.pending:
            moved = d.moved
            drained = self._flush(d)
            if d.moved != moved:
                self.touched = self.clock.now  # a slow reader is still a reader
            if not drained:
                return  # dst still full
            self._release(d)
            self.update_interest()  # dst has room again: read src again
            return
        pipes = self.pipes
        for _ in range(_BUDGET):
            pipe = d.pipe
            if pipe is None:
                try:
                    pipe = d.pipe = pipes.take()
                except OSError:  # out of fds for a pipe: copy through Python this time
                    self._copy(d)
                    return
            try:
                read = os.splice(d.src_fd, pipe[1], _CHUNK, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                break
            except OSError:
                self.abort()
                return
            if read == 0:
                self._release(d)
                d.eof = True
                self._end(d)
                return
            self.touched = self.clock.now
            d.pending = read
            if not self._flush(d):
                if not self.closed:
                    self.update_interest()  # dst is full: wait for it, stop reading src
                return
            if read < _FULL_PIPE:
                break
        self._release(d)

    def _flush(self, d: Direction) -> bool:
        """Write d's pipe to its dst; False when dst is full (or failed: the relay is closed)."""
        pipe = d.pipe
        if pipe is None:
            return self._flush_copy(d)
        while d.pending:
            try:
                written = os.splice(pipe[0], d.dst_fd, d.pending, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return False
            except OSError:
                self.abort()
                return False
            d.pending -= written
            d.moved += written
        return True

    def _copy(self, d: Direction) -> None:
        """One read and write through a buffer, for when no pipe can be had (the process is
        out of fds): slower, but the connection goes on."""
        try:
            data = os.read(d.src_fd, _COPY_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self.abort()
            return
        if not data:
            d.eof = True
            self._end(d)
            return
        self.touched = self.clock.now
        d.copy, d.pending = data, len(data)
        if not self._flush_copy(d) and not self.closed:
            self.update_interest()  # dst is full: wait for it, stop reading src

    def _flush_copy(self, d: Direction) -> bool:
        while d.pending:
            try:
                written = os.write(d.dst_fd, d.copy[-d.pending :])
            except BlockingIOError:
                return False
            except OSError:
                self.abort()
                return False
            d.pending -= written
            d.moved += written
        d.copy = b""
        return True

    def _release(self, d: Direction) -> None:
        """Give d's (empty) pipe back to the pool."""
        if d.pipe is not None:
            self.pipes.give(d.pipe)
            d.pipe = None

    def _end(self, d: Direction) -> None:
        d.ended = True
        if self.up.ended and self.down.ended:
            self.close()  # both ways done: close() sends the last FIN itself
            return
        try:
            d.dst.shutdown(socket.SHUT_WR)
        except OSError:
            self.abort()
            return
        self.update_interest()

    def update_interest(self) -> None:
        """Tell the reactor what each socket is needed for now."""
        up, down = self.up, self.down
        client = (READ if not up.eof and not up.pending else 0) | (WRITE if down.pending else 0)
        upstream = (READ if not down.eof and not down.pending else 0) | (WRITE if up.pending else 0)
        if client != self.client_interest:
            self._interest(self.client, self._client_events, self.client_interest, client)
            self.client_interest = client
        if upstream != self.upstream_interest:
            self._interest(self.upstream, self._upstream_events, self.upstream_interest, upstream)
            self.upstream_interest = upstream

    def _interest(self, sock: Socket, handler: Handler, was: int, events: int) -> None:
        fd = sock.fileno()
        if not events:
            self.reactor.unwatch(fd)  # needed for nothing now: out of the set
        elif not was:
            self.reactor.add(fd, handler, events)  # needed again
        else:
            self.reactor.modify(fd, events)

    # --- the end ---------------------------------------------------------------------

    def idle(self, now: float) -> bool:
        return self.idle_timeout > 0 and now - self.touched >= self.idle_timeout

    def abort(self) -> None:
        """An error on one side: reset both."""
        self._close(reset_sockets=True)

    def close(self) -> None:
        self._close(reset_sockets=False)

    def _close(self, reset_sockets: bool) -> None:
        if self.closed:
            return
        self.closed = True
        for d in (self.up, self.down):
            if d.pipe is not None:
                if d.pending:
                    close_pipe(d.pipe)  # bytes still in it: not reusable
                else:
                    self.pipes.give(d.pipe)
                d.pipe = None
        for sock in (self.client, self.upstream):
            self.reactor.forget(sock.fileno())  # unwatched already, or taken out by close()
            if reset_sockets:
                reset(sock)
            else:
                sock.close()
        self.on_close(self)
