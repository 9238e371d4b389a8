"""Idle timeouts of open connections, at a cost proportional to the ones that may be due.

Testing every open relay once a second stalls the loop in proportion to the
connections held: 1.6 ms every second at 10,000 (a pool of idle keep-alive
connections, say), which every request in flight then waits out. Here a relay
is filed under the whole second its idle deadline falls in, reckoned from its
last activity when filed. A second's relays are looked at once, when it has
passed: one idle since closes, one active since is filed again under its new
deadline. So a relay is looked at about once per idle timeout (an hour by
default), not once a second, and the hot path still only stamps `touched`.
"""

from __future__ import annotations

import math

from meshlet.sidecar.proxy.relay import Relay


class IdleWheel:
    def __init__(self, now: float) -> None:
        self._seconds: dict[int, set[Relay]] = {}
        self._done = int(now)  # every second up to this one has been looked at
        self.looked_at = 0  # relays examined, ever (what the sweeps cost)

    def __len__(self) -> int:
        return sum(len(relays) for relays in self._seconds.values())

    def add(self, relay: Relay) -> None:
        if relay.idle_timeout <= 0:
            return  # never times out
        second = max(math.ceil(relay.touched + relay.idle_timeout), self._done + 1)
        relay.idle_second = second
        self._seconds.setdefault(second, set()).add(relay)

    def remove(self, relay: Relay) -> None:
        relays = self._seconds.get(relay.idle_second)
        if relays is not None:
            relays.discard(relay)
            if not relays:
                del self._seconds[relay.idle_second]

    def due(self, now: float) -> list[Relay]:
        """The relays idle for their whole timeout at `now`, taken out; the others filed
        under the seconds that have passed are filed again under their new deadlines."""
        idle: list[Relay] = []
        active: list[Relay] = []
        end = int(now)
        if end - self._done > len(self._seconds):  # long asleep: visit the filed seconds
            passed = sorted(s for s in self._seconds if s <= end)
        else:
            passed = list(range(self._done + 1, end + 1))
        for second in passed:
            for relay in self._seconds.pop(second, ()):
                self.looked_at += 1
                (idle if relay.idle(now) else active).append(relay)
        self._done = max(self._done, end)
        for relay in active:
            self.add(relay)
        return idle
