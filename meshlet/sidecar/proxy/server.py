"""The outbound proxy: listener -> route -> protocol handler -> pick -> connect.

The layers, each in its own module:

- listener.py accepts captured connections and refuses the ones that would loop;
- the router (router.py) maps the original destination to a route, one dict lookup;
- the route's protocol handler takes the connection: the L4 relay (tcp.py), one
  upstream connection per client connection; or, on an HTTP port, the HTTP/2
  (http2.py) or HTTP/1.1 (http1.py) handler, whichever the client speaks
  (sniff.py), each request balanced on its own. A client whose HTTP is not the
  one the port's endpoints are spoken to in is relayed at L4, as before;
- the handler picks an endpoint through the cluster's balancer (balancer.py, with
  the load it compares given as a callable) and connects by the sans-IO connect
  plan (connect_plan.py).

This module wires them to one epoll set (reactor.py) and owns what spans them:
the idle sweep, draining and shutdown.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence

from meshlet.sidecar.proxy.counters import ListenerCounters, ThrottledLog
from meshlet.sidecar.proxy.http1 import Http1Handler
from meshlet.sidecar.proxy.http2 import Http2Handler
from meshlet.sidecar.proxy.listener import Listeners
from meshlet.sidecar.proxy.reactor import Reactor
from meshlet.sidecar.proxy.request_picks import RequestPicks
from meshlet.sidecar.proxy.router import ClusterRuntime, Route, Router
from meshlet.sidecar.proxy.sniff import Client, Sniffer
from meshlet.sidecar.proxy.tcp import TcpHandler
from meshlet.sidecar.proxy.tracing import RequestTracer

log = logging.getLogger(__name__)


class OutboundProxy:
    def __init__(
        self,
        router: Router,
        rng: random.Random | None = None,
        tracer: RequestTracer | None = None,
    ) -> None:
        self.router = router
        self.loop = asyncio.get_running_loop()
        self.reactor = Reactor(self.loop)
        local_errors = ThrottledLog(log)  # one limit for the whole proxy: the counts say the rest
        self.listeners = Listeners(self.loop, self.reactor, self._dispatch, local_errors)
        self.tcp = TcpHandler(
            self.loop,
            self.reactor,
            rng or random.Random(),
            self.listeners.passthrough_sources,
            local_errors,
            self._released,
        )
        picks = RequestPicks(rng or random.Random(), self._cluster_named)
        self.http2 = Http2Handler(self.loop, self.reactor, picks, local_errors, self._released)
        self.http1 = Http1Handler(self.loop, self.reactor, picks, local_errors, self._released)
        self.sniffer = Sniffer(self.reactor)
        self.tracer = self.http1.tracer = self.http2.tracer = tracer
        self._sweeper: asyncio.Task[None] | None = None
        self._drained: asyncio.Event | None = None  # set when draining and nothing is open
        self._closed = False

    @property
    def counters(self) -> ListenerCounters:
        return self.listeners.counters

    @property
    def active(self) -> int:
        """Connections open or being connected (client connections, for HTTP)."""
        return self.tcp.active + self.http2.active + self.http1.active

    def listen(self, addresses: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        """Binds every address (port 0 picks one); returns where it listens."""
        bound = self.listeners.listen(addresses)
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())
        return bound

    def stop_accepting(self) -> None:
        self.listeners.close()

    def _dispatch(self, client: _socket.socket, peer: tuple[str, int], destination: bytes) -> None:
        route = self.router.route(destination)
        if route.http is None:
            self.tcp.handle(client, peer, route, destination)
            return

        def known(client: _socket.socket, speaks: Client) -> None:
            self._handle_http(client, peer, route, destination, speaks)

        self.sniffer.watch(client, known)

    def _handle_http(
        self,
        client: _socket.socket,
        peer: tuple[str, int],
        route: Route,
        destination: bytes,
        speaks: Client,
    ) -> None:
        http = route.http
        assert http is not None
        if speaks is Client.HTTP2 and http.upstream_http2 and http.codec != "HTTP1":
            self.http2.handle(client, peer, route)
        elif speaks is Client.HTTP1 and not http.upstream_http2 and http.codec != "HTTP2":
            self.http1.handle(client, peer, route)
        else:  # no translation between the two: the connection is relayed as before
            self.tcp.handle(client, peer, route, destination)

    def _cluster_named(self, name: str) -> ClusterRuntime | None:
        return self.router.clusters.get(name)

    def _released(self) -> None:
        if self._drained is not None and not self.active:
            self._drained.set()

    def live_bytes(self) -> dict[str, tuple[int, int]]:
        """Bytes (up, down) of open connections, by cluster name, for metrics."""
        return self.tcp.live_bytes()

    # --- idle timeout, drain, shutdown ---------------------------------------------

    async def _sweep(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            self.tcp.sweep(now)
            self.http2.sweep(now, self._hosts_of)
            self.http1.sweep(now, self._hosts_of)

    def _hosts_of(self, cluster: str) -> set[str]:
        runtime = self.router.clusters.get(cluster)
        if runtime is None or runtime.built is None:
            return set()
        return {h.name for h in runtime.balancer().hosts}

    async def drain(self, deadline: float) -> int:
        """Stop accepting and wait for open connections to end, up to `deadline` seconds;
        returns how many were still open then (they are closed)."""
        self.stop_accepting()
        if self.http2.active or self.http1.active:
            # HTTP clients move without a failed request. HTTP/2: GOAWAY past every
            # stream, then, a round trip later, at the last stream taken. HTTP/1.1:
            # every answer says Connection: close, then idle connections are closed.
            self.http2.goaway_all(final=False)
            self.http1.drain(final=False)
            await asyncio.sleep(min(1.0, deadline / 2))
            self.http2.goaway_all(final=True)
            self.http1.drain(final=True)
        if self.active:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), deadline)
        left = self.active
        await self.close()
        return left

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stop_accepting()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self.tcp.close()
        self.http2.close()
        self.http1.close()
        self.sniffer.close()
        self.reactor.close()
        if self.tracer is not None:
            self.tracer.shutdown()  # the spans still held are sent
