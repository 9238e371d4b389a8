"""The DNS server: UDP and TCP on one address, answers from the table, the rest forwarded.

The table comes through a callable the sidecar app points at its latest
accepted snapshot: the server reads it once per query and never holds on to
it, so a new table takes effect with the next query and is never seen half
built (tables are immutable, swapped whole).

UDP runs on the event loop (uvloop in the sidecar) through `udp.py`: the socket
is drained in batches (recvmmsg/sendmmsg on Linux) and every datagram answered
synchronously when the answer is local or cached; only queries that go
upstream become tasks, at most `max_pending`. TCP (RFC 7766) through `tcp.py`:
several queries per connection, an idle timeout and a deadline for each message
that stray bytes do not extend, and a full table always makes room for a new
connection (one idle with nothing in flight gives way first, else the one whose
oldest query has waited longest).

No input may stop the server: every query is handled inside a try, failures are
counted in `errors` and logged (rate-limited), and the next query goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

from meshlet.listen import listening
from meshlet.sidecar.dns import tcp, udp, wire
from meshlet.sidecar.dns.answer import Forward, answer, servfail
from meshlet.sidecar.dns.forwarder import Forwarder
from meshlet.sidecar.dns.observe import OnAnswered, OnQuery, Proto, Source, labels, proto_of
from meshlet.sidecar.dns.table import DnsTable

log = logging.getLogger(__name__)

_UDP_RECEIVE_BUFFER = 1 << 20
_LOG_FIRST_ERRORS = 10
_LOG_EVERY_ERRORS = 1000


class DnsServer:
    def __init__(
        self,
        table: Callable[[], DnsTable | None],
        forwarder: Forwarder,
        *,
        max_udp: int = wire.EDNS_SIZE,
        tcp_idle_timeout: float = tcp.IDLE_TIMEOUT,
        tcp_query_deadline: float = tcp.QUERY_DEADLINE,
        max_tcp_connections: int = tcp.MAX_CONNECTIONS,
        max_tcp_pending_per_connection: int = tcp.MAX_PENDING_PER_CONNECTION,
        max_pending: int = 2048,
        on_query: OnQuery | None = None,
        on_answered: OnAnswered | None = None,
        udp_batching: bool = True,
    ) -> None:
        self.table = table
        self.forwarder = forwarder
        self.max_udp = max_udp
        self.tcp_limits = tcp.TcpLimits(
            idle_timeout=tcp_idle_timeout,
            query_deadline=tcp_query_deadline,
            max_pending_per_connection=max_tcp_pending_per_connection,
        )
        self.max_pending = max_pending
        self.on_query = on_query
        self.on_answered = on_answered
        # recvmmsg/sendmmsg where the platform has them; False: the recvfrom loop.
        self.udp_batching = udp_batching
        # Queries that raised (a bug: no input should); the fuzz test expects 0.
        self.errors = 0
        self.address: tuple[str, int] = ("", 0)
        self._udp: socket.socket | None = None
        self._tcp: asyncio.Server | None = None
        self._connections = tcp.TcpConnections(max_tcp_connections)
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle -------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 15053) -> tuple[str, int]:
        """Listen on UDP and TCP `host:port` (0: a free port, the same for both)."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for _ in range(50 if port == 0 else 1):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UDP_RECEIVE_BUFFER)
                with listening("DNS over UDP", host, port):
                    sock.bind((host, port))
                sock.setblocking(False)
                bound = sock.getsockname()[1]
                with listening("DNS over TCP", host, bound):
                    self._tcp = await loop.create_server(
                        self._tcp_connection, host, bound, reuse_address=True
                    )
            except OSError:
                sock.close()
                if port != 0:
                    raise
                continue
            self._udp = sock
            receiver = udp.receiver(sock, self, batching=self.udp_batching)
            loop.add_reader(sock.fileno(), receiver.on_readable)
            self.address = (host, bound)
            return self.address
        raise OSError(f"no port free for both UDP and TCP on {host}")

    async def close(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
        self._connections.close_all()
        if self._udp is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._udp.fileno())
            self._udp.close()
            self._udp = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._tcp is not None:
            await self._tcp.wait_closed()
            self._tcp = None

    def _tcp_connection(self) -> tcp.TcpConnection:
        return tcp.TcpConnection(self.handle, self._connections, self.tcp_limits)

    # --- queries ---------------------------------------------------------------

    def handle(self, query: bytes, reply: Callable[[bytes], None], max_udp: int | None) -> bool:
        """Answer one query (`max_udp` None: it came over TCP); `reply` sends a response.

        True when `reply` was called or will be (forwarding), False when the query
        was dropped or failed before an answer.
        """
        started = time.perf_counter() if self.on_answered is not None else 0.0
        try:
            result = answer(query, self.table(), max_udp)
        except Exception:
            self.failed(query)
            return False
        if result is None:
            return False
        if isinstance(result, bytes):
            proto = proto_of(max_udp)
            replied = self._reply(query, result, reply, "local", proto)
            if replied and self.on_answered is not None:
                self.on_answered(proto, time.perf_counter() - started)
            return replied
        return self.dispatch_forward(query, result, reply, max_udp)

    def dispatch_forward(
        self, query: bytes, forward: Forward, reply: Callable[[bytes], None], max_udp: int | None
    ) -> bool:
        """Answer from the cache now, or start a task that asks upstream and replies."""
        try:
            cached = self.forwarder.cached(query, forward, max_udp)
            if cached is None and len(self._tasks) < self.max_pending:
                task = asyncio.get_running_loop().create_task(
                    self._resolve(query, forward, reply, max_udp)
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return True
            if cached is None:  # too many queries upstream already: fail fast, queue nothing
                cached = servfail(query, forward.question, forward.edns_size, forward.dnssec_ok)
        except Exception:
            self.failed(query)
            return False
        return self._reply(query, cached, reply, "forwarded", proto_of(max_udp))

    def _reply(
        self,
        query: bytes,
        response: bytes,
        reply: Callable[[bytes], None],
        source: Source,
        proto: Proto,
    ) -> bool:
        try:
            reply(response)
        except Exception:
            self.failed(query)
            return False
        if self.on_query is not None:
            self.report(query, response, source, proto, None)
        return True

    async def _resolve(
        self, query: bytes, forward: Forward, reply: Callable[[bytes], None], max_udp: int | None
    ) -> None:
        seconds: float | None = None
        try:
            response, seconds = await self.forwarder.resolve(query, forward, max_udp)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.failed(query)
            response = servfail(query, forward.question, forward.edns_size, forward.dnssec_ok)
        try:
            reply(response)
        except Exception:
            self.failed(query)
            return
        if self.on_query is not None:
            self.report(query, response, "forwarded", proto_of(max_udp), seconds)

    def report(
        self, query: bytes, response: bytes, source: Source, proto: Proto, seconds: float | None
    ) -> None:
        on_query = self.on_query
        if on_query is None:
            return
        try:
            qtype, rcode = labels(query, response)
            on_query(qtype, rcode, source, proto, seconds)
        except Exception:
            self.failed(query)

    def failed(self, query: bytes) -> None:
        self.errors += 1
        if self.errors <= _LOG_FIRST_ERRORS or self.errors % _LOG_EVERY_ERRORS == 0:
            log.exception("DNS query failed (%d so far): %s", self.errors, query[:64].hex())
