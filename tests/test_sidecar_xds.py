"""The sidecar's xDS client against the real control-plane process, over delta and SotW.

The control plane runs as `meshlet control-plane` on a folder of manifests
(tests/procs.py); the client runs in the test's event loop. Every wait polls a
real condition (the client's state and status, the control plane's
/debug/clients); every task is cancelled and awaited, every process ended by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from meshlet.backoff import BackoffPolicy
from meshlet.model import Health
from meshlet.sidecar.state import SidecarState
from meshlet.sidecar.xds_client import XdsClient, XdsProtocol
from meshlet.xds import types
from tests.procs import (
    control_plane,
    endpoint_slice_manifest,
    free_port,
    service_manifest,
    stop_process,
    write_manifests,
)

CONVERGE = 30.0
WEB = "outbound|80||web.default.svc.cluster.local"
API = "outbound|9090||api.default.svc.cluster.local"
DB = "outbound|5432||db.default.svc.cluster.local"
# Quick retries keep the test short; the policy itself is tested in test_sidecar_xds_core.py.
TEST_BACKOFF = BackoffPolicy(base_seconds=0.05, cap_seconds=1.0, reset_after_seconds=10.0)

T = TypeVar("T")


async def _poll(
    observe: Callable[[], Awaitable[T]], ok: Callable[[T], object], what: str, within: float
) -> T:
    deadline = time.monotonic() + within
    last: object = "<nothing observed>"
    while True:
        try:
            value = await observe()
            last = value
            if ok(value):
                return value
        except OSError as exc:  # the admin port not up yet, ...
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within:g}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(0.02)


async def until(
    observe: Callable[[], T], ok: Callable[[T], object], what: str, within: float = CONVERGE
) -> T:
    """Poll the client's own state without blocking the event loop it runs in."""

    async def now() -> T:
        return observe()

    return await _poll(now, ok, what, within)


async def until_served(
    observe: Callable[[], T], ok: Callable[[T], object], what: str, within: float = CONVERGE
) -> T:
    """Poll the control plane (blocking HTTP) from a thread, so the client keeps running."""
    return await _poll(lambda: asyncio.to_thread(observe), ok, what, within)


class Sidecar:
    """An XdsClient running as a task, and every state it handed over."""

    def __init__(self, client: XdsClient) -> None:
        self.client = client
        self.states: list[SidecarState] = []

    @property
    def state(self) -> SidecarState:
        return self.client.state


@contextlib.asynccontextmanager
async def sidecar(
    address: str, protocol: XdsProtocol, node_id: str, domain: str = "cluster.local"
) -> AsyncIterator[Sidecar]:
    states: list[SidecarState] = []
    client = XdsClient(
        address, node_id, "default", "zone-a", domain, protocol, states.append, backoff=TEST_BACKOFF
    )
    handle = Sidecar(client)
    handle.states = states
    task = asyncio.create_task(client.run())
    try:
        yield handle
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def service(name: str, ip: str, port: int, target: int, addresses: Sequence[str]) -> list[Any]:
    return [
        service_manifest(name, "default", ip, [("p", port, target)]),
        endpoint_slice_manifest(name, "default", [("p", target)], addresses),
    ]


def addresses(state: SidecarState, cluster: str) -> list[str]:
    return sorted(e.address for e in state.endpoints.get(cluster, ()))


def names(state: SidecarState) -> set[str]:
    return {name for table in state.name_tables.values() for name in table.table}


@pytest.mark.parametrize("protocol", ["delta", "sotw"])
async def test_follows_the_control_plane_and_resyncs_after_it_restarts(
    tmp_path: Path, protocol: XdsProtocol
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_manifests(
        manifests / "web.yaml", *service("web", "10.96.0.10", 80, 8080, ["10.1.0.1", "10.1.0.2"])
    )
    xds_port, outbound_port = free_port(), free_port("0.0.0.0")
    node_id = f"sidecar-{protocol}"

    with control_plane(
        manifests, tmp_path, xds_port=xds_port, outbound_port=outbound_port
    ) as plane:
        async with sidecar(plane.xds_address, protocol, node_id) as car:
            # 1. The first config arrives whole.
            await until(lambda: car.client.ready, bool, "the client to be ready")
            first = car.state
            assert set(first.clusters) == {types.PASSTHROUGH_CLUSTER, WEB}
            assert first.clusters[types.PASSTHROUGH_CLUSTER].original_destination
            assert addresses(first, WEB) == ["10.1.0.1", "10.1.0.2"]
            assert {e.health for e in first.endpoints[WEB]} == {Health.HEALTHY}
            assert set(first.listeners) == {("10.96.0.10", 80)}
            assert first.listeners[("10.96.0.10", 80)].cluster == WEB
            assert first.outbound_listener is not None
            assert first.outbound_listener.port == outbound_port
            assert set(first.name_tables) == {"default"}
            default = first.name_tables["default"].table
            assert list(default["web.default.svc.cluster.local"].ips) == ["10.96.0.10"]
            status = car.client.status()
            assert status.connected and status.streams_connected == 1
            for type_url in (types.CLUSTER, types.ENDPOINT, types.LISTENER, types.NAME_TABLE):
                assert status.types[type_url].accepted >= 1, type_url
                assert status.types[type_url].rejected == 0, type_url
            client = plane.client(node_id)
            assert client is not None
            assert client["protocol"] == protocol
            assert client["types"]["eds"]["subscribed"] == [WEB]
            # Every namespace's NameTable: a wildcard subscription.
            assert client["types"]["nds"]["wildcard"] is True
            assert client["types"]["nds"]["subscribed"] == []

            # 2. A manifest change: an endpoint goes, a service comes.
            write_manifests(
                manifests / "web.yaml", *service("web", "10.96.0.10", 80, 8080, ["10.1.0.1"])
            )
            write_manifests(
                manifests / "api.yaml", *service("api", "10.96.0.20", 9090, 9090, ["10.2.0.1"])
            )
            changed = await until(
                lambda: car.state,
                lambda s: (
                    addresses(s, WEB) == ["10.1.0.1"]
                    and addresses(s, API) == ["10.2.0.1"]
                    and ("10.96.0.20", 9090) in s.listeners
                    and "api.default.svc.cluster.local" in names(s)
                ),
                "the endpoint removal and the new service",
            )
            assert changed is not first
            assert addresses(first, WEB) == ["10.1.0.1", "10.1.0.2"], "an old state is never edited"
            assert changed.listeners[("10.96.0.20", 9090)].cluster == API
            await until_served(
                lambda: plane.client(node_id),
                lambda c: c is not None and set(c["types"]["eds"]["subscribed"]) == {API, WEB},
                "the client to subscribe to the new cluster's endpoints",
            )

            # 3. The control plane goes away: the last good state stays, the client retries.
            stop_process(plane.process.popen)
            held = car.state
            handed_over = len(car.states)
            attempts = car.client.status().stream_attempts
            await until(
                car.client.status,
                lambda s: not s.connected and s.stream_attempts >= attempts + 3,
                "the client to notice and retry",
            )
            assert car.state is held
            assert len(car.states) == handed_over
            assert car.client.ready, "a sidecar that was ready stays ready on its last good state"
            assert car.client.status().last_stream_error

            # 4. A new control plane on the same port, with changed manifests: the client resyncs.
            (manifests / "api.yaml").unlink()
            write_manifests(
                manifests / "db.yaml", *service("db", "10.96.0.30", 5432, 5432, ["10.3.0.1"])
            )
            with control_plane(
                manifests, tmp_path, xds_port=xds_port, outbound_port=outbound_port
            ) as again:
                resynced = await until(
                    lambda: car.state,
                    lambda s: (
                        set(s.clusters) == {types.PASSTHROUGH_CLUSTER, WEB, DB}
                        and addresses(s, DB) == ["10.3.0.1"]
                        and "db.default.svc.cluster.local" in names(s)
                    ),
                    "the state of the new control plane",
                )
                assert API not in resynced.endpoints
                assert set(resynced.listeners) == {("10.96.0.10", 80), ("10.96.0.30", 5432)}
                assert "api.default.svc.cluster.local" not in names(resynced)
                assert addresses(resynced, WEB) == ["10.1.0.1"]
                reconnected = await until_served(
                    lambda: again.client(node_id),
                    lambda c: c is not None and set(c["types"]["eds"]["subscribed"]) == {DB, WEB},
                    "the client on the new control plane's /debug/clients",
                )
                assert reconnected is not None
                client = reconnected
                assert client["protocol"] == protocol
                status = car.client.status()
                assert status.connected and status.streams_connected == 2
                cds = status.types[types.CLUSTER]
                if protocol == "delta":
                    # Resumed with initial_resource_versions: only the difference came.
                    assert (cds.last_received, cds.last_removed) == (1, 1)
                    assert client["types"]["cds"]["resources"] == 3
                else:
                    # SotW re-sends the world: every cluster, none named as removed.
                    assert (cds.last_received, cds.last_removed) == (3, 0)


@pytest.mark.parametrize("protocol", ["delta", "sotw"])
async def test_a_name_table_of_another_domain_is_nacked(
    tmp_path: Path, protocol: XdsProtocol
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_manifests(manifests / "web.yaml", *service("web", "10.96.0.10", 80, 8080, ["10.1.0.1"]))
    node_id = f"nack-{protocol}"
    expected = (
        'NameTable "default": name web.default.svc.example.org is outside the cluster domain '
        "cluster.local"
    )
    with control_plane(manifests, tmp_path, extra_args=["--cluster-domain=example.org"]) as plane:
        async with sidecar(plane.xds_address, protocol, node_id, "cluster.local") as car:
            seen = await until_served(
                lambda: plane.client(node_id),
                # EDS is asked for after CDS arrives, so its ACK may follow the NACK.
                lambda c: (
                    c is not None
                    and c["types"].get("nds", {}).get("nacks", 0) >= 1
                    and all(
                        c["types"].get(t, {}).get("version_acked") for t in ("cds", "eds", "lds")
                    )
                ),
                "the control plane to see the NameTable NACK and the other types ACKed",
            )
            assert seen is not None
            client = seen
            nds = client["types"][types.short_name(types.NAME_TABLE)]
            assert nds["last_nack"] == expected
            assert nds["version_acked"] == ""
            assert nds["version_nacked"] == nds["version_sent"] != ""
            for accepted in ("cds", "eds", "lds"):
                assert client["types"][accepted]["nacks"] == 0, accepted
                assert client["types"][accepted]["version_acked"], accepted

            status = car.client.status()
            table = status.types[types.NAME_TABLE]
            assert (table.accepted, table.rejected) == (0, 1)
            assert table.last_error == expected
            assert table.rejected_version == nds["version_sent"]
            for type_url in (types.CLUSTER, types.ENDPOINT, types.LISTENER):
                assert status.types[type_url].accepted >= 1, type_url
                assert status.types[type_url].rejected == 0, type_url
            state = car.state
            assert "outbound|80||web.default.svc.example.org" in state.clusters
            assert set(state.listeners) == {("10.96.0.10", 80)}
            assert state.name_tables == {}
            assert not car.client.ready, "ready needs an accepted NameTable"


@pytest.mark.parametrize("protocol", ["delta", "sotw"])
async def test_a_stream_past_its_age_is_asked_to_go_and_resumes_with_nothing_lost(
    tmp_path: Path, protocol: XdsProtocol
) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *service("web", "10.96.0.10", 80, 8080, ["10.1.0.1"]))
    with control_plane(folder, tmp_path, extra_args=["--max-stream-age=1"]) as plane:
        async with sidecar(plane.xds_address, protocol, "aged") as side:
            await until(lambda: side.client.status(), lambda s: s.ready, "the first config")
            # Asked to go (GOAWAY) about every second, it reconnects each time.
            await until(
                lambda: side.client.status().streams_connected,
                lambda n: n >= 3,
                "the sidecar to be asked to reconnect twice",
            )
            status = side.client.status()
            assert status.ready and addresses(side.state, WEB) == ["10.1.0.1"]
            assert all(t.rejected == 0 for t in status.types.values())
            if protocol == "delta":  # resumed from what it held: nothing sent again
                assert status.types[types.CLUSTER].last_received == 0
            # A change after the reconnects still reaches it.
            write_manifests(
                folder / "web.yaml", *service("web", "10.96.0.10", 80, 8080, ["10.1.0.2"])
            )
            await until(
                lambda: addresses(side.state, WEB), lambda a: a == ["10.1.0.2"], "the change"
            )
