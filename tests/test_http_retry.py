"""When a request may be tried again (pure): the route's policy, the body held, the
budget and the deadline."""

from __future__ import annotations

import pytest

from meshlet.sidecar.proxy.http_retry import (
    MAX_RETRY_BODY,
    Failure,
    RetryBudget,
    RetryState,
    answer_failure,
    grpc_timeout,
    rule_for,
)
from meshlet.sidecar.state import RetryPolicy, RouteConfig, RouteRule

pytestmark = pytest.mark.unit

UNSEEN = frozenset({"connect-failure", "refused-stream", "reset-before-request"})
ANSWERED = UNSEEN | {"retriable-status-codes", "unavailable"}
SAFE = RetryPolicy(UNSEEN, 2)
IDEMPOTENT = RetryPolicy(ANSWERED, 2, retriable_status_codes=frozenset({503}))
ROUTES = RouteConfig(
    "web:80",
    (RouteRule("c", frozenset({"GET"}), retry=IDEMPOTENT), RouteRule("c", None, retry=SAFE)),
)


def test_the_first_route_that_matches_the_method_decides() -> None:
    assert rule_for(ROUTES, "GET").retry is IDEMPOTENT
    assert rule_for(ROUTES, "POST").retry is SAFE


@pytest.mark.parametrize(
    ("policy", "status", "grpc_status", "failure"),
    [
        (IDEMPOTENT, 503, "", Failure.STATUS),
        (IDEMPOTENT, 500, "", None),
        (IDEMPOTENT, 200, "14", Failure.UNAVAILABLE),
        (SAFE, 503, "", None),
        (SAFE, 200, "14", None),
        (None, 503, "14", None),
        (RetryPolicy(frozenset({"5xx"})), 502, "", Failure.STATUS),
        (RetryPolicy(frozenset({"gateway-error"})), 500, "", None),
    ],
)
def test_which_answers_a_policy_retries(
    policy: RetryPolicy | None, status: int, grpc_status: str, failure: Failure | None
) -> None:
    assert answer_failure(policy, status, grpc_status) is failure


def test_what_the_server_never_saw_is_retried_within_the_tries_allowed() -> None:
    state = RetryState(SAFE, started=0.0)
    budget = RetryBudget()
    assert state.may_retry(Failure.CONNECT, 1.0, budget)
    assert state.may_retry(Failure.REFUSED, 1.0, budget)
    assert not state.may_retry(Failure.CONNECT, 1.0, budget), "num_retries is 2"
    assert not RetryState(SAFE, 0.0).may_retry(Failure.STATUS, 1.0, budget)
    assert not RetryState(None, 0.0).may_retry(Failure.CONNECT, 1.0, budget)


def test_an_answer_a_policy_names_is_retried_whatever_condition_named_it() -> None:
    policy = RetryPolicy(frozenset({"5xx"}), 1)
    failure = answer_failure(policy, 503, "")
    assert failure is Failure.STATUS
    assert RetryState(policy, 0.0).may_retry(failure, 1.0, RetryBudget())


def test_a_body_over_the_limit_is_not_retried() -> None:
    state = RetryState(SAFE, started=0.0)
    state.hold(b"x" * MAX_RETRY_BODY)
    assert state.body is not None and len(state.body) == MAX_RETRY_BODY
    state.hold(b"y")
    assert state.body is None
    assert not state.may_retry(Failure.CONNECT, 0.0, RetryBudget())


def test_no_retry_past_the_deadline() -> None:
    state = RetryState(SAFE, started=0.0, deadline=0.5)
    assert not state.may_retry(Failure.CONNECT, 0.5, RetryBudget())
    assert RetryState(SAFE, 0.0, deadline=0.5).may_retry(Failure.CONNECT, 0.4, RetryBudget())


def test_the_budget_is_a_fifth_of_requests_plus_ten_a_second() -> None:
    budget = RetryBudget(window=10.0)
    for _ in range(100):
        budget.request(0.0)
    allowed = sum(budget.withdraw(1.0) for _ in range(1000))
    assert allowed == 20 + 100, "20% of 100 requests, plus 10/s over the 10 s window"
    assert budget.withdraw(11.5), "the window moves on"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("100m", 0.1),
        ("2S", 2.0),
        ("1H", 3600.0),
        ("5u", 5e-6),
        ("x", None),
        ("10", None),
        ("1234567890S", None),
    ],
)
def test_grpc_timeout(header: str, seconds: float | None) -> None:
    found = grpc_timeout(header)
    assert found == (seconds if seconds is None else pytest.approx(seconds))
