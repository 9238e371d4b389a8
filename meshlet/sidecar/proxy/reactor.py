"""One epoll set for the proxy's sockets, driven from the event loop.

uvloop's add_reader/add_writer go through libuv, which makes each fd
non-blocking again and re-arms the poller on every change: a proxied
connection cost about 18 epoll_ctl and 4 ioctl calls that way. Here the proxy
registers each socket once, changes its interest only when it must (a
destination is full, a source has ended), and lets close() take it out of the
set. The event loop watches only this set's own fd and calls `dispatch` when
any socket in it is ready.

Interest is level-triggered: a handler may stop after one read and is called
again while data is left, so no read is spent just to learn it would block.
"""

from __future__ import annotations

import asyncio
import logging
import select
from collections.abc import Callable

log = logging.getLogger(__name__)

Handler = Callable[[int], None]

READ = select.EPOLLIN
WRITE = select.EPOLLOUT
FAILED = select.EPOLLERR | select.EPOLLHUP
_BATCH = 256


class Reactor:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        # fds closed while a batch is dispatched: the rest of that batch may hold
        # events of the closed socket, which a new socket with the same number
        # must not get.
        self._gone: set[int] = set()
        self._dispatching = False
        loop.add_reader(self._epoll.fileno(), self.dispatch)

    def add(self, fd: int, handler: Handler, events: int) -> None:
        self._handlers[fd] = handler
        self._epoll.register(fd, events)

    def modify(self, fd: int, events: int) -> None:
        self._epoll.modify(fd, events)

    def replace(self, fd: int, handler: Handler) -> None:
        """Hand a watched fd to another handler (a connect that completed, say)."""
        self._handlers[fd] = handler

    def forget(self, fd: int) -> bool:
        """Call before closing `fd`: closing removes it from the epoll set itself.
        Says whether it was watched."""
        if self._handlers.pop(fd, None) is None:
            return False
        if self._dispatching:
            self._gone.add(fd)
        return True

    def unwatch(self, fd: int) -> None:
        """Stop watching an fd that stays open; nothing if it is not watched (a listener
        paused after a failed accept, say)."""
        if self.forget(fd):
            self._epoll.unregister(fd)

    def dispatch(self) -> None:
        handlers, gone = self._handlers, self._gone
        self._dispatching = True
        try:
            for fd, events in self._epoll.poll(0, _BATCH):
                if gone and fd in gone:
                    continue
                handler = handlers.get(fd)
                if handler is None:
                    continue
                try:
                    handler(events)
                except Exception:  # a bug; the other sockets of the batch still get theirs
                    log.exception("proxy event handler failed (fd %d, events %#x)", fd, events)
        finally:
            self._dispatching = False
            gone.clear()

    def close(self) -> None:
        self._loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
        self._handlers.clear()
