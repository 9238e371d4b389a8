"""Thousands of random and mutated packets at the DNS server; it must answer a good one after.

Seeded, so a failure repeats. Over UDP and TCP: random bytes, and valid queries
truncated, bit-flipped, with bytes replaced, counts changed, label lengths
broken; over TCP also broken framing. The upstream is hostile too: it answers
with garbage, wrong IDs, wrong questions, cut and bit-flipped answers, TC, or
nothing. Afterwards the server must answer good queries over both transports, have
counted no errors and logged nothing at ERROR; every query that deserves an
answer must have had exactly one, and every response must be a well-formed DNS
message with the ID of a query we sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from collections.abc import Callable
from typing import cast

import dns.message
import dnslib
import pytest

from meshlet.sidecar.dns import DnsServer, Forwarder, build_dns_table
from meshlet.sidecar.dns.answer import answer as meshlet_answer
from tests.test_dns_table import make_query, mesh_table

SEED = 20240611
UDP_PACKETS = 6000
TCP_CONNECTIONS = 40
TCP_MESSAGES_PER_CONNECTION = 60

NAMES = [
    "web.default.svc.cluster.local",
    "web",
    "WEB.Default",
    "_http._tcp.web.default.svc.cluster.local",
    "db.data.svc.cluster.local",
    "ext.default.svc.cluster.local",
    "nope.default.svc.cluster.local",
    "10.0.96.10.in-addr.arpa",
    "example.com",
    "a.b.c.d.e.f.example.org",
    "cluster.local",
]
TYPES = ["A", "AAAA", "SRV", "PTR", "CNAME", "TXT", "MX", "ANY", "SOA", "HTTPS", "OPT", "AXFR"]


def valid_query(rng: random.Random) -> bytes:
    name = rng.choice(NAMES)
    if rng.random() < 0.3:
        name = f"r{rng.randrange(10**6)}.{name}"
    edns = rng.choice([None, None, 512, 1232, 4096, 65535, 0])
    query = make_query(
        name,
        rng.choice(TYPES),
        qid=rng.randrange(65536),
        edns=edns,
        dnssec_ok=rng.random() < 0.3,
        rd=rng.random() < 0.8,
    )
    if edns is not None and rng.random() < 0.3:  # an option, like dig's cookie
        option = struct.pack("!HH", 10, 8) + rng.randbytes(8)
        query = query[:-2] + struct.pack("!H", len(option)) + option
    return query


def mutate(rng: random.Random, packet: bytes) -> bytes:
    data = bytearray(packet)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(7)
        if kind == 0 and data:  # cut short
            del data[rng.randrange(len(data)) :]
        elif kind == 1 and data:  # flip bits
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 2 and data:  # replace a byte
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 3 and len(data) >= 12:  # counts
            data[4:12] = struct.pack(
                "!HHHH", *(rng.choice([0, 1, 2, 255, 65535]) for _ in range(4))
            )
        elif kind == 4 and len(data) > 13:  # a label length
            data[12] = rng.choice([0, 63, 64, 0xC0, 0xFF, rng.randrange(256)])
        elif kind == 5:  # trailing garbage
            data += rng.randbytes(rng.randint(1, 40))
        elif kind == 6 and len(data) >= 4:  # header flags (opcode, QR, ...)
            data[2] = rng.randrange(256)
            data[3] = rng.randrange(256)
    return bytes(data)


def packets(rng: random.Random, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.15:
            out.append(rng.randbytes(rng.randint(0, 600)))
        elif roll < 0.3:
            out.append(valid_query(rng))
        else:
            out.append(mutate(rng, valid_query(rng)))
    return out


class HostileUpstream(asyncio.DatagramProtocol):
    """Answers each query with a random kind of wrong (or, sometimes, right)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # no subclass on 3.11

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        rng = self.rng
        try:
            request = dnslib.DNSRecord.parse(data)
        except Exception:  # dnslib cannot read every query the server may send on
            return
        reply = request.reply()
        for i in range(rng.choice([0, 1, 3, 120])):
            reply.add_answer(
                dnslib.RR(
                    request.q.qname,
                    rdata=dnslib.A(f"192.0.2.{i % 250}"),
                    ttl=rng.choice([0, 1, 300, 2**31 + 5]),
                )
            )
        if rng.random() < 0.2:
            reply.add_auth(
                dnslib.RR(
                    "example.",
                    dnslib.QTYPE.SOA,
                    rdata=dnslib.SOA("ns.example.", "h.example.", (1, 2, 3, 4, 5)),
                    ttl=60,
                )
            )
        reply.header.rcode = rng.choice([0, 0, 0, 2, 3, 5])
        response = bytearray(reply.pack())
        kind = rng.randrange(8)
        if kind == 0:
            response = bytearray(rng.randbytes(rng.randint(0, 300)))
        elif kind == 1:
            response[0] ^= 0xFF  # wrong ID
        elif kind == 2:
            del response[rng.randrange(len(response)) :]
        elif kind == 3:
            for _ in range(rng.randint(1, 6)):
                response[rng.randrange(len(response))] ^= 1 << rng.randrange(8)
        elif kind == 4:
            response[2] |= 0x02  # TC: the forwarder tries TCP, where nobody listens
        elif kind == 5:
            return  # silence: the attempt times out
        self.transport.sendto(bytes(response), addr)


class Collector:
    """A client socket drained completely on every wakeup (asyncio's datagram transport
    reads one datagram per loop turn, and would drop answers that come in batches)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.responses: list[bytes] = []
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._drain)

    def _drain(self) -> None:
        while True:
            try:
                self.responses.append(self.sock.recv(65535))
            except (BlockingIOError, ConnectionRefusedError):
                return

    def sendto(self, packet: bytes) -> None:
        with contextlib.suppress(BlockingIOError):
            self.sock.send(packet)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


def check_response(response: bytes, sent_ids: set[int]) -> None:
    assert len(response) >= 12 and response[2] & 0x80, response.hex()
    assert struct.unpack("!H", response[:2])[0] in sent_ids
    # Well formed (raises otherwise). dnspython, not dnslib: a question is echoed as
    # asked, and a label may be any bytes, which dnslib refuses.
    dns.message.from_wire(response)


def _id(packet: bytes) -> int:
    return int(struct.unpack("!H", packet[:2])[0]) if len(packet) >= 2 else -1


async def _drain(predicate: Callable[[], bool], seconds: float) -> None:
    """Let the loop (and the server on it) run until `predicate()` holds, or `seconds` pass.

    What is polled is the server's own state (its pending tasks, the responses
    collected): there is no event to wait on.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate() and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("batching", [True, False], ids=["recvmmsg", "recvfrom"])
async def test_fuzz(caplog: pytest.LogCaptureFixture, batching: bool) -> None:
    caplog.set_level(logging.WARNING, logger="meshlet")
    rng = random.Random(SEED)
    loop = asyncio.get_running_loop()
    upstream, _ = await loop.create_datagram_endpoint(
        lambda: HostileUpstream(random.Random(SEED + 1)), local_addr=("127.0.0.1", 0)
    )
    upstream_port = upstream.get_extra_info("sockname")[1]
    table = build_dns_table(mesh_table(), "default", "cluster.local")
    forwarder = Forwarder(
        [("127.0.0.1", upstream_port)], timeout=0.3, attempt_timeout=0.1, max_outstanding=64
    )
    server = DnsServer(lambda: table, forwarder, max_pending=256, udp_batching=batching)
    _, port = await server.start("127.0.0.1", 0)
    client = collector = Collector(port)
    try:
        # --- UDP: in bursts of 100, each followed by two turns of the loop (the server
        # reads and answers the burst, the client drains the answers).
        udp_packets = packets(rng, UDP_PACKETS)
        for start in range(0, len(udp_packets), 100):
            for packet in udp_packets[start : start + 100]:
                client.sendto(packet)
            await asyncio.sleep(0)
            await asyncio.sleep(0)

        # --- TCP: framed fuzz, broken framing, connections dropped mid-message.
        sent_tcp: list[bytes] = []
        received_tcp: list[bytes] = []

        async def tcp_session(seed: int) -> None:
            local = random.Random(seed)
            session = packets(local, TCP_MESSAGES_PER_CONNECTION)
            sent_tcp.extend(session)
            # Every message that is not dropped gets exactly one answer, in time.
            expected = sum(1 for p in session if meshlet_answer(p, table, None) is not None)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                stream = bytearray()
                for packet in session:
                    stream += struct.pack("!H", len(packet)) + packet
                if local.random() < 0.3:  # then a length prefix promising more than comes
                    junk = local.randbytes(local.randint(0, 50))
                    stream += struct.pack("!H", local.randint(len(junk) + 1, 65535)) + junk
                position = 0
                while position < len(stream):
                    size = local.choice([1, 7, 100, 2000])
                    writer.write(bytes(stream[position : position + size]))
                    position += size
                    await writer.drain()
                for _ in range(expected):
                    (length,) = struct.unpack(
                        "!H", await asyncio.wait_for(reader.readexactly(2), 5)
                    )
                    received_tcp.append(await asyncio.wait_for(reader.readexactly(length), 5))
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

        await asyncio.gather(*(tcp_session(SEED + 100 + i) for i in range(TCP_CONNECTIONS)))

        # Wait until every forwarded query is over (each ends within the 0.3 s timeout).
        await _drain(lambda: not (forwarder._inflight or server._tasks), 10)
        assert not forwarder._inflight and not server._tasks

        # --- A good query still gets a good answer, over both transports.
        good = make_query("web.default.svc.cluster.local", qid=0x600D)
        client.sendto(good)
        await _drain(lambda: any(r[:2] == good[:2] for r in collector.responses), 5)
        (last,) = [dnslib.DNSRecord.parse(r) for r in collector.responses if r[:2] == good[:2]]
        assert str(last.rr[0].rdata) == "10.96.0.10"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(struct.pack("!H", len(good)) + good)
            (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))
            reply = dnslib.DNSRecord.parse(await reader.readexactly(length))
            assert reply.header.id == 0x600D and str(reply.rr[0].rdata) == "10.96.0.10"
        finally:
            writer.close()
            await writer.wait_closed()

        # --- Every UDP query that is not dropped got exactly one answer.
        expected_udp = 1 + sum(1 for p in udp_packets if meshlet_answer(p, table, 1232) is not None)
        await _drain(lambda: len(collector.responses) >= expected_udp, 5)
        assert len(collector.responses) == expected_udp

        # --- Nothing raised, nothing logged, every response well formed.
        assert server.errors == 0
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        sent_ids = {_id(p) for p in udp_packets + sent_tcp} | {0x600D}
        for response in collector.responses + received_tcp:
            check_response(response, sent_ids)
    finally:
        client.close()
        await server.close()
        await forwarder.close()
        upstream.close()


def test_fuzz_inputs_are_reproducible() -> None:
    """The seed fixes the packets, so a failure can be replayed."""
    assert packets(random.Random(SEED), 50) == packets(random.Random(SEED), 50)
