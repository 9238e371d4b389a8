"""DNS over TCP against clients that hold connections, dribble bytes or wait on upstream,
on real sockets.

The upstream is a UDP socket that never answers, so a forwarded query stays in
flight for as long as a test needs; mesh names are answered locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import pytest

from meshlet.sidecar.dns import DnsServer, Forwarder, build_dns_table, tcp
from tests.test_dns_table import mesh_table

TABLE = build_dns_table(mesh_table(), "default", "cluster.local", ttl=5)
LONG = 60.0  # a timeout that no test waits for
# A length prefix that promises the largest message, and then its body, one byte at a time.
NEVER_WHOLE = b"\xff\xff" + bytes(200)


@pytest.fixture
def silent_upstream() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _framed(name: str, rdtype: str, qid: int) -> bytes:
    wire = dns.message.make_query(name, rdtype, id=qid).to_wire()
    return struct.pack("!H", len(wire)) + wire


async def _read_framed(reader: asyncio.StreamReader) -> dns.message.Message:
    (length,) = struct.unpack("!H", await reader.readexactly(2))
    return dns.message.from_wire(await reader.readexactly(length))


def addresses(response: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in response.answer for rd in rrset)


@dataclass
class Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    dribbling: asyncio.Task[None] | None = None
    sent: int = 0  # bytes dribbled before the server closed the connection

    async def ask(self, name: str, qid: int) -> dns.message.Message:
        self.writer.write(_framed(name, "A", qid))
        return await asyncio.wait_for(_read_framed(self.reader), 10)

    def dribble(self, data: bytes, every: float) -> None:
        self.dribbling = asyncio.create_task(self._dribble(data, every))

    async def _dribble(self, data: bytes, every: float) -> None:
        for index in range(len(data)):
            try:
                self.writer.write(data[index : index + 1])
                await self.writer.drain()
            except OSError:  # closed by the server: what the tests wait for
                return
            self.sent += 1
            await asyncio.sleep(every)

    async def closed_by_server(self) -> bytes:
        """What the server sent before it closed the connection (fails if it never does)."""
        try:
            return await asyncio.wait_for(self.reader.read(), 10)
        except ConnectionResetError:
            return b""

    async def close(self) -> None:
        if self.dribbling is not None:
            self.dribbling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.dribbling
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    opened: list[Client] = []
    try:
        yield opened
    finally:
        for client in opened:
            await client.close()


async def connect(server: DnsServer, clients: list[Client]) -> Client:
    reader, writer = await asyncio.open_connection(*server.address)
    client = Client(reader, writer)
    clients.append(client)
    return client


@contextlib.asynccontextmanager
async def serving(upstream: int, **tcp_options: Any) -> AsyncIterator[DnsServer]:
    """A DNS server with the TCP options given, forwarding to `upstream`."""
    forwarder = Forwarder([("127.0.0.1", upstream)], timeout=LONG)
    server = DnsServer(lambda: TABLE, forwarder, **tcp_options)
    try:
        await server.start("127.0.0.1", 0)
        yield server
    finally:
        await server.close()
        await forwarder.close()
    assert server.errors == 0


def no_clocks(limit: int) -> dict[str, float]:
    """A table of `limit` connections that neither clock closes during a test."""
    return {"max_tcp_connections": limit, "tcp_idle_timeout": LONG, "tcp_query_deadline": LONG}


async def newcomers_answered(server: DnsServer, count: int = 3) -> None:
    """New connections, each asking one query the table answers, are answered."""
    host, port = server.address
    for qid in range(count):
        query = dns.message.make_query("web.default.svc.cluster.local", "A", id=qid)
        response = await dns.asyncquery.tcp(query, host, port=port, timeout=10)
        assert addresses(response) == ["10.96.0.10"]


async def test_a_full_table_of_dribbling_connections_gives_way_to_a_new_query(
    silent_upstream: int, clients: list[Client]
) -> None:
    # Neither clock closes anything during the test: only giving way lets a query in.
    limit = 32
    async with serving(silent_upstream, **no_clocks(limit)) as server:
        holders = []
        for qid in range(limit):
            holder = await connect(server, clients)
            assert addresses(await holder.ask("web", qid)) == ["10.96.0.10"]  # it is in
            holder.dribble(NEVER_WHOLE, every=0.2)
            holders.append(holder)

        await newcomers_answered(server)
        # The one idle longest gave way to the first newcomer.
        assert await holders[0].closed_by_server() == b""


async def wait_upstream(client: Client, name: str, qid: int) -> None:
    """Leave a query for `name` in flight to the silent upstream, and know it was read."""
    # Forwarded, then a local one: its answer shows the server read both.
    client.writer.write(_framed(name, "A", qid) + _framed("web", "A", qid + 1))
    assert (await asyncio.wait_for(_read_framed(client.reader), 10)).id == qid + 1


async def test_a_full_table_of_connections_waiting_upstream_gives_way_to_a_new_query(
    silent_upstream: int, clients: list[Client]
) -> None:
    # Every connection has a query that never comes back (the forwarder waits longer
    # than the test), so none is idle and neither clock closes any.
    limit = 16
    async with serving(silent_upstream, **no_clocks(limit)) as server:
        holders = []
        for index in range(limit):
            holder = await connect(server, clients)
            await wait_upstream(holder, f"held-{index}.example.test", 2 * index)
            holders.append(holder)

        await newcomers_answered(server)
        # The one whose query waited longest gave way, its query unanswered; the rest stay.
        assert await holders[0].closed_by_server() == b""
        assert addresses(await holders[-1].ask("web", 1000)) == ["10.96.0.10"]


async def test_an_idle_connection_gives_way_before_one_with_a_query_in_flight(
    silent_upstream: int, clients: list[Client]
) -> None:
    async with serving(silent_upstream, **no_clocks(2)) as server:
        waiting = await connect(server, clients)
        await wait_upstream(waiting, "www.example.test", 1)
        idle = await connect(server, clients)
        assert addresses(await idle.ask("web", 3)) == ["10.96.0.10"]

        newcomer = await connect(server, clients)
        assert addresses(await newcomer.ask("web", 4)) == ["10.96.0.10"]
        assert await idle.closed_by_server() == b""  # newer than `waiting`, but nothing in flight
        assert addresses(await waiting.ask("web", 5)) == ["10.96.0.10"]


async def test_a_message_dribbled_slower_than_the_deadline_is_cut_off(
    silent_upstream: int, clients: list[Client]
) -> None:
    async with serving(silent_upstream, tcp_idle_timeout=LONG, tcp_query_deadline=0.3) as server:
        slow = await connect(server, clients)
        assert addresses(await slow.ask("web", 1)) == ["10.96.0.10"]
        # A real query, a byte every 0.1 s: whole only after seconds, long past the deadline.
        frame = _framed("web.default.svc.cluster.local", "A", 2)
        slow.dribble(frame, every=0.1)
        assert await slow.closed_by_server() == b""  # closed, and never answered
        assert slow.sent < len(frame)


async def test_dribbled_bytes_do_not_keep_a_connection_from_its_idle_timeout(
    silent_upstream: int, clients: list[Client]
) -> None:
    async with serving(silent_upstream, tcp_idle_timeout=0.5, tcp_query_deadline=LONG) as server:
        holder = await connect(server, clients)
        assert addresses(await holder.ask("web", 1)) == ["10.96.0.10"]
        holder.dribble(NEVER_WHOLE, every=0.1)  # a byte far more often than the idle timeout
        assert await holder.closed_by_server() == b""


def test_the_docs_state_the_tcp_defaults() -> None:
    page = Path(__file__).resolve().parent.parent / "docs" / "reference" / "cli.md"
    text = " ".join(page.read_text().split())
    assert f"at most {tcp.MAX_CONNECTIONS} connections" in text
    assert f"within {tcp.QUERY_DEADLINE:g} s of its first byte" in text
    assert f"closed after {tcp.IDLE_TIMEOUT:g} s without" in text
