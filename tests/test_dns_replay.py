"""Replaying answers already given: per table, per exact query, bounded."""

from __future__ import annotations

import gc

import dns.edns
import dns.message

from meshlet.sidecar.dns import build_dns_table, replay
from meshlet.sidecar.dns.answer import answer
from meshlet.sidecar.dns.replay import Replay
from tests.test_dns_table import mesh_table

TABLE = build_dns_table(mesh_table(), "default", "cluster.local", ttl=5)


def query(name: str, rdtype: str = "A", query_id: int = 7) -> bytes:
    message = dns.message.make_query(name, rdtype)
    message.id = query_id
    return message.to_wire()


def test_a_kept_answer_is_the_answer_of_any_later_id() -> None:
    cache = Replay()
    responses = cache.for_table(TABLE, 1232)
    first = query("web.default.svc.cluster.local", query_id=7)
    response = answer(first, TABLE)
    assert isinstance(response, bytes)
    assert cache.keep(first, response) == ("A", "NOERROR")
    again = query("web.default.svc.cluster.local", query_id=8)
    tail, qtype, rcode = responses[again[2:]]
    assert again[:2] + tail == answer(again, TABLE)
    assert (qtype, rcode) == ("A", "NOERROR")
    nxdomain = query("nope.default.svc.cluster.local")
    nx_response = answer(nxdomain, TABLE)
    assert isinstance(nx_response, bytes)
    assert cache.keep(nxdomain, nx_response) == ("A", "NXDOMAIN")


def test_another_table_or_size_limit_starts_empty_and_no_table_is_held() -> None:
    cache = Replay()
    q = query("web")
    response = answer(q, TABLE)
    assert isinstance(response, bytes)
    cache.for_table(TABLE, 1232)
    cache.keep(q, response)
    assert q[2:] in cache.for_table(TABLE, 1232)
    assert cache.for_table(TABLE, 512) == {}  # answers are cut to the size limit
    cache.keep(q, response)
    other = build_dns_table(mesh_table(), "default", "cluster.local", ttl=5)
    assert other.generation != TABLE.generation
    assert cache.for_table(other, 512) == {}
    # Only the generation is kept: a table swapped out can be freed.
    assert not any(referent is other for referent in gc.get_referents(cache))
    assert cache.made_for == (other.generation, 512)


def test_only_exact_answers_of_bounded_queries_are_kept() -> None:
    cache = Replay()
    responses = cache.for_table(TABLE, 1232)
    q = query("web")
    cache.keep(q, b"\xff\xff" + q[2:])  # not this query's ID: not an answer to replay
    padded = dns.message.make_query(
        "web", "A", use_edns=0, options=[dns.edns.GenericOption(65001, b"x" * 300)]
    ).to_wire()  # over 300 bytes: answered every time, never kept
    response = answer(padded, TABLE)
    assert isinstance(response, bytes)
    cache.keep(padded, response)
    assert responses == {}


def test_once_full_it_starts_over(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(replay, "LIMIT", 3)
    cache = Replay()
    responses = cache.for_table(TABLE, 1232)
    names = [f"n{i}.default.svc.cluster.local" for i in range(5)]
    for name in names:
        q = query(name)
        response = answer(q, TABLE)
        assert isinstance(response, bytes)
        assert cache.keep(q, response) == ("A", "NXDOMAIN")
    assert cache.for_table(TABLE, 1232) is responses  # the dict the UDP loop holds
    assert [query(n)[2:] in responses for n in names] == [False, False, False, True, True]
