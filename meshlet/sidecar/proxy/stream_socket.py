"""A non-blocking socket on the proxy's epoll set that a protocol engine reads from and
writes to: what it reads goes to `on_data`, what it is given to write is sent at
once and the rest kept until the socket takes it.

For the HTTP handler, whose bytes pass through a protocol state machine (h2)
rather than os.splice. Reading stops while `paused` (the other side cannot take
more), so memory stays bounded by the protocol's flow-control windows and one
read; writing never blocks.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
from collections.abc import Callable

from meshlet.sidecar.proxy.reactor import FAILED, READ, WRITE, Reactor

_READ_SIZE = 65536
# Above this many bytes waiting to be sent, the producer is told to hold back.
HIGH_WATER = 1024 * 1024


class StreamSocket:
    __slots__ = (
        "_close_when_sent",
        "_connecting",
        "_interest",
        "_on_closed",
        "_on_connected",
        "_on_data",
        "_on_drained",
        "_out",
        "_reactor",
        "_shutdown_when_sent",
        "closed",
        "fd",
        "paused",
        "sock",
    )

    def __init__(
        self,
        reactor: Reactor,
        sock: _socket.socket,
        on_data: Callable[[bytes], None],
        on_closed: Callable[[OSError | None], None],
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self._reactor = reactor
        self.sock = sock
        self.fd = sock.fileno()
        self._on_data = on_data
        self._on_closed = on_closed
        self._on_connected = on_connected
        self._on_drained: Callable[[], None] | None = None
        self._out = bytearray()
        self._connecting = on_connected is not None
        self._close_when_sent = False
        self._shutdown_when_sent = False
        self.closed = False
        self.paused = False
        self._interest = WRITE if self._connecting else READ
        reactor.add(self.fd, self._events, self._interest)

    @property
    def backlog(self) -> int:
        """Bytes given to write that the socket has not taken yet."""
        return len(self._out)

    def on_drained(self, callback: Callable[[], None] | None) -> None:
        """Called once the backlog falls below HIGH_WATER again."""
        self._on_drained = callback

    def _set_interest(self) -> None:
        if self.closed:
            return
        wanted = WRITE if self._connecting else (0 if self.paused else READ)
        if self._out:
            wanted |= WRITE
        if wanted != self._interest:
            self._interest = wanted
            self._reactor.modify(self.fd, wanted)

    def pause(self, paused: bool) -> None:
        if paused != self.paused:
            self.paused = paused
            self._set_interest()

    def _events(self, events: int) -> None:
        if self._connecting:
            error = self.sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
            if error:
                self.close(OSError(error, errno.errorcode.get(error, str(error))))
                return
            self._connecting = False
            self._set_interest()
            if self._on_connected is not None:
                self._on_connected()
            return
        if events & WRITE:
            self._flush()
        # A failed socket is read even when paused: level-triggered, it would be
        # reported again and again, and the read ends it.
        if self.closed or not events & (READ | FAILED) or (self.paused and not events & FAILED):
            return
        try:
            data = self.sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(exc)
            return
        if not data:
            self.close(None)
            return
        self._on_data(data)

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        if not self._out and not self._connecting:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self.close(exc)
                return
            if sent == len(data):
                return
            data = data[sent:]
        self._out += data
        self._set_interest()

    def _flush(self) -> None:
        out = self._out
        while out:
            try:
                sent = self.sock.send(out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.close(exc)
                return
            del out[:sent]
        if not out:
            if self._close_when_sent:
                self.close()
                return
            if self._shutdown_when_sent:
                self._shutdown_when_sent = False
                self._shutdown()
        self._set_interest()
        if len(out) < HIGH_WATER and self._on_drained is not None:
            self._on_drained()

    def close_when_sent(self) -> None:
        """Closes once what is waiting to be sent has gone (at once when nothing is)."""
        if not self._out:
            self.close()
        else:
            self._close_when_sent = True

    def shutdown_when_sent(self) -> None:
        """Ends the sending side once what is waiting has gone; reading goes on."""
        if not self._out:
            self._shutdown()
        else:
            self._shutdown_when_sent = True

    def _shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(_socket.SHUT_WR)

    def close(self, error: OSError | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self._reactor.forget(self.fd)
        self.sock.close()
        self._out.clear()
        self._on_closed(error)
