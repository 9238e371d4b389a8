"""The forwarder against scripted upstreams on real loopback sockets.

Each upstream is a small DNS server written here (dnslib answers), so a test
can make one slow, silent, refusing, truncating or lying, and count what it
was asked. Nothing of meshlet's is replaced.
"""

from __future__ import annotations

import asyncio
import errno
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import cast

import dnslib

from meshlet.sidecar.dns.answer import Forward, answer
from meshlet.sidecar.dns.forwarder import Forwarder
from tests.test_dns_table import make_query

Behaviour = Callable[[dnslib.DNSRecord], list[bytes]]


def reply_a(address: str, ttl: int = 60) -> Behaviour:
    def behave(request: dnslib.DNSRecord) -> list[bytes]:
        reply = request.reply()
        reply.add_answer(dnslib.RR(request.q.qname, rdata=dnslib.A(address), ttl=ttl))
        return [bytes(reply.pack())]

    return behave


def silent(request: dnslib.DNSRecord) -> list[bytes]:
    return []


def refuse(request: dnslib.DNSRecord) -> list[bytes]:
    reply = request.reply()
    reply.header.rcode = dnslib.RCODE.REFUSED
    return [bytes(reply.pack())]


class Upstream(asyncio.DatagramProtocol):
    def __init__(self, behave: Behaviour, delay: float = 0.0) -> None:
        self.behave = behave
        self.delay = delay
        self.asked: list[dnslib.DNSRecord] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = dnslib.DNSRecord.parse(data)
        self.asked.append(request)
        for response in self.behave(request):
            assert self.transport is not None
            asyncio.get_running_loop().call_later(self.delay, self.transport.sendto, response, addr)


@asynccontextmanager
async def upstream(
    behave: Behaviour, delay: float = 0.0, tcp: Behaviour | None = None
) -> AsyncIterator[tuple[Upstream, tuple[str, int]]]:
    loop = asyncio.get_running_loop()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert tcp is not None
        try:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            request = dnslib.DNSRecord.parse(await reader.readexactly(length))
            for response in tcp(request):
                writer.write(struct.pack("!H", len(response)) + response)
            await writer.drain()
        finally:
            writer.close()

    # The UDP port the kernel picks may be taken for TCP by another process on
    # the host: pick again rather than fail.
    for _ in range(20):
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: Upstream(behave, delay), local_addr=("127.0.0.1", 0)
        )
        port = transport.get_extra_info("sockname")[1]
        if tcp is None:
            server = None
            break
        try:
            server = await asyncio.start_server(serve, "127.0.0.1", port)
            break
        except OSError as error:
            transport.close()
            if error.errno != errno.EADDRINUSE:
                raise
    else:
        raise RuntimeError("no loopback port free for both UDP and TCP in 20 tries")
    try:
        yield protocol, ("127.0.0.1", port)
    finally:
        transport.close()
        if server is not None:
            server.close()
            await server.wait_closed()


def forward_of(query: bytes) -> Forward:
    result = answer(query, None, 1232)
    assert isinstance(result, Forward)
    return result


async def resolve(
    forwarder: Forwarder, name: str, qid: int = 1
) -> tuple[dnslib.DNSRecord, float | None]:
    query = make_query(name, qid=qid)
    response, seconds = await forwarder.resolve(query, forward_of(query), 1232)
    return dnslib.DNSRecord.parse(response), seconds


def addresses(response: dnslib.DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in response.rr]


async def test_answers_are_cached_and_served_with_the_clients_id() -> None:
    async with upstream(reply_a("192.0.2.1")) as (server, address):
        forwarder = Forwarder([address])
        response, seconds = await resolve(forwarder, "www.example.com", qid=11)
        assert response.header.id == 11 and addresses(response) == ["192.0.2.1"]
        assert seconds is not None
        query = make_query("WWW.example.com", qid=12)
        cached = forwarder.cached(query, forward_of(query), 1232)
        assert cached is not None
        parsed = dnslib.DNSRecord.parse(cached)
        assert parsed.header.id == 12 and str(parsed.q.qname) == "WWW.example.com."
        response, seconds = await resolve(forwarder, "www.example.com", qid=13)
        assert seconds is None and addresses(response) == ["192.0.2.1"]
        assert len(server.asked) == 1
        await forwarder.close()


async def test_concurrent_queries_for_one_name_share_one_upstream_query() -> None:
    async with upstream(reply_a("192.0.2.1"), delay=0.2) as (server, address):
        forwarder = Forwarder([address])
        results = await asyncio.gather(
            *(resolve(forwarder, "www.example.com", qid=i) for i in range(5))
        )
        assert [r.header.id for r, _ in results] == [0, 1, 2, 3, 4]
        assert all(addresses(r) == ["192.0.2.1"] for r, _ in results)
        assert len(server.asked) == 1
        await forwarder.close()


async def test_a_silent_upstream_is_skipped_for_the_next() -> None:
    async with upstream(silent) as (dead, first), upstream(reply_a("192.0.2.2")) as (_, second):
        forwarder = Forwarder([first, second], attempt_timeout=0.2)
        started = time.monotonic()
        response, _ = await resolve(forwarder, "www.example.com")
        assert addresses(response) == ["192.0.2.2"]
        assert 0.15 < time.monotonic() - started < 1.5
        assert len(dead.asked) == 1
        await forwarder.close()


async def test_a_refusal_is_checked_with_the_next_upstream() -> None:
    async with upstream(refuse) as (_, first), upstream(reply_a("192.0.2.3")) as (_, second):
        forwarder = Forwarder([first, second])
        response, _ = await resolve(forwarder, "www.example.com")
        assert addresses(response) == ["192.0.2.3"]
        await forwarder.close()
    async with upstream(refuse) as (_, only):
        forwarder = Forwarder([only])
        response, _ = await resolve(forwarder, "www.example.com")
        assert response.header.rcode == dnslib.RCODE.REFUSED  # nobody knows better
        await forwarder.close()


async def test_servfail_after_the_timeout() -> None:
    async with upstream(silent) as (server, address):
        forwarder = Forwarder([address], timeout=0.5, attempt_timeout=0.2)
        started = time.monotonic()
        response, seconds = await resolve(forwarder, "www.example.com", qid=77)
        elapsed = time.monotonic() - started
        assert response.header.id == 77 and response.header.rcode == dnslib.RCODE.SERVFAIL
        assert str(response.q.qname) == "www.example.com."
        assert 0.45 < elapsed < 1.5 and seconds is not None
        assert len(server.asked) >= 2  # retried within the timeout
        assert len(forwarder.cache) == 0  # failures are not cached
        await forwarder.close()


async def test_a_closed_port_gets_servfail_when_the_timeout_is_over() -> None:
    async with upstream(silent) as (_, address):
        pass  # closed now: the port answers with ICMP port unreachable
    forwarder = Forwarder([address], timeout=0.5, attempt_timeout=0.2)
    started = time.monotonic()
    response, _ = await resolve(forwarder, "www.example.com")
    assert response.header.rcode == dnslib.RCODE.SERVFAIL
    assert time.monotonic() - started > 0.45
    await forwarder.close()


async def test_outstanding_upstream_queries_are_bounded() -> None:
    async with upstream(silent) as (server, address):
        forwarder = Forwarder([address], timeout=0.5, attempt_timeout=0.5, max_outstanding=2)
        slow = [asyncio.ensure_future(resolve(forwarder, f"n{i}.example.com")) for i in range(2)]
        await asyncio.sleep(0)  # let both start
        started = time.monotonic()
        response, seconds = await resolve(forwarder, "n3.example.com")
        assert response.header.rcode == dnslib.RCODE.SERVFAIL and seconds is None
        assert time.monotonic() - started < 0.2  # at once, not queued
        for result in await asyncio.gather(*slow):
            assert result[0].header.rcode == dnslib.RCODE.SERVFAIL
        assert {str(r.q.qname) for r in server.asked} == {"n0.example.com.", "n1.example.com."}
        await forwarder.close()


async def test_truncated_udp_is_asked_again_over_tcp() -> None:
    many = [f"192.0.2.{i}" for i in range(1, 101)]

    def truncated(request: dnslib.DNSRecord) -> list[bytes]:
        reply = request.reply()
        reply.header.tc = 1
        return [bytes(reply.pack())]

    def full(request: dnslib.DNSRecord) -> list[bytes]:
        reply = request.reply()
        for ip in many:
            reply.add_answer(dnslib.RR(request.q.qname, rdata=dnslib.A(ip), ttl=60))
        return [bytes(reply.pack())]

    async with upstream(truncated, tcp=full) as (_, address):
        forwarder = Forwarder([address])
        query = make_query("big.example.com")
        response, _ = await forwarder.resolve(query, forward_of(query), None)
        assert addresses(dnslib.DNSRecord.parse(response)) == many
        # Over UDP the client gets TC (no partial RRset) and comes back over TCP.
        udp = forwarder.cached(query, forward_of(query), 1232)
        assert udp is not None and dnslib.DNSRecord.parse(udp).header.tc == 1
        await forwarder.close()


async def test_spoofed_and_broken_answers_are_ignored() -> None:
    def lies_first(request: dnslib.DNSRecord) -> list[bytes]:
        wrong_id = request.reply()
        wrong_id.header.id ^= 0xFFFF
        wrong_id.add_answer(dnslib.RR(request.q.qname, rdata=dnslib.A("6.6.6.6")))
        wrong_name = dnslib.DNSRecord(
            dnslib.DNSHeader(id=request.header.id, qr=1), q=dnslib.DNSQuestion("evil.example")
        )
        wrong_name.add_answer(dnslib.RR("evil.example", rdata=dnslib.A("6.6.6.6")))
        good = request.reply()
        good.add_answer(dnslib.RR(request.q.qname, rdata=dnslib.A("192.0.2.9")))
        return [
            bytes(wrong_id.pack()),
            bytes(wrong_name.pack()),
            b"\x00garbage",
            bytes(good.pack()),
        ]

    async with upstream(lies_first) as (_, address):
        forwarder = Forwarder([address])
        response, _ = await resolve(forwarder, "www.example.com")
        assert addresses(response) == ["192.0.2.9"]
        await forwarder.close()


async def test_no_upstreams_is_servfail() -> None:
    forwarder = Forwarder([])
    response, _ = await resolve(forwarder, "www.example.com")
    assert response.header.rcode == dnslib.RCODE.SERVFAIL
    await forwarder.close()
