"""The HTTP/1.1 handler: every request of a keep-alive client connection balanced on its own.

A captured connection to an HTTP/1.1 port is read a message at a time
(http1_framing.py finds where heads and bodies end; bodies pass on as they came,
chunked and trailers included). Each request picks its endpoint through the
cluster's balancer, which compares open requests, and goes out on a keep-alive
connection of that endpoint's pool: one request at a time per connection, the
idle ones kept a few seconds (less than the shortest common server keep-alive, so
the pool rarely sends on a connection the server is closing) and dropped when
the endpoint leaves.

A client's next request is read once the answer to its last is done (pipelined
requests wait in the buffer), so memory is bounded by one read and the socket
backlogs. A request the server never saw (the connect failed; or, for an
idempotent method, a reused connection closed before any answer) is tried again
on another endpoint, and an answer the route's policy names is retried the same
way, with the body held up to 64 KiB, within the retry budget.

`Upgrade` (WebSocket) and `CONNECT` go to the picked endpoint on a connection of
their own; once it answers 101 (or 2xx to CONNECT) both connections become a
byte tunnel. `Expect: 100-continue` passes through: the endpoint's 100 goes to
the client, which then sends its body. When the sidecar drains, every answer
says `Connection: close` and idle client connections are closed.
"""

from __future__ import annotations

import _socket
import asyncio
import logging
from collections.abc import Callable

from opentelemetry.trace import Span

from meshlet.sidecar.proxy.balancer import Host
from meshlet.sidecar.proxy.http1_framing import (
    BadMessage,
    BodyScanner,
    Framing,
    Head,
    head_end,
    parse_request,
    parse_response,
    rebuild,
    skip_blank_lines,
)
from meshlet.sidecar.proxy.http_handler import LINGER_SECONDS, NODELAY, HttpHandler
from meshlet.sidecar.proxy.http_retry import Failure, RetryState, answer_failure, rule_for
from meshlet.sidecar.proxy.router import ClusterRuntime, Route
from meshlet.sidecar.proxy.stream_socket import HIGH_WATER, StreamSocket
from meshlet.sidecar.proxy.tracing import TRACEPARENT

log = logging.getLogger(__name__)

# Methods a request may be sent again for when a reused connection closed before any
# answer came: the server may have seen it (RFC 9110 9.2.2).
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# Below Node's 5 s keep-alive (the shortest common server default), sweep included.
UPSTREAM_IDLE_SECONDS = 3.0
# Read ahead while a request waits for its answer: more is left in the kernel.
_PIPELINED_BYTES = 65536
_CLOSE = ((b"Connection", b"close"),)
_KEEP_ALIVE = ((b"Connection", b"keep-alive"),)
_REASONS = {
    400: b"Bad Request",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


class Exchange:
    """One request, and the upstream connection of its current try."""

    __slots__ = (
        "cluster",
        "down",
        "head",
        "host",
        "keep_down",
        "out_head",
        "pending",
        "pending_bytes",
        "request_ended",
        "responded",
        "retry",
        "sent",
        "span",
        "timer",
        "tried",
        "try_timer",
        "tunnel",
        "up",
    )

    def __init__(
        self, down: Downstream, head: Head, cluster: ClusterRuntime, retry: RetryState
    ) -> None:
        self.down = down
        self.head = head
        self.cluster = cluster
        self.retry = retry
        self.tunnel = bool(head.upgrade) or head.method == b"CONNECT"
        if not head.hop:
            self.out_head = head.raw
        else:
            self.out_head = rebuild(head, keep_upgrade=self.tunnel)
        self.host: Host | None = None
        self.tried: list[Host] = []
        self.up: Upstream | None = None
        self.sent = False  # the head went on the current try's connection
        self.pending: list[bytes] = []  # body read before the connection was up
        self.pending_bytes = 0
        self.request_ended = False
        self.responded = False  # an answer went to the client: no retry from here
        self.keep_down = True  # the client connection stays open after the answer
        self.timer: asyncio.TimerHandle | None = None  # the route's timeout
        self.try_timer: asyncio.TimerHandle | None = None  # the retry policy's per try
        self.span: Span | None = None  # when traces are on


class _Conn:
    """One side's socket, and the peer socket it holds back while its backlog is high."""

    def __init__(self) -> None:
        self.socket: StreamSocket
        self.held: StreamSocket | None = None

    def write_from(self, data: bytes, source: StreamSocket) -> None:
        """Writes what `source` read; stops reading `source` while this side is behind."""
        sock = self.socket
        sock.write(data)
        if sock.backlog > HIGH_WATER and not source.closed:
            source.pause(True)
            self.held = source

    def _drained(self) -> None:
        held, self.held = self.held, None
        if held is not None and not held.closed:
            held.pause(False)


class Downstream(_Conn):
    """A client's connection to the sidecar."""

    def __init__(
        self, handler: Http1Handler, sock: _socket.socket, route: Route, key: int | None
    ) -> None:
        super().__init__()
        self.handler = handler
        self.route = route
        self.key = key  # what a hashing policy hashes for its requests
        self.opened_at = 0.0
        self.buffer = b""  # read, not handled yet: the rest of a head, a pipelined request
        self.exchange: Exchange | None = None
        self.body: BodyScanner | None = None  # the request body being read
        self.closing = False  # answered for the last time: nothing more is read
        self.draining = False
        self.tunnel: Upstream | None = None
        self.blocked = False  # the request body waits for its upstream to take more
        self.parsing = False  # in parse(): it goes on by itself after an answer
        self.lingering = False  # ending: what comes is read and dropped (see end())
        self.socket = StreamSocket(handler.reactor, sock, self._received, self._closed)
        self.socket.on_drained(self._drained)

    def _received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.write_from(data, self.socket)
            return
        if self.closing:
            return
        if self.buffer:
            data, self.buffer = self.buffer + data, b""
        try:
            self.parse(data)
        except BadMessage as exc:
            self.handler.bad_request(self, exc)

    def parse(self, data: bytes) -> None:
        self.parsing = True
        try:
            self._parse(data)
        finally:
            self.parsing = False
        self.reading()

    def _parse(self, data: bytes) -> None:
        handler = self.handler
        pos = 0
        size = len(data)
        while True:
            body = self.body
            if body is None:
                if self.exchange is not None or self.closing or pos >= size:
                    break  # a pipelined request waits for the answer before it
                pos = skip_blank_lines(data, pos)
                end = head_end(data, pos)
                if end < 0:
                    break
                head = parse_request(data[pos:end])
                pos = end
                self.body = BodyScanner(head.framing, head.length)
                handler.request(self, head)
                continue
            stop = body.scan(data, pos)
            exchange = self.exchange
            if stop > pos and exchange is not None:
                handler.request_data(exchange, data[pos:stop])
            pos = stop
            if not body.done:
                break
            self.body = None
            if exchange is not None:
                handler.request_ended(exchange)
            if self.tunnel is not None:
                break
        if pos < size:
            self.buffer = data[pos:]

    def reading(self) -> None:
        """Reads while a request is coming; while it waits for its answer, only until a
        pipelined request's worth is buffered (so the client's going away is seen, and
        no epoll change is made per request)."""
        waiting = (
            self.exchange is not None
            and self.body is None
            and self.tunnel is None
            and len(self.buffer) > _PIPELINED_BYTES
        )
        if self.lingering:
            self.socket.pause(False)
            return
        self.socket.pause(self.closing or waiting or self.blocked or self.held_by_peer())

    def end(self) -> None:
        """Closes once what is waiting is sent: the sending side first, then, a moment
        later, the socket. Closing with the client's bytes unread would reset the
        connection, and the last answer could be lost; what comes meanwhile is dropped."""
        if self.lingering:
            return
        self.closing = self.lingering = True
        self.socket.shutdown_when_sent()
        self.reading()
        self.handler.loop.call_later(LINGER_SECONDS, self.socket.close)

    def held_by_peer(self) -> bool:
        exchange = self.exchange
        up = exchange.up if exchange is not None else self.tunnel
        return up is not None and up.held is self.socket

    def resume(self) -> None:
        """The answer is done: read on, starting with what was pipelined."""
        if self.parsing:
            return
        self.reading()
        if self.buffer and not self.closing:
            data, self.buffer = self.buffer, b""
            try:
                self.parse(data)
            except BadMessage as exc:
                self.handler.bad_request(self, exc)

    def _closed(self, error: OSError | None) -> None:
        self.handler.downstream_closed(self)


class Upstream(_Conn):
    """A connection to an endpoint: pooled between requests, or a tunnel's."""

    def __init__(self, handler: Http1Handler, sock: _socket.socket, pool: Pool) -> None:
        super().__init__()
        self.handler = handler
        self.pool = pool
        self.ready = False
        self.connect_started = 0.0
        self.reused = False  # it answered a request before
        self.exchange: Exchange | None = None
        self.idle_since = handler.loop.time()
        self.buffer = b""
        self.head: Head | None = None  # the answer being read
        self.body: BodyScanner | None = None
        self.answered = False  # bytes of an answer to the current request came
        self.tunnel: Downstream | None = None
        self.socket = StreamSocket(
            handler.reactor, sock, self._received, self._closed, self._connected
        )
        self.socket.on_drained(self._drained)

    def _connected(self) -> None:
        self.ready = True
        self.socket.sock.setsockopt(*NODELAY)
        self.handler.connected(self.pool.cluster, self.pool.host, self)
        exchange = self.exchange
        if exchange is not None:
            self.handler.send_request(exchange, self)

    def _received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.write_from(data, self.socket)
            return
        exchange = self.exchange
        if exchange is None:  # an idle connection has nothing to say
            self.socket.close()
            return
        self.answered = True
        if self.buffer:
            data, self.buffer = self.buffer + data, b""
        try:
            self.parse(data, exchange)
        except BadMessage as exc:
            self.handler.bad_response(exchange, self, exc)

    def parse(self, data: bytes, exchange: Exchange) -> None:
        handler = self.handler
        pos = 0
        while True:
            body = self.body
            if body is None:
                end = head_end(data, pos)
                if end < 0:
                    self.buffer = data[pos:]
                    return
                head = parse_response(data[pos:end], exchange.head.method)
                pos = end
                if head.status < 200 and head.status != 101:
                    handler.interim(exchange, head)  # 100 Continue and the like
                    continue
                if handler.tunnel_opened(exchange, self, head, data[pos:]):
                    return
                if not handler.response(exchange, self, head):
                    return  # tried again elsewhere: this connection is done
                self.head = head
                self.body = body = BodyScanner(head.framing, head.length)
            stop = body.scan(data, pos)
            if stop > pos:
                handler.response_data(exchange, self, data[pos:stop])
            if body.done:
                handler.response_ended(exchange, self, leftover=stop < len(data))
            return

    def _closed(self, error: OSError | None) -> None:
        self.pool.remove(self)
        if self.tunnel is not None:
            self.tunnel.socket.close_when_sent()
            return
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            self.handler.upstream_closed(exchange, self, error)


class Pool:
    """An endpoint's keep-alive connections, the idle ones last used last."""

    __slots__ = ("cluster", "conns", "host", "idle")

    def __init__(self, cluster: ClusterRuntime, host: Host) -> None:
        self.cluster = cluster
        self.host = host
        self.conns: set[Upstream] = set()
        self.idle: list[Upstream] = []

    def take(self) -> Upstream | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.socket.closed:
                return conn
        return None

    def remove(self, conn: Upstream) -> None:
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)


class Http1Handler(HttpHandler["Downstream", Pool]):
    # --- downstream ---------------------------------------------------------------

    def handle(self, client: _socket.socket, peer: tuple[str, int], route: Route) -> None:
        self.take(client, peer, route, lambda sock, key: Downstream(self, sock, route, key))

    def downstream_closed(self, down: Downstream) -> None:
        if not self.forget(down):
            return
        exchange, down.exchange = down.exchange, None
        if exchange is not None:
            self._abandon(exchange)
        if down.tunnel is not None:
            down.tunnel.socket.close_when_sent()
        self._released()

    def request(self, down: Downstream, head: Head) -> None:
        http = down.route.http
        assert http is not None
        rule = rule_for(http.routes, head.method.decode("latin-1"))
        route_cluster = down.route.cluster
        cluster = route_cluster
        if rule.cluster != route_cluster.name:
            cluster = self.picks.cluster_named(rule.cluster) or route_cluster
        now = self.loop.time()
        exchange = Exchange(down, head, cluster, RetryState(rule.retry, now))
        down.exchange = exchange
        self.picks.requested(cluster, now)
        if rule.timeout_seconds > 0:
            exchange.timer = self.loop.call_later(rule.timeout_seconds, self._timed_out, exchange)
        tracer = self.tracer
        if tracer is not None:
            span = exchange.span = tracer.start(
                head.method, head.header(b"host"), head.target, head.header(TRACEPARENT)
            )
            exchange.out_head = rebuild(
                head,
                ((b"traceparent", tracer.traceparent(span)),),
                keep_upgrade=exchange.tunnel,
                drop=frozenset({TRACEPARENT}),
            )
        self.pick_and_send(exchange)

    def request_data(self, exchange: Exchange, data: bytes) -> None:
        exchange.retry.hold(data)
        conn = exchange.up
        if conn is not None and exchange.sent:
            conn.write_from(data, exchange.down.socket)
            return
        exchange.pending.append(data)
        exchange.pending_bytes += len(data)
        if exchange.pending_bytes > HIGH_WATER:
            exchange.down.blocked = True

    def request_ended(self, exchange: Exchange) -> None:
        exchange.request_ended = True

    def bad_request(self, down: Downstream, exc: BadMessage) -> None:
        """Where the next message starts is not known after this: the connection ends."""
        self.protocol_errors += 1
        self.errors.error(self.loop.time(), "HTTP/1.1 request refused: %s", exc.reason)
        exchange, down.exchange = down.exchange, None
        if exchange is not None:
            self._abandon(exchange)
            if exchange.responded:  # an answer is under way: it cannot be followed
                down.end()
                return
        down.closing = True  # the reply says Connection: close
        self.local_reply(down, exc.status, exc.reason)

    # --- picking and sending ----------------------------------------------------------

    def pick_and_send(self, exchange: Exchange) -> None:
        cluster = exchange.cluster
        host = self.picks.pick(cluster, exchange.tried, self.loop.time(), exchange.down.key)
        if host is None:
            self._fail(exchange, 503, "no healthy upstream")
            return
        exchange.host = host
        key = (cluster.name, host.name)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool(cluster, host)
        conn = None if exchange.tunnel else pool.take()
        if conn is None:
            conn = self._connect(pool, cluster)
            if conn is None:
                self._release(exchange)
                self._retry_or_fail(exchange, Failure.CONNECT)
                return
        conn.exchange = exchange
        conn.answered = False
        exchange.up = conn
        exchange.sent = False
        policy = exchange.retry.policy
        if policy is not None and policy.per_try_timeout_seconds > 0:
            exchange.try_timer = self.loop.call_later(
                policy.per_try_timeout_seconds, self._try_timed_out, exchange
            )
        if conn.ready:
            self.send_request(exchange, conn)

    def _connect(self, pool: Pool, cluster: ClusterRuntime) -> Upstream | None:
        conn = self.connect(pool.host.address, cluster, lambda sock: Upstream(self, sock, pool))
        if conn is not None:
            pool.conns.add(conn)
        return conn

    def send_request(self, exchange: Exchange, conn: Upstream) -> None:
        """The head, and the body read so far (all of it again, on a retry)."""
        out = [exchange.out_head]
        body = exchange.retry.body
        if exchange.retry.tries and body:
            out.append(bytes(body))
        else:
            out += exchange.pending
        exchange.pending = []
        exchange.pending_bytes = 0
        exchange.sent = True
        down = exchange.down
        conn.write_from(b"".join(out), down.socket)
        down.blocked = False
        down.reading()

    # --- answers ----------------------------------------------------------------------

    def interim(self, exchange: Exchange, head: Head) -> None:
        exchange.down.socket.write(head.raw)

    def tunnel_opened(self, exchange: Exchange, conn: Upstream, head: Head, rest: bytes) -> bool:
        """An upgrade or CONNECT the endpoint took: from here on, bytes both ways."""
        if not exchange.tunnel:
            return False
        if not (head.status == 101 or (exchange.head.method == b"CONNECT" and head.status < 300)):
            return False
        down = exchange.down
        exchange.cluster.counters.count_status(head.status)
        self._finish_request(exchange, head.status)
        down.exchange = None
        down.body = None
        down.tunnel, conn.tunnel = conn, down
        conn.exchange = None
        down.socket.write(head.raw + rest)
        if down.buffer:
            data, down.buffer = down.buffer, b""
            conn.socket.write(data)
        down.reading()
        return True

    def response(self, exchange: Exchange, conn: Upstream, head: Head) -> bool:
        """Passes an answer's head on, or tries the request again; False when it did."""
        status = head.status
        cluster = exchange.cluster
        now = self.loop.time()
        if exchange.request_ended:
            failure = answer_failure(exchange.retry.policy, status, "")
            if failure is not None and self.picks.may_retry(cluster, exchange.retry, failure, now):
                self.picks.outcome(cluster, exchange.host, status, now)
                self._detach(exchange, conn)
                conn.socket.close()  # its answer is not read: the connection is done
                self._release(exchange)
                self.pick_and_send(exchange)
                return False
        exchange.responded = True
        down = exchange.down
        request = exchange.head
        keep = (
            request.keep_alive
            and not down.draining
            and head.framing is not Framing.UNTIL_CLOSE
            and not exchange.tunnel
        )
        exchange.keep_down = keep
        if not keep:
            out = rebuild(head, _CLOSE)
        elif request.version == b"HTTP/1.0":
            out = rebuild(head, _KEEP_ALIVE)
        elif head.hop or head.version == b"HTTP/1.0":
            # An HTTP/1.0 server's answer (framed by length, or keep would be False)
            # goes to an HTTP/1.1 client as HTTP/1.1: it keeps its connection.
            out = rebuild(head, as_http11=True)
        else:
            out = head.raw
        down.socket.write(out)
        cluster.counters.count_status(status)
        return True

    def response_data(self, exchange: Exchange, conn: Upstream, data: bytes) -> None:
        exchange.down.write_from(data, conn.socket)

    def response_ended(self, exchange: Exchange, conn: Upstream, leftover: bool) -> None:
        head = conn.head
        status = head.status if head is not None else 0
        reusable = (
            head is not None
            and head.keep_alive
            and exchange.request_ended
            and not leftover
            and not exchange.tunnel
        )
        self._finish_request(exchange, status)
        self._detach(exchange, conn)
        if reusable:
            conn.reused = True
            conn.idle_since = self.loop.time()
            conn.pool.idle.append(conn)
        else:
            conn.socket.close()
        self._next_request(exchange)

    def _next_request(self, exchange: Exchange) -> None:
        down = exchange.down
        if down.exchange is exchange:
            down.exchange = None
        if not exchange.keep_down or down.body is not None or down.closing:
            # Not all of the request was read (answered early), or the connection ends.
            down.end()
            return
        down.resume()

    def _end_span(self, exchange: Exchange, status: int) -> None:
        span, exchange.span = exchange.span, None
        if span is not None and self.tracer is not None:
            endpoint = exchange.tried[-1].name if exchange.tried else ""
            self.tracer.end(span, status, exchange.cluster.name, endpoint)

    def _finish_request(self, exchange: Exchange, status: int) -> None:
        self._end_span(exchange, status)
        cluster = exchange.cluster
        now = self.loop.time()
        cluster.counters.answered(now - exchange.retry.started)
        self.picks.outcome(cluster, exchange.host, status, now)
        self._release(exchange)
        if exchange.timer is not None:
            exchange.timer.cancel()
            exchange.timer = None

    def bad_response(self, exchange: Exchange, conn: Upstream, exc: BadMessage) -> None:
        self.protocol_errors += 1
        self.errors.error(self.loop.time(), "HTTP/1.1 answer refused: %s", exc.reason)
        self._detach(exchange, conn)
        conn.socket.close()
        if exchange.responded:
            self._abandon(exchange)
            exchange.down.end()
            return
        self.picks.outcome(exchange.cluster, exchange.host, 502, self.loop.time())
        self._fail(exchange, 502, "upstream sent a malformed answer")

    def upstream_closed(self, exchange: Exchange, conn: Upstream, error: OSError | None) -> None:
        if exchange.up is not conn:
            return
        exchange.up = None
        cluster = exchange.cluster
        now = self.loop.time()
        head, body = conn.head, conn.body
        if head is not None and body is not None and body.framing is Framing.UNTIL_CLOSE:
            conn.exchange = exchange  # an answer that ends with its connection: whole
            self.response_ended(exchange, conn, leftover=False)
            return
        if exchange.responded:  # cut short: the client sees its connection end too
            self._abandon(exchange)
            exchange.down.end()
            return
        failure: Failure | None = None
        if not conn.ready:
            cluster.counters.connect_failures += 1
            failure = Failure.CONNECT
        elif not conn.answered and conn.reused and exchange.head.method in IDEMPOTENT:
            failure = Failure.RESET  # the keep-alive race: the server closed as we sent
        self.picks.outcome(cluster, exchange.host, 503, now)
        self._release(exchange)
        if failure is not None:
            self._retry_or_fail(exchange, failure)
        else:
            self._fail(exchange, 503, "upstream connect error or disconnect/reset before headers")

    def _retry_or_fail(self, exchange: Exchange, failure: Failure) -> None:
        now = self.loop.time()
        if self.picks.may_retry(exchange.cluster, exchange.retry, failure, now):
            self.pick_and_send(exchange)
        else:
            self._fail(exchange, 503, f"upstream {failure.value}")

    def _fail(self, exchange: Exchange, status: int, reason: str) -> None:
        """The sidecar's own answer in place of the endpoint's."""
        down = exchange.down
        if exchange.timer is not None:
            exchange.timer.cancel()
            exchange.timer = None
        exchange.cluster.counters.count_status(status)
        self._end_span(exchange, status)
        if down.exchange is exchange:
            down.exchange = None
        self.local_reply(down, status, reason)

    def local_reply(self, down: Downstream, status: int, reason: str) -> None:
        """Keeps the connection when the whole request was read; else closes it."""
        if down.socket.closed:
            return
        body = reason.encode() + b"\n"
        unread = down.body is not None and not down.body.done  # the rest of a request body
        close = unread or down.closing or down.draining
        head = [
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error")),
            b"content-type: text/plain\r\ncontent-length: %d\r\n" % len(body),
        ]
        if close:
            head.append(b"connection: close\r\n")
        down.socket.write(b"".join([*head, b"\r\n", body]))
        if close:
            down.end()
        else:
            down.resume()

    # --- ending ---------------------------------------------------------------------

    def _timed_out(self, exchange: Exchange) -> None:
        """The route's timeout passed before the whole answer: a 504 if nothing was
        answered yet, else the client's connection ends (as Envoy)."""
        exchange.timer = None
        exchange.cluster.counters.timeouts += 1
        conn = exchange.up
        if conn is not None:
            self._detach(exchange, conn)
            conn.socket.close()
        self._release(exchange)
        if exchange.responded:
            exchange.down.socket.close()
        else:
            self._fail(exchange, 504, "upstream request timeout")

    def _try_timed_out(self, exchange: Exchange) -> None:
        """A try outlived the policy's per-try timeout: as a 504 from that endpoint,
        tried again where the policy retries a 504, else answered with one."""
        exchange.try_timer = None
        cluster = exchange.cluster
        cluster.counters.timeouts += 1
        conn = exchange.up
        if conn is not None:
            self._detach(exchange, conn)
            conn.socket.close()
        now = self.loop.time()
        self.picks.outcome(cluster, exchange.host, 504, now)
        self._release(exchange)
        if exchange.responded:
            exchange.down.end()
            return
        retry = exchange.retry
        failure = answer_failure(retry.policy, 504, "")
        if (
            failure is not None
            and exchange.request_ended
            and self.picks.may_retry(cluster, retry, failure, now)
        ):
            self.pick_and_send(exchange)
            return
        self._fail(exchange, 504, "upstream per-try timeout")

    def _detach(self, exchange: Exchange, conn: Upstream) -> None:
        conn.exchange = None
        conn.head = None
        conn.body = None
        conn.buffer = b""
        if exchange.up is conn:
            exchange.up = None

    def _release(self, exchange: Exchange) -> None:
        """The try is over, whichever way."""
        if exchange.try_timer is not None:
            exchange.try_timer.cancel()
            exchange.try_timer = None
        host = exchange.host
        if host is not None:
            self.picks.release(host)
            exchange.host = None

    def _abandon(self, exchange: Exchange) -> None:
        """The client went (or its request was refused): the try in progress ends."""
        self._end_span(exchange, 0)
        if exchange.timer is not None:
            exchange.timer.cancel()
            exchange.timer = None
        self._release(exchange)
        conn = exchange.up
        if conn is not None:
            self._detach(exchange, conn)
            conn.socket.close()

    def sweep(self, now: float, hosts_of: Callable[[str], set[str]]) -> None:
        """Closes idle upstream connections kept too long, or to endpoints that left."""
        for key, pool in list(self.pools.items()):
            present = pool.host.name in hosts_of(pool.cluster.name)
            for conn in list(pool.idle):
                if not present or now - conn.idle_since > UPSTREAM_IDLE_SECONDS:
                    conn.socket.close()
            if not pool.conns and not present:
                del self.pools[key]

    def drain(self, final: bool) -> None:
        """Draining: every answer from now says Connection: close; at the end, client
        connections between requests are closed."""
        for down in list(self.downstreams):
            down.draining = True
            if final and down.exchange is None and down.body is None and down.tunnel is None:
                down.end()

    def close(self) -> None:
        upstreams = [conn for pool in self.pools.values() for conn in pool.conns]
        self.close_all(self.downstreams, upstreams)
        self.pools.clear()
