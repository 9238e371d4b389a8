"""What the HTTP/2 and HTTP/1.1 handlers share: their place in the proxy, and opening a
pooled connection to an endpoint (a non-blocking connect, counted, under the
cluster's connect timeout)."""

from __future__ import annotations

import _socket
import asyncio
import errno
import socket
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

from meshlet.sidecar.proxy.balancer import Host
from meshlet.sidecar.proxy.counters import ThrottledLog
from meshlet.sidecar.proxy.listener import STREAM
from meshlet.sidecar.proxy.reactor import Reactor
from meshlet.sidecar.proxy.request_picks import RequestPicks
from meshlet.sidecar.proxy.router import ClusterRuntime, Route
from meshlet.sidecar.proxy.stream_socket import StreamSocket
from meshlet.sidecar.proxy.tracing import RequestTracer

NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
# How long a client connection ended for an error is still read (and dropped) before it
# is closed, so that the last words sent reach the client rather than a reset.
LINGER_SECONDS = 1.0


class _Pooled(Protocol):
    ready: bool
    connect_started: float

    @property
    def socket(self) -> StreamSocket: ...


class _Downstream(Protocol):
    opened_at: float

    @property
    def socket(self) -> StreamSocket: ...

    @property
    def route(self) -> Route: ...

    def __hash__(self) -> int: ...


Conn = TypeVar("Conn", bound=_Pooled)
Down = TypeVar("Down", bound=_Downstream)
PoolT = TypeVar("PoolT")


class HttpHandler(Generic[Down, PoolT]):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        reactor: Reactor,
        picks: RequestPicks,
        errors: ThrottledLog,
        released: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.reactor = reactor
        self.picks = picks
        self.errors = errors
        self._released = released
        self.protocol_errors = 0
        self.tracer: RequestTracer | None = None  # spans per request, when traces are on
        self.downstreams: set[Down] = set()
        self.pools: dict[tuple[str, str], PoolT] = {}  # by (cluster, endpoint)

    @property
    def active(self) -> int:
        """Client connections open."""
        return len(self.downstreams)

    def take(
        self,
        client: _socket.socket,
        peer: tuple[str, int],
        route: Route,
        make: Callable[[_socket.socket, int | None], Down],
    ) -> Down | None:
        """A client connection, counted on its route's cluster; None when it cannot be."""
        try:
            client.setsockopt(*NODELAY)
            down = make(client, self.picks.client_key(route, peer))
        except OSError as exc:
            client.close()
            self.errors.error(self.loop.time(), "cannot take an HTTP connection: %s", exc)
            return None
        self.downstreams.add(down)
        down.opened_at = self.loop.time()
        # Counted as the L4 relay counts its connections: a client's, to this service.
        route.cluster.active += 1
        route.cluster.counters.opened += 1
        return down

    def forget(self, down: Down) -> bool:
        """A client connection closed: False when it was already forgotten."""
        if down not in self.downstreams:
            return False
        self.downstreams.discard(down)
        cluster = down.route.cluster
        cluster.active -= 1
        cluster.counters.closed(self.loop.time() - down.opened_at, 0, 0)
        return True

    def connected(self, cluster: ClusterRuntime, host: Host, conn: _Pooled) -> None:
        """A pooled connection's connect succeeded: its time, the endpoint's count."""
        cluster.counters.connected(self.loop.time() - conn.connect_started)
        host.connections += 1
        cluster.balancer().connect_succeeded(host)

    def connect(
        self,
        address: tuple[str, int],
        cluster: ClusterRuntime,
        make: Callable[[_socket.socket], Conn],
    ) -> Conn | None:
        """A new pooled connection to `address`, connecting; None (counted) when the
        connect failed at once."""
        try:
            sock = _socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, STREAM)
        except OSError as exc:
            self.errors.error(self.loop.time(), "cannot open a socket: %s", exc)
            return None
        error = sock.connect_ex(address)
        if error not in (0, errno.EINPROGRESS):
            sock.close()
            cluster.counters.connect_failures += 1
            return None
        conn = make(sock)
        conn.connect_started = self.loop.time()
        cluster.counters.pool_connections += 1
        self.loop.call_later(cluster.config.connect_timeout_seconds, _timed_out, conn)
        return conn

    @staticmethod
    def close_all(downstreams: Iterable[_Downstream], upstreams: Iterable[_Pooled]) -> None:
        for down in list(downstreams):
            down.socket.close()
        for up in list(upstreams):
            up.socket.close()


def _timed_out(conn: _Pooled) -> None:
    if not conn.ready and not conn.socket.closed:
        conn.socket.close(OSError(errno.ETIMEDOUT, "connect timed out"))
