"""The outbound proxy: accept a captured connection, find its route, connect, relay.

Per connection: accept, read the original destination, one dict lookup for the
route, the circuit breaker, then a non-blocking connect to the endpoint the
balancer chose. The client's bytes wait in the kernel until the upstream
connection is up, so a failed connect is retried on another endpoint (up to
`MAX_RETRIES` times) before the client sees anything; when every try fails the
client gets a reset, as from a refused connect. Then a Relay moves the bytes
(os.splice) until both sides are done.

Sockets are raw and non-blocking (`_socket.socket`: the C object, without the
Python wrapper's per-call overhead), watched by one epoll set (reactor.py) that
the event loop drives: no coroutine, task, transport or buffer per connection.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import errno
import logging
import os
import random
import socket
from collections.abc import Callable, Sequence

from meshlet.sidecar.proxy.balancer import Host
from meshlet.sidecar.proxy.idle import IdleWheel
from meshlet.sidecar.proxy.original_dst import destination_key, key_address, original_key
from meshlet.sidecar.proxy.policies import stable_hash
from meshlet.sidecar.proxy.reactor import FAILED, READ, WRITE, Reactor
from meshlet.sidecar.proxy.relay import Clock, PipePool, Relay, reset
from meshlet.sidecar.proxy.router import ClusterRuntime, Route, Router

log = logging.getLogger(__name__)

MAX_RETRIES = 3
_ACCEPT_BATCH = 64
_ACCEPT_PAUSE = 0.1  # seconds without accepting after accept() failed
_BACKLOG = 4096
_NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_WILDCARDS = ("0.0.0.0", "::")
# Failures of this host, not of the endpoint: the first kind fails for every endpoint
# alike (fds, memory, epoll watches), the second maybe not (no free port to that address).
_OUT_OF_RESOURCES = frozenset(
    (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ENOSPC)
)
_LOCAL_ERRORS = _OUT_OF_RESOURCES | {errno.EADDRNOTAVAIL}


class _Connect:
    """Connecting one accepted client to an upstream, retrying on other endpoints."""

    __slots__ = (
        "attempted_at",
        "blamed",
        "client",
        "destination",
        "host",
        "key",
        "local_fault",
        "proxy",
        "route",
        "sock",
        "source",
        "timer",
        "tried",
    )

    def __init__(
        self,
        proxy: OutboundProxy,
        client: _socket.socket,
        route: Route,
        destination: bytes,
        key: int,
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.route = route
        self.destination = destination
        self.key = key
        self.tried: list[Host] = []
        self.blamed = 0  # tries that failed at the endpoint
        self.local_fault = False  # a try failed here, before reaching the network
        self.host: Host | None = None
        self.sock: _socket.socket | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.source: bytes | None = None
        self.attempted_at = 0.0

    def attempt(self) -> None:
        proxy = self.proxy
        runtime = self.route.cluster
        if self.route.passthrough:
            address = key_address(self.destination)
        else:
            host = runtime.balancer().choose(self.key, self.tried, proxy.loop.time(), proxy.rng)
            if host is None:
                self.give_up()
                return
            if self.tried:
                runtime.retries += 1
            self.host = host
            address = host.address
        try:
            sock = _socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, _STREAM)
        except OSError as exc:
            self.local_failure(address[0], exc)
            return
        try:
            sock.setsockopt(*_NODELAY)
            self.attempted_at = proxy.loop.time()
            error = sock.connect_ex(address)
            if error not in (0, errno.EINPROGRESS):
                raise OSError(error, os.strerror(error))
            if self.route.passthrough:
                # Remember where it connects from: if it comes back, it was captured.
                self.source = destination_key(*sock.getsockname()[:2])
                proxy.passthrough_sources.add(self.source)
            proxy.reactor.add(sock.fileno(), self.events, WRITE)
        except OSError as exc:
            self._forget_source()
            sock.close()
            if exc.errno in _LOCAL_ERRORS:
                self.local_failure(address[0], exc)
            else:
                self.failed()
            return
        self.sock = sock
        self.timer = proxy.loop.call_later(runtime.config.connect_timeout_seconds, self.timed_out)

    def events(self, events: int) -> None:
        if self.sock is None:
            return
        if events & FAILED or not events & WRITE:
            self._drop_socket()
            self.failed()
            return
        self._cancel_timer()
        self._forget_source()
        proxy = self.proxy
        proxy.connecting.discard(self)
        host = self.host
        now = proxy.loop.time()
        if host is not None:
            self.route.cluster.balancer().connect_succeeded(host)
            host.connections += 1
        self.route.cluster.connected(now - self.attempted_at)
        proxy.relay(self.client, self.sock, self.route, host, events, now)

    def _forget_source(self) -> None:
        if self.source is not None:
            self.proxy.passthrough_sources.discard(self.source)
            self.source = None

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None  # the handle refers back to this object

    def _drop_socket(self) -> None:
        sock = self.sock
        if sock is not None:
            self.proxy.reactor.forget(sock.fileno())
            sock.close()
            self.sock = None

    def local_failure(self, ip: str, exc: OSError) -> None:
        """The connect failed here, before reaching the network (no socket, no free
        port, no epoll room): the endpoint is not blamed for it. Out of fds, memory or
        epoll room, every other endpoint would fail the same way: give up now. Anything
        else (no free port to this address, no IPv6 here) may spare another endpoint."""
        runtime = self.route.cluster
        runtime.local_failures += 1
        self.local_fault = True
        self.proxy.log_local_failure(
            "%s: cannot connect to %s from here (%d times in this cluster so far): %s",
            runtime.name,
            ip,
            runtime.local_failures,
            exc,
        )
        if self.host is not None:
            self.tried.append(self.host)
            self.host = None
        out_of_resources = exc.errno in _OUT_OF_RESOURCES
        if out_of_resources or self.route.passthrough or len(self.tried) > MAX_RETRIES:
            self.give_up()
            return
        self.attempt()

    def timed_out(self) -> None:
        self.timer = None
        self._drop_socket()
        self.failed()

    def failed(self) -> None:
        self._cancel_timer()
        self._forget_source()
        runtime = self.route.cluster
        runtime.connect_failures += 1
        self.blamed += 1
        host = self.host
        if host is not None:
            if runtime.balancer().connect_failed(host, self.proxy.loop.time()):
                runtime.ejections += 1
                log.warning("%s: endpoint %s ejected (connect failures)", runtime.name, host.name)
            self.tried.append(host)
            self.host = None
        if self.route.passthrough or len(self.tried) > MAX_RETRIES:
            self.give_up()
            return
        self.attempt()

    def give_up(self) -> None:
        if self.blamed or not self.local_fault:  # else only local failures: counted already
            self.route.cluster.no_endpoint += 1
        proxy = self.proxy
        proxy.connecting.discard(self)
        proxy.release(self.route.cluster)
        reset(self.client)

    def cancel(self) -> None:
        """Shutting down: drop this connect and its client."""
        self._cancel_timer()
        self._forget_source()
        self._drop_socket()
        self.proxy.release(self.route.cluster)
        reset(self.client)


class _ProxiedRelay(Relay):
    """A relay that gives its cluster's and endpoint's counts back when it closes."""

    __slots__ = ("host", "opened_at", "runtime")

    def __init__(
        self,
        proxy: OutboundProxy,
        client: _socket.socket,
        upstream: _socket.socket,
        route: Route,
        host: Host | None,
        opened_at: float,
    ) -> None:
        super().__init__(
            proxy.reactor,
            client,
            upstream,
            proxy.pipes,
            proxy.clock,
            route.idle_timeout,
            proxy.relay_closed,
        )
        self.runtime = route.cluster
        self.host = host
        self.opened_at = opened_at


class OutboundProxy:
    def __init__(self, router: Router, rng: random.Random | None = None) -> None:
        self.router = router
        self.rng = rng or random.Random()
        self.loop = asyncio.get_running_loop()
        self.reactor = Reactor(self.loop)
        self.pipes = PipePool()
        self.clock = Clock(self.loop.time())
        self.idle = IdleWheel(self.clock.now)
        self.relays: set[_ProxiedRelay] = set()
        self.connecting: set[_Connect] = set()
        self._listeners: list[_socket.socket] = []
        # Where the proxy listens: a connection that arrives there unredirected would loop.
        self._own: set[bytes] = set()
        self._own_wildcard_ports: set[bytes] = set()
        # Where passthrough connects come from while they are being made: one that
        # arrives here was captured, because the proxy does not run as the uid the
        # capture rules exempt. Refused, or it would loop until the fds run out.
        self.passthrough_sources: set[bytes] = set()
        self.looped = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._drained: asyncio.Event | None = None  # set when draining and nothing is open
        self._closed = False
        self.not_redirected = 0
        self.accept_failures = 0
        self._local_failure_logged = float("-inf")

    # --- listening -------------------------------------------------------------

    def listen(self, addresses: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        """Binds every address (port 0 picks one); returns where it listens."""
        bound = []
        for host, port in addresses:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = _socket.socket(family, _STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, port))
                sock.listen(_BACKLOG)
            except OSError:
                sock.close()
                raise
            ip, port = sock.getsockname()[:2]
            key = destination_key(ip, port)
            self._own.add(key)
            if ip in _WILDCARDS:
                self._own_wildcard_ports.add(key[:2])
            self._listeners.append(sock)
            self.reactor.add(sock.fileno(), self._acceptor(sock, family), READ)
            bound.append((ip, port))
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())
        return bound

    def stop_accepting(self) -> None:
        for sock in self._listeners:
            self.reactor.unwatch(sock.fileno())
            sock.close()
        self._listeners.clear()

    def _acceptor(self, listener: _socket.socket, family: int) -> Callable[[int], None]:
        ipv6 = family == socket.AF_INET6

        def accept(_events: int) -> None:
            for _ in range(_ACCEPT_BATCH):
                try:
                    fd, peer = listener._accept()  # type: ignore[attr-defined]  # C accept4
                except BlockingIOError:
                    return
                except OSError as exc:
                    self._accept_failed(listener, accept, exc)
                    return
                self._handle(_socket.socket(family, socket.SOCK_STREAM, 0, fd), peer, ipv6)

        return accept

    def log_local_failure(self, message: str, *args: object) -> None:
        """Out of fds, say: logged at most every 10 s, or the log would flood as fast as
        connections come in. One limit for the whole proxy: the counts say the rest."""
        now = self.loop.time()
        if now - self._local_failure_logged >= 10.0:
            self._local_failure_logged = now
            log.error(message, *args)

    def _accept_failed(
        self, listener: _socket.socket, accept: Callable[[int], None], exc: OSError
    ) -> None:
        """Out of fds (or the like): the listener stays readable, so stop watching it for a
        moment instead of spinning; the waiting clients are accepted when fds free up."""
        self.accept_failures += 1
        self.log_local_failure("accept failed (%d times so far): %s", self.accept_failures, exc)
        fd = listener.fileno()
        self.reactor.unwatch(fd)

        def resume() -> None:
            if listener in self._listeners:
                self.reactor.add(fd, accept, READ)

        self.loop.call_later(_ACCEPT_PAUSE, resume)

    def _handle(self, client: _socket.socket, peer: tuple[str, int], ipv6: bool) -> None:
        if self.passthrough_sources and destination_key(*peer[:2]) in self.passthrough_sources:
            self.looped += 1
            if self.looped == 1:
                log.error(
                    "the proxy's own connection to %s:%d was captured and came back: run the "
                    "sidecar as the uid (or gid) that `meshlet init` exempts (--proxy-uid)",
                    *peer[:2],
                )
            reset(client)
            return
        client.setblocking(False)
        destination = original_key(client, ipv6)
        if destination is None or self._is_own(destination):
            # Not redirected: a connection to the proxy itself has nowhere to go.
            self.not_redirected += 1
            reset(client)
            return
        route = self.router.route(destination)
        runtime = route.cluster
        if runtime.active >= runtime.config.max_connections:
            runtime.refused += 1
            reset(client)
            return
        runtime.active += 1
        client.setsockopt(*_NODELAY)
        if route.hash_source_ip:
            key = stable_hash(peer[0])
        else:
            key = self.rng.getrandbits(64) if route.random_key else 0
        connect = _Connect(self, client, route, destination, key)
        self.connecting.add(connect)
        connect.attempt()

    def _is_own(self, destination: bytes) -> bool:
        return destination in self._own or destination[:2] in self._own_wildcard_ports

    # --- relaying ----------------------------------------------------------------

    def relay(
        self,
        client: _socket.socket,
        upstream: _socket.socket,
        route: Route,
        host: Host | None,
        upstream_events: int,
        opened_at: float,
    ) -> None:
        route.cluster.opened += 1
        if host is not None:
            host.active += 1
        relay = _ProxiedRelay(self, client, upstream, route, host, opened_at)
        self.relays.add(relay)
        self.idle.add(relay)
        try:
            relay.start(upstream_events)
        except OSError as exc:  # the epoll set refused the socket (no memory, say)
            log.error("cannot relay a connection to %s: %s", route.cluster.name, exc)
            relay.abort()

    def relay_closed(self, relay: Relay) -> None:
        assert isinstance(relay, _ProxiedRelay)
        self.relays.discard(relay)
        self.idle.remove(relay)
        runtime = relay.runtime
        runtime.bytes_up += relay.up.moved
        runtime.bytes_down += relay.down.moved
        runtime.closed(self.loop.time() - relay.opened_at)
        if relay.host is not None:
            relay.host.active -= 1
        self.release(runtime)

    def release(self, runtime: ClusterRuntime) -> None:
        runtime.active -= 1
        if self._drained is not None and not self.active:
            self._drained.set()

    def live_bytes(self) -> dict[str, tuple[int, int]]:
        """Bytes (up, down) of open connections, by cluster name, for metrics."""
        out: dict[str, tuple[int, int]] = {}
        for relay in list(self.relays):  # a copy: OTLP export collects from its own thread
            name = relay.runtime.name
            up, down = out.get(name, (0, 0))
            out[name] = (up + relay.up.moved, down + relay.down.moved)
        return out

    @property
    def active(self) -> int:
        return len(self.relays) + len(self.connecting)

    # --- idle timeout, drain, shutdown ---------------------------------------------

    async def _sweep(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            self.clock.now = now
            for relay in self.idle.due(now):
                relay.close()

    async def drain(self, deadline: float) -> int:
        """Stop accepting and wait for open connections to end, up to `deadline` seconds;
        returns how many were still open then (they are closed)."""
        self.stop_accepting()
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
        for connect in list(self.connecting):
            connect.cancel()
        self.connecting.clear()
        for relay in list(self.relays):
            relay.abort()  # cut short: a reset says so, a clean end would lie
        self.pipes.close()
        self.reactor.close()
