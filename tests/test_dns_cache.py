"""Upstream answers, read once and served from the cache (pure: time is passed in)."""

from __future__ import annotations

import dnslib
import pytest

from meshlet.sidecar.dns.answer import Forward, answer
from meshlet.sidecar.dns.cache import (
    ResponseCache,
    UpstreamAnswer,
    cache_key,
    read_response,
    render,
    upstream_query,
)
from meshlet.sidecar.dns.rdata import valid_rdata
from meshlet.sidecar.dns.wire import name_at
from tests.test_dns_table import make_query

QID = 0x1234
SOA = dnslib.SOA("ns.example.com.", "admin.example.com.", (1, 3600, 600, 86400, 60))


def forward_of(query: bytes) -> Forward:
    result = answer(query, None, 1232)
    assert isinstance(result, Forward)
    return result


def upstream_reply(
    question: bytes,
    *,
    answers: list[tuple[str, int]] = (),  # type: ignore[assignment]
    rcode: int = 0,
    soa_ttl: int | None = None,
    opt: bool = True,
    extra_after_opt: bool = False,
    qid: int = QID,
    aa: bool = True,
) -> bytes:
    """What unbound would send back to `upstream_query(QID, question, ...)`."""
    request = dnslib.DNSRecord.parse(upstream_query(qid, question, False, False))
    reply = request.reply(ra=1, aa=int(aa))
    reply.header.rcode = rcode
    for address, ttl in answers:
        reply.add_answer(dnslib.RR(request.q.qname, rdata=dnslib.A(address), ttl=ttl))
    if soa_ttl is not None:
        reply.add_auth(dnslib.RR("example.com.", dnslib.QTYPE.SOA, rdata=SOA, ttl=soa_ttl))
    if opt:
        reply.add_ar(dnslib.EDNS0(udp_len=1232))
    if extra_after_opt:
        reply.add_ar(dnslib.RR("ns.example.com.", rdata=dnslib.A("192.0.2.53"), ttl=30))
    return bytes(reply.pack())


def read(response: bytes, question: bytes) -> UpstreamAnswer:
    result = read_response(response, QID, question, max_ttl=3600, max_negative_ttl=300)
    assert result is not None
    return result


def test_a_positive_answer_is_cached_for_its_smallest_ttl_and_served_as_the_clients() -> None:
    asked = make_query("www.example.com", qid=0xAAAA, edns=1232)
    forward = forward_of(asked)
    cached = read(
        upstream_reply(forward.question, answers=[("192.0.2.1", 300), ("192.0.2.2", 120)]),
        forward.question,
    )
    assert cached.cache_seconds == 120 and cached.rcode == 0 and not cached.truncated
    assert cached.arcount == 0  # the upstream's OPT record is not kept

    # Another client, other case, no EDNS0, 30 s later.
    other = make_query("WWW.Example.COM", qid=0xBBBB, rd=False)
    response = render(other, forward_of(other).question, cached, 30, 0, False, 1232)
    parsed = dnslib.DNSRecord.parse(response)
    assert parsed.header.id == 0xBBBB
    assert str(parsed.q.qname) == "WWW.Example.COM."
    assert response[12 : len(other)] == other[12:]
    assert (parsed.header.aa, parsed.header.rd, parsed.header.ra) == (0, 0, 1)
    assert sorted((str(rr.rdata), rr.ttl) for rr in parsed.rr) == [
        ("192.0.2.1", 270),
        ("192.0.2.2", 90),
    ]
    assert not parsed.ar  # no OPT for a client that sent none

    response = render(asked, forward.question, cached, 500, 4096, True, 1232)
    parsed = dnslib.DNSRecord.parse(response)
    assert [rr.ttl for rr in parsed.rr] == [0, 0]  # never below zero
    (opt,) = parsed.ar
    assert opt.rtype == dnslib.QTYPE.OPT and opt.rclass == 1232 and opt.ttl & 0x8000


def test_ttls_are_capped() -> None:
    question = forward_of(make_query("www.example.com")).question
    cached = read(upstream_reply(question, answers=[("192.0.2.1", 86400 * 7)]), question)
    assert cached.cache_seconds == 3600
    cached = read(upstream_reply(question, answers=[("192.0.2.1", 2**31 + 7)]), question)
    assert cached.cache_seconds == 0  # RFC 2181: the top bit set reads as zero
    assert (
        dnslib.DNSRecord.parse(
            render(make_query("www.example.com"), question, cached, 0, 0, False, 1232)
        )
        .rr[0]
        .ttl
        == 0
    )


@pytest.mark.parametrize(
    ("rcode", "answers", "soa_ttl", "seconds"),
    [
        (3, [], 600, 60),  # NXDOMAIN: min(SOA TTL, SOA minimum)
        (3, [], 30, 30),
        (0, [], 600, 60),  # NODATA, the same
        (3, [], None, 0),  # no SOA: not cached (RFC 2308 5)
        (2, [], None, 0),  # SERVFAIL: not cached
        (5, [], None, 0),  # REFUSED: not cached
    ],
)
def test_negative_answers_are_cached_by_their_soa(
    rcode: int, answers: list[tuple[str, int]], soa_ttl: int | None, seconds: int
) -> None:
    question = forward_of(make_query("nope.example.com")).question
    cached = read(upstream_reply(question, answers=answers, rcode=rcode, soa_ttl=soa_ttl), question)
    assert cached.cache_seconds == seconds and cached.rcode == rcode


def test_negative_cache_time_is_capped() -> None:
    question = forward_of(make_query("nope.example.com")).question
    response = upstream_reply(question, rcode=3, soa_ttl=86400)
    soa_minimum_large = response.replace((60).to_bytes(4, "big"), (7200).to_bytes(4, "big"))
    assert read(soa_minimum_large, question).cache_seconds == 300


def test_records_after_the_opt_record_are_dropped() -> None:
    question = forward_of(make_query("www.example.com")).question
    cached = read(
        upstream_reply(question, answers=[("192.0.2.1", 60)], extra_after_opt=True), question
    )
    assert (cached.ancount, cached.nscount, cached.arcount) == (1, 0, 0)
    parsed = dnslib.DNSRecord.parse(
        render(make_query("www.example.com"), question, cached, 0, 0, False, 1232)
    )
    assert len(parsed.rr) == 1 and not parsed.ar


def test_too_big_for_the_client_is_truncated_whole() -> None:
    question = forward_of(make_query("big.example.com")).question
    cached = read(
        upstream_reply(question, answers=[(f"192.0.2.{i}", 60) for i in range(1, 60)]), question
    )
    query = make_query("big.example.com")
    parsed = dnslib.DNSRecord.parse(render(query, question, cached, 0, 0, False, 1232))
    assert parsed.header.tc == 1 and not parsed.rr
    parsed = dnslib.DNSRecord.parse(render(query, question, cached, 0, 0, False, None))  # TCP
    assert parsed.header.tc == 0 and len(parsed.rr) == 59


def test_what_is_not_an_answer_to_our_query_is_refused() -> None:
    question = forward_of(make_query("www.example.com")).question
    good = upstream_reply(question, answers=[("192.0.2.1", 60)])
    other_question = forward_of(make_query("www.example.org")).question
    not_ours = [
        upstream_reply(question, answers=[("192.0.2.1", 60)], qid=QID + 1),  # another ID
        good[:2] + bytes([good[2] & 0x7F]) + good[3:],  # not a response
        upstream_reply(other_question, answers=[("192.0.2.1", 60)]),  # another question
        good[:-3],  # cut short
        good[:11],
        b"",
    ]
    for response in not_ours:
        assert read_response(response, QID, question, 3600, 300) is None
    # The question may come back in another case (0x20): still ours.
    assert read_response(good.replace(b"www", b"WwW"), QID, question, 3600, 300) is not None


def test_upstream_query() -> None:
    question = forward_of(make_query("www.example.com", "AAAA")).question
    parsed = dnslib.DNSRecord.parse(upstream_query(7, question, True, True))
    assert parsed.header.id == 7 and parsed.header.rd == 1 and parsed.header.cd == 1
    assert str(parsed.q.qname) == "www.example.com." and parsed.q.qtype == dnslib.QTYPE.AAAA
    (opt,) = parsed.ar
    assert opt.rclass == 1232 and opt.ttl & 0x8000  # DO


def test_cache_key() -> None:
    a = forward_of(make_query("www.example.com")).question
    b = forward_of(make_query("WWW.EXAMPLE.COM")).question
    assert cache_key(a, False, False) == cache_key(b, False, False)
    keys = {cache_key(a, do, cd) for do in (False, True) for cd in (False, True)}
    assert len(keys) == 4
    aaaa = forward_of(make_query("www.example.com", "AAAA")).question
    assert cache_key(aaaa, False, False) != cache_key(a, False, False)


def test_response_cache_expiry_and_size() -> None:
    question = forward_of(make_query("www.example.com")).question
    cached = read(upstream_reply(question, answers=[("192.0.2.1", 10)]), question)
    cache = ResponseCache(max_entries=2)
    cache.put(b"a", cached, now=100.0)
    assert cache.get(b"a", 100.0) == (cached, 0)
    assert cache.get(b"a", 109.9) == (cached, 9)
    assert cache.get(b"a", 110.0) is None and len(cache) == 0  # expired and gone
    for key in (b"1", b"2", b"3"):
        cache.put(key, cached, now=200.0)
    assert len(cache) == 2 and cache.get(b"1", 200.0) is None  # the oldest went first
    uncachable = read(upstream_reply(question, rcode=2), question)
    cache.put(b"x", uncachable, now=200.0)
    assert cache.get(b"x", 200.0) is None


# --- upstream records: relayed only if a client can parse them ------------------------

_NAME = b"\x03web\x07example\x00"  # at offset 0 of the message below


@pytest.mark.parametrize(
    ("rtype", "rdata", "good"),
    [
        (1, b"\xc0\x00\x02\x01", True),  # A: any 4 bytes
        (1, b"\x01\x02\x03", False),
        (28, bytes(16), True),
        (28, bytes(4), False),  # an A's data under AAAA
        (2, _NAME, True),  # NS
        (2, b"\xc0\x00", True),  # a pointer back to a name
        (2, b"\xc0\x00\x02\x01", False),  # bytes after the name
        (2, b"\x80\x00", False),  # a reserved label type
        (5, b"\xc0\xff", False),  # a pointer forward
        (12, b"\x02ab", False),  # a name cut short
        (15, b"\x00\x0a\xc0\x00", True),  # MX
        (15, b"\x00\x0a", False),
        (33, b"\x00\x01\x00\x02\x00\x50\xc0\x00", True),  # SRV
        (6, _NAME + _NAME + bytes(20), True),  # SOA
        (6, _NAME + _NAME + bytes(19), False),
        (16, b"\x02hi\x00", True),  # TXT
        (16, b"\x05hi", False),
        (65, b"\x00\x01\x00\x00\x01\x00\x03\x02h2", True),  # HTTPS: alpn=h2
        (65, b"\x00\x01\x00\x00\x03\x00\x00\x00\x01\x00\x00", False),  # keys not increasing
        (65, b"\xc0\x00\x02\x01", False),
        (99, b"", False),  # SPF: at least one string
        (257, b"\xff\xff", True),  # a type it does not know: opaque
    ],
)
def test_upstream_record_data_is_checked_by_type(rtype: int, rdata: bytes, good: bool) -> None:
    message = _NAME + b"\x00" * 10 + rdata  # the record's data starts after a name
    start = len(_NAME) + 10
    assert valid_rdata(message, rtype, start, len(message)) is good


def test_a_name_pointing_at_itself_is_refused() -> None:
    assert name_at(b"\xc0\x00", 0) == -1
    assert name_at(b"\x01a" * 130 + b"\x00", 0) == -1  # longer than 255 bytes
