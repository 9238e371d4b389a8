"""The proxy's listening sockets: accept captured connections, refuse the ones that would loop.

Accepts in batches, reads each connection's original destination and hands
(client, peer, destination) to the proxy, which picks the handler. Refused here,
before any route is looked up:

- a connection whose destination is the proxy itself (it arrived unredirected:
  it has nowhere to go);
- a connection that comes from one of the proxy's own passthrough connects
  while it is being made: it was captured, because the proxy does not run as the
  uid the capture rules exempt, and would loop until the fds run out.

When accept() fails (out of fds, say) the listener stays readable; it is left
unwatched for a moment instead of spinning, and the waiting clients are accepted
once fds free up.
"""

from __future__ import annotations

import _socket
import asyncio
import logging
import socket
from collections.abc import Callable, Sequence

from meshlet.sidecar.proxy.counters import ListenerCounters, ThrottledLog
from meshlet.sidecar.proxy.original_dst import destination_key, original_key
from meshlet.sidecar.proxy.reactor import READ, Reactor
from meshlet.sidecar.proxy.relay import reset

log = logging.getLogger(__name__)

# (client socket, client address, destination_key of where it was going)
OnConnection = Callable[[_socket.socket, tuple[str, int], bytes], None]

STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_ACCEPT_BATCH = 64
_ACCEPT_PAUSE = 0.1  # seconds without accepting after accept() failed
_BACKLOG = 4096
_WILDCARDS = ("0.0.0.0", "::")


class Listeners:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        reactor: Reactor,
        on_connection: OnConnection,
        local_errors: ThrottledLog,
    ) -> None:
        self._loop = loop
        self._reactor = reactor
        self._on_connection = on_connection
        self._local_errors = local_errors
        self._sockets: list[_socket.socket] = []
        # Where the proxy listens: a connection that arrives there unredirected would loop.
        self._own: set[bytes] = set()
        self._own_wildcard_ports: set[bytes] = set()
        # Where passthrough connects come from while they are being made (tcp.py adds them).
        self.passthrough_sources: set[bytes] = set()
        self.counters = ListenerCounters()

    def listen(self, addresses: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        """Binds every address (port 0 picks one); returns where it listens."""
        bound = []
        for host, port in addresses:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = _socket.socket(family, STREAM)
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
            self._sockets.append(sock)
            self._reactor.add(sock.fileno(), self._acceptor(sock, family), READ)
            bound.append((ip, port))
        return bound

    def close(self) -> None:
        for sock in self._sockets:
            self._reactor.unwatch(sock.fileno())
            sock.close()
        self._sockets.clear()

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
                self._accepted(_socket.socket(family, socket.SOCK_STREAM, 0, fd), peer, ipv6)

        return accept

    def _accept_failed(
        self, listener: _socket.socket, accept: Callable[[int], None], exc: OSError
    ) -> None:
        counters = self.counters
        counters.accept_failures += 1
        self._local_errors.error(
            self._loop.time(), "accept failed (%d times so far): %s", counters.accept_failures, exc
        )
        fd = listener.fileno()
        self._reactor.unwatch(fd)

        def resume() -> None:
            if listener in self._sockets:
                self._reactor.add(fd, accept, READ)

        self._loop.call_later(_ACCEPT_PAUSE, resume)

    def _accepted(self, client: _socket.socket, peer: tuple[str, int], ipv6: bool) -> None:
        if self.passthrough_sources and destination_key(*peer[:2]) in self.passthrough_sources:
            self.counters.looped += 1
            if self.counters.looped == 1:
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
            self.counters.not_redirected += 1  # a connection to the proxy itself: nowhere to go
            reset(client)
            return
        self._on_connection(client, peer, destination)

    def _is_own(self, destination: bytes) -> bool:
        return destination in self._own or destination[:2] in self._own_wildcard_ports
