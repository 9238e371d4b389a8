"""Whether a request may be tried again, and the budget that bounds retries (pure).

A request is retried only where that is safe: the server never saw it (the
connect failed, the stream was refused, a GOAWAY came past its id), or the route's
policy names the answer it got (a 503 for an idempotent method, say), and only
while its body is still held (up to MAX_RETRY_BODY bytes), the route allows
another try, the cluster's budget has room and the request's deadline
(`grpc-timeout`) has not passed.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from meshlet.sidecar.state import RetryPolicy, RouteConfig, RouteRule

# A request body is held for a retry up to this size; a larger one is not retried.
MAX_RETRY_BODY = 64 * 1024
GRPC_UNAVAILABLE = "14"
_GRPC_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class Failure(enum.Enum):
    """Why a try did not give an answer to pass on."""

    CONNECT = "connect-failure"  # no connection to the endpoint: never seen
    REFUSED = "refused-stream"  # REFUSED_STREAM, or a GOAWAY past the stream: never seen
    RESET = "reset-before-request"  # the connection ended before the request was sent
    STATUS = "retriable-status-codes"  # an answer the route's policy retries
    UNAVAILABLE = "unavailable"  # gRPC UNAVAILABLE, as the policy's retry_on names it


def rule_for(routes: RouteConfig, method: str) -> RouteRule:
    """The first route that matches `method` (the last matches every request)."""
    for rule in routes.routes:
        if rule.methods is None or method in rule.methods:
            return rule
    return routes.default


def retries_on(policy: RetryPolicy | None, failure: Failure) -> bool:
    if policy is None:
        return False
    conditions = policy.retry_on
    if failure is Failure.STATUS:  # what answer_failure found under one of these
        return bool(conditions & {"retriable-status-codes", "5xx", "gateway-error"})
    if failure.value in conditions:
        return True
    # 5xx and gateway-error cover the connect failures and refusals too, as in Envoy.
    unseen = failure in (Failure.CONNECT, Failure.REFUSED, Failure.RESET)
    return unseen and bool(conditions & {"5xx", "gateway-error"})


def answer_failure(policy: RetryPolicy | None, status: int, grpc_status: str) -> Failure | None:
    """The failure an answer is, when the route's policy retries it; else None."""
    if policy is None:
        return None
    if grpc_status == GRPC_UNAVAILABLE and "unavailable" in policy.retry_on:
        return Failure.UNAVAILABLE
    if status in policy.retriable_status_codes and "retriable-status-codes" in policy.retry_on:
        return Failure.STATUS
    if status >= 500 and "5xx" in policy.retry_on:
        return Failure.STATUS
    if status in (502, 503, 504) and "gateway-error" in policy.retry_on:
        return Failure.STATUS
    return None


def grpc_timeout(value: str) -> float | None:
    """A `grpc-timeout` header in seconds (gRPC's own format: digits and a unit)."""
    if not 2 <= len(value) <= 9 or not value[:-1].isdigit():
        return None
    unit = _GRPC_TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit


@dataclass(slots=True)
class RetryBudget:
    """Linkerd's budget: retries may add `ratio` of the requests of the last `window`
    seconds, plus `min_per_second`, so a failing cluster is not hit ever harder."""

    ratio: float = 0.2
    min_per_second: float = 10.0
    window: float = 10.0
    _requests: deque[float] = field(default_factory=deque)
    _retries: deque[float] = field(default_factory=deque)

    def _trim(self, now: float) -> None:
        since = now - self.window
        for times in (self._requests, self._retries):
            while times and times[0] < since:
                times.popleft()

    def request(self, now: float) -> None:
        self._requests.append(now)
        if len(self._requests) > 4096:
            self._trim(now)

    def withdraw(self, now: float) -> bool:
        """Takes one retry from the budget; False when it has none left."""
        self._trim(now)
        allowed = self.ratio * len(self._requests) + self.min_per_second * self.window
        if len(self._retries) >= allowed:
            return False
        self._retries.append(now)
        return True


@dataclass(slots=True)
class RetryState:
    """One request's tries: how many are left, and whether its body is still held."""

    policy: RetryPolicy | None
    started: float
    deadline: float | None = None  # from grpc-timeout, on the same clock as `started`
    tries: int = 0
    body: bytearray | None = field(default_factory=bytearray)  # None once over the limit

    def hold(self, data: bytes) -> None:
        body = self.body
        if body is None:
            return
        if len(body) + len(data) > MAX_RETRY_BODY:
            self.body = None  # too big to replay: this request is not retried
        else:
            body += data

    def may_retry(self, failure: Failure, now: float, budget: RetryBudget) -> bool:
        policy = self.policy
        if policy is None or self.body is None or not retries_on(policy, failure):
            return False
        if self.tries >= policy.num_retries:
            return False
        if self.deadline is not None and now >= self.deadline:
            return False
        if not budget.withdraw(now):
            return False
        self.tries += 1
        return True
