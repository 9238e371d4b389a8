"""How loudly to say that the xDS stream failed again (pure: the caller brings `now`).

A sidecar whose control plane is gone (`helm uninstall`, a broken Service) retries
every few seconds for as long as its pod lives. The first failure of a run is news
and a WARNING; the same error again is a WARNING at most once per `every` seconds,
saying how many repeats went to DEBUG meanwhile; another error is news again. When
a stream is up again, `up` tells how long it was down and after how many reconnects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

# Distinct errors remembered in one outage: errors that name changing addresses
# must not grow it without bound.
_REMEMBERED = 16


@dataclass(frozen=True)
class Verdict:
    level: int  # logging.WARNING or logging.DEBUG
    # Failures with this error logged at DEBUG since its last WARNING (on a WARNING).
    suppressed: int = 0

    def note(self) -> str:
        """What a WARNING after suppressed repeats adds to its line."""
        if self.level < logging.WARNING or not self.suppressed:
            return ""
        return f" ({self.suppressed} more like it since the last warning, logged at debug)"


@dataclass(frozen=True)
class Outage:
    seconds: float  # from its first failure to the stream being up again
    # Streams opened after that first failure, the one that got through included (as
    # many as the failures, whether the outage began with a broken stream or a failed first).
    reconnects: int

    def note(self) -> str:
        """What the line that says the stream is up adds."""
        return f": down {self.seconds:.1f}s, {self.reconnects} reconnect attempts"


@dataclass(frozen=True)
class _Seen:
    warned_at: float
    suppressed: int


class OutageLog:
    def __init__(self, every: float = 300.0) -> None:
        self._every = every
        self._since: float | None = None
        self._failures = 0
        self._errors: dict[str, _Seen] = {}

    def failed(self, now: float, error: str) -> Verdict:
        """A stream ended or could not be opened with `error`: how to log it."""
        if self._since is None:
            self._since = now
        self._failures += 1
        seen = self._errors.pop(error, None)
        if seen is not None and now - seen.warned_at < self._every:
            self._errors[error] = _Seen(seen.warned_at, seen.suppressed + 1)
            return Verdict(logging.DEBUG)
        self._errors[error] = _Seen(now, 0)  # last in: the most recently warned
        while len(self._errors) > _REMEMBERED:
            del self._errors[next(iter(self._errors))]
        return Verdict(logging.WARNING, seen.suppressed if seen else 0)

    def up(self, now: float) -> Outage | None:
        """A stream got a response: the outage it ends, or None if there was none."""
        if self._since is None:
            return None
        outage = Outage(now - self._since, self._failures)
        self._since, self._failures, self._errors = None, 0, {}
        return outage
