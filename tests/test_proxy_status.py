"""`meshlet proxy-status` and `meshlet proxy-config` against real processes: a control
plane, a meshlet sidecar, and raw gRPC ADS clients that never ACK or that NACK.

The tables' pure builders are checked first on small inputs, then every command runs
as a subprocess, as an operator runs it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DiscoveryRequest,
    DiscoveryResponse,
)
from google.rpc.status_pb2 import Status

from meshlet.commands import config_tables, status_tables
from meshlet.commands.tables import render
from meshlet.controlplane.cache import Snapshot
from meshlet.controlplane.sotw import SotwStream
from meshlet.xds import types
from tests.procs import (
    ControlPlane,
    control_plane,
    endpoint_slice_manifest,
    free_port,
    service_manifest,
    wait_until,
    write_manifests,
)
from tests.test_cli import run_meshlet
from tests.test_nack import CDS, INVALID_ARGUMENT, ads_stream
from tests.test_sidecar_pod_ports import pod_sidecar
from tests.xds_fixtures import api, snapshot_of, web

CONVERGE = 30.0
WEB = "outbound|80||web.default.svc.cluster.local"
API = "outbound|8080||api.shop.svc.cluster.local"
REASON = "cluster web: no thanks"


# --- the pure builders ---------------------------------------------------------------


def watch(**fields: Any) -> dict[str, Any]:
    return {
        "wildcard": True,
        "nonce_sent": "3",
        "nonce_answered": "3",
        "last_answer": "ack",
        "version_acked": "v2",
        **fields,
    }


def test_each_state_of_a_type() -> None:
    state = status_tables.sync_state
    assert state(None, "v2", True) == "-"
    assert state(watch(nonce_sent="", nonce_answered="", last_answer=""), "v2", True) == "NOT SENT"
    assert state(watch(), "v2", False) == "SYNCED"
    assert state(watch(nonce_sent="4"), "v3", True) == "STALE"  # sent, not answered
    assert state(watch(last_answer="nack"), "v2", True) == "NACKED"
    # ACKed an older version while a newer one waits to be sent.
    assert state(watch(), "v3", False) == "STALE"
    # Caught up with the snapshot: what changed was nothing this client takes.
    assert state(watch(), "v3", True) == "SYNCED"
    # A named subscriber's version moves with resources it did not ask for.
    assert state(watch(wildcard=False), "v3", False) == "SYNCED"


def test_a_named_subscriber_is_stale_only_for_the_names_it_asked_for() -> None:
    """The stream core, driven with real requests: an EDS client of web alone."""
    first = snapshot_of(web("10.1.0.1"), api("10.2.0.1"))
    stream = SotwStream()
    ask = DiscoveryRequest(type_url=types.ENDPOINT, resource_names=[WEB])
    ask.node.id = "grpc-client"
    (push,), _ = stream.on_request(ask, first)
    sent = DiscoveryResponse.FromString(push.payload)

    def state(snapshot: Snapshot) -> str:
        served = {"generation": snapshot.generation, "types": {"eds": "type version"}}
        return status_tables.stream_states(stream.status(snapshot), served)["eds"]

    assert state(first) == "STALE"  # not answered yet
    ack = DiscoveryRequest(
        type_url=types.ENDPOINT,
        resource_names=[WEB],
        response_nonce=sent.nonce,
        version_info=sent.version_info,
    )
    stream.on_request(ack, first)
    assert state(first) == "SYNCED"
    # api's endpoints change: the type's version moves, nothing this client asked for.
    second = snapshot_of(web("10.1.0.1"), api("10.2.0.2"), previous=first)
    assert second.type_versions[types.ENDPOINT] != sent.version_info
    assert state(second) == "SYNCED" and stream.on_snapshot(second) == []
    # web's change: owed to it before the push is even computed.
    third = snapshot_of(web("10.1.0.9"), api("10.2.0.2"), previous=second)
    assert state(third) == "STALE"
    assert stream.status(third)["types"]["eds"]["names_behind"] == 1
    (push,) = stream.on_snapshot(third)
    assert state(third) == "STALE"  # sent, not ACKed
    sent = DiscoveryResponse.FromString(push.payload)
    ack.response_nonce, ack.version_info = sent.nonce, sent.version_info
    stream.on_request(ack, third)
    assert state(third) == "SYNCED"


def test_the_status_table_puts_nack_messages_below_it() -> None:
    clients = [
        {
            "node": "b",
            "cluster": "c",
            "protocol": "sotw",
            "generation": 2,
            "types": {
                "cds": watch(last_answer="nack", version_nacked="v9", last_nack="bad"),
                "eds": watch(wildcard=False),
            },
        }
    ]
    text = status_tables.status_table(clients, {"generation": 2, "types": {"cds": "v2"}})
    lines = text.splitlines()
    assert lines[0] == "control plane: generation 2, serving CDS v2, LDS -, EDS -, RDS -, NDS -"
    assert lines[2].split() == ["NODE", "CLUSTER", "PROTOCOL", "CDS", "LDS", "EDS", "RDS", "NDS"]
    assert lines[3].split() == ["b", "c", "sotw", "NACKED", "(v2)", "-", "SYNCED", "(v2)", "-", "-"]
    assert lines[-1] == "NACK from b for CDS version v9: bad"


def test_render_pads_columns() -> None:
    assert render(["A", "BB"], [["xxx", "y"], ["z", ""]]) == "A    BB\nxxx  y\nz"


def test_config_tables_from_admin_pages() -> None:
    clusters = {
        WEB: {
            "service": "default/web",
            "lb_policy": "least-request",
            "endpoints": [
                {"address": "10.1.0.1:8080", "health": "HEALTHY", "zone": "a", "ejected": False},
                {
                    "address": "10.1.0.2:8080",
                    "health": "HEALTHY",
                    "zone": "",
                    "ejected": True,
                    "ejected_for_seconds": 12.5,
                },
            ],
        }
    }
    assert config_tables.clusters_table(clusters)[1] == [[WEB, "default/web", "least-request", "2"]]
    assert config_tables.endpoints_table(clusters)[1] == [
        [WEB, "10.1.0.1:8080", "HEALTHY", "a", "no"],
        [WEB, "10.1.0.2:8080", "HEALTHY", "-", "yes, 12.5s more"],
    ]
    listener = {"address": {"socketAddress": {"address": "fd00::1", "portValue": 80}}}
    dump = {"resources": {"lds": {"resources": {"x": {"resource": listener}}}}}
    assert config_tables.listeners_table(dump)[1] == [["x", "[fd00::1]:80", "-"]]
    table = {"a.b.svc.cluster.local": {"cname": "example.org", "namespace": "b", "service": "a"}}
    dump = {"resources": {"nds": {"resources": {"b": {"resource": {"table": table}}}}}}
    assert config_tables.names_table(dump)[1] == [
        ["a.b.svc.cluster.local", "CNAME example.org", "b/a"]
    ]


# --- against real processes -----------------------------------------------------------


def mesh_manifests(folder: Path, web_addresses: tuple[str, ...]) -> None:
    """web (default) with a zone on its first endpoint and a terminating last one, and
    api (shop), one endpoint."""
    web_slice = endpoint_slice_manifest("web", "default", [("http", 8080)], web_addresses)
    web_slice["endpoints"][0]["zone"] = "zone-a"
    web_slice["endpoints"][-1]["conditions"] = {
        "ready": False,
        "serving": True,
        "terminating": True,
    }
    write_manifests(
        folder / "mesh.yaml",
        service_manifest("web", "default", "10.96.0.10", [("http", 80, "http")]),
        web_slice,
        service_manifest("api", "shop", "10.96.0.20", [("grpc", 8080, 9090)]),
        endpoint_slice_manifest("api", "shop", [("grpc", 9090)], ["10.2.0.1"]),
    )


class Mesh:
    def __init__(self, plane: ControlPlane, admin_port: int, folder: Path) -> None:
        self.plane, self.admin_port, self.folder = plane, admin_port, folder

    def status(self, *args: str) -> subprocess.CompletedProcess[str]:
        address = f"--control-plane=127.0.0.1:{self.plane.admin_port}"
        return run_meshlet("proxy-status", address, *args)

    def status_json(self) -> dict[str, Any]:
        shown = self.status("-o", "json")
        assert shown.returncode == 0, shown.stderr
        found: dict[str, Any] = json.loads(shown.stdout)
        return found

    def states(self) -> dict[str, dict[str, str]]:
        return {s["node"]: s for s in self.status_json()["status"]}

    def config(self, what: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run_meshlet("proxy-config", what, f"--admin=127.0.0.1:{self.admin_port}", *args)

    def rows(self, what: str) -> list[list[str]]:
        shown = self.config(what)
        assert shown.returncode == 0, shown.stderr
        return [line.split() for line in shown.stdout.splitlines()[1:]]


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    folder = tmp_path / "manifests"
    folder.mkdir()
    mesh_manifests(folder, ("10.1.0.1", "10.1.0.2", "10.1.0.3"))
    xds_port = free_port()
    with (
        control_plane(folder, tmp_path, xds_port=xds_port) as plane,
        pod_sidecar(tmp_path, xds_port, "--node-id=pod-a", "--namespace=default") as (_, ports),
    ):
        yield Mesh(plane, ports["admin"], folder)


SYNCED = {t: "SYNCED" for t in status_tables.TYPES}


def row_of(text: str, node: str) -> str:
    (row,) = [line for line in text.splitlines() if line.startswith(f"{node} ")]
    return row


def test_synced_stale_and_nacked_clients(mesh: Mesh) -> None:
    def sidecar_synced(states: dict[str, dict[str, str]]) -> bool:
        return SYNCED.items() <= states.get("pod-a", {}).items()

    wait_until(sidecar_synced, CONVERGE, "pod-a SYNCED on every type", observe=mesh.states)
    with (
        ads_stream(mesh.plane, delta=True) as silent,
        ads_stream(mesh.plane, delta=False) as rejecting,
    ):
        # A delta client that takes its clusters and never answers.
        silent.send(DeltaDiscoveryRequest(node=Node(id="never-acks"), type_url=CDS))
        assert silent.receive().resources
        # A SotW client that rejects the clusters it gets.
        rejecting.send(DiscoveryRequest(node=Node(id="rejects"), type_url=CDS))
        response = rejecting.receive()
        rejection = Status(code=INVALID_ARGUMENT, message=REASON)
        rejecting.send(
            DiscoveryRequest(type_url=CDS, response_nonce=response.nonce, error_detail=rejection)
        )
        states = wait_until(
            lambda s: s.get("rejects", {}).get("cds") == "NACKED" and "never-acks" in s,
            CONVERGE,
            "the NACK to show",
            observe=mesh.states,
        )
        assert states["never-acks"] | {"node": ""} == {
            "node": "",
            "protocol": "delta",
            "cds": "STALE",
            "lds": "-",
            "eds": "-",
            "rds": "-",
            "nds": "-",
        }
        assert states["pod-a"]["protocol"] == "delta" and SYNCED.items() <= states["pod-a"].items()

        shown = mesh.status()
        assert shown.returncode == 0, shown.stderr
        raw = mesh.status_json()
        served = raw["versions"]["types"]
        cells = " ".join(f"{state} ({served[t][:8]})" for t, state in SYNCED.items())
        assert (
            row_of(shown.stdout, "pod-a").split() == f"pod-a meshlet-sidecar delta {cells}".split()
        )
        assert row_of(shown.stdout, "never-acks").split()[1:] == ["-", "delta", "STALE", *"----"]
        assert row_of(shown.stdout, "rejects").split()[1:] == ["-", "sotw", "NACKED", *"----"]
        assert (
            f"NACK from rejects for CDS version {response.version_info}: {REASON}" in shown.stdout
        )
        assert shown.stdout.splitlines()[0].startswith(
            f"control plane: generation {raw['versions']['generation']}, serving CDS "
            f"{served['cds'][:8]}, LDS {served['lds'][:8]}"
        )

        # A change: the sidecar ACKs the new endpoints; the silent client stays STALE.
        eds_before = served["eds"]
        mesh_manifests(mesh.folder, ("10.1.0.1", "10.1.0.4", "10.1.0.3"))
        raw = wait_until(
            lambda r: (
                r["versions"]["types"]["eds"] != eds_before
                and _states(r)["pod-a"]["eds"] == "SYNCED"
            ),
            CONVERGE,
            "pod-a SYNCED on the new endpoints",
            observe=mesh.status_json,
        )
        (sidecar,) = [c for c in raw["clients"] if c["node"] == "pod-a"]
        assert sidecar["types"]["eds"]["version_acked"] == raw["versions"]["types"]["eds"]
        assert _states(raw)["never-acks"]["cds"] == "STALE"

        # A new service changes the clusters: the client that rejected them takes the
        # new ones, ACKs, and is SYNCED; its NACK leaves the table.
        write_manifests(
            mesh.folder / "db.yaml",
            service_manifest("db", "default", "10.96.0.30", [("pg", 5432, 5432)]),
        )
        update = rejecting.receive()
        assert update.version_info != response.version_info
        rejecting.send(
            DiscoveryRequest(
                type_url=CDS, version_info=update.version_info, response_nonce=update.nonce
            )
        )
        raw = wait_until(
            lambda r: _states(r)["rejects"]["cds"] == "SYNCED",
            CONVERGE,
            "the client that NACKed to be SYNCED on its next ACK",
            observe=mesh.status_json,
        )
        assert raw["versions"]["types"]["cds"] == update.version_info
        assert _states(raw)["never-acks"]["cds"] == "STALE"
        assert "NACK from" not in mesh.status().stdout
    # Gone from the control plane, gone from the table.
    wait_until(lambda s: set(s) == {"pod-a"}, CONVERGE, "the raw clients gone", observe=mesh.states)


def _states(raw: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {s["node"]: s for s in raw["status"]}


def test_proxy_config_shows_what_the_sidecar_holds(mesh: Mesh) -> None:
    api_endpoint = ["shop/api", "least-request", "1"]  # HTTP ports: least request
    wait_until(
        lambda rows: [API, *api_endpoint] in rows,
        CONVERGE,
        "the sidecar to hold api's cluster",
        observe=lambda: mesh.rows("clusters"),
    )
    assert mesh.rows("clusters") == [
        ["PassthroughCluster", "-", "round-robin", "0"],
        [API, *api_endpoint],
        [WEB, "default/web", "least-request", "3"],
    ]
    assert mesh.rows("endpoints") == [
        [API, "10.2.0.1:9090", "HEALTHY", "-", "no"],
        [WEB, "10.1.0.1:8080", "HEALTHY", "zone-a", "no"],
        [WEB, "10.1.0.2:8080", "HEALTHY", "-", "no"],
        [WEB, "10.1.0.3:8080", "DRAINING", "-", "no"],
    ]
    outbound = mesh.plane.outbound_port
    # Both ports are HTTP (named http and grpc): their listeners take routes over RDS.
    assert mesh.rows("listeners") == [
        ["10.96.0.10_80", "10.96.0.10:80", "routes=web.default.svc.cluster.local:80"],
        ["10.96.0.20_8080", "10.96.0.20:8080", "routes=api.shop.svc.cluster.local:8080"],
        ["virtualOutbound", f"0.0.0.0:{outbound}", "PassthroughCluster"],
    ]
    unseen = "connect-failure,refused-stream,reset-before-request"
    answered = f"{unseen},retriable-status-codes,unavailable"
    web_routes = "web.default.svc.cluster.local:80"
    wait_until(
        lambda rows: len(rows) == 14,
        CONVERGE,
        "the sidecar to hold both ports' routes",
        observe=lambda: mesh.rows("routes"),
    )
    # One route per idempotent method, which alone retries a 503, then the catch-all.
    assert mesh.rows("routes")[-7:] == [
        *(
            [web_routes, m, WEB, "2", answered, "0s"]
            for m in ("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE")
        ),
        [web_routes, "*", WEB, "2", unseen, "0s"],
    ]
    routes = json.loads(mesh.config("routes", "-o", "json").stdout)
    assert set(routes["resources"]) == {web_routes, "api.shop.svc.cluster.local:8080"}
    assert mesh.rows("names") == [
        ["api.shop.svc.cluster.local", "10.96.0.20", "shop/api"],
        ["web.default.svc.cluster.local", "10.96.0.10", "default/web"],
    ]
    # -o json: the raw pages, the part of /config_dump the table is built from.
    clusters = json.loads(mesh.config("endpoints", "-o", "json").stdout)
    zones = {e["address"]: e["zone"] for e in clusters[WEB]["endpoints"]}
    assert zones == {"10.1.0.1:8080": "zone-a", "10.1.0.2:8080": "", "10.1.0.3:8080": ""}
    listeners = json.loads(mesh.config("listeners", "-o", "json").stdout)
    assert set(listeners["resources"]) == {"10.96.0.10_80", "10.96.0.20_8080", "virtualOutbound"}
    names = json.loads(mesh.config("names", "--output=json").stdout)
    assert set(names["resources"]) == {"default", "shop"}
    # Asked at something that is not a sidecar's admin port: one line, exit 1.
    wrong = run_meshlet("proxy-config", "clusters", f"--admin=127.0.0.1:{mesh.plane.admin_port}")
    assert wrong.returncode == 1
    assert wrong.stderr.startswith(
        f"meshlet proxy-config: the sidecar at 127.0.0.1:{mesh.plane.admin_port} answered "
        "/clusters with HTTP 404: not found"
    )
    assert wrong.stderr.count("\n") == 1 and wrong.stdout == ""


@pytest.mark.parametrize(
    "command",
    [
        ["proxy-status", "--control-plane"],
        ["proxy-config", "names", "--admin"],
    ],
)
def test_nothing_listening_is_one_line_and_exit_1(command: list[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    *args, flag = command
    shown = run_meshlet(*args, f"{flag}={address}")
    assert shown.returncode == 1
    server = "control plane" if args[0] == "proxy-status" else "sidecar"
    assert shown.stderr == (
        f"meshlet {args[0]}: cannot ask the {server} at {address}: [Errno 111] Connection refused\n"
    )
    assert shown.stdout == ""
