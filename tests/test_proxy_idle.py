"""The proxy's idle timeouts: which relays a sweep closes, and how many it looks at (counted)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from meshlet.sidecar.proxy.idle import IdleWheel
from meshlet.sidecar.proxy.reactor import Reactor
from meshlet.sidecar.proxy.relay import Clock, PipePool, Relay

MakeRelay = Callable[[float], Relay]


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture
async def make_relay(clock: Clock) -> AsyncIterator[MakeRelay]:
    """Real relays over real socket pairs, never started (the wheel reads their stamps)."""
    reactor = Reactor(asyncio.get_running_loop())
    pipes = PipePool()
    sockets: list[socket.socket] = []

    def make(idle_timeout: float) -> Relay:
        client, upstream = socket.socketpair()
        sockets.extend((client, upstream))
        return Relay(reactor, client, upstream, pipes, clock, idle_timeout, lambda _: None)

    yield make
    for sock in sockets:
        sock.close()
    pipes.close()
    reactor.close()


async def test_a_relay_idle_for_its_timeout_is_due_once(
    clock: Clock, make_relay: MakeRelay
) -> None:
    wheel = IdleWheel(clock.now)
    relay = make_relay(10.0)
    wheel.add(relay)
    assert wheel.due(1009.5) == []
    assert wheel.due(1010.0) == [relay]
    assert len(wheel) == 0
    assert wheel.due(1100.0) == []


async def test_activity_since_filing_moves_the_deadline(
    clock: Clock, make_relay: MakeRelay
) -> None:
    wheel = IdleWheel(clock.now)
    relay = make_relay(10.0)
    wheel.add(relay)
    clock.now = 1006.0
    relay.touched = clock.now  # what a read does
    assert wheel.due(1010.0) == []  # active since: filed again
    assert wheel.due(1015.9) == []
    assert wheel.due(1016.0) == [relay]


async def test_a_sweep_looks_only_at_relays_whose_deadline_passed(
    clock: Clock, make_relay: MakeRelay
) -> None:
    wheel = IdleWheel(clock.now)
    many = [make_relay(3600.0) for _ in range(1000)]
    for relay in many:
        wheel.add(relay)
    soon = make_relay(5.0)
    wheel.add(soon)
    for second in range(1, 61):  # a minute of sweeps, one a second
        due = wheel.due(1000.0 + second)
        assert due == ([soon] if second == 5 else [])
    assert wheel.looked_at == 1  # not 1001 relays x 60 sweeps
    assert len(wheel) == 1000


async def test_a_closed_relay_is_never_due(clock: Clock, make_relay: MakeRelay) -> None:
    wheel = IdleWheel(clock.now)
    relay = make_relay(10.0)
    wheel.add(relay)
    wheel.remove(relay)
    assert len(wheel) == 0
    assert wheel.due(2000.0) == []
    assert wheel.looked_at == 0


async def test_no_timeout_is_never_filed(clock: Clock, make_relay: MakeRelay) -> None:
    wheel = IdleWheel(clock.now)
    wheel.add(make_relay(0.0))
    assert len(wheel) == 0
    assert wheel.due(1e9) == []


async def test_a_long_pause_between_sweeps_still_finds_every_due_relay(
    clock: Clock, make_relay: MakeRelay
) -> None:
    wheel = IdleWheel(clock.now)
    early, late = make_relay(2.0), make_relay(50_000.0)
    wheel.add(early)
    wheel.add(late)
    assert set(wheel.due(1_000_000.0)) == {early, late}
    assert wheel.looked_at == 2  # the filed seconds, not every second in between
