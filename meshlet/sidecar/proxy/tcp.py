"""The L4 handler: one upstream connection per client connection, the bytes untouched.

Per connection: the circuit breaker, then the connect plan (connect_plan.py)
picks an endpoint and this module carries out its actions: a non-blocking
connect, a timer, and on failure the plan's next try. The client's bytes wait
in the kernel until the upstream connection is up, so a failed connect is
retried on another endpoint before the client sees anything. Then a Relay
(relay.py) moves the bytes with os.splice until both sides are done, and gives
the cluster's and endpoint's counts back when it closes.

Sockets are raw and non-blocking (`_socket.socket`: the C object, without the
Python wrapper's per-call overhead), watched by the proxy's one epoll set
(reactor.py): no coroutine, task, transport or buffer per connection.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import logging
import os
import random
import socket
from collections.abc import Callable

from meshlet.sidecar.proxy.balancer import Host
from meshlet.sidecar.proxy.connect_plan import LOCAL_ERRORS, ConnectPlan, GiveUp, Try
from meshlet.sidecar.proxy.counters import ThrottledLog
from meshlet.sidecar.proxy.idle import IdleWheel
from meshlet.sidecar.proxy.listener import STREAM
from meshlet.sidecar.proxy.original_dst import destination_key, key_address
from meshlet.sidecar.proxy.policies import stable_hash
from meshlet.sidecar.proxy.reactor import FAILED, WRITE, Reactor
from meshlet.sidecar.proxy.relay import Clock, PipePool, Relay, reset
from meshlet.sidecar.proxy.router import ClusterRuntime, Route

log = logging.getLogger(__name__)

_NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Connect:
    """The socket side of one client's ConnectPlan: a connect in progress and its timer."""

    __slots__ = ("attempted_at", "client", "handler", "plan", "route", "sock", "source", "timer")

    def __init__(
        self, handler: TcpHandler, client: _socket.socket, route: Route, plan: ConnectPlan
    ) -> None:
        self.handler = handler
        self.client = client
        self.route = route
        self.plan = plan
        self.sock: _socket.socket | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.source: bytes | None = None  # where a passthrough connect comes from
        self.attempted_at = 0.0

    def act(self, action: Try | GiveUp) -> None:
        """Carry out the plan's actions until one waits on the network."""
        next_action: Try | GiveUp | None = action
        while isinstance(next_action, Try):
            next_action = self._try(next_action)
        if next_action is not None:
            self._give_up()
        # else connecting: events() or timed_out() goes on

    def _try(self, action: Try) -> Try | GiveUp | None:
        handler = self.handler
        address = action.address
        try:
            sock = _socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, STREAM)
        except OSError as exc:
            return self._local_failure(address[0], exc)
        try:
            sock.setsockopt(*_NODELAY)
            self.attempted_at = handler.loop.time()
            error = sock.connect_ex(address)
            if error not in (0, errno.EINPROGRESS):
                raise OSError(error, os.strerror(error))
            if action.host is None:
                # Remember where it connects from: if it comes back, it was captured.
                self.source = destination_key(*sock.getsockname()[:2])
                handler.passthrough_sources.add(self.source)
            handler.reactor.add(sock.fileno(), self.events, WRITE)
        except OSError as exc:
            self._forget_source()
            sock.close()
            if exc.errno in LOCAL_ERRORS:
                return self._local_failure(address[0], exc)
            return self._failed()
        self.sock = sock
        self.timer = handler.loop.call_later(action.timeout, self.timed_out)
        return None

    def events(self, events: int) -> None:
        if self.sock is None:
            return
        if events & FAILED or not events & WRITE:
            self._drop_socket()
            self.act(self._failed())
            return
        self._cancel_timer()
        self._forget_source()
        handler = self.handler
        handler.connecting.discard(self)
        host = self.plan.connected()
        now = handler.loop.time()
        self.route.cluster.counters.connected(now - self.attempted_at)
        handler.relay(self.client, self.sock, self.route, host, events, now)

    def timed_out(self) -> None:
        self.timer = None
        self._drop_socket()
        self.act(self._failed())

    def _failed(self) -> Try | GiveUp:
        self._cancel_timer()
        self._forget_source()
        plan = self.plan
        action = plan.failed(self.handler.loop.time())
        if plan.ejected is not None:
            log.warning(
                "%s: endpoint %s ejected (connect failures)", plan.runtime.name, plan.ejected.name
            )
        return action

    def _local_failure(self, ip: str, exc: OSError) -> Try | GiveUp:
        """Failed here, before reaching the network: counted, logged (throttled), no
        endpoint blamed."""
        handler = self.handler
        now = handler.loop.time()
        action = self.plan.local_failure(exc.errno, now)
        runtime = self.route.cluster
        handler.local_errors.error(
            now,
            "%s: cannot connect to %s from here (%d times in this cluster so far): %s",
            runtime.name,
            ip,
            runtime.counters.local_failures,
            exc,
        )
        return action

    def _give_up(self) -> None:
        handler = self.handler
        handler.connecting.discard(self)
        handler.release(self.route.cluster)
        reset(self.client)

    def cancel(self) -> None:
        """Shutting down: drop this connect and its client."""
        self._cancel_timer()
        self._forget_source()
        self._drop_socket()
        self.handler.release(self.route.cluster)
        reset(self.client)

    def _forget_source(self) -> None:
        if self.source is not None:
            self.handler.passthrough_sources.discard(self.source)
            self.source = None

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None  # the handle refers back to this object

    def _drop_socket(self) -> None:
        sock = self.sock
        if sock is not None:
            self.handler.reactor.forget(sock.fileno())
            sock.close()
            self.sock = None


class ProxiedRelay(Relay):
    """A relay that knows its cluster and endpoint, to give their counts back when it closes."""

    __slots__ = ("host", "opened_at", "runtime")

    def __init__(
        self,
        handler: TcpHandler,
        client: _socket.socket,
        upstream: _socket.socket,
        route: Route,
        host: Host | None,
        opened_at: float,
    ) -> None:
        super().__init__(
            handler.reactor,
            client,
            upstream,
            handler.pipes,
            handler.clock,
            route.idle_timeout,
            handler.relay_closed,
        )
        self.runtime = route.cluster
        self.host = host
        self.opened_at = opened_at


class TcpHandler:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        reactor: Reactor,
        rng: random.Random,
        passthrough_sources: set[bytes],
        local_errors: ThrottledLog,
        released: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.reactor = reactor
        self.rng = rng
        self.passthrough_sources = passthrough_sources
        self.local_errors = local_errors
        self._released = released  # told whenever a connection ends (for draining)
        self.pipes = PipePool()
        self.clock = Clock(loop.time())
        self.idle = IdleWheel(self.clock.now)
        self.relays: set[ProxiedRelay] = set()
        self.connecting: set[_Connect] = set()

    @property
    def active(self) -> int:
        return len(self.relays) + len(self.connecting)

    def handle(
        self, client: _socket.socket, peer: tuple[str, int], route: Route, destination: bytes
    ) -> None:
        runtime = route.cluster
        if runtime.active >= runtime.config.max_connections:
            runtime.counters.refused += 1
            reset(client)
            return
        runtime.active += 1
        client.setsockopt(*_NODELAY)
        if route.hash_source_ip:
            key = stable_hash(peer[0])
        else:
            key = self.rng.getrandbits(64) if route.random_key else 0
        passthrough = key_address(destination) if route.passthrough else None
        plan = ConnectPlan(runtime, key, self.rng, passthrough)
        connect = _Connect(self, client, route, plan)
        self.connecting.add(connect)
        connect.act(plan.start(self.loop.time()))

    def relay(
        self,
        client: _socket.socket,
        upstream: _socket.socket,
        route: Route,
        host: Host | None,
        upstream_events: int,
        opened_at: float,
    ) -> None:
        route.cluster.counters.opened += 1
        if host is not None:
            host.active += 1
        relay = ProxiedRelay(self, client, upstream, route, host, opened_at)
        self.relays.add(relay)
        self.idle.add(relay)
        try:
            relay.start(upstream_events)
        except OSError as exc:  # the epoll set refused the socket (no memory, say)
            log.error("cannot relay a connection to %s: %s", route.cluster.name, exc)
            relay.abort()

    def relay_closed(self, relay: Relay) -> None:
        assert isinstance(relay, ProxiedRelay)
        self.relays.discard(relay)
        self.idle.remove(relay)
        runtime = relay.runtime
        runtime.counters.closed(
            self.loop.time() - relay.opened_at, relay.up.moved, relay.down.moved
        )
        if relay.host is not None:
            relay.host.active -= 1
        self.release(runtime)

    def release(self, runtime: ClusterRuntime) -> None:
        runtime.active -= 1
        self._released()

    def sweep(self, now: float) -> None:
        """Close the relays idle for their whole timeout."""
        self.clock.now = now
        for relay in self.idle.due(now):
            relay.close()

    def live_bytes(self) -> dict[str, tuple[int, int]]:
        """Bytes (up, down) of open connections, by cluster name, for metrics."""
        out: dict[str, tuple[int, int]] = {}
        for relay in list(self.relays):  # a copy: OTLP export collects from its own thread
            name = relay.runtime.name
            up, down = out.get(name, (0, 0))
            out[name] = (up + relay.up.moved, down + relay.down.moved)
        return out

    def close(self) -> None:
        """Cut everything short: a reset says so, a clean end would lie."""
        for connect in list(self.connecting):
            connect.cancel()
        self.connecting.clear()
        for relay in list(self.relays):
            relay.abort()
        self.pipes.close()
