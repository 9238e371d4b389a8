"""Outlier detection for connect failures, as Envoy's consecutive-errors detector (pure).

An endpoint that fails `consecutive_failures` connects in a row is ejected for
`base_ejection_seconds` times the number of times it has been ejected (capped),
so a flapping endpoint stays out longer each time. The multiplier shrinks by one
for every `interval_seconds` the endpoint then stays in. Never more than
`max_ejection_percent` of a cluster is ejected, except that one endpoint always
may be (as Envoy does), so a cluster of one can still shed a dead endpoint.

Time is passed in (`now`, monotonic seconds); nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshlet.sidecar.state import OutlierConfig

# Envoy's default max_ejection_time: however often an endpoint was ejected.
MAX_EJECTION_SECONDS = 300.0


@dataclass(slots=True)
class OutlierRecord:
    """One endpoint's outlier history; lives as long as the endpoint stays in EDS."""

    consecutive_failures: int = 0
    ejected_until: float | None = None
    times_ejected: int = 0
    # When it last came back (for the multiplier's decay), and how often it was ejected.
    returned_at: float = 0.0
    ejections: int = 0

    def is_ejected(self, now: float) -> bool:
        until = self.ejected_until
        if until is None:
            return False
        if now < until:
            return True
        self.ejected_until = None
        self.returned_at = until
        self.consecutive_failures = 0  # back with a clean slate, as Envoy unejects
        return False


def record_success(record: OutlierRecord) -> None:
    record.consecutive_failures = 0


def record_failure(
    record: OutlierRecord, config: OutlierConfig, now: float, ejected: int, total: int
) -> bool:
    """Counts one failed connect; True when it ejects the endpoint.

    `ejected` is how many endpoints of the cluster are ejected now, `total` how many it has.
    """
    if record.is_ejected(now):  # (coming back now resets the count: check first)
        return False
    record.consecutive_failures += 1
    if not config.enabled:
        return False
    if record.consecutive_failures < config.consecutive_failures:
        return False
    if ejected > 0 and (ejected + 1) * 100 > config.max_ejection_percent * total:
        return False
    if record.times_ejected and config.interval_seconds > 0:
        decay = int((now - record.returned_at) // config.interval_seconds)
        record.times_ejected = max(0, record.times_ejected - decay)
    record.times_ejected += 1
    record.ejections += 1
    duration = config.base_ejection_seconds * record.times_ejected
    cap = max(config.base_ejection_seconds, MAX_EJECTION_SECONDS)
    record.ejected_until = now + min(duration, cap)
    record.consecutive_failures = 0
    return True
