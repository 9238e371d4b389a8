"""Each request of an HTTP/1.1 port balanced on its own: one keep-alive client
connection, captured by meshlet's rules in a network namespace, spread over every
backend; bodies, trailers, 100-continue, upgrades and CONNECT passed through;
retries only where safe; draining by `Connection: close`; bad requests refused.

Everything runs inside the lab pod: the backends (tests/http1_who_server.py, one
process per address), the control plane, the sidecar on the capture port, and the
clients (the test's own sockets, `curl`, `wrk`) dialling the Service's ClusterIP.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import signal
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.netlab import inside_capture_lab
from tests.otlp_receiver import otlp_env, receiving
from tests.procs import (
    endpoint_slice_manifest,
    http_get,
    service_manifest,
    wait_until,
    write_manifests,
)
from tests.prom import sample
from tests.test_http_balancing import BACKENDS, CAPTURE_ADDRESS, meshlet_node
from tests.test_http_balancing import _end as end_process
from tests.test_http_balancing import who_servers as who_servers_running

HERE = Path(__file__).parent
BACKEND_PORT = 7080
VIP, PORT = "10.96.0.31", 80
CLUSTER = f"outbound|{PORT}||web.default.svc.cluster.local"
CALLS = 1500
assert CAPTURE_ADDRESS  # the lab's capture port is the one meshlet_node listens on


@contextlib.contextmanager
def who_servers(
    backends: dict[str, str] = BACKENDS,
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    with who_servers_running(backends, "http1_who_server.py", BACKEND_PORT) as servers:
        yield servers


def web(
    tmp_path: Path,
    addresses: Sequence[str] = tuple(BACKENDS),
    annotations: dict[str, str] | None = None,
    port_name: str = "http",
) -> Path:
    manifests = tmp_path / "manifests"
    manifests.mkdir(exist_ok=True)
    write_manifests(
        manifests / "web.yaml",
        service_manifest("web", "default", VIP, [(port_name, PORT, "http")], annotations),
        endpoint_slice_manifest("web", "default", [("http", BACKEND_PORT)], list(addresses)),
    )
    return manifests


FAILURES: list[tuple[int, bytes]] = []  # the last names_of's failed answers, for messages


def names_of(count: int, path: str = "/who", method: str = "GET") -> tuple[Counter[str], int]:
    """`count` requests on one keep-alive connection: who answered, and the failures
    (their status and body are kept in FAILURES)."""
    conn = http.client.HTTPConnection(VIP, PORT, timeout=10)
    names: Counter[str] = Counter()
    FAILURES.clear()
    try:
        for _ in range(count):
            conn.request(method, path, body=b"x" if method == "POST" else None)
            response = conn.getresponse()
            body = response.read()
            if response.status == 200:
                names[response.getheader("x-who") or body.decode()] += 1
            else:
                FAILURES.append((response.status, body[:100]))
    finally:
        conn.close()
    return names, len(FAILURES)


def assert_even(names: Counter[str], expected: Sequence[str] = tuple(BACKENDS.values())) -> None:
    assert set(names) == set(expected), names
    fair = sum(names.values()) / len(expected)
    for name, count in names.items():
        assert abs(count - fair) <= fair * 0.1, f"{name} got {count}: {names}"


def raw_exchange(request: bytes, until: bytes, sock: socket.socket | None = None) -> bytes:
    """Sends raw bytes on a new (or the given) connection; reads until `until` or EOF."""
    own = sock is None
    sock = sock or socket.create_connection((VIP, PORT), timeout=10)
    try:
        sock.sendall(request)
        return read_until(sock, until)
    finally:
        if own:
            sock.close()


def read_until(sock: socket.socket, until: bytes) -> bytes:
    """What comes until `until` has (or the connection ends)."""
    got = b""
    while until not in got:
        data = sock.recv(65536)
        if not data:
            break
        got += data
    return got


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One answer with a Content-Length: its head (lower case) and its body."""
    got = read_until(sock, b"\r\n\r\n")
    head, _, body = got.partition(b"\r\n\r\n")
    head = head.lower()
    length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, body + read_exactly(sock, length - len(body))


def read_exactly(sock: socket.socket, size: int) -> bytes:
    got = b""
    while len(got) < size:
        data = sock.recv(size - len(got))
        assert data, "the connection ended early"
        got += data
    return got


def test_the_sidecar_spreads_one_keep_alive_connections_requests(tmp_path: Path) -> None:
    with inside_capture_lab(), who_servers(), meshlet_node(tmp_path, web(tmp_path)) as car:
        names, failed = names_of(CALLS)
        assert failed == 0
        assert_even(names)
        cluster = car.clusters()[CLUSTER]
        assert cluster["requests"] == CALLS
        assert cluster["responses"] == {"2xx": CALLS}
        assert cluster["pool_connections"] == len(BACKENDS), "one kept-alive connection each"
        status, text = http_get(f"http://127.0.0.1:{car.admin_port}/metrics")
        assert status == 200
        assert sample(text, "meshlet_proxy_requests_total", cluster=CLUSTER) == CALLS
        responses = "meshlet_proxy_responses_total"
        assert sample(text, responses, cluster=CLUSTER, status_class="2xx") == CALLS
        # curl, a real client, reuses its connection for the URLs it is given.
        urls = [f"http://{VIP}:{PORT}/who"] * 6
        done = subprocess.run(
            ["curl", "-sS", "--fail", "-w", " %{num_connects}\n", *urls],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("backend-") == 6
        assert len({n for n in BACKENDS.values() if n in done.stdout}) == 3
        connects = [line.split()[1] for line in done.stdout.splitlines()]
        assert connects == ["1", "0", "0", "0", "0", "0"], "one connection for the six"


def test_bodies_trailers_and_100_continue_pass_through(tmp_path: Path) -> None:
    with inside_capture_lab(), who_servers(), meshlet_node(tmp_path, web(tmp_path)):
        request = b"GET /chunked HTTP/1.1\r\nHost: web\r\n\r\n"
        with socket.create_connection((VIP, PORT), timeout=10) as sock:
            sock.sendall(request)
            got = read_until(sock, b"0\r\nx-who: backend-1")
            while not got.endswith(b"\r\n\r\n"):  # the trailer's end, then the blank line
                got += read_exactly(sock, 1)
            head, _, body = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            assert b"transfer-encoding: chunked" in head.lower()
            assert body.startswith(b"3\r\nbac"), "chunked as the backend sent it"
            chunks = rb"3\r\nbac\r\n7\r\nkend-1\d\r\n0\r\nx-who: backend-1\d\r\n\r\n"
            assert re.fullmatch(chunks, body), body
        # 100-continue: the head goes first, the endpoint's 100 comes back, then the body.
        with socket.create_connection((VIP, PORT), timeout=10) as sock:
            sock.sendall(
                b"POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            interim = read_until(sock, b"\r\n\r\n")
            assert interim.startswith(b"HTTP/1.1 100"), interim
            sock.sendall(b"hello")
            final = read_until(sock, b"hello")
            assert final.startswith(b"HTTP/1.1 200") and final.endswith(b"hello"), final
        # A body larger than the socket buffers, both ways, through curl.
        payload = tmp_path / "payload"
        payload.write_bytes(bytes(range(256)) * 16384)  # 4 MiB
        post = [
            "curl",
            "-sS",
            "--fail",
            "--data-binary",
            f"@{payload}",
            f"http://{VIP}:{PORT}/echo",
        ]
        done = subprocess.run(
            post,
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == payload.read_bytes()
        chunked = subprocess.run(
            [*post, "-H", "Transfer-Encoding: chunked"],
            capture_output=True,
            timeout=60,
        )
        assert chunked.returncode == 0, chunked.stderr
        assert chunked.stdout == payload.read_bytes()


def test_upgrade_and_connect_become_tunnels_to_one_backend(tmp_path: Path) -> None:
    with inside_capture_lab(), who_servers(), meshlet_node(tmp_path, web(tmp_path)) as car:
        for request in (
            b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
            b"CONNECT web:80 HTTP/1.1\r\nHost: web:80\r\n\r\n",
        ):
            with socket.create_connection((VIP, PORT), timeout=10) as sock:
                head = raw_exchange(request, b"\r\n\r\n", sock)
                assert head.startswith((b"HTTP/1.1 101", b"HTTP/1.1 200")), head
                for message in (b"ping", bytes(range(256)) * 1200):
                    sock.sendall(message)
                    assert read_exactly(sock, len(message)) == message
        assert car.clusters()[CLUSTER]["responses"] == {"1xx": 1, "2xx": 1}


def test_a_killed_backend_fails_no_idempotent_request(tmp_path: Path) -> None:
    with (
        inside_capture_lab(),
        who_servers() as servers,
        meshlet_node(tmp_path, web(tmp_path)) as car,
    ):
        conn = http.client.HTTPConnection(VIP, PORT, timeout=10)
        try:
            seen: Counter[str] = Counter()
            for _ in range(60):  # every backend's pooled connection is open and idle
                conn.request("GET", "/who")
                seen[conn.getresponse().read().decode()] += 1
            assert set(seen) == set(BACKENDS.values())
            end_process(servers.pop("backend-12"))
            after: Counter[str] = Counter()
            for _ in range(300):
                conn.request("GET", "/who")
                response = conn.getresponse()
                assert response.status == 200, response.read()
                after[response.read().decode()] += 1
        finally:
            conn.close()
        assert set(after) == {"backend-11", "backend-13"}
        assert car.clusters()[CLUSTER]["retries"] > 0


def test_a_503_is_retried_for_idempotent_methods_only(tmp_path: Path) -> None:
    sick = {**dict(list(BACKENDS.items())[:2]), "127.0.0.13": "sick-13"}
    with inside_capture_lab(), who_servers(sick), meshlet_node(tmp_path, web(tmp_path)) as car:
        names, failed = names_of(300)
        retries = car.clusters()[CLUSTER]["retries"]
        assert failed == 0, f"each 503 to a GET was tried again elsewhere: {FAILURES}, {retries}"
        assert set(names) == {"backend-11", "backend-12"}
        assert car.clusters()[CLUSTER]["retries"] > 0
    with inside_capture_lab(), who_servers(sick), meshlet_node(tmp_path, web(tmp_path)) as car:
        _, failed = names_of(300, "/echo", "POST")
        assert 0 < failed < 100, "a POST's 503 reaches the client, until ejection"
        assert car.clusters()[CLUSTER]["retries"] == 0


def test_a_draining_sidecar_closes_keep_alive_connections_between_requests(
    tmp_path: Path,
) -> None:
    with inside_capture_lab(), who_servers(), meshlet_node(tmp_path, web(tmp_path)) as car:
        idle = socket.create_connection((VIP, PORT), timeout=10)
        busy = socket.create_connection((VIP, PORT), timeout=10)
        try:
            idle.sendall(b"GET /who HTTP/1.1\r\nHost: web\r\n\r\n")
            head, _ = read_response(idle)
            assert head.startswith(b"http/1.1 200") and b"connection: close" not in head
            busy.sendall(b"GET /slow?seconds=2 HTTP/1.1\r\nHost: web\r\n\r\n")
            answer: list[tuple[bytes, bytes]] = []
            reader = threading.Thread(target=lambda: answer.append(read_response(busy)))
            reader.start()
            car.process.popen.send_signal(signal.SIGTERM)
            reader.join(timeout=30)
            assert answer, "the answer in flight came"
            head, body = answer[0]
            assert head.startswith(b"http/1.1 200") and body.startswith(b"backend-1")
            assert b"connection: close" in head, "the answer in flight says the connection ends"
            assert idle.recv(1) == b"", "the idle connection was closed"
            assert busy.recv(1) == b"", "then the busy one"
        finally:
            idle.close()
            busy.close()
        assert car.process.popen.wait(timeout=10) == 0


def test_bad_requests_get_their_status_and_the_sidecar_serves_on(tmp_path: Path) -> None:
    with inside_capture_lab(), who_servers(), meshlet_node(tmp_path, web(tmp_path)) as car:
        bad = {
            b"POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n": b"400",
            b"POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: 3, 4\r\n\r\n": b"400",
            b"POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: -1\r\n\r\n": b"400",
            b"GET /who HTTP/1.1\r\nHost: web\r\n folded\r\n\r\n": b"400",
            b"GET /who HTTP/1.1\r\nHost: web\r\nBad Name: x\r\n\r\n": b"400",
            b"GET /who HTTP/1.1\r\n\r\n": b"400",
            b"GET /who HTTP/3.0\r\nHost: web\r\n\r\n": b"505",
            b"POST /echo HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: gzip\r\n\r\n": b"501",
            b"GET /who HTTP/1.1\r\nHost: web\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n": b"431",
            b"GET /who HTTP/1.1\r\nHost: web\r\n"
            + b"".join(b"x-%d: y\r\n" % i for i in range(101))
            + b"\r\n": b"431",
        }
        for request, status in bad.items():
            with socket.create_connection((VIP, PORT), timeout=10) as sock:
                with contextlib.suppress(ConnectionResetError):
                    sock.sendall(request)
                answer = read_until(sock, b"\r\n\r\n")
                assert answer.startswith(b"HTTP/1.1 " + status), (request[:60], answer)
                assert b"connection: close" in answer.lower()
                read_until(sock, b"never")  # returns when the connection ends
        names, failed = names_of(30)
        assert failed == 0 and sum(names.values()) == 30
        assert car.clusters()[CLUSTER]["requests"] == 30, "nothing refused went upstream"
        status, text = http_get(f"http://127.0.0.1:{car.admin_port}/metrics")
        assert status == 200
        errors = "meshlet_proxy_protocol_errors_total"
        assert sample(text, errors, protocol="http1", reason="malformed") == len(bad)


@pytest.mark.parametrize("annotation", ["meshlet.io/timeout", "meshlet.io/per-try-timeout"])
def test_a_request_that_outlives_its_timeout_gets_a_504(tmp_path: Path, annotation: str) -> None:
    manifests = web(tmp_path, annotations={annotation: "500ms"})
    with inside_capture_lab(), who_servers(), meshlet_node(tmp_path, manifests) as car:
        conn = http.client.HTTPConnection(VIP, PORT, timeout=10)
        try:
            conn.request("GET", "/slow?seconds=3")
            response = conn.getresponse()
            assert response.status == 504
            assert response.read().startswith(b"upstream "), "the sidecar's own answer"
        finally:
            conn.close()
        names, failed = names_of(30)
        assert (failed, sum(names.values())) == (0, 30), "quick requests are not cut"
        cluster = car.clusters()[CLUSTER]
        assert cluster["timeouts"] == 1
        assert cluster["responses"] == {"2xx": 30, "5xx": 1}


def test_traceparent_passes_through_unchanged(tmp_path: Path) -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with inside_capture_lab(), who_servers(), meshlet_node(tmp_path, web(tmp_path)):
        conn = http.client.HTTPConnection(VIP, PORT, timeout=10)
        try:
            for _ in range(3):
                conn.request("GET", "/who", headers={"traceparent": parent})
                response = conn.getresponse()
                response.read()
                assert response.getheader("x-seen-traceparent") == parent
        finally:
            conn.close()


def test_with_traces_on_each_request_gets_a_span_that_becomes_the_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with inside_capture_lab(), who_servers(), receiving() as (collector, port):
        for name, value in otlp_env(port).items():
            monkeypatch.setenv(name, value)
        with meshlet_node(tmp_path, web(tmp_path)):
            conn = http.client.HTTPConnection(VIP, PORT, timeout=10)
            try:
                incoming = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
                conn.request("GET", "/who", headers=incoming)
                response = conn.getresponse()
                response.read()
                seen = response.getheader("x-seen-traceparent") or ""
                conn.request("GET", "/status/503")  # no traceparent: a new trace
                conn.getresponse().read()
            finally:
                conn.close()
            spans = wait_until(
                lambda found: len(found) >= 1,
                20,
                "the sidecar to export its span",
                observe=collector.traces.spans,
            )
    version, seen_trace, seen_parent, flags = seen.split("-")
    assert (version, seen_trace, flags) == ("00", trace_id, "01")
    assert seen_parent != parent_id, "the proxy's span is the endpoint's parent"
    ours = [s for s in spans if s.trace_id.hex() == trace_id]
    assert len(ours) == 1, spans
    span = ours[0]
    assert span.parent_span_id.hex() == parent_id and span.span_id.hex() == seen_parent
    attributes = {a.key: a.value for a in span.attributes}
    assert attributes["http.request.method"].string_value == "GET"
    assert attributes["http.response.status_code"].int_value == 200
    assert attributes["meshlet.cluster"].string_value == CLUSTER
