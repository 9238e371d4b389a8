"""The reflector's bookkeeping (pure): lists, relists, watch events, bookmarks, errors."""

from __future__ import annotations

from typing import Any

import pytest

from meshlet.controlplane.sources.base import Kind, ObjectKey
from meshlet.controlplane.sources.reflector import Gone, ReflectorStore, WatchFailed


def svc(name: str, version: str, namespace: str = "shop") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": version}}


def told(step: Any) -> list[tuple[str, bool]]:
    """(name, deleted?) of each event."""
    return [(e.key.name, e.obj is None) for e in step.events]


def test_a_first_list_tells_everything() -> None:
    store = ReflectorStore(Kind.SERVICE)
    step = store.replace([svc("web", "5"), svc("api", "7")], "9")
    assert told(step) == [("web", False), ("api", False)]
    assert step.resource_version == "9"
    assert step.events[0].key == ObjectKey(Kind.SERVICE, "shop", "web")
    assert len(store) == 2


def test_a_relist_tells_only_real_differences() -> None:
    store = ReflectorStore(Kind.SERVICE)
    store.replace([svc("web", "5"), svc("api", "7"), svc("db", "8")], "9")
    # After 410: web unchanged, api changed, db gone, cache new.
    step = store.replace([svc("web", "5"), svc("api", "12"), svc("cache", "13")], "14")
    assert sorted(told(step)) == [("api", False), ("cache", False), ("db", True)]
    assert len(store) == 3


def test_watch_events() -> None:
    store = ReflectorStore(Kind.ENDPOINT_SLICE)
    store.replace([svc("web-1", "5")], "5")
    assert told(store.watch_event({"type": "ADDED", "object": svc("web-2", "6")}, "5")) == [
        ("web-2", False)
    ]
    step = store.watch_event({"type": "MODIFIED", "object": svc("web-1", "7")}, "6")
    assert (told(step), step.resource_version) == ([("web-1", False)], "7")
    step = store.watch_event({"type": "DELETED", "object": svc("web-2", "8")}, "7")
    assert (told(step), step.resource_version) == ([("web-2", True)], "8")
    # A deletion of something never told, and an event replayed after a resume: nothing.
    assert told(store.watch_event({"type": "DELETED", "object": svc("x", "9")}, "8")) == []
    assert told(store.watch_event({"type": "MODIFIED", "object": svc("web-1", "7")}, "9")) == []


def test_a_bookmark_only_moves_the_resource_version() -> None:
    store = ReflectorStore(Kind.SERVICE)
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "42"}}}
    step = store.watch_event(bookmark, "7")
    assert (step.events, step.resource_version) == ((), "42")


def test_410_in_a_watch_is_gone() -> None:
    store = ReflectorStore(Kind.SERVICE)
    error = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    with pytest.raises(Gone, match="too old"):
        store.watch_event(error, "7")


@pytest.mark.parametrize(
    "event",
    [
        {"type": "ERROR", "object": {"code": 500, "message": "etcd down"}},
        {"type": "SURPRISE", "object": svc("web", "1")},
        {"type": "ADDED"},
    ],
    ids=["other error", "unknown type", "no object"],
)
def test_other_watch_trouble_is_a_failed_watch(event: dict[str, Any]) -> None:
    with pytest.raises(WatchFailed):
        ReflectorStore(Kind.SERVICE).watch_event(event, "1")


def test_objects_without_a_name_are_skipped() -> None:
    store = ReflectorStore(Kind.SERVICE)
    step = store.replace([{"metadata": {"namespace": "shop"}}, {"spec": {}}], "3")
    assert step.events == ()
    assert told(store.watch_event({"type": "ADDED", "object": {"metadata": {}}}, "3")) == []


def test_a_failure_reads_the_same_on_every_retry() -> None:
    """Problems are logged once per change of state: their words must not change with
    each attempt (urllib3 puts the connection's address in memory into its errors)."""
    from urllib3.connection import HTTPSConnection
    from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

    from meshlet.controlplane.sources.kubernetes import describe_failure

    server = "https://10.0.0.1:6443"

    def refused() -> Exception:
        reason = NewConnectionError(
            HTTPSConnection("10.0.0.1"), "Failed to establish a new connection: [Errno 111] refused"
        )
        return MaxRetryError(None, "/api/v1/services", reason)  # type: ignore[arg-type]

    def timed_out() -> Exception:
        return ConnectTimeoutError(HTTPSConnection("10.0.0.1"), "Connection timed out")

    for make in (refused, timed_out):
        first, second = describe_failure(make(), server), describe_failure(make(), server)
        assert first == second
        assert first.startswith(f"cannot reach {server}: ")
        assert "0x" not in first
