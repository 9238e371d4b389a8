"""When a DNS-over-TCP connection is closed, and which one gives way to a new one (pure).

Two clocks per connection, and bytes that do not finish a message move neither:
- idle: since the last complete query or response. Past `idle_timeout` with no
  query in flight, the connection is closed.
- partial: since the first byte of a message not yet whole (its length prefix or
  its body). Past `query_deadline` it is closed, however slowly the bytes trickle
  in. It does not run while the server itself has paused reading.

When the connection table is full, a new connection takes the place of the one
idle longest with no query in flight: a client that dribbles bytes is idle by
this count, so held connections cannot starve new ones. Only when every one has
a query in flight is the newcomer refused.

No clock is read here: every call takes `now`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

Expiry = Literal["idle", "partial"]


@dataclass(slots=True)
class TcpClock:
    idle_timeout: float
    query_deadline: float
    last_active: float
    partial_since: float | None = None

    def active(self, now: float) -> None:
        """A complete query arrived, or a response was sent."""
        self.last_active = now

    def buffered(self, now: float, *, partial: bool, consumed: bool) -> None:
        """After reading: `partial` when bytes of an unfinished message are left,
        `consumed` when whole messages were taken (so what is left is a new one)."""
        if not partial:
            self.partial_since = None
        elif consumed or self.partial_since is None:
            self.partial_since = now

    def reading_resumed(self, now: float) -> None:
        """The server paused reading, not the client: the partial clock starts again."""
        if self.partial_since is not None:
            self.partial_since = now

    def expired(self, now: float, *, pending: int, reading: bool) -> Expiry | None:
        partial = self.partial_since
        if reading and partial is not None and now >= partial + self.query_deadline:
            return "partial"
        if pending <= 0 and now >= self.last_active + self.idle_timeout:
            return "idle"
        return None

    def next_check(self, now: float, *, pending: int, reading: bool) -> float:
        """When to call `expired` again; never later than a deadline that applies.

        With queries in flight, the idle clock restarts when their answers are sent,
        so it cannot fall due before `now + idle_timeout`.
        """
        due = now + self.idle_timeout if pending > 0 else self.last_active + self.idle_timeout
        if reading and self.partial_since is not None:
            due = min(due, self.partial_since + self.query_deadline)
        return due


class _Held(Protocol):
    @property
    def clock(self) -> TcpClock: ...

    @property
    def pending(self) -> int: ...


H = TypeVar("H", bound=_Held)


def longest_idle(connections: Iterable[H]) -> H | None:
    """The connection to give way to a new one: no query in flight, idle longest."""
    victim: H | None = None
    for connection in connections:
        if connection.pending <= 0 and (
            victim is None or connection.clock.last_active < victim.clock.last_active
        ):
            victim = connection
    return victim
