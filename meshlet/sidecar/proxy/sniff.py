"""Which HTTP a client on an HTTP port speaks: HTTP/2 with prior knowledge or HTTP/1.1.

Only HTTP ports are looked at (HTTP clients speak first, so reading their first
bytes never makes a server-first protocol wait): the bytes are peeked, left in
the kernel for the handler that takes the connection. An HTTP/2 client opens
with its preface, whose first four bytes no HTTP/1.1 request starts with.
"""

from __future__ import annotations

import _socket
import enum
from collections.abc import Callable

from meshlet.sidecar.proxy.reactor import READ, Reactor

_PREFACE = b"PRI "


class Client(enum.Enum):
    HTTP1 = "http/1.1"
    HTTP2 = "h2"
    GONE = "gone"  # closed (or failed) before it said anything


def client_protocol(first: bytes) -> Client | None:
    """The protocol the first bytes are of; None until there are enough to tell."""
    if not first:
        return Client.GONE
    if first.startswith(_PREFACE):
        return Client.HTTP2
    if _PREFACE.startswith(first):
        return None
    return Client.HTTP1


OnKnown = Callable[[_socket.socket, Client], None]


class Sniffer:
    """Waits for a connection's first bytes, then hands it on with what it speaks."""

    def __init__(self, reactor: Reactor) -> None:
        self._reactor = reactor
        self.waiting: dict[int, _socket.socket] = {}

    def watch(self, client: _socket.socket, on_known: OnKnown) -> None:
        if self._peek(client, on_known):
            return
        fd = client.fileno()
        self.waiting[fd] = client

        def readable(_events: int) -> None:
            if self._peek(client, on_known, watched=True):
                self.waiting.pop(fd, None)

        self._reactor.add(fd, readable, READ)

    def _peek(self, client: _socket.socket, on_known: OnKnown, watched: bool = False) -> bool:
        try:
            first = client.recv(len(_PREFACE), _socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            first = b""
        known = client_protocol(first)
        if known is None:
            if not watched:
                return False
            # Peeked bytes stay readable: waiting on would spin. A preface comes in one
            # piece; a client that sends a few bytes of "PRI " and stops is not one.
            known = Client.HTTP1
        if watched:
            self._reactor.unwatch(client.fileno())
        if known is Client.GONE:
            client.close()
        else:
            on_known(client, known)
        return True

    def close(self) -> None:
        for fd, client in self.waiting.items():
            self._reactor.unwatch(fd)
            client.close()
        self.waiting.clear()
