"""Each request of an HTTP/2 port balanced on its own: one gRPC client connection,
captured by meshlet's rules in a network namespace, spread over every backend, by
the meshlet sidecar and by real Envoy fed by the same control plane.

Everything runs inside the lab pod: the gRPC backends (real grpcio servers on
loopback addresses, one process each), the control plane, the proxy on the
capture port, and a real grpcio client dialling the Service's ClusterIP on one
channel. The frame-level cases speak raw HTTP/2 from the test's own thread,
which is inside the pod too.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from tests.envoy_peer import envoy
from tests.netlab import inside_capture_lab
from tests.otlp_receiver import otlp_env, receiving
from tests.procs import (
    PYTHON,
    control_plane,
    endpoint_slice_manifest,
    http_get,
    service_manifest,
    wait_until,
    write_manifests,
)
from tests.prom import sample
from tests.sidecar_peer import Sidecar, sidecar

HERE = Path(__file__).parent
BACKENDS = {"127.0.0.11": "backend-11", "127.0.0.12": "backend-12", "127.0.0.13": "backend-13"}
BACKEND_PORT = 7000
VIP, PORT = "10.96.0.30", 50051
CLUSTER = f"outbound|{PORT}||greeter.default.svc.cluster.local"
ROUTES = f"greeter.default.svc.cluster.local:{PORT}"
CAPTURE_PORT = 15001  # where the lab's rules send service traffic
CAPTURE_ADDRESS = f"--outbound-address=127.0.0.1:{CAPTURE_PORT}"
# Enough calls that a fair share is fair within 10%: least request (the default) picks
# between two endpoints drawn at random, so a spread is even only over many calls.
CALLS = 1500
CONVERGE = 30.0
METHOD = b"/meshlet.test.Who/Name"


# --- peers ------------------------------------------------------------------------


@contextlib.contextmanager
def who_servers(
    backends: dict[str, str] = BACKENDS,
    script: str = "grpc_who_server.py",
    port: int = BACKEND_PORT,
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """One server process per backend (so one can be killed), by name: gRPC, or the
    script given."""
    servers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for address, name in backends.items():
            argv = [PYTHON, str(HERE / script), str(port)]
            servers[name] = subprocess.Popen(
                [*argv, f"{address}={name}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
        for server in servers.values():
            assert server.stdout is not None and server.stdout.readline() == b"ready\n"
        yield servers
    finally:
        for server in servers.values():
            _end(server)


def _end(process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            pipe.close()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class OneChannel:
    """The gRPC client process: one channel (one connection) for its life, batches of
    unary calls."""

    def __init__(self) -> None:
        argv = [PYTHON, str(HERE / "grpc_xds_client.py"), f"{VIP}:{PORT}", "--timeout=5"]
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def calls(self, count: int) -> dict[str, list[str]]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(f"{count}\n")
        stdin.flush()
        line = stdout.readline()
        assert line, "the gRPC client ended"
        result: dict[str, list[str]] = json.loads(line)
        return result


@contextlib.contextmanager
def one_channel() -> Iterator[OneChannel]:
    client = OneChannel()
    try:
        yield client
    finally:
        _end(client.process)


def stream_call(
    mode: str, count: int, pause: float = 0.0, server_pause: float = 0.0
) -> dict[str, object]:
    argv = [PYTHON, str(HERE / "grpc_stream_client.py"), f"{VIP}:{PORT}", mode, str(count)]
    argv += [f"--pause={pause}", f"--server-pause={server_pause}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def greeter(
    tmp_path: Path,
    addresses: Sequence[str] = tuple(BACKENDS),
    annotations: dict[str, str] | None = None,
) -> Path:
    manifests = tmp_path / "manifests"
    manifests.mkdir(exist_ok=True)
    write_manifests(
        manifests / "greeter.yaml",
        service_manifest("greeter", "default", VIP, [("grpc", PORT, "grpc")], annotations),
        endpoint_slice_manifest("greeter", "default", [("grpc", BACKEND_PORT)], list(addresses)),
    )
    return manifests


@contextlib.contextmanager
def meshlet_node(tmp_path: Path, manifests: Path) -> Iterator[Sidecar]:
    """The control plane and the sidecar on the capture port, in the lab pod."""
    with (
        control_plane(manifests, tmp_path) as plane,
        sidecar(plane, tmp_path, "delta", extra_args=[CAPTURE_ADDRESS]) as car,
    ):
        yield car


def assert_even(result: dict[str, list[str]], names: Sequence[str] = tuple(BACKENDS.values())):
    assert result["errors"] == []
    shares = Counter(result["names"])
    assert set(shares) == set(names)
    fair = len(result["names"]) / len(names)
    for name, count in shares.items():
        assert abs(count - fair) <= fair * 0.1, f"{name} got {count}: {shares}"


# --- the sidecar ------------------------------------------------------------------


def test_the_sidecar_spreads_one_grpc_connections_calls_over_every_backend(
    tmp_path: Path,
) -> None:
    with (
        inside_capture_lab(),
        who_servers(),
        meshlet_node(tmp_path, greeter(tmp_path)) as car,
        one_channel() as client,
    ):
        assert_even(client.calls(CALLS))
        cluster = car.clusters()[CLUSTER]
        assert cluster["requests"] == CALLS
        assert cluster["grpc_statuses"] == {"0": CALLS}
        assert cluster["pool_connections"] == len(BACKENDS), "one upstream connection each"
        assert cluster["active_connections"] == 1, "the client's one connection"
        status, text = http_get(f"http://127.0.0.1:{car.admin_port}/metrics")
        assert status == 200
        assert sample(text, "meshlet_proxy_requests_total", cluster=CLUSTER) == CALLS
        responses = "meshlet_proxy_responses_total"
        assert sample(text, responses, cluster=CLUSTER, grpc_status="0") == CALLS
        assert sample(text, responses, cluster=CLUSTER, status_class="2xx") == CALLS
        durations = "meshlet_proxy_request_duration_seconds_count"
        assert sample(text, durations, cluster=CLUSTER) == CALLS
        pooled = "meshlet_proxy_pool_connections_total"
        assert sample(text, pooled, cluster=CLUSTER) == len(BACKENDS)


def test_streaming_calls_pass_through_the_sidecar_with_flow_control(tmp_path: Path) -> None:
    with inside_capture_lab(), who_servers(), meshlet_node(tmp_path, greeter(tmp_path)):
        # 4 MiB from the server to a client that reads slowly at first: more than the
        # windows, so the server is held back by flow control, and the call ends whole.
        counted = stream_call("count", 4000, pause=0.05)
        assert (counted["error"], counted["messages"]) == ("", 4000)
        assert isinstance(counted["names"], list)
        assert len(set(counted["names"])) == 1, "a call stays on the endpoint it picked"
        echoed = stream_call("echo", 200)
        assert (echoed["error"], echoed["messages"]) == ("", 200)
        assert isinstance(echoed["names"], list)
        assert len(set(echoed["names"])) == 1


def test_a_killed_backend_fails_no_call_of_the_same_channel(tmp_path: Path) -> None:
    with (
        inside_capture_lab(),
        who_servers() as servers,
        meshlet_node(tmp_path, greeter(tmp_path)) as car,
        one_channel() as client,
    ):
        assert_even(client.calls(CALLS))
        servers["backend-12"].kill()
        servers["backend-12"].wait()
        after = client.calls(CALLS)
        assert after["errors"] == [], "a connect that fails is retried on another endpoint"
        assert set(after["names"]) == {"backend-11", "backend-13"}
        cluster = car.clusters()[CLUSTER]
        assert cluster["retries"] > 0
        assert cluster["grpc_statuses"] == {"0": 2 * CALLS}


def test_scaled_up_backends_get_requests_on_the_same_client_connection(tmp_path: Path) -> None:
    four = {**BACKENDS, "127.0.0.14": "backend-14"}
    with (
        inside_capture_lab(),
        who_servers(four),
        meshlet_node(tmp_path, greeter(tmp_path, ("127.0.0.11", "127.0.0.12"))) as car,
        one_channel() as client,
    ):
        assert_even(client.calls(300), ("backend-11", "backend-12"))
        greeter(tmp_path, tuple(four))
        wait_until(
            lambda endpoints: len(endpoints) == 4,
            CONVERGE,
            "the sidecar to have the four endpoints",
            observe=lambda: car.clusters()[CLUSTER]["endpoints"],
        )
        assert_even(client.calls(2000), tuple(four.values()))
        assert car.clusters()[CLUSTER]["active_connections"] == 1, "the same client connection"


def test_grpc_unavailable_is_retried_only_where_the_service_says_it_is_idempotent(
    tmp_path: Path,
) -> None:
    sick = {**dict(list(BACKENDS.items())[:2]), "127.0.0.13": "sick-13"}
    manifests = greeter(tmp_path)
    with inside_capture_lab(), who_servers(sick), meshlet_node(tmp_path, manifests) as car:
        with one_channel() as client:
            first = client.calls(CALLS)
        # Not retried (a gRPC call is a POST), until outlier detection ejects the sick one.
        assert first["errors"], "the sick backend's answers reach the client"
        assert all(e.startswith("UNAVAILABLE") for e in first["errors"])
        assert len(first["errors"]) < CALLS / 3, "ejected after a few failures"
        assert car.clusters()[CLUSTER]["grpc_statuses"].get("14", 0) == len(first["errors"])

    write_manifests(
        manifests / "greeter.yaml",
        service_manifest(
            "greeter",
            "default",
            VIP,
            [("grpc", PORT, "grpc")],
            {"meshlet.io/idempotent": "true", "meshlet.io/retries": "2"},
        ),
        endpoint_slice_manifest("greeter", "default", [("grpc", BACKEND_PORT)], list(sick)),
    )
    with (
        inside_capture_lab(),
        who_servers(sick),
        meshlet_node(tmp_path, manifests) as car,
        one_channel() as client,
    ):
        retried = client.calls(CALLS)
        assert retried["errors"] == [], "each UNAVAILABLE was tried again elsewhere"
        assert set(retried["names"]) == {"backend-11", "backend-12"}
        cluster = car.clusters()[CLUSTER]
        assert cluster["retries"] > 0
        # The retried failures count too: the sick one is ejected after its five.
        assert cluster["ejections"] == 1
        assert cluster["retries"] <= 5 + 1


def test_a_draining_sidecar_lets_a_streaming_call_in_flight_finish(tmp_path: Path) -> None:
    with (
        inside_capture_lab(),
        who_servers(),
        meshlet_node(tmp_path, greeter(tmp_path)) as car,
    ):
        argv = [PYTHON, str(HERE / "grpc_stream_client.py"), f"{VIP}:{PORT}", "count", "4000"]
        # Ten pauses of 0.15 s: the call is open well past the drain's start.
        call = subprocess.Popen([*argv, "--pause=0.15"], stdout=subprocess.PIPE, text=True)
        # And a raw client whose request is half sent when the drain starts.
        sock, conn = _h2_client()
        try:
            conn.send_headers(1, _request(1))
            sock.sendall(conn.data_to_send())
            wait_until(
                lambda active: active == 2,
                CONVERGE,
                "both calls to be open",
                observe=lambda: car.clusters()[CLUSTER]["active_connections"],
            )
            car.process.popen.send_signal(signal.SIGTERM)
            # GOAWAY in two phases: past every stream, then at the last one taken.
            frames = _frames_until(sock, lambda seen: len(_goaways(seen)) == 2)
            assert _goaways(frames) == [2**31 - 1, 1]
            # The stream taken still finishes: the rest of its request goes, its answer comes.
            conn.send_data(1, b"\x00\x00\x00\x00\x00", end_stream=True)
            sock.sendall(conn.data_to_send())
            frames = _frames_until(sock, lambda seen: any(f[0] == 1 and f[1] & 1 for f in seen))
            assert any(f[0] == 0 and b"backend-" in f[2] for f in frames), "the answer's DATA"
            out, _ = call.communicate(timeout=60)
        finally:
            sock.close()
            if call.poll() is None:
                call.kill()
                call.wait()
        result = json.loads(out)
        assert (result["error"], result["messages"]) == ("", 4000), "GOAWAY, not a cut"
        # Their last streams done, the client connections close and the sidecar exits
        # before its drain deadline (5 s).
        assert car.process.popen.wait(timeout=10) == 0
        assert "draining 2 connections" in car.process.log_text()


Frame = tuple[int, int, bytes]  # type, flags, payload


def _frames_until(sock: socket.socket, done: Callable[[list[Frame]], bool]) -> list[Frame]:
    """Raw HTTP/2 frames as they come (h2 would stop at the first GOAWAY)."""
    frames: list[Frame] = []
    buffer = b""
    while not done(frames):
        data = sock.recv(65536)
        assert data, f"the connection closed; frames so far: {[f[0] for f in frames]}"
        buffer += data
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            frames.append((buffer[3], buffer[4], buffer[9 : 9 + length]))
            buffer = buffer[9 + length :]
    return frames


def _goaways(frames: list[Frame]) -> list[int]:
    return [int.from_bytes(p[:4], "big") & 0x7FFFFFFF for kind, _, p in frames if kind == 7]


def test_a_backend_that_stops_gracefully_lets_its_streaming_call_finish(
    tmp_path: Path,
) -> None:
    only = {"127.0.0.11": "backend-11"}
    with (
        inside_capture_lab(),
        who_servers(only) as servers,
        meshlet_node(tmp_path, greeter(tmp_path, tuple(only))) as car,
    ):
        argv = [PYTHON, str(HERE / "grpc_stream_client.py"), f"{VIP}:{PORT}", "count", "4000"]
        call = subprocess.Popen([*argv, "--pause=0.15"], stdout=subprocess.PIPE, text=True)
        try:
            wait_until(
                lambda active: active == 1,
                CONVERGE,
                "the call to be open",
                observe=lambda: car.clusters()[CLUSTER]["active_connections"],
            )
            stdin = servers["backend-11"].stdin
            assert stdin is not None
            stdin.close()  # the backend stops: GOAWAY to the sidecar, its call goes on
            out, _ = call.communicate(timeout=60)
        finally:
            if call.poll() is None:
                call.kill()
                call.wait()
        result = json.loads(out)
        assert (result["error"], result["messages"]) == ("", 4000)


@pytest.mark.parametrize("annotation", ["meshlet.io/timeout", "meshlet.io/per-try-timeout"])
def test_a_route_timeout_cuts_a_call_that_outlives_it(tmp_path: Path, annotation: str) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_manifests(
        manifests / "greeter.yaml",
        service_manifest(
            "greeter", "default", VIP, [("grpc", PORT, "grpc")], {annotation: "500ms"}
        ),
        endpoint_slice_manifest("greeter", "default", [("grpc", BACKEND_PORT)], list(BACKENDS)),
    )
    with inside_capture_lab(), who_servers(), meshlet_node(tmp_path, manifests) as car:
        # 20 messages 0.1 s apart: the call lasts past its route's 500 ms.
        cut = stream_call("count", 20, server_pause=0.1)
        assert cut["error"] and 0 < cast(int, cut["messages"]) < 20
        with one_channel() as client:
            assert client.calls(30)["errors"] == [], "quick calls are not cut"
        assert car.clusters()[CLUSTER]["timeouts"] == 1


# --- bad input, frame by frame ----------------------------------------------------


def _h2_client() -> tuple[socket.socket, h2.connection.H2Connection]:
    sock = socket.create_connection((VIP, PORT), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def _until_closed(sock: socket.socket, conn: h2.connection.H2Connection) -> list[object]:
    """Every event until the sidecar closes the connection."""
    events: list[object] = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return events
        if not data:
            return events
        try:
            events += conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            return events


def _first_response(sock: socket.socket, conn: h2.connection.H2Connection) -> bytes:
    while True:
        data = sock.recv(65536)
        assert data, "the connection closed before an answer"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                return dict(event.headers or [])[b":status"]
        sock.sendall(conn.data_to_send())


def _request(stream_id: int, content_type: str = "application/grpc") -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", f"{VIP}:{PORT}"),
        (":path", METHOD.decode()),
        ("content-type", content_type),
        ("te", "trailers"),
    ]


def test_bad_frames_and_a_rapid_reset_flood_close_that_connection_alone(tmp_path: Path) -> None:
    with (
        inside_capture_lab(),
        who_servers(),
        meshlet_node(tmp_path, greeter(tmp_path)) as car,
        one_channel() as client,
    ):
        assert client.calls(30)["errors"] == []
        # A frame the protocol forbids: DATA on stream 0.
        sock, conn = _h2_client()
        with sock:
            sock.sendall(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
            [goaway] = [
                e
                for e in _until_closed(sock, conn)
                if isinstance(e, h2.events.ConnectionTerminated)
            ]
            assert goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        # CVE-2023-44487: streams opened and cancelled as fast as the client can.
        sock, conn = _h2_client()
        with sock:
            for i in range(1, 2 * 1000, 2):
                conn.send_headers(i, _request(i))
                conn.reset_stream(i, h2.errors.ErrorCodes.CANCEL)
            sock.sendall(conn.data_to_send())
            terminated = [
                e
                for e in _until_closed(sock, conn)
                if isinstance(e, h2.events.ConnectionTerminated)
            ]
            assert [e.error_code for e in terminated] == [h2.errors.ErrorCodes.ENHANCE_YOUR_CALM]
        # Over Envoy's header count (100): that request is refused, the connection goes on.
        sock, conn = _h2_client()
        with sock:
            many = [(f"x-{i}", "v") for i in range(120)]
            conn.send_headers(1, _request(1, "text/plain") + many, end_stream=True)
            sock.sendall(conn.data_to_send())
            status = _first_response(sock, conn)
            assert status == b"431"
        # A header block that decodes to more than 60 KiB (an HPACK bomb is one): GOAWAY.
        sock, conn = _h2_client()
        with sock:
            conn.send_headers(1, [*_request(1), ("x-big", "v" * 70_000)], end_stream=True)
            sock.sendall(conn.data_to_send())
            [goaway] = [
                e
                for e in _until_closed(sock, conn)
                if isinstance(e, h2.events.ConnectionTerminated)
            ]
            assert goaway.error_code != h2.errors.ErrorCodes.NO_ERROR
        # Everyone else is served as before, on the connection they had.
        assert_even(client.calls(CALLS))
        assert car.clusters()[CLUSTER]["active_connections"] == 1
        status, text = http_get(f"http://127.0.0.1:{car.admin_port}/metrics")
        assert status == 200
        errors = "meshlet_proxy_protocol_errors_total"
        assert sample(text, errors, protocol="http2", reason="rapid_reset") == 1
        assert sample(text, errors, protocol="http2", reason="malformed") >= 1


# --- Envoy from the same control plane --------------------------------------------


def test_envoy_spreads_one_grpc_connections_calls_over_every_backend(tmp_path: Path) -> None:
    with (
        inside_capture_lab(),
        who_servers(),
        # Round robin chosen: Envoy's least request breaks ties at random, so its spread
        # of calls made one at a time is not within 10% (the sidecar's takes turns).
        control_plane(
            greeter(tmp_path, annotations={"meshlet.io/lb-policy": "round-robin"}),
            tmp_path,
            outbound_port=CAPTURE_PORT,
        ) as plane,
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
        with one_channel() as client:
            assert_even(client.calls(CALLS))
        # One client connection, each request balanced: every backend has an upstream one.
        # (Envoy counts a handed-off connection on the listener that took it.)
        assert proxy.counter(f"listener.{VIP}_{PORT}.downstream_cx_total") == 1
        assert proxy.counter(f"cluster.{CLUSTER}.upstream_rq_total") == CALLS
        assert proxy.counter(f"cluster.{CLUSTER}.upstream_cx_http2_total") == len(BACKENDS)


def test_with_traces_on_a_grpc_call_gets_a_span_child_of_its_traceparent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    with inside_capture_lab(), who_servers(), receiving() as (collector, port):
        for name, value in otlp_env(port).items():
            monkeypatch.setenv(name, value)
        with meshlet_node(tmp_path, greeter(tmp_path)):
            sock, conn = _h2_client()
            try:
                traced = [*_request(1), ("traceparent", f"00-{trace_id}-{parent_id}-01")]
                conn.send_headers(1, traced)
                conn.send_data(1, b"\x00\x00\x00\x00\x00", end_stream=True)
                sock.sendall(conn.data_to_send())
                frames = _frames_until(sock, lambda seen: any(f[0] == 1 and f[1] & 1 for f in seen))
                assert any(b"backend-" in f[2] for f in frames), "the call was answered"
            finally:
                sock.close()
            spans = wait_until(
                lambda found: any(s.trace_id.hex() == trace_id for s in found),
                20,
                "the sidecar to export the call's span",
                observe=collector.traces.spans,
            )
    (span,) = [s for s in spans if s.trace_id.hex() == trace_id]
    assert span.parent_span_id.hex() == parent_id
    attributes = {a.key: a.value for a in span.attributes}
    assert attributes["http.request.method"].string_value == "POST"
    assert attributes["url.path"].string_value == METHOD.decode()
    assert attributes["meshlet.cluster"].string_value == CLUSTER
