"""The sidecar's saved config: the codec (pure) and the file (real files in tmp_path)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from envoy.config.core.v3.base_pb2 import Node

from meshlet.model import Endpoint, Mesh, Service, ServicePort
from meshlet.sidecar.saved_state import FORMAT, SavedStateError, decode, encode
from meshlet.sidecar.state import SidecarState
from meshlet.sidecar.state_file import StateFile
from meshlet.sidecar.xds_client import DeltaSession, XdsClient, is_complete
from meshlet.xds import types
from tests.xds_fixtures import DOMAIN, api, sidecar_state, web


def _mesh() -> Mesh:
    # One service whose port has no endpoints: its cluster is held with none.
    empty = Service(
        "idle", "default", cluster_ips=("10.96.0.30",), ports=(ServicePort("tcp", 7000),)
    )
    return Mesh((web("10.0.0.1", "10.0.0.2"), api("10.0.1.1"), empty))


def _state() -> SidecarState:
    state = sidecar_state(_mesh())
    # As a control plane says it: an EDS cluster whose assignment is removed has none.
    idle = "outbound|7000||idle.default.svc.cluster.local"
    held = {n: r for n, r in state.accepted[types.ENDPOINT].items() if n != idle}
    accepted = {**state.accepted, types.ENDPOINT: held}
    return replace(state, accepted=accepted, endpoints={**state.endpoints, idle: ()})


def test_a_saved_state_comes_back_equal_and_whole() -> None:
    state = _state()
    saved = decode(encode(state, DOMAIN, 1234.5), DOMAIN)
    assert saved.written_at == 1234.5
    back = saved.state
    assert back.clusters == state.clusters
    assert back.endpoints == state.endpoints
    assert back.listeners == state.listeners
    assert back.outbound_listener == state.outbound_listener
    assert back.name_tables == state.name_tables
    assert back.type_versions == state.type_versions
    assert {t: dict(r) for t, r in back.accepted.items()} == {
        t: dict(r) for t, r in state.accepted.items()
    }
    assert is_complete(back)


def _document(state: SidecarState) -> dict[str, object]:
    result: dict[str, object] = json.loads(encode(state, DOMAIN, 0.0))
    return result


@pytest.mark.parametrize(
    ("spoil", "why"),
    [
        (lambda d: d.update(format="meshlet.sidecar.saved-state/v0"), "its format is"),
        (lambda d: d.pop("format"), "its format is None"),
        (lambda d: d.update(cluster_domain="example.org"), "for cluster domain 'example.org'"),
        (lambda d: d.update(types="nope"), "no list of types"),
        (
            lambda d: d["types"].append(
                {"type_url": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"}
            ),
            "which the sidecar does not use",
        ),
        (lambda d: d["types"][0]["resources"][0].__setitem__(2, "!!"), "is not base64"),
        (lambda d: d["types"][0]["resources"][0].__setitem__(2, "AAAA"), "the validator refuses"),
        (lambda d: d["types"][0]["resources"].append([1, 2]), "resource is malformed"),
        (lambda d: d["types"][1].update(empty="x"), "without endpoints is malformed"),
        (lambda d: d["types"][0].update(resources=None), "cds resources are not a list"),
        (lambda d: d["types"][0].update(resources=5), "cds resources are not a list"),
        # A listener whose cluster is not in the file: what the live validator refuses too.
        (lambda d: d["types"].pop(0), "the validator refuses it: Listener"),
    ],
)
def test_a_saved_state_that_does_not_fit_is_refused_with_its_reason(spoil, why) -> None:  # type: ignore[no-untyped-def]
    document = _document(_state())
    spoil(document)
    with pytest.raises(SavedStateError, match=why.replace("(", r"\(")):
        decode(json.dumps(document).encode(), DOMAIN)


@pytest.mark.parametrize("cut", [0, 1, 100, -1])
def test_a_cut_short_file_is_refused(cut: int) -> None:
    data = encode(_state(), DOMAIN, 0.0)
    with pytest.raises(SavedStateError, match="not whole JSON"):
        decode(data[:cut], DOMAIN)


def test_json_nested_past_any_of_ours_is_refused() -> None:
    with pytest.raises(SavedStateError, match="nested too deep"):
        decode(b"[" * 200_000 + b"]" * 200_000, DOMAIN)


def test_bytes_that_are_not_text_are_refused() -> None:
    with pytest.raises(SavedStateError, match="not UTF-8"):
        decode(b'{"format": "\x80"}', DOMAIN)


def test_the_file_names_its_format_first_for_a_reader() -> None:
    assert _document(SidecarState())["format"] == FORMAT


# --- the file -------------------------------------------------------------------


async def _until(condition: Callable[[], bool], what: str, within: float = 30.0) -> None:
    """Until `condition()` holds, letting the loop (and the writer's thread) run."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _file(tmp_path: Path, **kwargs: float) -> StateFile:
    return StateFile(str(tmp_path / "state"), DOMAIN, **kwargs)


def test_no_file_is_one_line_and_nothing_to_serve(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "meshlet.sidecar.state_file")
    assert _file(tmp_path).load() is None
    assert [r.getMessage() for r in caplog.records] == [
        f"no saved config at {tmp_path}/state/xds-state.json: waiting for the control plane"
    ]


def _placed(tmp_path: Path) -> StateFile:
    state_file = _file(tmp_path)
    os.makedirs(os.path.dirname(state_file.path))
    return state_file


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda p: p.write_bytes(b'{"format": "x"'), "not whole JSON"),
        (lambda p: p.write_bytes(b"{}"), "its format is None"),
        (lambda p: os.mkfifo(p), "not a regular file"),
        (lambda p: p.symlink_to("/dev/zero"), "not a regular file"),
        (lambda p: p.symlink_to(p), "Too many levels of symbolic links"),
        (lambda p: p.mkdir(), "Is a directory"),
    ],
)
def test_a_file_that_cannot_be_used_is_one_warning_and_the_start_goes_on(  # type: ignore[no-untyped-def]
    tmp_path: Path, caplog: pytest.LogCaptureFixture, make, why
) -> None:
    state_file = _placed(tmp_path)
    make(Path(state_file.path))
    caplog.set_level(logging.INFO, "meshlet.sidecar.state_file")
    assert state_file.load() is None
    [line] = [r for r in caplog.records]
    assert line.levelno == logging.WARNING
    assert why in line.getMessage() and "waiting for the control plane" in line.getMessage()


async def test_writes_are_coalesced_atomic_and_read_back(tmp_path: Path) -> None:
    state_file = _file(tmp_path, quiet_seconds=0.2)
    state = _state()
    for _ in range(50):  # a burst of accepted updates
        state_file.note(state)
    await _until(lambda: state_file.writes == 1, "the quiet period's write")
    await state_file.close()  # nothing left to write: the burst was one write
    assert state_file.writes == 1
    assert os.listdir(os.path.dirname(state_file.path)) == ["xds-state.json"]  # no temporaries
    saved = state_file.load()
    assert saved is not None and saved.state.clusters == state.clusters


async def test_close_writes_what_is_pending(tmp_path: Path) -> None:
    state_file = _file(tmp_path, quiet_seconds=3600)
    state_file.note(_state())
    await state_file.close()
    assert state_file.writes == 1 and state_file.load() is not None


async def test_a_directory_that_cannot_be_written_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the directory should be")
    state_file = _file(tmp_path, quiet_seconds=0.01)
    caplog.set_level(logging.WARNING, "meshlet.sidecar.state_file")
    for _ in range(3):  # three attempts: close writes what is pending
        state_file.note(_state())
        await state_file.close()
    assert state_file.writes == 0
    assert len([r for r in caplog.records if "cannot save the config" in r.getMessage()]) == 1


def test_a_restored_client_is_ready_and_stale_and_resumes_with_its_versions() -> None:
    seen: list[SidecarState] = []
    client = XdsClient("127.0.0.1:1", "n", "default", "", DOMAIN, "delta", on_state=seen.append)
    state = _state()
    client.restore(state, "/x/xds-state.json")
    status = client.status()
    assert status.ready and status.stale and status.restored_from == "/x/xds-state.json"
    assert seen == [state]
    assert status.types[types.CLUSTER].accepted_version == "1"
    opening = DeltaSession(Node(id="n")).opening(client.state)
    by_type = {r.type_url: r for r in opening}
    assert dict(by_type[types.CLUSTER].initial_resource_versions) == {
        name: "1" for name in state.clusters
    }
    eds = by_type[types.ENDPOINT]
    assert set(eds.resource_names_subscribe) == set(state.endpoints)
    assert set(eds.initial_resource_versions) == set(state.accepted[types.ENDPOINT])
    assert dict(by_type[types.NAME_TABLE].initial_resource_versions) == {
        n: "1" for n in state.name_tables
    }


def test_endpoints_are_kept_as_sent() -> None:
    back = decode(encode(_state(), DOMAIN, 0.0), DOMAIN).state
    cluster = "outbound|80||web.default.svc.cluster.local"
    assert {e.address for e in back.endpoints[cluster]} == {"10.0.0.1", "10.0.0.2"}
    assert all(isinstance(e, Endpoint) for e in back.endpoints[cluster])


async def test_a_config_over_the_limit_is_not_saved_and_no_older_one_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    small = sidecar_state(Mesh((web("10.0.0.1"),)))
    limit = len(encode(small, DOMAIN, 0.0)) + 100
    state_file = _file(tmp_path, quiet_seconds=0.01, max_bytes=limit)
    state_file.note(small)
    await state_file.close()
    caplog.set_level(logging.WARNING, "meshlet.sidecar.state_file")
    bigger = StateFile(os.path.dirname(state_file.path), DOMAIN, max_bytes=limit)
    bigger.note(_state())
    await bigger.close()
    assert (state_file.writes, bigger.writes) == (1, 0)
    assert "over" in caplog.records[0].getMessage()
    assert os.listdir(os.path.dirname(state_file.path)) == []


def test_a_temporary_file_left_by_a_crash_is_removed_at_start(tmp_path: Path) -> None:
    state_file = _placed(tmp_path)
    leftover = Path(os.path.dirname(state_file.path)) / ".xds-state.json.4242.tmp"
    leftover.write_bytes(b"half a write")
    state_file.load()
    assert not leftover.exists()


async def test_close_waits_for_a_write_under_way(tmp_path: Path) -> None:
    state_file = _file(tmp_path, quiet_seconds=0)
    state_file.note(_state())
    await _until(lambda: state_file._inflight is not None, "the write to begin, in its thread")
    await state_file.close()
    assert state_file.writes == 1
    assert os.listdir(os.path.dirname(state_file.path)) == ["xds-state.json"]
