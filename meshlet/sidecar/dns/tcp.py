"""DNS over TCP (RFC 7766): the connections, their deadlines and the table that holds them.

Several length-prefixed queries per connection, answered as they complete (local
ones in order, forwarded ones when they come back). Reading pauses while the
client does not read or too many of its queries are upstream. Deadlines and the
choice of which connection gives way are in `tcp_clock.py`; this is the I/O.

The defaults below are the DNS server's (`DnsServer` takes each as a parameter).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from meshlet.sidecar.dns.tcp_clock import Expiry, TcpClock, gives_way

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!H")

# A connection with no complete query or response for this long, and no query in
# flight, is closed.
IDLE_TIMEOUT = 10.0
# A message begun must be whole this soon after its first byte (miekg/dns, under
# CoreDNS, gives 2 s to read one too).
QUERY_DEADLINE = 2.0
# Open connections at most; when full, a new one takes the place of another.
MAX_CONNECTIONS = 256
# Reading pauses while more than this many of a connection's queries are in flight.
MAX_PENDING_PER_CONNECTION = 32

# The server's query handler: (query, reply, max_udp=None) -> whether reply will be called.
Handle = Callable[[bytes, Callable[[bytes], None], None], bool]


@dataclass(frozen=True, slots=True)
class TcpLimits:
    idle_timeout: float
    query_deadline: float
    max_pending_per_connection: int


class TcpConnections:
    """The open connections, at most `limit`; a new one always gets in, in the place
    of the one `gives_way` picks."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: set[TcpConnection] = set()

    def admit(self, connection: TcpConnection) -> bool:
        """False only when `limit` is 0."""
        if len(self.open) >= self.limit:
            victim = gives_way(self.open)
            if victim is None:
                return False
            victim.shut(
                "evicted" if victim.pending_since is None else "evicted, queries unanswered"
            )
        self.open.add(connection)
        return True

    def close_all(self) -> None:
        for connection in list(self.open):
            connection.shut("server closing")


class TcpConnection(asyncio.Protocol):
    def __init__(self, handle: Handle, table: TcpConnections, limits: TcpLimits) -> None:
        self.handle = handle
        self.table = table
        self.limits = limits
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        # Queries not yet answered, in the order they arrived (a dict keeps it), with when.
        self.in_flight: dict[TcpReply, float] = {}
        self.paused_writing = False
        self.paused_pending = False
        self.clock = TcpClock(limits.idle_timeout, limits.query_deadline, 0.0)
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if not self.table.admit(self):
            self.transport.abort()
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.clock.active(now)
        self._schedule(loop, now)

    def data_received(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        buffer = self.buffer
        buffer += data
        offset = 0
        now = loop.time()
        while len(buffer) - offset >= 2:
            length = buffer[offset] << 8 | buffer[offset + 1]
            end = offset + 2 + length
            if end > len(buffer):
                break
            self.clock.active(now)
            reply = TcpReply(self, now)
            if not self.handle(bytes(buffer[offset + 2 : end]), reply, None):
                reply.release()
            offset = end
        del buffer[:offset]
        self.clock.buffered(now, partial=bool(buffer), consumed=offset > 0)
        self._update_reading()
        self._schedule(loop, now)

    def write(self, response: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(_LENGTH.pack(len(response)) + response)
            self.clock.active(asyncio.get_running_loop().time())

    @property
    def pending(self) -> int:
        return len(self.in_flight)

    @property
    def pending_since(self) -> float | None:
        """When the oldest query still in flight arrived; None with none in flight."""
        return next(iter(self.in_flight.values()), None)

    # --- flow control ----------------------------------------------------------------

    @property
    def reading(self) -> bool:
        return not (self.paused_writing or self.paused_pending)

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        over = self.pending > self.limits.max_pending_per_connection
        if over != self.paused_pending:
            was_reading = self.reading
            self.paused_pending = over
            self._reading_changed(transport, was_reading)

    def pause_writing(self) -> None:
        was_reading = self.reading
        self.paused_writing = True
        if self.transport is not None:
            self._reading_changed(self.transport, was_reading)

    def resume_writing(self) -> None:
        was_reading = self.reading
        self.paused_writing = False
        if self.transport is not None and not self.transport.is_closing():
            self._reading_changed(self.transport, was_reading)

    def _reading_changed(self, transport: asyncio.Transport, was_reading: bool) -> None:
        if was_reading and not self.reading:
            transport.pause_reading()
        elif not was_reading and self.reading:
            transport.resume_reading()
            loop = asyncio.get_running_loop()
            now = loop.time()
            self.clock.reading_resumed(now)
            self._schedule(loop, now)

    # --- deadlines -------------------------------------------------------------------

    def _schedule(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        """Keep the one timer at or before the earliest deadline that applies."""
        due = self.clock.next_check(now, pending=self.pending, reading=self.reading)
        timer = self.timer  # never a cancelled one: each cancel is replaced or cleared
        if timer is not None and timer.when() <= due:
            return
        if timer is not None:
            timer.cancel()
        self.timer = loop.call_at(due, self._check)

    def _check(self) -> None:
        self.timer = None
        if self.transport is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        expiry = self.clock.expired(now, pending=self.pending, reading=self.reading)
        if expiry is not None:
            self.shut(expiry)
        else:
            self._schedule(loop, now)

    def shut(self, why: Expiry | str) -> None:
        """Close, and leave the table at once so the slot is free now."""
        self.table.open.discard(self)
        transport = self.transport
        if transport is None:
            return
        log.debug("DNS TCP connection closed: %s", why)
        # A client that left responses unread is not waited for.
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.table.open.discard(self)
        self.transport = None


class TcpReply:
    """Sends one response on a connection; in flight there, since `now`, until it has."""

    __slots__ = ("connection", "done")

    def __init__(self, connection: TcpConnection, now: float) -> None:
        self.connection = connection
        self.done = False
        connection.in_flight[self] = now

    def __call__(self, response: bytes) -> None:
        if not self.done:
            self.release()
            self.connection.write(response)

    def release(self) -> None:
        if not self.done:
            self.done = True
            connection = self.connection
            del connection.in_flight[self]
            connection._update_reading()
