"""Forwarding to the pod's upstream resolvers, with a cache (the I/O around cache.py).

UDP first, from a fresh socket and a random ID per query; a truncated answer is
asked again over TCP. An attempt that times out or fails moves on to the next
upstream, round after round, until the overall timeout; then the client gets
SERVFAIL. Concurrent queries for the same (name, type, class, DO, CD) share one
upstream query, and at most `max_outstanding` upstream queries run at once
(beyond that, SERVFAIL at once rather than queueing without bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
import struct
import time
from collections.abc import Callable, Sequence

from meshlet.flags import grpc_address
from meshlet.sidecar.dns import wire
from meshlet.sidecar.dns.answer import Forward, servfail
from meshlet.sidecar.dns.cache import (
    ResponseCache,
    UpstreamAnswer,
    cache_key,
    read_response,
    render,
    upstream_query,
)

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!H")
# A round in which every upstream failed at once (e.g. port unreachable) waits this
# much longer than the last before the next round, so a dead upstream is not spun on.
_ROUND_BACKOFF = 0.05


class _BadResponse(Exception):
    pass


class _UpstreamUdp(asyncio.DatagramProtocol):
    """One query on a connected UDP socket: the first response that matches it, or the
    error that ended it (a value, not a future's exception: when the attempt has
    timed out nobody awaits it any more, and that is fine)."""

    def __init__(self, parse: Callable[[bytes], UpstreamAnswer | None]) -> None:
        self.parse = parse
        self.result: asyncio.Future[UpstreamAnswer | Exception] = (
            asyncio.get_running_loop().create_future()
        )

    def _settle(self, outcome: UpstreamAnswer | Exception) -> None:
        if not self.result.done():
            self.result.set_result(outcome)

    def datagram_received(self, data: bytes, addr: object) -> None:
        answer = self.parse(data)  # anything else (spoofed, stale, malformed) is ignored
        if answer is not None:
            self._settle(answer)

    def error_received(self, exc: Exception) -> None:
        self._settle(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle(exc or ConnectionError("upstream socket closed"))


# An attempt's upstream ("HOST:PORT"), outcome (its rcode, "timeout" or "error") and seconds.
OnAttempt = Callable[[str, str, float], None]


class Forwarder:
    """Answers forwarded queries from its cache or from the upstreams."""

    def __init__(
        self,
        upstreams: Sequence[tuple[str, int]],
        *,
        timeout: float = 2.0,
        attempt_timeout: float = 0.5,
        max_outstanding: int = 256,
        cache_entries: int = 10_000,
        max_ttl: int = 3600,
        max_negative_ttl: int = 300,
        clock: Callable[[], float] = time.monotonic,
        on_attempt: OnAttempt | None = None,
    ) -> None:
        self.upstreams = [(str(ipaddress.ip_address(host)), int(port)) for host, port in upstreams]
        # For metrics: queries sent to each upstream ("HOST:PORT"), answers found in
        # the cache or not, and each attempt's outcome and time (rare next to hits).
        self.names = {upstream: grpc_address(*upstream) for upstream in self.upstreams}
        self.sent: dict[str, int] = {}
        self.cache_hits = self.cache_misses = 0
        self.on_attempt = on_attempt
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.max_outstanding = max_outstanding
        self.max_ttl = max_ttl
        self.max_negative_ttl = max_negative_ttl
        self.cache = ResponseCache(cache_entries)
        self.clock = clock
        self._inflight: dict[bytes, asyncio.Task[UpstreamAnswer | None]] = {}

    def cached(self, query: bytes, forward: Forward, max_udp: int | None) -> bytes | None:
        """The answer from the cache, or None when it has to go upstream."""
        key = cache_key(forward.question, forward.dnssec_ok, bool(query[3] & 0x10))
        hit = self.cache.get(key, self.clock())
        if hit is None:
            self.cache_misses += 1
            return None
        self.cache_hits += 1
        answer, age = hit
        return render(
            query, forward.question, answer, age, forward.edns_size, forward.dnssec_ok, max_udp
        )

    async def resolve(
        self, query: bytes, forward: Forward, max_udp: int | None
    ) -> tuple[bytes, float | None]:
        """(response, seconds spent waiting on upstreams or None for a cache hit)."""
        question, edns_size, dnssec_ok = forward
        checking_disabled = bool(query[3] & 0x10)
        key = cache_key(question, dnssec_ok, checking_disabled)
        started = self.clock()
        hit = self.cache.get(key, started)
        if hit is not None:
            return render(query, question, hit[0], hit[1], edns_size, dnssec_ok, max_udp), None
        task = self._inflight.get(key)
        if task is None:
            if not self.upstreams or len(self._inflight) >= self.max_outstanding:
                return servfail(query, question, edns_size, dnssec_ok), None
            task = asyncio.get_running_loop().create_task(
                self._fetch(key, question, dnssec_ok, checking_disabled)
            )
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._done(key, done))
        answer = await asyncio.shield(task)
        seconds = self.clock() - started
        if answer is None:
            return servfail(query, question, edns_size, dnssec_ok), seconds
        return render(query, question, answer, 0, edns_size, dnssec_ok, max_udp), seconds

    def _done(self, key: bytes, task: asyncio.Task[UpstreamAnswer | None]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("forwarding failed", exc_info=task.exception())

    async def _fetch(
        self, key: bytes, question: bytes, dnssec_ok: bool, checking_disabled: bool
    ) -> UpstreamAnswer | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        qid = secrets.randbits(16)
        message = upstream_query(qid, question, dnssec_ok, checking_disabled)

        def parse(response: bytes) -> UpstreamAnswer | None:
            return read_response(response, qid, question, self.max_ttl, self.max_negative_ttl)

        count = len(self.upstreams)
        refused: UpstreamAnswer | None = None
        attempt = 0
        while (remaining := deadline - loop.time()) > 0:
            upstream = self.upstreams[attempt % count]
            attempt += 1
            to = self.names[upstream]
            self.sent[to] = self.sent.get(to, 0) + 1
            tried = loop.time()
            try:
                answer = await asyncio.wait_for(
                    self._udp(upstream, message, parse), min(self.attempt_timeout, remaining)
                )
                if answer.truncated:
                    answer = await asyncio.wait_for(
                        self._tcp(upstream, message, parse), max(deadline - loop.time(), 0.001)
                    )
            except (
                TimeoutError,
                OSError,
                EOFError,
                asyncio.IncompleteReadError,
                _BadResponse,
            ) as exc:
                log.debug("upstream %s:%d: %r", *upstream, exc)
                if self.on_attempt is not None:
                    outcome = "timeout" if isinstance(exc, TimeoutError) else "error"
                    self.on_attempt(to, outcome, loop.time() - tried)
                if attempt % count == 0:
                    await asyncio.sleep(min(_ROUND_BACKOFF * attempt / count, remaining))
                continue
            if self.on_attempt is not None:
                self.on_attempt(to, wire.RCODE_NAMES[answer.rcode & 0xF], loop.time() - tried)
            if answer.rcode in (wire.SERVFAIL, wire.REFUSED) and attempt < count:
                refused = answer  # another upstream may know better
                continue
            self.cache.put(key, answer, self.clock())
            return answer
        return refused

    async def _udp(
        self,
        upstream: tuple[str, int],
        message: bytes,
        parse: Callable[[bytes], UpstreamAnswer | None],
    ) -> UpstreamAnswer:
        family = socket.AF_INET6 if ":" in upstream[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(upstream)
        except OSError:
            sock.close()
            raise
        transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _UpstreamUdp(parse), sock=sock
        )
        try:
            transport.sendto(message)
            outcome = await protocol.result
        finally:
            transport.close()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _tcp(
        self,
        upstream: tuple[str, int],
        message: bytes,
        parse: Callable[[bytes], UpstreamAnswer | None],
    ) -> UpstreamAnswer:
        reader, writer = await asyncio.open_connection(*upstream)
        try:
            writer.write(_LENGTH.pack(len(message)) + message)
            (length,) = _LENGTH.unpack(await reader.readexactly(2))
            answer = parse(await reader.readexactly(length))
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if answer is None:
            raise _BadResponse("the upstream's TCP answer does not match the query")
        return answer

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
