"""Upstream answers: the query we send, checking what comes back, and caching it (pure).

An upstream response is read once, when it arrives: its records after the
question are kept as bytes without the OPT record, with the offsets of their
TTL fields. A cached answer is served with the client's ID and question (the
same name in another case has the same length, so compression pointers into
the question stay valid), its TTLs lowered by its age, and an OPT record of our
own when the client sent one. Time is passed in (`now`), never read here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from meshlet.sidecar.dns import wire
from meshlet.sidecar.dns.answer import client_limit
from meshlet.sidecar.dns.rdata import valid_rdata

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")
_TTL = struct.Struct("!I")
_SOA_MINIMUM_FROM_END = 4
_OPTS = (wire.opt_record(wire.EDNS_SIZE, False), wire.opt_record(wire.EDNS_SIZE, True))
_TC = 0x0200
_AD = 0x0020
_CD = 0x0010


def cache_key(question: bytes, dnssec_ok: bool, checking_disabled: bool) -> bytes:
    """(name, type, class) lower-cased, and the DO and CD bits: what an answer depends on."""
    return question.lower() + bytes((dnssec_ok | checking_disabled << 1,))


def upstream_query(qid: int, question: bytes, dnssec_ok: bool, checking_disabled: bool) -> bytes:
    """Our query to an upstream: a fresh ID, RD, the client's CD, and an OPT of our own."""
    flags = 0x0100 | (_CD if checking_disabled else 0)
    return _HEADER.pack(qid, flags, 1, 0, 0, 1) + question + _OPTS[dnssec_ok]


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    flags: int  # the upstream header's flags word
    ancount: int
    nscount: int
    arcount: int  # without the OPT record
    records: bytes  # everything after the question, without the OPT record
    ttl_offsets: tuple[int, ...]  # where each record's TTL is in `records`
    ttls: tuple[int, ...]
    cache_seconds: int  # how long it may be cached: 0 means not at all

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    @property
    def truncated(self) -> bool:
        return bool(self.flags & _TC)


def read_response(
    response: bytes, qid: int, question: bytes, max_ttl: int, max_negative_ttl: int
) -> UpstreamAnswer | None:
    """The answer in an upstream's `response` to our query, or None if it is not one."""
    if len(response) < wire.HEADER_SIZE:
        return None
    rid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(response)
    if rid != qid or not flags & 0x8000 or flags & 0x7800 or qdcount != 1:
        return None
    start = wire.HEADER_SIZE
    end = start + len(question)
    if response[start:end].lower() != question.lower():
        return None
    offset, size = end, len(response)
    ttl_offsets: list[int] = []
    ttls: list[int] = []
    answer_ttl: int | None = None
    negative_ttl: int | None = None
    zeroed: list[int] = []
    total = ancount + nscount + arcount
    kept = total
    for index in range(total):
        record_start = offset
        offset = wire.name_at(response, offset)
        if offset < 0 or offset + 10 > size:
            return None
        rtype, _, ttl, rdlength = _RR_FIXED.unpack_from(response, offset)
        rdata_end = offset + 10 + rdlength
        if rdata_end > size or not valid_rdata(response, rtype, offset + 10, rdata_end):
            return None
        if rtype == wire.TYPE_OPT:
            if index < ancount + nscount:
                return None
            # Drop the OPT record and whatever follows it (additional data is optional).
            kept, cut = index, record_start
            break
        if ttl & 0x80000000:
            ttl = 0  # RFC 2181 8: a TTL with the top bit set is read as zero
            zeroed.append(offset + 4 - end)
        ttl_offsets.append(offset + 4 - end)
        ttls.append(ttl)
        if index < ancount:
            answer_ttl = ttl if answer_ttl is None else min(answer_ttl, ttl)
        elif index < ancount + nscount and rtype == wire.TYPE_SOA:  # valid: 20 bytes at its end
            minimum = _TTL.unpack_from(response, rdata_end - _SOA_MINIMUM_FROM_END)[0]
            negative_ttl = min(ttl, minimum)
        offset = rdata_end
    else:
        cut = offset  # bytes after the last record are no part of the answer
    rcode = flags & 0xF
    if flags & _TC:
        seconds = 0
    elif rcode == wire.NOERROR and ancount:
        seconds = min(answer_ttl or 0, max_ttl)
    elif rcode in (wire.NOERROR, wire.NXDOMAIN) and negative_ttl is not None:
        seconds = min(negative_ttl, max_negative_ttl)
    else:
        seconds = 0
    records = response[end:cut]
    if zeroed:
        patched = bytearray(records)
        for ttl_offset in zeroed:
            _TTL.pack_into(patched, ttl_offset, 0)
        records = bytes(patched)
    return UpstreamAnswer(
        flags=flags,
        ancount=ancount,
        nscount=nscount,
        arcount=kept - ancount - nscount,
        records=records,
        ttl_offsets=tuple(ttl_offsets),
        ttls=tuple(ttls),
        cache_seconds=seconds,
    )


def render(
    query: bytes,
    question: bytes,
    answer: UpstreamAnswer,
    age: int,
    edns_size: int,
    dnssec_ok: bool,
    max_udp: int | None,
) -> bytes:
    """`answer` for this client: its ID, RD, CD and question; TTLs lowered by `age` seconds."""
    records = answer.records
    if age > 0 and answer.ttl_offsets:
        patched = bytearray(records)
        for offset, ttl in zip(answer.ttl_offsets, answer.ttls, strict=True):
            _TTL.pack_into(patched, offset, ttl - age if ttl > age else 0)
        records = bytes(patched)
    upstream = answer.flags  # keep TC, RA, AD and the rcode; AA is not ours to claim
    flags = 0x8000 | (query[2] & 0x01) << 8 | (upstream & 0x02AF) | (query[3] & _CD)
    if not (dnssec_ok or query[3] & _AD):
        flags &= ~_AD  # RFC 6840 5.8: AD only for clients that asked for it
    opt = _OPTS[dnssec_ok] if edns_size else b""
    ar = answer.arcount + (1 if opt else 0)
    size = 12 + len(question) + len(records) + len(opt)
    if size > client_limit(edns_size, max_udp):
        header = _HEADER.pack(0, flags | _TC, 1, 0, 0, 1 if opt else 0)
        return query[:2] + header[2:] + question + opt
    header = _HEADER.pack(0, flags, 1, answer.ancount, answer.nscount, ar)
    return query[:2] + header[2:] + question + records + opt


@dataclass(slots=True)
class _Cached:
    answer: UpstreamAnswer
    stored: float
    expires: float


class ResponseCache:
    """Upstream answers by `cache_key`, for their TTL, at most `max_entries` (oldest out first)."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: dict[bytes, _Cached] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float) -> tuple[UpstreamAnswer, int] | None:
        """(answer, age in whole seconds) while it is fresh."""
        cached = self._entries.get(key)
        if cached is None:
            return None
        if now >= cached.expires:
            del self._entries[key]
            return None
        return cached.answer, int(now - cached.stored)

    def put(self, key: bytes, answer: UpstreamAnswer, now: float) -> None:
        if answer.cache_seconds <= 0 or self.max_entries <= 0:
            return
        entries = self._entries
        entries.pop(key, None)
        while len(entries) >= self.max_entries:
            del entries[next(iter(entries))]
        entries[key] = _Cached(answer, now, now + answer.cache_seconds)
