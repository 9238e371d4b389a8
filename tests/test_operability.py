"""What an operator reaches for: the CLI's help and flags, `meshlet version`, JSON logs,
and the log level changed at run time on the admin port."""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import re
import signal
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest

from meshlet import __version__, logs
from meshlet.admin_http import AdminServer, Response, log_level_routes
from meshlet.cli import build_parser
from meshlet.controlplane import change_log
from meshlet.devmesh import netns
from meshlet.model import Endpoint, Service, ServicePort
from tests.netlab import lab_pod
from tests.procs import (
    Process,
    control_plane,
    free_port,
    http_get,
    http_post,
    wait_until,
    write_manifests,
)
from tests.prom import sample
from tests.test_cli import run_meshlet
from tests.test_control_plane_process import web
from tests.test_sidecar_pod_ports import pod_sidecar


def test_global_flags_go_before_or_after_the_subcommand_in_any_case() -> None:
    parse = build_parser().parse_args
    after = parse(["control-plane", "--manifests", "x", "--log-level", "DEBUG"])
    assert (after.log_level, after.log_format) == ("debug", "text")
    before = parse(["--log-format", "JSON", "sidecar"])
    assert (before.log_level, before.log_format) == ("info", "json")
    # Given before and not after, it is not reset by the subcommand's own default.
    assert parse(["--log-level", "error", "wait"]).log_level == "error"


def test_help_shows_each_flags_default() -> None:
    shown = run_meshlet("sidecar", "--help")
    assert shown.returncode == 0
    text = " ".join(shown.stdout.split())  # argparse wraps lines
    assert "(default: 127.0.0.1:15000) [env MESHLET_ADMIN_ADDRESS]" in text
    assert "--log-level {debug,info,warning,error} log verbosity (default: info;" in text
    plane = " ".join(run_meshlet("control-plane", "--help").stdout.split())
    assert "(default: 0.0.0.0:15014)" in plane and "(default: 4Mi)" in plane


def test_a_bad_subcommand_flag_shows_that_subcommands_usage() -> None:
    result = run_meshlet("sidecar", "--no-such-flag")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: meshlet sidecar ")
    assert "meshlet sidecar: error: unrecognized arguments: --no-such-flag" in result.stderr


def test_a_bad_log_level_is_refused_with_the_choices() -> None:
    result = run_meshlet("wait", "--log-level", "loud")
    assert result.returncode == 2
    assert "invalid choice: 'loud' (choose from 'debug', 'info', 'warning', 'error')" in (
        result.stderr
    )
    from_env = run_meshlet("wait", "--timeout=0", env={"MESHLET_LOG_LEVEL": "loud"})
    assert from_env.returncode == 2 and "MESHLET_LOG_LEVEL='loud'" in from_env.stderr


def test_json_log_lines_carry_time_level_logger_message_and_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("info", "json")
        log = logging.getLogger("meshlet.test")
        log.info("client connected", extra={"node": "pod-1", "protocol": "delta"})
        log.debug("not shown at info")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("handler failed")
    finally:
        root.handlers[:], root.level = saved
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["message"] == "client connected" and first["level"] == "info"
    assert (first["logger"], first["node"], first["protocol"]) == ("meshlet.test", "pod-1", "delta")
    assert first["time"].endswith("+00:00") and "T" in first["time"]
    assert second["level"] == "error" and "ValueError: boom" in second["exception"]


def test_set_levels_checks_everything_before_changing_anything() -> None:
    target = logging.getLogger("meshlet.sidecar.dns")
    saved = target.level, logging.getLogger().level
    try:
        with pytest.raises(ValueError, match="'loud': choose a level"):
            logs.set_levels({"meshlet.sidecar.dns": "debug", "level": "loud"})
        assert target.level == saved[0]  # the good half was not applied either
        with pytest.raises(ValueError, match="not a meshlet logger"):
            logs.set_levels({"grpc": "debug"})
        with pytest.raises(ValueError, match="not a meshlet logger"):  # a typo creates none
            logs.set_levels({"meshlet.sidecar.dsn": "debug"})
        assert "meshlet.sidecar.dsn" not in logging.Logger.manager.loggerDict
        now = logs.set_levels({"meshlet.sidecar.dns": "DEBUG"})
        assert now["meshlet.sidecar.dns"] == "debug" and target.level == logging.DEBUG
        # level= sets every logger's: one set apart before follows it again.
        now = logs.set_levels({"level": "warning"})
        assert now["meshlet.sidecar.dns"] == now["root"] == "warning"
    finally:
        target.setLevel(saved[0])
        logging.getLogger().setLevel(saved[1])


def test_the_control_plane_logs_json_and_changes_its_level_at_run_time(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1"))
    # The global flag after the subcommand, as an operator types it.
    with control_plane(folder, tmp_path, extra_args=["--log-format", "json"]) as plane:
        assert plane.get_json("/logging")["root"] == "info"
        assert http_post(plane.url("/logging?level=loud"))[0] == 400
        assert plane.get_json("/logging")["root"] == "info"  # a bad request changes nothing
        status, body = http_post(plane.url("/logging?level=debug"))
        assert status == 200 and json.loads(body)["root"] == "debug"
        assert plane.get_json("/logging")["root"] == "debug"
        version = plane.get_json("/version")
        assert version["version"] == __version__
        plane.process.check_alive()
        lines = [json.loads(line) for line in plane.process.log_text().splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert {
        "level": "info",
        "logger": "meshlet.admin_http",
        "message": "log levels set over the admin port: level=debug",
    }.items() <= next(line for line in lines if "log levels set" in line["message"]).items()


def test_meshlet_version_asks_the_control_plane(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1"))
    with control_plane(folder, tmp_path) as plane:
        address = f"127.0.0.1:{plane.admin_port}"
        shown = run_meshlet("version", f"--control-plane={address}")
        assert shown.returncode == 0, shown.stderr
        assert f"client: meshlet {__version__} (Python " in shown.stdout
        assert f"control plane: meshlet {__version__} at {address}" in shown.stdout
        as_json = json.loads(
            run_meshlet("version", f"--control-plane={address}", "-o", "json").stdout
        )
        assert as_json["controlPlane"]["version"] == as_json["client"]["version"] == __version__
    gone = run_meshlet("version", f"--control-plane={address}")
    assert gone.returncode == 1
    assert f"meshlet version: cannot ask the control plane at {address}: " in gone.stderr
    assert "client: meshlet" in gone.stdout  # its own version is still told
    assert "Traceback" not in gone.stderr
    alone = run_meshlet("version", "--client", f"--control-plane={address}")
    assert alone.returncode == 0 and "control plane" not in alone.stdout


def test_the_control_planes_admin_address_may_be_a_service_name(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1"))
    with control_plane(folder, tmp_path) as plane:
        # Its own variable: MESHLET_CONTROL_PLANE is `meshlet inject`'s xDS address.
        env = {
            "MESHLET_CONTROL_PLANE_ADMIN": f"localhost:{plane.admin_port}",
            "MESHLET_CONTROL_PLANE": "meshlet.meshlet-system.svc:15010",
        }
        for command in ("version", "proxy-status"):
            shown = run_meshlet(command, env=env)
            assert shown.returncode == 0, shown.stderr
    # A name as a Service has one (from inside the cluster), not refused as no IP.
    named = run_meshlet("proxy-status", "--control-plane=meshlet.meshlet-system.invalid:15014")
    assert named.returncode == 1
    assert "cannot ask the control plane at meshlet.meshlet-system.invalid:15014" in named.stderr


def test_log_levels_change_only_from_loopback() -> None:
    with lab_pod() as (_, pod), netns.entered(pod.namespace):
        asyncio.run(_only_from_loopback(pod.ip))


async def _only_from_loopback(pod_ip: str) -> None:
    routes, posts = log_level_routes()
    server = AdminServer(routes, posts, loopback_only=frozenset(posts))
    port = await server.start("0.0.0.0", 0)
    loop = asyncio.get_running_loop()
    try:
        for host, expected in ((pod_ip, 403), ("127.0.0.1", 200)):
            url = f"http://{host}:{port}/logging?meshlet.admin_http=warning"
            status, body = await loop.run_in_executor(None, http_post, url)
            assert status == expected, body
        assert logging.getLogger("meshlet.admin_http").level == logging.WARNING
    finally:
        logging.getLogger("meshlet.admin_http").setLevel(logging.NOTSET)
        await server.close()


# Raw requests to a POST route that echoes its body: (request head, body, status, answer).
FRAMING = [
    # Neither Content-Length nor Transfer-Encoding: an empty body (RFC 9112 section
    # 6.3), what `curl -X POST` sends.
    ("POST /echo HTTP/1.1\r\nHost: x\r\n", b"", 200, "body=b''"),
    ("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n", b"", 200, "body=b''"),
    ("POST /echo HTTP/1.1\r\nContent-Length: 5\r\n", b"hello", 200, "body=b'hello'"),
    # The same length twice is one length; two different ones are no length at all.
    ("POST /echo HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n", b"hi", 200, "'hi'"),
    ("POST /echo HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n", b"hi", 400, "bad"),
    ("POST /echo HTTP/1.1\r\nContent-Length: five\r\n", b"", 400, "bad Content-Length"),
    ("POST /echo HTTP/1.1\r\nContent-Length: -1\r\n", b"", 400, "bad Content-Length"),
    ("POST /echo HTTP/1.1\r\nContent-Length: +4\r\n", b"body", 400, "bad Content-Length"),
    ("POST /echo HTTP/1.1\r\nContent-Length: 65\r\n", b"", 413, "body over 64 bytes"),
    (
        "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n",
        b"5\r\nhello\r\n0\r\n\r\n",
        501,
        "Transfer-Encoding is not supported",
    ),
    (
        "POST /echo HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"5\r\nhello\r\n0\r\n\r\n",
        501,
        "send Content-Length",
    ),
]

FRAMING_IDS = [
    "no-length-no-body",
    "length-0",
    "length-5",
    "same-length-twice",
    "two-lengths",
    "not-a-number",
    "negative",
    "plus-sign",
    "over-max-body",
    "chunked",
    "chunked-and-length",
]


@pytest.mark.parametrize(("head", "body", "status", "answer"), FRAMING, ids=FRAMING_IDS)
async def test_a_post_body_is_framed_as_rfc_9112_says(
    head: str, body: bytes, status: int, answer: str
) -> None:
    def echo(_query: dict[str, list[str]], got: bytes) -> Response:
        return Response.text(f"body={got!r}\n")

    server = AdminServer({}, {"/echo": echo}, max_body=64)
    port = await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(head.encode() + b"\r\n" + body)
            reply = await asyncio.wait_for(reader.read(), 5)  # the server closes after one
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        await server.close()
    status_line, _, rest = reply.decode().partition("\r\n")
    assert status_line.split()[1] == str(status), reply
    assert answer in rest.partition("\r\n\r\n")[2], reply


def assert_operator_metrics(text: str) -> None:
    assert (
        f'meshlet_build_info{{python="{platform.python_version()}",version="{__version__}"}} 1.0'
        in (text)
    )
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert re.search(rf"^{name} [0-9.e+]+$", text, re.M), name
    assert "otel_scope" not in text  # no scope labels repeated on every series


def test_both_processes_export_build_info_and_process_metrics(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1"))
    xds_port = free_port()
    with (
        control_plane(folder, tmp_path, xds_port=xds_port) as plane,
        pod_sidecar(tmp_path, xds_port) as (sidecar, ports),
    ):
        assert_operator_metrics(plane.metrics())
        status, text = http_get(f"http://127.0.0.1:{ports['metrics']}/stats/prometheus")
        assert status == 200
        assert_operator_metrics(text)
        sidecar.check_alive()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def logged(process: Process, message: str) -> dict[str, Any] | None:
    """The first JSON log line of `process` whose message starts with `message`."""
    return next(
        (m for m in json_lines(process.log_text()) if m["message"].startswith(message)), None
    )


def test_lifecycle_events_are_logged_at_info(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1", "10.1.0.2"))
    xds_port = free_port()
    json_logs = ["--log-format=json"]
    with control_plane(folder, tmp_path, xds_port=xds_port, extra_args=json_logs) as plane:
        with pod_sidecar(tmp_path, xds_port, "--node-id=pod-a", *json_logs) as (sidecar, _):
            connected = wait_until(
                bool,
                30,
                "the connect log",
                observe=lambda: logged(plane.process, "client connected"),
            )
            assert connected["message"].startswith("client connected: node 'pod-a' (delta) from ")
            assert (connected["node"], connected["protocol"]) == ("pod-a", "delta")
            wait_until(
                bool, 30, "an accept", observe=lambda: logged(sidecar, "accepted eds version")
            )
            assert logged(sidecar, f"xDS stream to localhost:{xds_port} up (delta)")
            write_manifests(folder / "web.yaml", *web("10.1.0.1"))
            pushed = wait_until(
                bool, 30, "the push log", observe=lambda: logged(plane.process, "pushed")
            )
            assert pushed["message"] == "pushed: default/web: endpoints 2 -> 1"
            sidecar.popen.send_signal(signal.SIGTERM)
            assert sidecar.popen.wait(timeout=30) == 0
        assert logged(sidecar, "sidecar: stopping (SIGTERM)") and logged(
            sidecar, "sidecar: stopped"
        )
        gone = wait_until(
            bool, 30, "the gone log", observe=lambda: logged(plane.process, "client gone")
        )
        assert gone["message"].startswith("client gone: node 'pod-a' (delta) after ")
    levels = {m["level"] for m in json_lines(plane.process.log_text())}
    assert levels <= {"info"}, "a clean run logs nothing worse than info"


def test_a_sidecar_logs_that_its_stream_is_up_again_after_a_break(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1"))
    xds_port = free_port()
    up = f"xDS stream to localhost:{xds_port} up"
    ended = f"xDS stream to localhost:{xds_port} ended after "
    flags = ("--log-format=json", "--log-level=debug")
    with pod_sidecar(tmp_path, xds_port, *flags) as (sidecar, ports):
        scrape = f"http://127.0.0.1:{ports['metrics']}/metrics"

        def failures() -> float:
            return sample(http_get(scrape)[1], "meshlet_xds_stream_failures_total")

        # Nothing listens yet (the control plane uninstalled, say): every reconnect
        # fails and is counted, but only the first is a WARNING.
        wait_until(lambda n: n >= 4, 30, "4 stream failures counted", observe=failures)
        refused = [m for m in json_lines(sidecar.log_text()) if m["message"].startswith(ended)]
        assert len(refused) >= 4
        assert [m["level"] for m in refused] == ["warning"] + ["debug"] * (len(refused) - 1)
        with control_plane(folder, tmp_path, xds_port=xds_port):
            back = wait_until(bool, 30, "the stream up", observe=lambda: logged(sidecar, up))
        assert re.fullmatch(
            rf"{re.escape(up)} \(delta\): down [0-9.]+s, \d+ reconnect attempts", back["message"]
        )
        assert int(back["message"].split()[-3]) >= 4 and back["level"] == "info"
        counted = failures()
        with control_plane(folder, tmp_path, xds_port=xds_port):
            again = f"{up} again after a break"
            wait_until(bool, 60, "the stream up again", observe=lambda: logged(sidecar, again))
        assert failures() > counted
        lines = json_lines(sidecar.log_text())
        # The stream that broke starts a new run of failures: a WARNING again.
        after = [m for m in lines[lines.index(back) :] if m["message"].startswith(ended)]
        assert after and after[0]["level"] == "warning"
        ups = [m["message"] for m in lines if m["message"].startswith(up)]
        assert len(ups) == 2 and ups[0] == back["message"]
        assert ups[1].startswith(f"{again} (delta): down ")


def test_a_push_is_described_by_what_changed() -> None:
    def svc(
        *addresses: str, ports: tuple[int, ...] = (80,), ips: tuple[str, ...] = ("10.96.0.1",)
    ) -> Service:
        endpoints = tuple(Endpoint(a, 8080) for a in addresses)
        return Service(
            "web",
            "shop",
            cluster_ips=ips,
            ports=tuple(ServicePort(f"p{p}", p, endpoints=endpoints) for p in ports),
        )

    three, two = svc("10.1.0.1", "10.1.0.2", "10.1.0.3"), svc("10.1.0.1", "10.1.0.2")
    assert change_log.describe("shop/web", three, two) == "shop/web: endpoints 3 -> 2"
    assert change_log.describe("shop/web", None, two) == "shop/web: added (ClusterIP, 2 endpoints)"
    assert change_log.describe("shop/web", two, None) == "shop/web: removed"
    moved = svc("10.1.0.1", "10.1.0.9")
    assert change_log.describe("shop/web", two, moved) == "shop/web: endpoints changed (2)"
    wider = svc("10.1.0.1", "10.1.0.2", ports=(80, 443), ips=("10.96.0.2",))
    assert change_log.describe("shop/web", two, wider) == (
        "shop/web: ports 80 -> 80,443, IPs 10.96.0.1 -> 10.96.0.2"
    )
    many = {f"ns/s{i:02d}": (None, two) for i in range(8)}
    summary = change_log.summary(many, shown=2)
    assert summary == (
        "ns/s00: added (ClusterIP, 2 endpoints); ns/s01: added (ClusterIP, 2 endpoints); and 6 more"
    )


def test_dns_metrics_on_a_par_with_coredns(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "web.yaml", *web("10.1.0.1"))
    xds_port = free_port()
    with (
        control_plane(folder, tmp_path, xds_port=xds_port),
        pod_sidecar(tmp_path, xds_port) as (
            sidecar,
            ports,
        ),
    ):
        health = f"http://127.0.0.1:{ports['health']}/healthz/ready"
        wait_until(lambda s: s == 200, 30, "ready", observe=lambda: http_get(health)[0])
        logged = sidecar.log_text()
        local = dns.message.make_query("web.default.svc.cluster.local", "A")
        for ask in (dns.query.udp, dns.query.udp, dns.query.tcp):
            assert ask(local, "127.0.0.1", port=ports["dns"], timeout=5).answer
        assert sidecar.log_text() == logged  # nothing per query at info
        # Its upstream is a closed port: the attempts fail, the client gets SERVFAIL.
        away = dns.message.make_query("www.example.test", "A")
        assert dns.query.udp(away, "127.0.0.1", port=ports["dns"], timeout=10).rcode() == 2
        status, text = http_get(f"http://127.0.0.1:{ports['metrics']}/stats/prometheus")
        sidecar.check_alive()
    assert status == 200
    queries = "meshlet_dns_queries_total"
    assert sample(text, queries, type="A", rcode="NOERROR", source="local", proto="udp") == 2
    assert sample(text, queries, type="A", rcode="NOERROR", source="local", proto="tcp") == 1
    assert sample(text, queries, source="forwarded", proto="udp", rcode="SERVFAIL") == 1
    duration = "meshlet_dns_request_duration_seconds"
    assert sample(text, f"{duration}_count", proto="udp") == 2
    assert sample(text, f"{duration}_bucket", proto="tcp", le="+Inf") == 1
    upstream = next(a for a in sidecar.popen.args if str(a).startswith("--upstream-dns="))
    to = str(upstream).partition("=")[2]
    assert sample(text, "meshlet_dns_forward_requests_total", to=to) >= 1
    failed = "meshlet_dns_forward_request_duration_seconds_count"
    attempts = [
        value
        for line in text.splitlines()
        if line.startswith(f"{failed}{{") and f'to="{to}"' in line
        for value in [float(line.rpartition(" ")[2])]
    ]
    assert sum(attempts) == sample(text, "meshlet_dns_forward_requests_total", to=to)
    assert sample(text, "meshlet_dns_cache_misses_total") == 1
    assert sample(text, "meshlet_dns_cache_hits_total") == 0
