"""A real proxyless gRPC client (grpcio, xds:/// target) against the real control plane.

Three real gRPC backends each answer with their own name; the client process
dials the service's xds:/// name and the names it gets back show which
backends the control plane's config made it reach.
"""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.grpc_who_server import who_handler
from tests.procs import (
    PYTHON,
    ControlPlane,
    Process,
    control_plane,
    endpoint_slice_manifest,
    free_port,
    running,
    service_manifest,
    wait_until,
    write_manifests,
)

CLIENT = Path(__file__).with_name("grpc_xds_client.py")
TARGET = "xds:///greeter.default.svc.cluster.local:50051"
NODE_ID = "proxyless-1"
BACKENDS = {"127.0.0.11": "backend-11", "127.0.0.12": "backend-12", "127.0.0.13": "backend-13"}
CALLS = 30
CONVERGE = 30.0
# A reply line from the client: 30 calls take milliseconds; this only bounds a hang.
REPLY_TIMEOUT = 60.0


@contextlib.contextmanager
def backends(addresses: dict[str, str]) -> Iterator[int]:
    """One gRPC server per address, all on one port, each answering with its name."""
    for _ in range(20):
        port = free_port(next(iter(addresses)))
        servers: list[grpc.Server] = []
        try:
            for address, name in addresses.items():
                server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
                server.add_generic_rpc_handlers([who_handler(name)])
                servers.append(server)
                server.add_insecure_port(f"{address}:{port}")
                server.start()
        except RuntimeError:  # the port was taken on another address: try another
            for server in servers:
                server.stop(None).wait()
            continue
        try:
            yield port
        finally:
            for server in servers:
                server.stop(None).wait()
        return
    pytest.fail(f"no port free on all of {sorted(addresses)}")


def greeter(port: int, *addresses: str) -> list[dict[str, Any]]:
    return [
        service_manifest("greeter", "default", "10.96.0.30", [("grpc", 50051, "grpc")]),
        endpoint_slice_manifest("greeter", "default", [("grpc", port)], addresses),
    ]


class XdsClient:
    """The client subprocess: ask for N calls, read back what they reached."""

    def __init__(self, process: Process) -> None:
        self.process = process

    def call(self, count: int = CALLS) -> dict[str, Any]:
        self.process.check_alive()
        stdin, stdout = self.process.popen.stdin, self.process.popen.stdout
        assert stdin is not None and stdout is not None
        stdin.write(f"{count}\n".encode())
        stdin.flush()
        ready, _, _ = select.select([stdout], [], [], REPLY_TIMEOUT)
        if not ready:
            raise AssertionError(f"the gRPC client gave no answer in {REPLY_TIMEOUT:g}s")
        line = stdout.readline()
        if not line:
            self.process.check_alive()
            raise AssertionError("the gRPC client closed its output")
        result: dict[str, Any] = json.loads(line)
        return result


@contextlib.contextmanager
def xds_client(plane: ControlPlane, tmp_path: Path) -> Iterator[XdsClient]:
    bootstrap = tmp_path / "grpc-bootstrap.json"
    bootstrap.write_text(
        json.dumps(
            {
                "xds_servers": [
                    {
                        "server_uri": plane.xds_address,
                        "channel_creds": [{"type": "insecure"}],
                        "server_features": ["xds_v3"],
                    }
                ],
                "node": {"id": NODE_ID, "locality": {}},
            }
        )
    )
    env = {
        "GRPC_XDS_BOOTSTRAP": str(bootstrap),
        # In the log shown on failure: what gRPC's xDS client got and why it rejected it.
        "GRPC_VERBOSITY": "debug",
        "GRPC_TRACE": "xds_client,xds_resolver,cds_lb,xds_cluster_impl_lb",
    }
    with running(
        [PYTHON, str(CLIENT), TARGET],
        "proxyless gRPC client",
        tmp_path / "grpc-client.log",
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as process:
        yield XdsClient(process)


def reached(client: XdsClient, expected: set[str]) -> Any:
    return wait_until(
        lambda result: set(result["names"]) == expected and not result["errors"],
        CONVERGE,
        f"{CALLS} calls to {TARGET} to reach exactly {sorted(expected)}",
        observe=client.call,
    )


def acked_without_nack(plane: ControlPlane) -> object:
    client = plane.client(NODE_ID)
    if client is None:
        return f"{NODE_ID} not connected; clients: {[c.get('node') for c in plane.clients()]}"
    status = client["types"]
    for short in ("lds", "cds", "eds"):
        entry = status.get(short)
        if entry is None or entry["nacks"] or entry["last_nack"] or entry["version_nacked"]:
            return status
        if not entry["version_acked"] or entry["version_acked"] != entry["version_sent"]:
            return status
    return True


def assert_acked_without_nack(plane: ControlPlane) -> None:
    observed = wait_until(
        lambda seen: (
            seen is True or (isinstance(seen, dict) and any(e.get("nacks") for e in seen.values()))
        ),
        CONVERGE,
        f"{NODE_ID} to ACK LDS, CDS and EDS with no NACK",
        observe=lambda: acked_without_nack(plane),
    )
    assert observed is True, f"{NODE_ID} NACKed: {observed}"


def test_proxyless_grpc_reaches_every_backend_and_follows_removal(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    with backends(BACKENDS) as port:
        write_manifests(manifests / "greeter.yaml", *greeter(port, *BACKENDS))
        with control_plane(manifests, tmp_path) as plane, xds_client(plane, tmp_path) as client:
            reached(client, set(BACKENDS.values()))
            assert_acked_without_nack(plane)
            status = plane.client(NODE_ID)
            assert status is not None
            # The API listener was sent because the client asked for it by name.
            assert status["types"]["lds"]["subscribed"] == [TARGET.removeprefix("xds:///")]

            # 127.0.0.13 leaves the service; its server keeps running, so only the
            # config pushed to the client can keep calls away from it.
            write_manifests(manifests / "greeter.yaml", *greeter(port, "127.0.0.11", "127.0.0.12"))
            reached(client, {"backend-11", "backend-12"})
            assert_acked_without_nack(plane)
