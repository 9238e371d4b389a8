"""The HTTP/2 handler: every request of a client connection balanced on its own.

A captured connection to an HTTP/2 port (gRPC, h2c with prior knowledge) is
spoken to by an h2 state machine (python-hyper's `h2`, sans-IO: this module owns
the sockets, h2 the frames). Each request picks its endpoint through the
cluster's balancer, which compares open requests, and goes out as a stream on
that endpoint's pool: few long-lived HTTP/2 connections, opened when first
needed, each carrying up to the peer's MAX_CONCURRENT_STREAMS.

Flow control is end to end: data read on one side is acknowledged to its sender
(WINDOW_UPDATE) only once the other side's window took it, so a slow reader
stops its stream's writer and memory stays bounded by the windows. A request the
server never saw (connect failure, REFUSED_STREAM, a GOAWAY past its id) is tried
again on another endpoint; an answer the route's policy names is retried the same
way, with the body held up to 64 KiB, within the retry budget and the deadline.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
from opentelemetry.trace import Span

from meshlet.sidecar.proxy.balancer import Host
from meshlet.sidecar.proxy.counters import ThrottledLog
from meshlet.sidecar.proxy.http_handler import LINGER_SECONDS, NODELAY, HttpHandler
from meshlet.sidecar.proxy.http_retry import (
    Failure,
    RetryState,
    answer_failure,
    grpc_timeout,
    rule_for,
)
from meshlet.sidecar.proxy.reactor import Reactor
from meshlet.sidecar.proxy.request_picks import RequestPicks
from meshlet.sidecar.proxy.router import ClusterRuntime, Route
from meshlet.sidecar.proxy.stream_socket import HIGH_WATER, StreamSocket
from meshlet.sidecar.proxy.tracing import TRACEPARENT
from meshlet.xds import contract

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]

# What the sidecar offers its clients (Envoy's defaults where it has one).
MAX_CONCURRENT_STREAMS = 1024
# A stream window larger than h2's 64 KiB default, so one stream is not held to
# one round trip per 64 KiB; the connection's is raised to match.
STREAM_WINDOW = 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
# Streams a client may reset in a second before its connection is closed: the
# rapid-reset flood (CVE-2023-44487) opens and cancels streams as fast as it can.
MAX_RESETS_PER_SECOND = 200
UPSTREAM_IDLE_SECONDS = 300.0
_GRPC = b"application/grpc"
# gRPC's own mapping of an HTTP status to a gRPC one (doc/http-grpc-status-mapping.md);
# anything else is UNKNOWN (2).
_GRPC_STATUS_OF_HTTP = {
    400: b"13",
    401: b"16",
    403: b"7",
    404: b"12",
    429: b"14",
    431: b"13",
    502: b"14",
    503: b"14",
    504: b"14",
}


def _config(client_side: bool) -> h2.config.H2Configuration:
    return h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,  # bytes through, never decoded and encoded again
        # A client's request headers are checked (what a server must refuse); an
        # endpoint's answers are passed on as they are, and its client checks them.
        validate_inbound_headers=not client_side,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )


def _settings(max_header_bytes: int) -> dict[h2.settings.SettingCodes, int]:
    return {
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_header_bytes,
        h2.settings.SettingCodes.ENABLE_PUSH: 0,
    }


def _header(headers: Headers, name: bytes) -> bytes:
    for key, value in headers:
        if key == name:
            return value
    return b""


class _GoawayTolerant(h2.connection.H2ConnectionStateMachine):
    """An endpoint's graceful GOAWAY ends new streams, not the ones it took: h2 would
    close the connection's state at once and refuse every later frame of theirs (the
    PING and DATA a stopping gRPC server still sends), so a GOAWAY received leaves it
    open, and the handler stops opening streams there."""

    def process_input(self, input_: h2.connection.ConnectionInputs) -> list[h2.events.Event]:
        if (
            input_ is h2.connection.ConnectionInputs.RECV_GOAWAY
            and self.state is h2.connection.ConnectionState.CLIENT_OPEN
        ):
            return []
        return super().process_input(input_)


class _Side:
    """One HTTP/2 connection (either side): its socket, its state machine, its streams."""

    def __init__(self, handler: Http2Handler, sock: _socket.socket, client_side: bool) -> None:
        self.handler = handler
        self.h2 = h2.connection.H2Connection(_config(client_side))
        if client_side:
            self.h2.state_machine = _GoawayTolerant()
        # Set before initiate_connection, which sends them.
        self.h2.local_settings = h2.settings.Settings(
            client=client_side, initial_values=_settings(handler.max_header_bytes)
        )
        # An HPACK bomb: a header block that decodes to more than this is refused.
        self.h2.decoder.max_header_list_size = handler.max_header_bytes
        self.streams: dict[int, ProxiedStream] = {}
        self.socket = StreamSocket(
            handler.reactor,
            sock,
            self._received,
            self._closed,
            self._connected if client_side else None,
        )
        self.socket.on_drained(self._drained)
        self.closed = False
        self.discarding = False  # a GOAWAY for an error went out: read, drop, then close
        # The other side's sockets paused while this one's backlog was high.
        self.paused_peers: set[StreamSocket] = set()

    def start(self) -> None:
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()

    def flush(self) -> None:
        """Sends what h2 has queued: at the end of the read being handled, so the frames
        one read causes go out in one write per socket, or now outside of one."""
        handler = self.handler
        if handler.batching:
            handler.dirty.add(self)
        else:
            self.write_now()

    def write_now(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.socket.write(data)

    def _connected(self) -> None:
        pass  # an upstream connection starts when its connect completes

    def _drained(self) -> None:
        pass

    def _received(self, data: bytes) -> None:
        if self.discarding:
            return
        handler = self.handler
        outermost = not handler.batching
        handler.batching = True
        try:
            self._handle(data)
        finally:
            if outermost:
                handler.batching = False
                handler.write_dirty()

    def _handle(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.protocol_error(exc)
            return
        try:
            for event in events:
                self.event(event)
                if self.closed or self.discarding:
                    return
        except Exception:  # a bug: this connection ends, no stream of it hangs
            log.exception("the HTTP/2 handler failed; closing the connection")
            self.socket.close()
            return
        self.flush()

    def protocol_error(self, exc: Exception) -> None:
        self.handler.protocol_errors += 1
        self.handler.errors.error(
            self.handler.loop.time(), "HTTP/2 protocol error, connection closed: %s", exc
        )
        self.close_after_goaway()

    def close_after_goaway(self) -> None:
        """Sends what h2 queued (its GOAWAY), then closes a moment later: closing at
        once, with the peer's bytes unread, would reset the connection and the
        GOAWAY could be lost. What comes meanwhile is read and dropped."""
        self.write_now()
        self.discarding = True
        # h2 sends nothing more now: its streams end here, not when the socket does.
        self.abandon(None)
        self.socket.shutdown_when_sent()
        self.handler.loop.call_later(LINGER_SECONDS, self.socket.close)

    def abandon(self, error: OSError | None) -> None:
        """Ends every stream of the connection on the other side."""
        raise NotImplementedError

    def resume_peers(self) -> None:
        """Lets the sockets this one's backlog held back read again."""
        paused, self.paused_peers = self.paused_peers, set()
        for sock in paused:
            sock.pause(False)

    def event(self, event: h2.events.Event) -> None:
        raise NotImplementedError

    def _closed(self, error: OSError | None) -> None:
        self.closed = True
        self.resume_peers()
        self.gone(error)

    def gone(self, error: OSError | None) -> None:
        raise NotImplementedError

    def window_opened(self, stream_id: int) -> list[ProxiedStream]:
        """The streams a WINDOW_UPDATE lets send again (stream 0: every stream)."""
        if stream_id == 0:
            return list(self.streams.values())
        stream = self.streams.get(stream_id)
        return [stream] if stream is not None else []

    def window(self, stream_id: int) -> int:
        try:
            return min(
                self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
            )
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return 0


def _send_within_window(side: _Side, stream_id: int, pending: deque[tuple[bytes, int]]) -> int:
    """Sends what the stream's window allows; returns the flow-controlled bytes of the
    pieces sent whole, for the other side to acknowledge to its sender."""
    acked = 0
    while pending:
        data, flow = pending[0]
        window = side.window(stream_id)
        if window <= 0:
            break
        chunk = data[:window]
        side.h2.send_data(stream_id, chunk)
        if len(chunk) == len(data):
            pending.popleft()
            acked += flow
        else:
            pending[0] = (data[len(chunk) :], flow)
    return acked


class ProxiedStream:
    """One request: its downstream stream, and the upstream stream of its current try."""

    __slots__ = (
        "cluster",
        "down",
        "down_id",
        "down_pending",
        "down_pending_end",
        "down_trailers",
        "headers",
        "host",
        "request_ended",
        "responded",
        "retry",
        "span",
        "status",
        "timer",
        "trailers",
        "tried",
        "try_timer",
        "up",
        "up_id",
        "up_pending",
        "up_pending_end",
    )

    def __init__(
        self,
        down: Downstream,
        down_id: int,
        headers: Headers,
        cluster: ClusterRuntime,
        retry: RetryState,
    ) -> None:
        self.down = down
        self.down_id = down_id
        self.headers = headers
        self.cluster = cluster
        self.retry = retry
        self.host: Host | None = None
        self.up: Upstream | None = None
        self.up_id = 0
        self.tried: list[Host] = []
        self.request_ended = False
        self.responded = False  # response headers went downstream: no retry from here
        self.timer: asyncio.TimerHandle | None = None  # the route's timeout
        self.try_timer: asyncio.TimerHandle | None = None  # the retry policy's per try
        self.span: Span | None = None  # when traces are on
        self.status = 0  # the answer's, once it came
        self.trailers: Headers | None = None  # the request's, for upstream
        self.down_trailers: Headers | None = None  # the response's, for the client
        # Data waiting for the other side's window: (bytes, flow-controlled length).
        self.up_pending: deque[tuple[bytes, int]] = deque()
        self.up_pending_end = False
        self.down_pending: deque[tuple[bytes, int]] = deque()
        self.down_pending_end = False


class Downstream(_Side):
    """A client's connection to the sidecar."""

    def __init__(
        self, handler: Http2Handler, sock: _socket.socket, route: Route, key: int | None
    ) -> None:
        super().__init__(handler, sock, client_side=False)
        self.route = route
        self.key = key  # what a hashing policy hashes for its requests
        self.opened_at = 0.0
        self._resets: deque[float] = deque()
        self.draining = False  # the last GOAWAY went out: close once its streams are done

    def event(self, event: h2.events.Event) -> None:
        handler = self.handler
        if isinstance(event, h2.events.RequestReceived):
            handler.request(self, event.stream_id, event.headers or [])
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return
            stream.retry.hold(event.data)
            stream.up_pending.append((event.data, event.flow_controlled_length))
            if event.stream_ended:
                stream.up_pending_end = True
            handler.pump_up(stream)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.up_pending_end = True
                handler.pump_up(stream)
        elif isinstance(event, h2.events.TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.trailers = list(event.headers or [])
                stream.up_pending_end = True
                handler.pump_up(stream)
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                self._count_reset()
                handler.end_span(stream, 0)
                handler.cancel_upstream(stream, event.error_code or h2.errors.ErrorCodes.CANCEL)
        elif isinstance(event, h2.events.WindowUpdated):
            for stream in self.window_opened(event.stream_id):
                handler.pump_down(stream)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.socket.close()

    def _count_reset(self) -> None:
        now = self.handler.loop.time()
        resets = self._resets
        resets.append(now)
        while resets and resets[0] < now - 1.0:
            resets.popleft()
        if len(resets) > MAX_RESETS_PER_SECOND:
            self.handler.reset_floods += 1
            self.handler.errors.error(
                now,
                "a client reset over %d streams in a second: connection closed",
                MAX_RESETS_PER_SECOND,
            )
            self.h2.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            self.close_after_goaway()

    def _drained(self) -> None:
        # The client reads again: the upstream sockets that were held back may go on.
        self.resume_peers()

    def abandon(self, error: OSError | None) -> None:
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            self.handler.end_span(stream, 0)
            self.handler.cancel_upstream(stream, h2.errors.ErrorCodes.CANCEL)

    def gone(self, error: OSError | None) -> None:
        self.abandon(error)
        self.handler.downstream_closed(self)


class Upstream(_Side):
    """One of an endpoint's pooled connections."""

    def __init__(self, handler: Http2Handler, sock: _socket.socket, pool: Pool) -> None:
        self.pool = pool
        self.ready = False
        self.connect_started = 0.0
        self.goaway = False  # no new streams: the server said GOAWAY, or it is being closed
        self.waiting: deque[ProxiedStream] = deque()  # streams for when it is up
        self.idle_since = handler.loop.time()
        super().__init__(handler, sock, client_side=True)

    def has_room(self) -> bool:
        if self.goaway or self.closed:
            return False
        limit = (
            self.h2.remote_settings.max_concurrent_streams if self.ready else MAX_CONCURRENT_STREAMS
        )
        return len(self.streams) + len(self.waiting) < min(limit, MAX_CONCURRENT_STREAMS)

    def _connected(self) -> None:
        self.socket.sock.setsockopt(*NODELAY)
        self.ready = True
        self.handler.connected(self.pool.cluster, self.pool.host, self)
        self.start()
        waiting, self.waiting = self.waiting, deque()
        for stream in waiting:
            self.handler.open_upstream(stream, self)
        self.flush()

    def event(self, event: h2.events.Event) -> None:
        handler = self.handler
        if isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                # A trailers-only answer (a gRPC error) ends with its headers.
                ended = event.stream_ended is not None
                handler.response(stream, list(event.headers or []), ended)
        elif isinstance(event, h2.events.InformationalResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:  # 100-continue and the like pass through
                stream.down.h2.send_headers(stream.down_id, list(event.headers or []))
                stream.down.flush()
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return
            stream.down_pending.append((event.data, event.flow_controlled_length))
            if event.stream_ended:
                stream.down_pending_end = True
            handler.pump_down(stream)
        elif isinstance(event, h2.events.TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                handler.response_trailers(stream, list(event.headers or []))
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.down_pending_end = True
                handler.pump_down(stream)
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                handler.upstream_failed(
                    stream, Failure.REFUSED if refused else None, event.error_code
                )
        elif isinstance(event, h2.events.WindowUpdated):
            for stream in self.window_opened(event.stream_id):
                handler.pump_up(stream)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = True  # no new streams here
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for stream_id in [s for s in self.streams if s > last]:
                stream = self.streams.pop(stream_id)
                handler.upstream_failed(
                    stream, Failure.REFUSED, h2.errors.ErrorCodes.REFUSED_STREAM
                )
            # A graceful GOAWAY: the streams it took still finish (_GoawayTolerant).
            if event.error_code != h2.errors.ErrorCodes.NO_ERROR and self.streams:
                self.abandon(None)
            if not self.streams:
                self.socket.close()

    def _drained(self) -> None:
        self.resume_peers()

    def abandon(self, error: OSError | None) -> None:
        self.goaway = True
        self.pool.remove(self)
        # A stream of a connection that never came up was never seen by the server.
        failure = Failure.CONNECT if not self.ready else None
        streams = [*self.waiting, *self.streams.values()]
        self.waiting.clear()
        self.streams = {}
        for stream in streams:
            self.handler.upstream_failed(stream, failure, h2.errors.ErrorCodes.CONNECT_ERROR)

    def gone(self, error: OSError | None) -> None:
        if not self.ready:
            self.pool.cluster.counters.connect_failures += 1
        self.abandon(error)

    def stream_done(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        if not self.streams:
            self.idle_since = self.handler.loop.time()
            if self.goaway:
                self.socket.close()


class Pool:
    """An endpoint's HTTP/2 connections."""

    __slots__ = ("cluster", "conns", "host")

    def __init__(self, cluster: ClusterRuntime, host: Host) -> None:
        self.cluster = cluster
        self.host = host
        self.conns: list[Upstream] = []

    def remove(self, conn: Upstream) -> None:
        if conn in self.conns:
            self.conns.remove(conn)


class Http2Handler(HttpHandler["Downstream", "Pool"]):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        reactor: Reactor,
        picks: RequestPicks,
        errors: ThrottledLog,
        released: Callable[[], None],
    ) -> None:
        super().__init__(loop, reactor, picks, errors, released)
        self.max_header_bytes = contract.MAX_REQUEST_HEADERS_KB * 1024
        self.reset_floods = 0
        # While a read is handled, the connections with frames to send (see _Side.flush).
        self.batching = False
        self.dirty: set[_Side] = set()

    def write_dirty(self) -> None:
        while self.dirty:
            side = self.dirty.pop()
            if not side.closed:
                side.write_now()

    # --- downstream ---------------------------------------------------------------

    def handle(self, client: _socket.socket, peer: tuple[str, int], route: Route) -> None:
        down = self.take(client, peer, route, lambda sock, key: Downstream(self, sock, route, key))
        if down is not None:
            down.start()

    def downstream_closed(self, down: Downstream) -> None:
        if self.forget(down):
            self._released()

    def request(self, down: Downstream, stream_id: int, headers: Headers) -> None:
        route = down.route
        http = route.http
        if http is None or len(headers) > http.max_headers_count:
            self.local_reply(down, stream_id, headers, 431, "too many request headers")
            return
        rule = rule_for(http.routes, _header(headers, b":method").decode("latin-1"))
        cluster = route.cluster
        if rule.cluster != cluster.name:
            cluster = self.picks.cluster_named(rule.cluster) or cluster
        now = self.loop.time()
        deadline = None
        timeout = grpc_timeout(_header(headers, b"grpc-timeout").decode("latin-1"))
        if timeout is not None:
            deadline = now + timeout
        stream = ProxiedStream(
            down, stream_id, headers, cluster, RetryState(rule.retry, now, deadline)
        )
        down.streams[stream_id] = stream
        self.picks.requested(cluster, now)
        tracer = self.tracer
        if tracer is not None:
            span = stream.span = tracer.start(
                _header(headers, b":method"),
                _header(headers, b":authority"),
                _header(headers, b":path"),
                _header(headers, TRACEPARENT),
            )
            kept = [(k, v) for k, v in headers if k != TRACEPARENT]
            stream.headers = [*kept, (TRACEPARENT, tracer.traceparent(span))]
        if rule.timeout_seconds > 0:
            stream.timer = self.loop.call_later(rule.timeout_seconds, self._timed_out, stream)
        self.pick_and_send(stream)

    def _timed_out(self, stream: ProxiedStream) -> None:
        """The route's timeout passed before the whole answer: as Envoy, a 504 if nothing
        was answered yet (gRPC: UNAVAILABLE, by gRPC's mapping), else the stream is reset."""
        stream.timer = None
        down = stream.down
        if down.closed or stream.down_id not in down.streams:
            return
        stream.cluster.counters.timeouts += 1
        self.cancel_upstream(stream, h2.errors.ErrorCodes.CANCEL)
        if not stream.responded:
            self.fail_downstream(stream, 504, "upstream request timeout")
        else:
            self._reset_downstream(stream, h2.errors.ErrorCodes.CANCEL)
        self.write_dirty()

    def _try_timed_out(self, stream: ProxiedStream) -> None:
        """A try outlived the policy's per-try timeout: as a 504 from that endpoint,
        tried again where the policy retries a 504, else answered with one."""
        stream.try_timer = None
        down = stream.down
        if down.closed or stream.down_id not in down.streams:
            return
        cluster = stream.cluster
        cluster.counters.timeouts += 1
        self._count_outlier(stream, 504)
        self.cancel_upstream(stream, h2.errors.ErrorCodes.CANCEL)
        if stream.responded:
            self._reset_downstream(stream, h2.errors.ErrorCodes.CANCEL)
        else:
            failure = answer_failure(stream.retry.policy, 504, "")
            if failure is not None and stream.request_ended and self._may_retry(stream, failure):
                stream.request_ended = False
                self.pick_and_send(stream)
            else:
                self.fail_downstream(stream, 504, "upstream per-try timeout")
        self.write_dirty()

    def pick_and_send(self, stream: ProxiedStream) -> None:
        cluster = stream.cluster
        host = self.picks.pick(cluster, stream.tried, self.loop.time(), stream.down.key)
        if host is None:
            self.fail_downstream(stream, 503, "no healthy upstream")
            return
        stream.host = host
        policy = stream.retry.policy
        if policy is not None and policy.per_try_timeout_seconds > 0:
            stream.try_timer = self.loop.call_later(
                policy.per_try_timeout_seconds, self._try_timed_out, stream
            )
        pool = self.pools.get((cluster.name, host.name))
        if pool is None:
            pool = self.pools[(cluster.name, host.name)] = Pool(cluster, host)
        conn = next((c for c in pool.conns if c.has_room()), None)
        if conn is None:
            conn = self._connect(pool, cluster)
            if conn is None:
                self._release_host(stream)
                self.retry_or_fail(stream, Failure.CONNECT, h2.errors.ErrorCodes.CONNECT_ERROR)
                return
        if conn.ready:
            self.open_upstream(stream, conn)
            conn.flush()
        else:
            stream.up = conn
            conn.waiting.append(stream)

    def _connect(self, pool: Pool, cluster: ClusterRuntime) -> Upstream | None:
        conn = self.connect(pool.host.address, cluster, lambda sock: Upstream(self, sock, pool))
        if conn is not None:
            pool.conns.append(conn)
        return conn

    def open_upstream(self, stream: ProxiedStream, conn: Upstream) -> None:
        if stream.down.closed or stream.down_id not in stream.down.streams:
            self._release_host(stream)
            return
        up_id = conn.h2.get_next_available_stream_id()
        stream.up, stream.up_id = conn, up_id
        conn.streams[up_id] = stream
        replay = stream.retry.body if stream.retry.tries else None
        if replay is not None:
            # The held body goes again whole: what was waiting is in it, so the client
            # may send on (its window is given back now).
            unacked = sum(flow for _, flow in stream.up_pending)
            if unacked and not stream.down.closed:
                stream.down.h2.acknowledge_received_data(unacked, stream.down_id)
            stream.up_pending = deque([(bytes(replay), 0)] if replay else ())
        ended = stream.up_pending_end and not stream.up_pending and stream.trailers is None
        conn.h2.send_headers(up_id, stream.headers, end_stream=ended)
        if ended:
            stream.request_ended = True
        else:
            self.pump_up(stream)

    def pump_up(self, stream: ProxiedStream) -> None:
        """Request data to the upstream stream, as far as its window goes."""
        conn = stream.up
        if conn is None or not conn.ready or stream.up_id not in conn.streams:
            return
        pending = stream.up_pending
        down = stream.down
        acked = _send_within_window(conn, stream.up_id, pending)
        if acked and not down.closed and stream.down_id in down.streams:
            down.h2.acknowledge_received_data(acked, stream.down_id)
            down.flush()
        if not pending and stream.up_pending_end and not stream.request_ended:
            stream.request_ended = True
            if stream.trailers is not None:
                conn.h2.send_headers(stream.up_id, stream.trailers, end_stream=True)
            else:
                conn.h2.end_stream(stream.up_id)
        conn.flush()
        if conn.socket.backlog > HIGH_WATER:
            down.socket.pause(True)
            conn.paused_peers.add(down.socket)

    # --- upstream -----------------------------------------------------------------

    def response(self, stream: ProxiedStream, headers: Headers, ended: bool) -> None:
        status = int(_header(headers, b":status") or b"0")
        grpc_status = _header(headers, b"grpc-status")
        # Outlier detection takes gRPC UNAVAILABLE as the 503 it stands for.
        outcome = 503 if grpc_status == b"14" else status
        if not stream.responded:
            failure = answer_failure(stream.retry.policy, status, grpc_status.decode("latin-1"))
            if failure is not None and stream.request_ended:
                conn = stream.up
                if conn is not None and self._may_retry(stream, failure):
                    if not ended:  # the answer is dropped: its stream need not go on
                        with contextlib.suppress(h2.exceptions.StreamClosedError):
                            conn.h2.reset_stream(stream.up_id, h2.errors.ErrorCodes.CANCEL)
                    conn.flush()
                    conn.stream_done(stream.up_id)
                    self._count_outlier(stream, outcome)  # while stream.host is the one tried
                    self._release_host(stream)
                    stream.request_ended = False
                    self.pick_and_send(stream)
                    return
        stream.responded = True
        stream.status = status
        self._count_outlier(stream, outcome)
        stream.cluster.counters.count_status(status)
        if ended and grpc_status:
            stream.cluster.counters.count_grpc(grpc_status)
        down = stream.down
        if down.closed or stream.down_id not in down.streams:
            return
        down.h2.send_headers(stream.down_id, headers, end_stream=ended)
        if ended:
            self.finish(stream)
        down.flush()

    def _may_retry(self, stream: ProxiedStream, failure: Failure) -> bool:
        if stream.responded:
            return False
        return self.picks.may_retry(stream.cluster, stream.retry, failure, self.loop.time())

    def _count_outlier(self, stream: ProxiedStream, status: int) -> None:
        self.picks.outcome(stream.cluster, stream.host, status, self.loop.time())

    def response_trailers(self, stream: ProxiedStream, trailers: Headers) -> None:
        grpc_status = _header(trailers, b"grpc-status")
        if grpc_status == b"14":
            self._count_outlier(stream, 503)
        stream.cluster.counters.count_grpc(grpc_status)
        # They go after the data still waiting for the client's window.
        stream.down_trailers = trailers
        stream.down_pending_end = True
        self.pump_down(stream)

    def pump_down(self, stream: ProxiedStream) -> None:
        """Response data to the client, as far as its window goes."""
        down = stream.down
        conn = stream.up
        if down.closed or stream.down_id not in down.streams:
            return
        pending = stream.down_pending
        acked = _send_within_window(down, stream.down_id, pending)
        if acked and conn is not None and not conn.closed and stream.up_id in conn.streams:
            conn.h2.acknowledge_received_data(acked, stream.up_id)
            conn.flush()
        if not pending and stream.down_pending_end:
            if stream.down_trailers is not None:
                down.h2.send_headers(stream.down_id, stream.down_trailers, end_stream=True)
            else:
                down.h2.end_stream(stream.down_id)
            self.finish(stream)
        down.flush()
        if conn is not None and down.socket.backlog > HIGH_WATER:
            conn.socket.pause(True)
            down.paused_peers.add(conn.socket)

    def end_span(self, stream: ProxiedStream, status: int) -> None:
        span, stream.span = stream.span, None
        if span is not None and self.tracer is not None:
            endpoint = stream.tried[-1].name if stream.tried else ""
            self.tracer.end(span, status, stream.cluster.name, endpoint)

    def finish(self, stream: ProxiedStream) -> None:
        self.end_span(stream, stream.status)
        stream.cluster.counters.answered(self.loop.time() - stream.retry.started)
        down = stream.down
        down.streams.pop(stream.down_id, None)
        if down.draining and not down.streams:
            down.write_now()  # not deferred: the socket closes once it is sent
            down.socket.close_when_sent()
        conn = stream.up
        if conn is not None:
            if not stream.request_ended and stream.up_id in conn.streams and not conn.closed:
                # Answered before the whole request went: the rest is not wanted.
                self._drop_pending(stream)
                with contextlib.suppress(h2.exceptions.H2Error):
                    conn.h2.reset_stream(stream.up_id, h2.errors.ErrorCodes.NO_ERROR)
                conn.flush()
            conn.stream_done(stream.up_id)
        self._release_host(stream)

    def _drop_pending_down(self, stream: ProxiedStream) -> None:
        conn = stream.up
        if conn is not None and not conn.closed:
            acked = sum(flow for _, flow in stream.down_pending)
            with contextlib.suppress(h2.exceptions.H2Error):
                conn.h2.acknowledge_received_data(acked, stream.up_id)
            conn.flush()
        stream.down_pending.clear()

    def _drop_pending(self, stream: ProxiedStream) -> None:
        """Data that will not be forwarded is acknowledged to its sender anyway: windows
        are per connection too, and would otherwise shrink for good."""
        down, conn = stream.down, stream.up
        if stream.up_pending and not down.closed:
            acked = sum(flow for _, flow in stream.up_pending)
            with contextlib.suppress(h2.exceptions.H2Error):
                down.h2.acknowledge_received_data(acked, stream.down_id)
            down.flush()
        if stream.down_pending and conn is not None and not conn.closed:
            acked = sum(flow for _, flow in stream.down_pending)
            with contextlib.suppress(h2.exceptions.H2Error):
                conn.h2.acknowledge_received_data(acked, stream.up_id)
            conn.flush()
        stream.up_pending.clear()
        stream.down_pending.clear()

    def _release_host(self, stream: ProxiedStream) -> None:
        """The try is over, whichever way (and the request too, once it left its
        downstream connection's streams)."""
        if stream.try_timer is not None:
            stream.try_timer.cancel()
            stream.try_timer = None
        if stream.timer is not None and stream.down_id not in stream.down.streams:
            stream.timer.cancel()  # the request is over, whichever way
            stream.timer = None
        host = stream.host
        if host is not None:
            self.picks.release(host)
            stream.host = None

    def upstream_failed(self, stream: ProxiedStream, failure: Failure | None, code: int) -> None:
        """The try's upstream stream ended without a whole answer."""
        self._release_host(stream)
        if stream.down_pending:  # an answer cut short: what came of it is not sent
            self._drop_pending_down(stream)
        conn, stream.up = stream.up, None
        if conn is not None:
            conn.waiting = deque(s for s in conn.waiting if s is not stream)
        if failure is Failure.CONNECT and stream.tried:
            host = stream.tried[-1]
            if stream.cluster.balancer().connect_failed(host, self.loop.time()):
                stream.cluster.counters.ejections += 1
        if failure is not None and not stream.responded:
            self.retry_or_fail(stream, failure, code)
            return
        self._reset_downstream(stream, code)

    def retry_or_fail(self, stream: ProxiedStream, failure: Failure, code: int) -> None:
        if self._may_retry(stream, failure):
            stream.request_ended = False
            self.pick_and_send(stream)
            return
        if not stream.responded:
            self.fail_downstream(stream, 503, f"upstream {failure.value}")
        else:
            self._reset_downstream(stream, code)

    def _reset_downstream(self, stream: ProxiedStream, code: int) -> None:
        down = stream.down
        self._drop_pending(stream)
        if down.streams.pop(stream.down_id, None) is None or down.closed:
            return
        self.end_span(stream, stream.status or 503)
        if not stream.responded:
            self.local_reply(down, stream.down_id, stream.headers, 503, "upstream reset")
            return
        with contextlib.suppress(h2.exceptions.H2Error):
            down.h2.reset_stream(
                stream.down_id,
                h2.errors.ErrorCodes.INTERNAL_ERROR
                if code == h2.errors.ErrorCodes.CONNECT_ERROR
                else code,
            )
        down.flush()

    def fail_downstream(self, stream: ProxiedStream, status: int, reason: str) -> None:
        down = stream.down
        self._drop_pending(stream)
        if down.streams.pop(stream.down_id, None) is None or down.closed:
            return
        stream.cluster.counters.count_status(status)
        self.end_span(stream, status)
        self.local_reply(down, stream.down_id, stream.headers, status, reason)

    def local_reply(
        self,
        down: Downstream,
        stream_id: int,
        request: Headers,
        status: int,
        reason: str,
    ) -> None:
        """An answer of the sidecar's own: gRPC UNAVAILABLE for a gRPC request, as Envoy."""
        down.streams.pop(stream_id, None)
        grpc = _header(request, b"content-type").startswith(_GRPC)
        try:
            if grpc:
                code = _GRPC_STATUS_OF_HTTP.get(status, b"2")
                headers = [
                    (b":status", b"200"),
                    (b"content-type", b"application/grpc"),
                    (b"grpc-status", code),
                    (b"grpc-message", reason.encode()),
                ]
                down.h2.send_headers(stream_id, headers, end_stream=True)
            else:
                body = reason.encode() + b"\n"
                headers = [
                    (b":status", str(status).encode()),
                    (b"content-type", b"text/plain"),
                    (b"content-length", str(len(body)).encode()),
                ]
                down.h2.send_headers(stream_id, headers)
                down.h2.send_data(stream_id, body, end_stream=True)
        except (
            h2.exceptions.StreamClosedError,
            h2.exceptions.ProtocolError,
            h2.exceptions.FlowControlError,
        ):
            pass
        down.flush()

    def cancel_upstream(self, stream: ProxiedStream, code: int) -> None:
        conn = stream.up
        self._release_host(stream)
        self._drop_pending(stream)
        if conn is None:
            return
        if stream in conn.waiting:
            conn.waiting = deque(s for s in conn.waiting if s is not stream)
            return
        if stream.up_id in conn.streams and not conn.closed:
            with contextlib.suppress(h2.exceptions.H2Error):
                conn.h2.reset_stream(stream.up_id, h2.errors.ErrorCodes.CANCEL)
            conn.flush()
            conn.stream_done(stream.up_id)

    # --- idle pools, shutdown -------------------------------------------------------

    def sweep(self, now: float, hosts_of: Callable[[str], set[str]]) -> None:
        """Closes upstream connections idle too long, or to endpoints that left."""
        for key, pool in list(self.pools.items()):
            present = pool.host.name in hosts_of(pool.cluster.name)
            for conn in list(pool.conns):
                if (
                    not conn.streams
                    and not conn.waiting
                    and (not present or now - conn.idle_since > UPSTREAM_IDLE_SECONDS)
                ):
                    conn.goaway = True
                    conn.socket.close()
            if not pool.conns and not present:
                del self.pools[key]

    def goaway_all(self, final: bool) -> None:
        """Draining: tell every client to open its next streams elsewhere, in two phases
        as Envoy: first past every stream id (nothing is refused yet, streams already
        on the way are taken), then, a round trip later, the last id taken.

        The frame is written next to h2, not through it: h2 refuses to send anything
        more once it has sent a GOAWAY, and the open streams must still finish."""
        for down in list(self.downstreams):
            last = down.h2.highest_inbound_stream_id if final else 2**31 - 1
            frame = hyperframe.frame.GoAwayFrame(stream_id=0, last_stream_id=last, error_code=0)
            down.write_now()  # what h2 has queued goes first
            down.socket.write(frame.serialize())
            down.draining = final
            if final and not down.streams:
                down.socket.close_when_sent()

    def close(self) -> None:
        upstreams = [conn for pool in self.pools.values() for conn in pool.conns]
        self.close_all(self.downstreams, upstreams)
        self.pools.clear()
