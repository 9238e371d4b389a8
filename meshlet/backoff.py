"""Reconnect delays: exponential backoff with full jitter (pure: the caller brings randomness).

Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): each delay
is uniform between zero and a ceiling that doubles with every failed attempt, up
to a cap, so many clients that lost the same server do not come back in step. A
stream (an xDS stream, a Kubernetes watch) that lived a while counts as a success
and starts the count over.
"""

from __future__ import annotations

from dataclasses import dataclass

# 2**_MAX_EXPONENT * base is far past any sensible cap; stop counting there.
_MAX_EXPONENT = 32


@dataclass(frozen=True)
class BackoffPolicy:
    base_seconds: float = 0.2
    cap_seconds: float = 15.0
    # A stream that lasted at least this long resets the backoff to the start.
    reset_after_seconds: float = 10.0

    def ceiling(self, attempt: int) -> float:
        """The largest delay before retry number `attempt` (0 for the first)."""
        return min(self.cap_seconds, self.base_seconds * 2.0 ** min(attempt, _MAX_EXPONENT))


class Backoff:
    """Counts consecutive failed attempts and turns them into delays."""

    def __init__(self, policy: BackoffPolicy) -> None:
        self.policy = policy
        self.attempt = 0

    def next_delay(self, lived_seconds: float, rand: float) -> float:
        """The delay before the next attempt, after a stream that lasted `lived_seconds`.

        `rand` is uniform in [0, 1); passing it in keeps this a pure function of its inputs.
        """
        if lived_seconds >= self.policy.reset_after_seconds:
            self.attempt = 0
        delay = rand * self.policy.ceiling(self.attempt)
        self.attempt = min(self.attempt + 1, _MAX_EXPONENT)
        return delay
