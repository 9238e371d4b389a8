"""The DNS-over-TCP deadlines and who gives way when the table is full (pure, `now` passed in)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from meshlet.sidecar.dns.tcp_clock import TcpClock, gives_way

IDLE, DEADLINE = 10.0, 2.0


def clock(last_active: float = 0.0) -> TcpClock:
    return TcpClock(IDLE, DEADLINE, last_active)


def test_dribbled_bytes_move_neither_clock() -> None:
    held = clock()
    held.buffered(1.0, partial=True, consumed=False)  # the first byte of a message
    for now in (1.5, 2.0, 2.5):  # one more byte each time, the message still unfinished
        held.buffered(now, partial=True, consumed=False)
    assert held.expired(2.9, pending=0, reading=True) is None
    assert held.expired(3.0, pending=0, reading=True) == "partial"
    assert held.last_active == 0.0


def test_a_whole_message_stops_the_partial_clock_and_what_is_left_starts_anew() -> None:
    held = clock()
    held.buffered(1.0, partial=True, consumed=False)
    held.active(2.5)  # the message became whole...
    held.buffered(
        2.5, partial=True, consumed=True
    )  # ...and the next one's first bytes came with it
    assert held.partial_since == 2.5
    assert held.expired(4.4, pending=0, reading=True) is None
    held.active(4.0)
    held.buffered(4.0, partial=False, consumed=True)
    assert held.partial_since is None
    assert held.expired(13.9, pending=0, reading=True) is None
    assert held.expired(14.0, pending=0, reading=True) == "idle"


def test_idle_waits_for_queries_in_flight() -> None:
    held = clock()
    assert held.expired(50.0, pending=1, reading=True) is None
    assert held.next_check(50.0, pending=1, reading=True) == 60.0
    assert held.expired(50.0, pending=0, reading=True) == "idle"


def test_the_partial_clock_stops_while_the_server_is_not_reading() -> None:
    held = clock()
    held.buffered(1.0, partial=True, consumed=False)
    assert held.expired(5.0, pending=40, reading=False) is None
    assert held.next_check(5.0, pending=40, reading=False) == 15.0  # only the idle clock
    held.reading_resumed(5.0)
    assert held.expired(6.9, pending=0, reading=True) is None
    assert held.expired(7.0, pending=0, reading=True) == "partial"


@pytest.mark.parametrize(
    ("partial_since", "expected"),
    [(None, IDLE), (1.0, 1.0 + DEADLINE), (9.0, IDLE)],
)
def test_the_next_check_is_the_earliest_deadline(
    partial_since: float | None, expected: float
) -> None:
    held = clock()
    held.partial_since = partial_since
    assert held.next_check(0.5, pending=0, reading=True) == expected


@dataclass
class Held:
    name: str
    clock: TcpClock
    pending_since: float | None = None  # when its oldest query in flight arrived


def test_the_longest_idle_without_a_query_in_flight_gives_way() -> None:
    busy = Held("busy", clock(0.0), pending_since=0.5)
    dribbler = Held("dribbler", clock(1.0))
    dribbler.clock.buffered(9.0, partial=True, consumed=False)  # recent bytes do not count
    fresh = Held("fresh", clock(8.0))
    assert gives_way([busy, fresh, dribbler]) is dribbler
    assert gives_way([busy, fresh]) is fresh
    assert gives_way([]) is None


def test_with_every_one_waiting_the_oldest_query_in_flight_gives_way() -> None:
    # Its later queries were answered, so it is not the one idle longest.
    stuck = Held("waiting since 3, answered at 8", clock(8.0), pending_since=3.0)
    quiet = Held("waiting since 5", clock(5.0), pending_since=5.0)
    recent = Held("waiting since 9", clock(9.0), pending_since=9.0)
    assert gives_way([quiet, recent, stuck]) is stuck
    assert gives_way([recent, quiet]) is quiet
    assert gives_way([recent]) is recent
