"""Real Envoy fed by the control plane balances each request of an HTTP/2 port: one
gRPC client connection, captured by meshlet's rules in a network namespace, spread
over every backend (the same routes and clusters the sidecar takes).

Everything runs inside the lab pod: the gRPC backends (real grpcio servers on
loopback addresses), the control plane, Envoy on the capture port, and a real
grpcio client dialling the Service's ClusterIP on one channel.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from tests.envoy_peer import envoy
from tests.netlab import inside_capture_lab
from tests.procs import (
    PYTHON,
    control_plane,
    endpoint_slice_manifest,
    service_manifest,
    wait_until,
    write_manifests,
)

HERE = Path(__file__).parent
BACKENDS = {"127.0.0.11": "backend-11", "127.0.0.12": "backend-12", "127.0.0.13": "backend-13"}
BACKEND_PORT = 7000
VIP, PORT = "10.96.0.30", 50051
CLUSTER = f"outbound|{PORT}||greeter.default.svc.cluster.local"
ROUTES = f"greeter.default.svc.cluster.local:{PORT}"
CAPTURE_PORT = 15001  # where the lab's rules send service traffic
CALLS = 300
CONVERGE = 30.0


@contextlib.contextmanager
def who_servers() -> Iterator[None]:
    specs = [f"{a}={n}" for a, n in BACKENDS.items()]
    argv = [PYTHON, str(HERE / "grpc_who_server.py"), str(BACKEND_PORT), *specs]
    server = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"
        yield
    finally:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.close()
        server.stdout.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def calls_through_one_channel(count: int) -> dict[str, list[str]]:
    """`count` unary calls on one channel (one connection) to the ClusterIP."""
    argv = [PYTHON, str(HERE / "grpc_xds_client.py"), f"{VIP}:{PORT}", "--timeout=5"]
    done = subprocess.run(argv, input=f"{count}\n", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, list[str]] = json.loads(done.stdout)
    return result


def test_envoy_spreads_one_grpc_connections_calls_over_every_backend(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_manifests(
        manifests / "greeter.yaml",
        service_manifest("greeter", "default", VIP, [("grpc", PORT, "grpc")]),
        endpoint_slice_manifest("greeter", "default", [("grpc", BACKEND_PORT)], list(BACKENDS)),
    )
    with (
        inside_capture_lab(),
        who_servers(),
        control_plane(manifests, tmp_path, outbound_port=CAPTURE_PORT) as plane,
        envoy(plane, tmp_path, "DELTA_GRPC") as proxy,
    ):
        wait_until(
            lambda hosts: hosts.get(CLUSTER) == {f"{a}:{BACKEND_PORT}" for a in BACKENDS},
            CONVERGE,
            "Envoy to hold the greeter cluster with its three backends",
            observe=proxy.cluster_hosts,
        )
        wait_until(
            lambda names: ROUTES in names,
            CONVERGE,
            "Envoy to hold the greeter port's routes",
            observe=proxy.route_configs,
        )
        result = calls_through_one_channel(CALLS)
        assert result["errors"] == []
        shares = Counter(result["names"])
        assert set(shares) == set(BACKENDS.values())
        for name, count in shares.items():
            assert abs(count - CALLS / 3) <= CALLS / 3 * 0.1, f"{name} got {count}: {shares}"
        # One client connection, each request balanced: every backend has an upstream one.
        # (Envoy counts a handed-off connection on the listener that took it.)
        assert proxy.counter(f"listener.{VIP}_{PORT}.downstream_cx_total") == 1
        assert proxy.counter(f"cluster.{CLUSTER}.upstream_rq_total") == CALLS
        assert proxy.counter(f"cluster.{CLUSTER}.upstream_cx_http2_total") == len(BACKENDS)
