"""When a DNS-over-TCP connection is closed, and which one gives way to a new one (pure).

Two clocks per connection, and bytes that do not finish a message move neither:
- idle: since the last complete query or response. Past `idle_timeout` with no
  query in flight, the connection is closed.
- partial: since the first byte of a message not yet whole (its length prefix or
  its body). Past `query_deadline` it is closed, however slowly the bytes trickle
  in. It does not run while the server itself has paused reading.

When the connection table is full, a new connection always gets a place: it
takes that of the one idle longest with no query in flight (a client that
dribbles bytes is idle by this count), or, when every one has a query in flight,
that of the one whose oldest query has waited longest. That connection's queries
go unanswered, which a client retries; held connections, idle or with queries
that never come back, cannot starve new ones.

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
    def pending_since(self) -> float | None:
        """When its oldest query still in flight arrived; None with none in flight."""
        ...


H = TypeVar("H", bound=_Held)


def gives_way(connections: Iterable[H]) -> H | None:
    """The connection to close for a new one: with no query in flight, the one idle
    longest; else the one whose oldest query in flight has waited longest. None
    only when there is none."""
    idle: H | None = None
    waiting: H | None = None
    waiting_since = 0.0
    for connection in connections:
        since = connection.pending_since
        if since is None:
            if idle is None or connection.clock.last_active < idle.clock.last_active:
                idle = connection
        elif waiting is None or since < waiting_since:
            waiting, waiting_since = connection, since
    return idle if idle is not None else waiting
