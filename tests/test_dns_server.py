"""The DNS server on real sockets, asked by real clients, forwarding to a real unbound.

dnspython and `dig` query the server over UDP and TCP; names outside the mesh
go to an `unbound` on loopback (started here in the foreground, ended by its
PID). The server runs on the test's event loop; one test runs it on uvloop, as
the sidecar does, in a thread of its own.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import uvloop

from meshlet.sidecar.app import ipv6_loopback
from meshlet.sidecar.dns import DnsServer, DnsTable, Forwarder, QueryCounts, build_dns_table, tcp
from meshlet.sidecar.dns.stats import DurationCounts
from tests.procs import Process, free_port, running, stop_process, wait_until
from tests.test_dns_table import mesh_table

UNBOUND = shutil.which("unbound") or shutil.which("unbound", path="/usr/sbin:/usr/local/sbin")
DIG = shutil.which("dig")
BIG_ADDRESSES = [f"198.51.100.{i}" for i in range(1, 101)]  # 100 A records: ~1.7 KB
UPSTREAM_TIMEOUT = 1.0


def unbound_config(directory: Path, port: int) -> str:
    local_data = [
        "example.test. 300 IN SOA ns.example.test. admin.example.test. 1 3600 600 86400 60",
        "www.example.test. 300 IN A 192.0.2.1",
        "www.example.test. 300 IN AAAA 2001:db8::1",
        *(f"big.example.test. 300 IN A {ip}" for ip in BIG_ADDRESSES),
        # What the upstream says about a mesh name: only seen before the first table.
        "web.default.svc.cluster.local. 30 IN A 10.1.1.1",
    ]
    lines = [
        "server:",
        f'  directory: "{directory}"',
        f"  interface: 127.0.0.1@{port}",
        f"  port: {port}",
        "  do-daemonize: no",
        '  username: ""',
        '  chroot: ""',
        "  use-syslog: no",
        '  logfile: ""',
        '  pidfile: ""',
        "  do-ip6: no",
        "  num-threads: 1",
        "  verbosity: 1",
        "  access-control: 127.0.0.0/8 allow",
        # Never try the internet: anything not below is refused at once.
        '  local-zone: "." refuse',
        '  local-zone: "example.test." static',
        '  local-zone: "cluster.local." static',
        *(f'  local-data: "{record}"' for record in local_data),
        "remote-control:",
        "  control-enable: no",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Unbound:
    process: Process
    port: int

    def stop(self) -> None:
        stop_process(self.process.popen)


@pytest.fixture
def unbound(tmp_path: Path) -> Iterator[Unbound]:
    if UNBOUND is None:
        pytest.skip("unbound is not installed (apt-get install unbound): no upstream to forward to")
    port = free_port()
    config = tmp_path / "unbound.conf"
    config.write_text(unbound_config(tmp_path, port))
    argv = [UNBOUND, "-d", "-c", str(config)]
    with running(argv, "unbound", tmp_path / "unbound.log") as process:

        def answers() -> dns.message.Message:
            process.check_alive()
            query = dns.message.make_query("www.example.test", "A")
            return dns.query.udp(query, "127.0.0.1", port=port, timeout=0.5)

        wait_until(
            lambda r: r.answer, 20, "unbound to answer", observe=answers,
            ignoring=(OSError, dns.exception.Timeout),
        )  # fmt: skip
        yield Unbound(process, port)


@dataclass
class Harness:
    server: DnsServer
    forwarder: Forwarder
    table: DnsTable | None
    seen: list[tuple[str, str, str, str, float | None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.address[1]

    async def udp(self, name: str, rdtype: str = "A", **kwargs: object) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
        return await dns.asyncquery.udp(query, "127.0.0.1", port=self.port, timeout=5)

    async def tcp(self, name: str, rdtype: str = "A", **kwargs: object) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
        return await dns.asyncquery.tcp(query, "127.0.0.1", port=self.port, timeout=5)


async def start_harness(
    upstream_port: int, table: DnsTable | None, tcp_idle_timeout: float = tcp.IDLE_TIMEOUT
) -> Harness:
    forwarder = Forwarder(
        [("127.0.0.1", upstream_port)], timeout=UPSTREAM_TIMEOUT, attempt_timeout=0.25
    )
    harnesses: list[Harness] = []
    server = DnsServer(
        lambda: harnesses[0].table,  # the sidecar points this at its latest snapshot
        forwarder,
        tcp_idle_timeout=tcp_idle_timeout,
        on_query=lambda *args: harnesses[0].seen.append(args),
    )
    harnesses.append(Harness(server, forwarder, table))
    await server.start("127.0.0.1", 0)
    return harnesses[0]


async def stop_harness(harness: Harness) -> None:
    await harness.server.close()
    await harness.forwarder.close()
    assert harness.server.errors == 0


TABLE = build_dns_table(mesh_table(), "default", "cluster.local", ttl=5)


@pytest.fixture
async def dns_server(unbound: Unbound) -> AsyncIterator[Harness]:
    harness = await start_harness(unbound.port, TABLE)
    try:
        yield harness
    finally:
        await stop_harness(harness)


def addresses(response: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in response.answer for rd in rrset)


# --- Mesh names, locally ------------------------------------------------------------------


async def test_mesh_names_are_answered_locally(dns_server: Harness) -> None:
    for ask in (dns_server.udp, dns_server.tcp):
        response = await ask("web.default.svc.cluster.local")
        assert response.rcode() == dns.rcode.NOERROR
        assert response.flags & dns.flags.AA
        assert addresses(response) == ["10.96.0.10"]
        assert addresses(await ask("web")) == ["10.96.0.10"]
        assert addresses(await ask("web.default")) == ["10.96.0.10"]
        assert addresses(await ask("dual.default.svc.cluster.local", "AAAA")) == ["fd00:10:96::11"]
        nodata = await ask("web.default.svc.cluster.local", "AAAA")
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
        assert nodata.authority[0].rdtype == dns.rdatatype.SOA
        nxdomain = await ask("nope.default.svc.cluster.local")
        assert nxdomain.rcode() == dns.rcode.NXDOMAIN
        srv = await ask("_http._tcp.web.default.svc.cluster.local", "SRV")
        assert [rd.to_text() for rd in srv.answer[0]] == ["0 100 80 web.default.svc.cluster.local."]
        ptr = await ask("10.0.96.10.in-addr.arpa", "PTR")
        assert [rd.to_text() for rd in ptr.answer[0]] == ["web.default.svc.cluster.local."]
    assert ("A", "NOERROR", "local", "udp", None) in dns_server.seen
    assert ("A", "NXDOMAIN", "local", "udp", None) in dns_server.seen
    assert all(source == "local" for _, _, source, _, _ in dns_server.seen)


async def test_a_repeated_query_gets_its_own_id_and_case_and_a_new_table_at_once(
    dns_server: Harness,
) -> None:
    # The second and later asks are replayed (dns/replay.py): each must still be answered
    # as asked, and never from a table that is gone.
    fqdn = "web.default.svc.cluster.local"
    for query_id, name in ((1, fqdn), (2, "WEB.Default.svc.cluster.local"), (3, fqdn)):
        query = dns.message.make_query(name, "A")
        query.id = query_id
        wire = await dns.asyncquery.udp(query, "127.0.0.1", port=dns_server.port, timeout=5)
        assert wire.id == query_id
        assert wire.question[0].name.to_text() == name + "."  # the case as asked
        assert addresses(wire) == ["10.96.0.10"]
    moved = mesh_table()
    moved.table["web.default.svc.cluster.local"].ips[:] = ["10.96.0.99"]
    dns_server.table = build_dns_table(moved, "default", "cluster.local", ttl=5)
    assert addresses(await dns_server.udp("web.default.svc.cluster.local")) == ["10.96.0.99"]


async def test_edns_size_decides_truncation_and_tcp_carries_it(unbound: Unbound) -> None:
    big = big_table()
    harness = await start_harness(unbound.port, big)
    try:
        plain = await harness.udp("big.default.svc.cluster.local")
        assert plain.flags & dns.flags.TC and not plain.answer
        edns = await harness.udp("big.default.svc.cluster.local", use_edns=0, payload=4096)
        assert edns.flags & dns.flags.TC and not edns.answer  # over our 1232
        assert len(addresses(await harness.tcp("big.default.svc.cluster.local"))) == 100
        response, used_tcp = await dns.asyncquery.udp_with_fallback(
            dns.message.make_query("big.default.svc.cluster.local", "A"),
            "127.0.0.1",
            port=harness.port,
            timeout=5,
        )
        assert used_tcp and len(addresses(response)) == 100
    finally:
        await stop_harness(harness)


def big_table() -> DnsTable:
    table = mesh_table()
    info = table.table["big.default.svc.cluster.local"]
    info.namespace, info.service, info.headless = "default", "big", True
    info.ips.extend(f"10.244.9.{i}" for i in range(1, 101))
    return build_dns_table(table, "default", "cluster.local")


# --- Forwarding -------------------------------------------------------------------------


async def test_other_names_are_forwarded(dns_server: Harness) -> None:
    for ask in (dns_server.udp, dns_server.tcp):
        response = await ask("www.example.test")
        assert addresses(response) == ["192.0.2.1"]
        assert not response.flags & dns.flags.AA  # not ours to claim
        assert response.flags & dns.flags.RA
        assert addresses(await ask("WWW.Example.TEST", "AAAA")) == ["2001:db8::1"]
        nxdomain = await ask("nope.example.test")
        assert nxdomain.rcode() == dns.rcode.NXDOMAIN
        assert nxdomain.authority[0].rdtype == dns.rdatatype.SOA
    forwarded = [entry for entry in dns_server.seen if entry[2] == "forwarded"]
    assert ("A", "NOERROR") in [(qtype, rcode) for qtype, rcode, _, _, _ in forwarded]
    # The first ask went upstream (and was timed); the TCP repeat came from the cache.
    assert isinstance(forwarded[0][4], float) and forwarded[0][4] < UPSTREAM_TIMEOUT
    assert forwarded[3][4] is None and forwarded[3][3] == "tcp"


async def test_truncated_upstream_answer_is_asked_again_over_tcp(dns_server: Harness) -> None:
    """unbound truncates 100 A records at 1232 bytes over UDP: only TCP gets them all."""
    response = await dns_server.tcp("big.example.test")
    assert addresses(response) == sorted(BIG_ADDRESSES)
    # From the cache now: UDP without EDNS0 gets TC and no partial answer, TCP all of it.
    truncated = await dns_server.udp("big.example.test")
    assert truncated.flags & dns.flags.TC and not truncated.answer
    response, used_tcp = await dns.asyncquery.udp_with_fallback(
        dns.message.make_query("big.example.test", "A"),
        "127.0.0.1",
        port=dns_server.port,
        timeout=5,
    )
    assert used_tcp and addresses(response) == sorted(BIG_ADDRESSES)


async def test_truncated_answer_first_asked_over_udp(dns_server: Harness) -> None:
    truncated = await dns_server.udp("big.example.test", use_edns=0, payload=1232)
    assert truncated.flags & dns.flags.TC and not truncated.answer
    assert len(addresses(await dns_server.tcp("big.example.test"))) == 100


async def test_cached_answers_outlive_the_upstream(dns_server: Harness, unbound: Unbound) -> None:
    first = await dns_server.udp("www.example.test")
    assert addresses(first) == ["192.0.2.1"]
    unbound.stop()

    cached = await dns_server.udp("www.example.test")
    assert addresses(cached) == ["192.0.2.1"]
    assert 0 < cached.answer[0].ttl <= 300
    assert addresses(await dns_server.tcp("www.EXAMPLE.test")) == ["192.0.2.1"]

    # Never asked before: SERVFAIL once the upstream timeout is over (over UDP and
    # TCP), while mesh names go on being answered.
    for ask in (dns_server.udp, dns_server.tcp):
        started = time.monotonic()
        failed = await ask("uncached.example.test")
        assert failed.rcode() == dns.rcode.SERVFAIL
        assert UPSTREAM_TIMEOUT * 0.9 <= time.monotonic() - started < 4
        assert addresses(await ask("web")) == ["10.96.0.10"]
    assert ("A", "SERVFAIL", "forwarded") in [entry[:3] for entry in dns_server.seen]


async def test_before_the_first_table_everything_is_forwarded(unbound: Unbound) -> None:
    harness = await start_harness(unbound.port, None)
    try:
        response = await harness.udp("web.default.svc.cluster.local")
        assert addresses(response) == ["10.1.1.1"] and not response.flags & dns.flags.AA
        assert addresses(await harness.udp("www.example.test")) == ["192.0.2.1"]
        harness.table = TABLE  # what the sidecar app does when a NameTable is accepted
        response = await harness.udp("web.default.svc.cluster.local")
        assert addresses(response) == ["10.96.0.10"] and response.flags & dns.flags.AA
    finally:
        await stop_harness(harness)


# --- TCP connections --------------------------------------------------------------------


def _framed(name: str, rdtype: str, qid: int) -> bytes:
    query = dns.message.make_query(name, rdtype, id=qid)
    wire = query.to_wire()
    return struct.pack("!H", len(wire)) + wire


async def _read_framed(reader: asyncio.StreamReader) -> dns.message.Message:
    (length,) = struct.unpack("!H", await reader.readexactly(2))
    return dns.message.from_wire(await reader.readexactly(length))


async def test_several_queries_on_one_tcp_connection(dns_server: Harness) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", dns_server.port)
    try:
        # Pipelined in one write: local, forwarded, NXDOMAIN, and a big forwarded one.
        asked = {
            1: ("web.default.svc.cluster.local", "A"),
            2: ("www.example.test", "A"),
            3: ("nope.default.svc.cluster.local", "A"),
            4: ("big.example.test", "A"),
        }
        writer.write(b"".join(_framed(name, rdtype, qid) for qid, (name, rdtype) in asked.items()))
        responses = {}
        for _ in asked:
            response = await asyncio.wait_for(_read_framed(reader), 5)
            responses[response.id] = response
        assert sorted(responses) == [1, 2, 3, 4]  # in any order (RFC 7766 6.2.1.1)
        assert addresses(responses[1]) == ["10.96.0.10"]
        assert addresses(responses[2]) == ["192.0.2.1"]
        assert responses[3].rcode() == dns.rcode.NXDOMAIN
        assert len(addresses(responses[4])) == 100
        # The connection stays open for more.
        writer.write(_framed("dual", "AAAA", 5))
        response = await asyncio.wait_for(_read_framed(reader), 5)
        assert response.id == 5 and addresses(response) == ["fd00:10:96::11"]
        # A query split over several writes is put back together.
        frame = _framed("web", "A", 6)
        for piece in (frame[:1], frame[1:7], frame[7:]):
            writer.write(piece)
            await writer.drain()
        response = await asyncio.wait_for(_read_framed(reader), 5)
        assert response.id == 6 and addresses(response) == ["10.96.0.10"]
    finally:
        writer.close()
        await writer.wait_closed()


async def test_idle_tcp_connections_are_closed(unbound: Unbound) -> None:
    harness = await start_harness(unbound.port, TABLE, tcp_idle_timeout=0.3)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", harness.port)
        try:
            writer.write(_framed("web", "A", 1))
            assert addresses(await asyncio.wait_for(_read_framed(reader), 5)) == ["10.96.0.10"]
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        await stop_harness(harness)


# --- dig ----------------------------------------------------------------------------------


async def _dig(port: int, *args: str) -> list[str]:
    process = await asyncio.create_subprocess_exec(
        DIG or "dig", "@127.0.0.1", "-p", str(port), "+short", "+tries=1", "+time=5", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    return [line for line in stdout.decode().splitlines() if not line.startswith(";")]


@pytest.mark.skipif(DIG is None, reason="dig is not installed (apt-get install bind9-dnsutils)")
async def test_dig(dns_server: Harness) -> None:
    port = dns_server.port
    assert await _dig(port, "web.default.svc.cluster.local") == ["10.96.0.10"]
    assert await _dig(port, "+tcp", "web") == ["10.96.0.10"]
    assert await _dig(port, "www.example.test") == ["192.0.2.1"]
    assert await _dig(port, "-t", "SRV", "_pg._tcp.db.data.svc.cluster.local") == [
        "0 33 5432 db-0.db.data.svc.cluster.local.",
        "0 33 5432 10-244-2-6.db.data.svc.cluster.local.",
        "0 33 5432 fd00-244--7.db.data.svc.cluster.local.",
    ]
    assert await _dig(port, "-x", "10.96.0.10") == ["web.default.svc.cluster.local."]
    # dig retries over TCP by itself when the UDP answer has TC.
    assert len(await _dig(port, "+noedns", "big.example.test")) == 100
    # Several queries on one kept-open TCP connection.
    answers = await _dig(port, "+tcp", "+keepopen", "web", "www.example.test", "dual", "AAAA")
    assert answers == ["10.96.0.10", "192.0.2.1", "fd00:10:96::11"]


# --- On uvloop, as in the sidecar ---------------------------------------------------------


def test_on_uvloop(unbound: Unbound) -> None:
    ready = threading.Event()
    state: dict[str, object] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        harness = await start_harness(unbound.port, TABLE)
        state.update(port=harness.port, loop=asyncio.get_running_loop(), stop=stop)
        ready.set()
        try:
            await stop.wait()
        finally:
            await stop_harness(harness)

    def run() -> None:
        try:
            uvloop.run(serve())
        except BaseException as exc:
            state["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="uvloop-dns")
    thread.start()
    try:
        assert ready.wait(10) and "error" not in state, state.get("error")
        port = state["port"]
        assert isinstance(port, int)
        for ask in (dns.query.udp, dns.query.tcp):
            local = ask(dns.message.make_query("web", "A"), "127.0.0.1", port=port, timeout=5)
            assert addresses(local) == ["10.96.0.10"]
            query = dns.message.make_query("www.example.test", "A")
            assert addresses(ask(query, "127.0.0.1", port=port, timeout=5)) == ["192.0.2.1"]
    finally:
        loop, stop = state.get("loop"), state.get("stop")
        if isinstance(loop, asyncio.AbstractEventLoop) and isinstance(stop, asyncio.Event):
            loop.call_soon_threadsafe(stop.set)
        thread.join(10)
    assert not thread.is_alive()
    assert "error" not in state, state.get("error")


# --- IPv6 ---------------------------------------------------------------------------------


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
async def test_listens_on_ipv6(unbound: Unbound) -> None:
    forwarder = Forwarder([("127.0.0.1", unbound.port)], timeout=UPSTREAM_TIMEOUT)
    server = DnsServer(lambda: TABLE, forwarder)
    _, port = await server.start("::1", 0)
    try:
        for ask in (dns.asyncquery.udp, dns.asyncquery.tcp):
            local = await ask(dns.message.make_query("web", "A"), "::1", port=port, timeout=5)
            assert addresses(local) == ["10.96.0.10"]
            far = await ask(
                dns.message.make_query("www.example.test", "A"), "::1", port=port, timeout=5
            )
            assert addresses(far) == ["192.0.2.1"]
    finally:
        await server.close()
        await forwarder.close()
    assert server.errors == 0


# --- Metrics ------------------------------------------------------------------------------


async def test_query_counts_for_metrics(unbound: Unbound) -> None:
    upstream_seconds: list[float] = []
    counts = QueryCounts(upstream_seconds.append)
    forwarder = Forwarder([("127.0.0.1", unbound.port)], timeout=UPSTREAM_TIMEOUT)
    server = DnsServer(lambda: TABLE, forwarder, on_query=counts)
    _, port = await server.start("127.0.0.1", 0)
    try:
        for ask in (dns.asyncquery.udp, dns.asyncquery.udp, dns.asyncquery.tcp):
            await ask(dns.message.make_query("web", "A"), "127.0.0.1", port=port, timeout=5)
        query = dns.message.make_query("nope.default.svc.cluster.local", "AAAA", use_edns=0)
        await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=5)
        for _ in range(2):  # upstream once, then from the cache
            query = dns.message.make_query("www.example.test", "A")
            await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=5)
    finally:
        await server.close()
        await forwarder.close()
    assert counts.snapshot() == {
        ("A", "NOERROR", "local", "udp"): 2,
        ("A", "NOERROR", "local", "tcp"): 1,
        ("AAAA", "NXDOMAIN", "local", "udp"): 1,
        ("A", "NOERROR", "forwarded", "udp"): 2,
    }
    assert len(upstream_seconds) == 1 and 0 < upstream_seconds[0] < UPSTREAM_TIMEOUT
    assert server.errors == 0


async def test_answer_times_upstream_attempts_and_the_cache_are_counted(unbound: Unbound) -> None:
    durations = DurationCounts((0.001, 1.0))
    attempts: list[tuple[str, str, float]] = []
    forwarder = Forwarder(
        [("127.0.0.1", unbound.port)],
        timeout=UPSTREAM_TIMEOUT,
        on_attempt=lambda *attempt: attempts.append(attempt),
    )
    server = DnsServer(lambda: TABLE, forwarder, on_answered=durations)
    _, port = await server.start("127.0.0.1", 0)
    try:
        for ask in (dns.asyncquery.udp, dns.asyncquery.udp, dns.asyncquery.tcp):
            await ask(dns.message.make_query("web", "A"), "127.0.0.1", port=port, timeout=5)
        for _ in range(3):  # upstream once, then from the cache
            query = dns.message.make_query("www.example.test", "A")
            await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=5)
    finally:
        await server.close()
        await forwarder.close()
    counted = durations.by_proto
    assert set(counted) == {"udp", "tcp"}  # local answers only: forwarded ones are not in it
    assert counted["udp"].cumulative()[-1] == 2 and counted["tcp"].cumulative()[-1] == 1
    assert 0 < counted["udp"].sum < 2  # seconds, summed
    assert [a[:2] for a in attempts] == [(f"127.0.0.1:{unbound.port}", "NOERROR")]
    assert forwarder.sent == {f"127.0.0.1:{unbound.port}": 1}
    assert (forwarder.cache_misses, forwarder.cache_hits) == (1, 2)
