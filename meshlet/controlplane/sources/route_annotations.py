"""A Service's timeout and retry annotations -> RoutePolicy (pure).

    meshlet.io/retries: "2"            retries of one request (0 turns them off)
    meshlet.io/per-try-timeout: "1s"   each try's limit (default: the whole timeout)
    meshlet.io/timeout: "30s"          the request's limit (default "0": none)
    meshlet.io/idempotent: "true"      every method is safe to repeat: a 503 or a gRPC
                                       UNAVAILABLE is retried for all, not only GET & co.

Durations are Go's (`500ms`, `1m30s`), as in Istio's and Linkerd's annotations.
A bad value raises ValueError naming the annotation; the caller adds where.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from meshlet.model import RoutePolicy

RETRIES = "meshlet.io/retries"
PER_TRY_TIMEOUT = "meshlet.io/per-try-timeout"
TIMEOUT = "meshlet.io/timeout"
IDEMPOTENT = "meshlet.io/idempotent"
ANNOTATIONS = (RETRIES, PER_TRY_TIMEOUT, TIMEOUT, IDEMPOTENT)

MAX_RETRIES = 10
# A day: longer is a typo, and a stream that must outlive it wants "0" (none).
_MAX_SECONDS = 86_400.0
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")


def _path(key: str) -> str:
    return f'metadata.annotations["{key}"]'


def _duration(key: str, text: str) -> float:
    if text == "0":
        return 0.0
    if not _DURATION.fullmatch(text):
        raise ValueError(f'{_path(key)} "{text[:40]}" is not a duration such as "500ms" or "2s"')
    seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(text))
    if seconds > _MAX_SECONDS:
        raise ValueError(f'{_path(key)} "{text}" is over a day; "0" means no limit')
    return seconds


def parse_route_policy(annotations: Mapping[str, str]) -> RoutePolicy:
    default = RoutePolicy()
    retries = default.retries
    if RETRIES in annotations:
        text = annotations[RETRIES]
        if not text.isdigit() or int(text) > MAX_RETRIES:
            raise ValueError(f'{_path(RETRIES)} "{text[:40]}" is not a number 0-{MAX_RETRIES}')
        retries = int(text)
    idempotent = default.idempotent
    if IDEMPOTENT in annotations:
        text = annotations[IDEMPOTENT]
        if text not in ("true", "false"):
            raise ValueError(f'{_path(IDEMPOTENT)} "{text[:40]}" must be "true" or "false"')
        idempotent = text == "true"
    timeout = _duration(TIMEOUT, annotations.get(TIMEOUT, "0"))
    per_try = _duration(PER_TRY_TIMEOUT, annotations.get(PER_TRY_TIMEOUT, "0"))
    if timeout and per_try > timeout:
        raise ValueError(f"{_path(PER_TRY_TIMEOUT)} is longer than {_path(TIMEOUT)}")
    return RoutePolicy(
        retries=retries,
        per_try_timeout_seconds=per_try,
        timeout_seconds=timeout,
        idempotent=idempotent,
    )
