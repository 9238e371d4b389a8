"""Where to connect one client, and what to do when a try fails: a sans-IO state machine.

Events come in with the time (`start`, `connected`, `failed`, `local_failure`);
an action goes out: `Try` an address (open a socket, connect, arm a timer of
`timeout` seconds) or `GIVE_UP` (the client gets a reset, as from a refused
connect). The plan owns the decisions (which endpoint, whether to retry, what is
blamed and counted); the socket code in tcp.py only carries them out, and tests
drive the plan without sockets or root.

A try that fails at the endpoint (refused, reset, timed out) counts against it
in outlier detection and moves to another endpoint, up to `MAX_RETRIES` times.
A try that fails here, before reaching the network, blames no endpoint: out of
fds, memory or epoll room every endpoint would fail alike, so the plan gives up
at once; anything else local (no free port to that address, no IPv6 here) may
spare another endpoint. A passthrough connection has one address and no retry.
"""

from __future__ import annotations

import errno
import random
from typing import NamedTuple

from meshlet.sidecar.proxy.balancer import Host
from meshlet.sidecar.proxy.router import ClusterRuntime

MAX_RETRIES = 3
# Failures of this host that every endpoint would meet alike.
OUT_OF_RESOURCES = frozenset(
    (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ENOSPC)
)
# Errors of connect() that come from this host, not from the endpoint.
LOCAL_ERRORS = OUT_OF_RESOURCES | {errno.EADDRNOTAVAIL}


class Try(NamedTuple):  # one per connect: a tuple is the cheapest thing to make
    address: tuple[str, int]
    host: Host | None  # None for a passthrough connection
    timeout: float


class GiveUp:
    __slots__ = ()

    def __repr__(self) -> str:
        return "GIVE_UP"


GIVE_UP = GiveUp()
Action = Try | GiveUp


class ConnectPlan:
    __slots__ = (
        "blamed",
        "ejected",
        "host",
        "key",
        "local_fault",
        "passthrough",
        "rng",
        "runtime",
        "tried",
    )

    def __init__(
        self,
        runtime: ClusterRuntime,
        key: int,
        rng: random.Random,
        passthrough: tuple[str, int] | None = None,
    ) -> None:
        self.runtime = runtime
        self.key = key  # what hashing policies hash
        self.rng = rng
        self.passthrough = passthrough  # the original destination, when there is no cluster
        self.tried: list[Host] = []
        self.host: Host | None = None  # the endpoint of the try in progress
        self.blamed = 0  # tries that failed at the endpoint
        self.local_fault = False  # a try failed here, before reaching the network
        self.ejected: Host | None = None  # set by the failure that ejected an endpoint

    def start(self, now: float) -> Action:
        return self._next(now)

    def connected(self) -> Host | None:
        """The try in progress succeeded; returns its endpoint (None for passthrough)."""
        host = self.host
        if host is not None:
            self.runtime.balancer().connect_succeeded(host)
            host.connections += 1
        return host

    def failed(self, now: float) -> Action:
        """The try in progress failed at the endpoint: refused, reset or timed out."""
        runtime = self.runtime
        runtime.counters.connect_failures += 1
        self.blamed += 1
        self.ejected = None
        host = self.host
        if host is not None:
            if runtime.balancer().connect_failed(host, now):
                runtime.counters.ejections += 1
                self.ejected = host
            self.tried.append(host)
            self.host = None
        return self._again(now)

    def local_failure(self, error: int | None, now: float) -> Action:
        """The try in progress failed here, before reaching the network (errno `error`)."""
        self.runtime.counters.local_failures += 1
        self.local_fault = True
        if self.host is not None:
            self.tried.append(self.host)
            self.host = None
        if error in OUT_OF_RESOURCES:
            return self._give_up()
        return self._again(now)

    def _again(self, now: float) -> Action:
        if self.passthrough is not None or len(self.tried) > MAX_RETRIES:
            return self._give_up()
        return self._next(now)

    def _next(self, now: float) -> Action:
        runtime = self.runtime
        timeout = runtime.config.connect_timeout_seconds
        if self.passthrough is not None:
            return Try(self.passthrough, None, timeout)
        host = runtime.balancer().choose(self.key, self.tried, now, self.rng)
        if host is None:
            return self._give_up()
        if self.tried:
            runtime.counters.retries += 1
        self.host = host
        return Try(host.address, host, timeout)

    def _give_up(self) -> GiveUp:
        if self.blamed or not self.local_fault:  # else only local failures: counted already
            self.runtime.counters.no_endpoint += 1
        return GIVE_UP
