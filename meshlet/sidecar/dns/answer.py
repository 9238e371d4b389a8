"""The DNS hot path (pure): a query's bytes in, the response's bytes out.

Only the header, the question and the OPT record are read, and the response is
assembled from precomputed pieces (see table.py):

    query ID + header tail + the question exactly as asked + records [+ OPT]

The common query (one question, no other records, or just an OPT record without
options) is recognised by comparing fixed bytes and answered with one slice,
one `bytes.lower()` and one dict hit; the dict hit itself proves the question
is well formed, since every key is. On a miss the name is checked and `lookup`
decides (NODATA, NXDOMAIN, a short name, or forward). Everything else takes
`_answer_parsed`, which reads the header, question and additional records
properly (FORMERR, NOTIMP, BADVERS, EDNS0 options, records in odd sections).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from meshlet.sidecar.dns import wire
from meshlet.sidecar.dns.table import DnsTable, Entry, type_class
from meshlet.sidecar.dns.table import type_class as type_class_of

_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_ONE_QUESTION_ONE_ADDITIONAL = b"\x00\x01\x00\x00\x00\x00\x00\x01"
_OPT_START = b"\x00\x00\x29"  # root owner name, type OPT
_NO_RDATA = b"\x00\x00"
_CLASS_IN = b"\x00\x01"
_ANY_IN = b"\x00\xff\x00\x01"
_SVC = b"\x03svc\x00"
_A_IN, _SRV_IN, _PTR_IN = type_class(1), type_class(33), type_class(12)
_ARPA = b"\x04arpa\x00"
_ANY_ORDER = tuple(type_class(t) for t in (1, 28, 5, 33, 12))
_COUNTS = struct.Struct("!HHHH")
_RR_FIXED = struct.Struct("!HHIH")
_UDP_NO_EDNS = 512
# Our OPT record, indexed by the DO bit.
_OPTS = (wire.opt_record(wire.EDNS_SIZE, False), wire.opt_record(wire.EDNS_SIZE, True))


class Forward(NamedTuple):
    """A well-formed query to send upstream, with what the forwarder needs to answer it."""

    question: bytes  # the question section exactly as asked
    edns_size: int  # the client's UDP payload size; 0 when it sent no OPT record
    dnssec_ok: bool


def answer(
    query: bytes, table: DnsTable | None, max_udp: int | None = wire.EDNS_SIZE
) -> bytes | Forward | None:
    """The response to `query`, a `Forward` to send it upstream, or None to drop it.

    `max_udp` is the most the server sends over UDP (the client's EDNS0 size caps
    it further, 512 without EDNS0); None means TCP, where any size fits.
    `table` None (no NameTable yet) forwards every well-formed query.
    """
    counts = query[4:12]
    if counts == _ONE_QUESTION:
        question = query[12:]
        opt = b""
        index = 0
        limit = _UDP_NO_EDNS
    elif (
        counts == _ONE_QUESTION_ONE_ADDITIONAL
        and query[-11:-8] == _OPT_START
        and query[-2:] == _NO_RDATA
        and query[-5] == 0  # EDNS version 0
    ):
        # The OPT record is the last 11 bytes: owner, type, class = UDP size (-8, -7),
        # extended rcode (-6), version (-5), flags with DO on top (-4, -3), rdlength.
        question = query[12:-11]
        opt = _OPTS[query[-4] >> 7]
        index = 4
        limit = query[-8] << 8 | query[-7]
    else:
        return _answer_parsed(query, table, max_udp)
    if table is None or query[2] & 0xF8:  # no table yet, a response, or not a QUERY
        return _answer_parsed(query, table, max_udp)
    key = question.lower()
    entry = table.answers.get(key)
    if entry is None:
        # Not a precomputed question: NODATA, NXDOMAIN, a short name, or forward. Check
        # that the question is just a name and its type and class first.
        if wire.name_end(question, 0) != len(question) - 4 or len(question) < 5:
            return _answer_parsed(query, table, max_udp)
        entry = lookup(table, key)
        if entry is None:
            edns_size = (limit or 1) if opt else 0
            return Forward(question, edns_size, opt is _OPTS[1])
    if max_udp is None:
        limit = wire.MAX_TCP
    elif limit > max_udp:
        limit = max_udp if max_udp > _UDP_NO_EDNS else _UDP_NO_EDNS
    elif limit < _UDP_NO_EDNS:
        limit = _UDP_NO_EDNS
    index |= (query[2] & 1) | (query[3] >> 3 & 2)
    records = entry.records
    if 12 + len(question) + len(records) + len(opt) <= limit:
        return query[:2] + entry.headers[index] + question + records + opt
    return _smaller(query, question, entry, index, limit, opt)


def _smaller(
    query: bytes, question: bytes, entry: Entry, index: int, limit: int, opt: bytes
) -> bytes:
    """Without the additional records if that fits (no TC then), else no records and TC."""
    size = 12 + len(question) + len(opt)
    if size + entry.smaller_size <= limit:
        records = entry.records[: entry.smaller_size]
        return query[:2] + entry.smaller_headers[index] + question + records + opt
    return query[:2] + entry.truncated[index] + question + opt


def _answer_parsed(
    query: bytes, table: DnsTable | None, max_udp: int | None
) -> bytes | Forward | None:
    """The general path: parse header, question and additional section, then answer."""
    if len(query) < wire.HEADER_SIZE or query[2] & 0x80:
        return None  # no header to answer, or a response (never answer those: no loops)
    if query[2] & 0x78:
        return error_response(query, wire.NOTIMP)
    qdcount, ancount, nscount, arcount = _COUNTS.unpack_from(query, 4)
    if qdcount != 1:
        return error_response(query, wire.FORMERR)
    question_end = wire.name_end(query, 12) + 4
    if question_end < 16 or question_end > len(query):
        return error_response(query, wire.FORMERR)
    question = query[12:question_end]
    edns = _read_opt(query, question_end, ancount + nscount, arcount)
    if edns is None:
        return error_response(query, wire.FORMERR)
    edns_size, dnssec_ok, version = edns
    if version:
        return _badvers(query, question, dnssec_ok)
    if table is None:
        return Forward(question, edns_size, dnssec_ok)
    key = question.lower()
    entry = table.answers.get(key)
    if entry is None:
        entry = lookup(table, key)
        if entry is None:
            return Forward(question, edns_size, dnssec_ok)
    return respond(query, question, entry, edns_size, dnssec_ok, max_udp)


def lookup(table: DnsTable, key: bytes) -> Entry | None:
    """The entry for a question that is not a key of `table.answers`; None: forward it.

    In order: another type of a known name (its CNAME or NODATA), an empty
    non-terminal (NODATA), an unknown name under the domain (NXDOMAIN), a short
    name as the search path would complete it, and otherwise nothing.
    """
    if key[-2:] != _CLASS_IN:
        return None
    name, type_class = key[:-4], key[-4:]
    entry = _existing(table, name, type_class)
    if entry is not None:
        return entry
    if name in table.ents:
        return table.nodata
    if wire.is_subdomain(name, table.domain):
        return _pod_name(table, name, type_class) or table.nxdomain
    # A short name: <name>.<ns>.svc.<domain>, <name>.svc.<domain>, <name ending .svc>.<domain>.
    stem = name[:-1]
    candidates = [stem + table.namespace_suffix]
    if name[0] + 2 < len(name):  # more than one label
        candidates.append(stem + table.svc_suffix)
        if wire.is_subdomain(name, _SVC):
            candidates.append(stem + table.domain)
    for candidate in candidates:
        entry = table.answers.get(candidate + type_class) or _existing(table, candidate, type_class)
        if entry is not None:
            return table.nodata_short if entry is table.nodata else entry
    return None


def _pod_name(table: DnsTable, name: bytes, type_class: bytes) -> Entry | None:
    """`<dashed IP>.<ns>.pod.<domain>` (`1-2-3-4`, `fd00--1`): the IP it spells; NODATA
    for `pod.<domain>`, `<ns>.pod.<domain>` and the other family. Any namespace will do:
    the table knows only namespaces with services, and a pod's own may have none."""
    suffix = table.pod_suffix
    if not name.endswith(suffix):
        return None
    labels = _labels(name[: len(name) - len(suffix)])
    if len(labels) < 2:
        return table.nodata  # pod.<domain>, <ns>.pod.<domain>: names that exist
    if len(labels) != 2:
        return None
    text = labels[0].decode("ascii", "replace")
    if text.count("-") == 3 and "--" not in text:
        text = text.replace("-", ".")
    else:
        text = text.replace("-", ":")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    rtype, rdata = wire.address_rdata(ip)
    if type_class != type_class_of(rtype):
        return table.nodata
    return Entry(wire.NOERROR, [wire.rr(wire.POINTER_TO_QUESTION, rtype, table.ttl, rdata)])


def _labels(prefix: bytes) -> list[bytes]:
    """The labels of a wire-format name's first part (no root label, no pointers)."""
    labels, offset = [], 0
    while offset < len(prefix):
        length = prefix[offset]
        labels.append(prefix[offset + 1 : offset + 1 + length])
        offset += 1 + length
    return labels


def _existing(table: DnsTable, name: bytes, type_class: bytes) -> Entry | None:
    """For a name with records (but none of the type asked): ANY's pick, its CNAME, or NODATA.

    Every name of the table has an A key (records or NODATA), except SRV names (an
    SRV key; they start with "_") and reverse names (a PTR key).
    """
    answers = table.answers
    found = answers.get(name + _A_IN)
    if found is None:
        if name[1:2] == b"_":
            found = answers.get(name + _SRV_IN)
        elif name.endswith(_ARPA):
            found = answers.get(name + _PTR_IN)
        if found is None:
            return None
    if type_class == _ANY_IN:  # RFC 8482: answering with one of the RRsets is enough
        for suffix in _ANY_ORDER:
            entry = answers.get(name + suffix)
            if entry is not None and entry.ancount:
                return entry
    if found.cname:
        return found
    if wire.is_subdomain(name, table.domain):
        return table.nodata
    for zone, nodata in table.nodata_reverse:
        if wire.is_subdomain(name, zone):
            return nodata
    return table.nodata_short


def respond(
    query: bytes,
    question: bytes,
    entry: Entry,
    edns_size: int,
    dnssec_ok: bool,
    max_udp: int | None,
) -> bytes:
    """`entry` behind `question`, fitted to the client's limit."""
    index = (query[2] & 1) | (query[3] >> 3 & 2)
    opt = b""
    if edns_size:
        index |= 4
        opt = _OPTS[dnssec_ok]
    limit = client_limit(edns_size, max_udp)
    records = entry.records
    if 12 + len(question) + len(records) + len(opt) <= limit:
        return query[:2] + entry.headers[index] + question + records + opt
    return _smaller(query, question, entry, index, limit, opt)


def client_limit(edns_size: int, max_udp: int | None) -> int:
    """How big a response may be: any size over TCP; 512 without EDNS0; else the smaller size."""
    if max_udp is None:
        return wire.MAX_TCP
    return max(_UDP_NO_EDNS, min(edns_size, max_udp))


def _read_opt(query: bytes, offset: int, skip: int, arcount: int) -> tuple[int, bool, int] | None:
    """(UDP payload size or 0, DO bit, EDNS version) of the OPT record; None: malformed."""
    end = len(query)
    found: tuple[int, bool, int] | None = None
    for index in range(skip + arcount):
        start = offset
        offset = wire.skip_name(query, offset)
        if offset < 0 or offset + 10 > end:
            return None
        rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(query, offset)
        offset += 10 + rdlength
        if offset > end:
            return None
        if rtype != wire.TYPE_OPT:
            continue
        if found is not None or index < skip or query[start] != 0:
            return None  # two OPT records, or one outside the additional section or not at root
        if not _options_ok(query, offset - rdlength, offset):
            return None
        found = (max(rclass, 1), bool(ttl & 0x8000), ttl >> 16 & 0xFF)
    return found if found is not None else (0, False, 0)


def _options_ok(data: bytes, offset: int, end: int) -> bool:
    while offset < end:
        if offset + 4 > end:
            return False
        offset += 4 + (data[offset + 2] << 8 | data[offset + 3])
    return offset == end


def error_response(query: bytes, rcode: int, question: bytes = b"") -> bytes:
    """A header-only (or header + question) error: ID, opcode and RD echoed."""
    flags = 0x8000 | (query[2] & 0x79) << 8 | 0x0080 | (query[3] & 0x10) | rcode
    return query[:2] + wire.header_tail(flags, 1 if question else 0, 0, 0, 0) + question


def servfail(query: bytes, question: bytes, edns_size: int, dnssec_ok: bool) -> bytes:
    """SERVFAIL with the question echoed and an OPT record when the query had one."""
    flags = 0x8000 | (query[2] & 0x01) << 8 | 0x0080 | (query[3] & 0x10) | wire.SERVFAIL
    opt = _OPTS[dnssec_ok] if edns_size else b""
    return query[:2] + wire.header_tail(flags, 1, 0, 0, 1 if opt else 0) + question + opt


def _badvers(query: bytes, question: bytes, dnssec_ok: bool) -> bytes:
    """RFC 6891 6.1.3: a version we do not speak gets BADVERS, with our version (0)."""
    flags = 0x8000 | (query[2] & 0x01) << 8 | 0x0080 | (query[3] & 0x10)
    opt = wire.opt_record(wire.EDNS_SIZE, dnssec_ok, wire.BADVERS >> 4)
    return query[:2] + wire.header_tail(flags, 1, 0, 0, 1) + question + opt


def query_type(query: bytes) -> int:
    """The QTYPE of a query that `answer` accepted (0 when there is no question to read)."""
    if query[4:12] == _ONE_QUESTION:
        return query[-4] << 8 | query[-3]
    end = wire.name_end(query, 12)
    if end < 0 or end + 2 > len(query):
        return 0
    return query[end] << 8 | query[end + 1]
