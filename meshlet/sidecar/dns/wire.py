"""DNS wire-format pieces (pure): names, resource records, headers, names of codes.

Only what the DNS server needs to precompute answers and to read the few fields
it looks at; no general message parser (that is what makes a full parse slow).
"""

from __future__ import annotations

import ipaddress
import struct

TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_PTR = 12
TYPE_AAAA = 28
TYPE_SRV = 33
TYPE_OPT = 41
TYPE_ANY = 255
CLASS_IN = 1

NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5
# Extended rcode 16: the high 8 bits (1) go in the OPT record, the low 4 (0) in the header.
BADVERS = 16

HEADER_SIZE = 12
MAX_NAME = 255
MAX_LABEL = 63
# What the server advertises and, by default, the most it sends over UDP (DNS flag day 2020).
EDNS_SIZE = 1232
# The most a message can be over TCP (the two-byte length prefix).
MAX_TCP = 65535
# An answer record whose owner name points at the question's name (offset 12).
POINTER_TO_QUESTION = b"\xc0\x0c"

# Names for metrics: a fixed small set so label cardinality stays bounded.
QTYPE_NAMES: dict[int, str] = {
    TYPE_A: "A",
    TYPE_NS: "NS",
    TYPE_CNAME: "CNAME",
    TYPE_SOA: "SOA",
    TYPE_PTR: "PTR",
    15: "MX",
    16: "TXT",
    TYPE_AAAA: "AAAA",
    TYPE_SRV: "SRV",
    64: "SVCB",
    65: "HTTPS",
    TYPE_ANY: "ANY",
}
RCODE_NAMES: tuple[str, ...] = (
    "NOERROR",
    "FORMERR",
    "SERVFAIL",
    "NXDOMAIN",
    "NOTIMP",
    "REFUSED",
    "YXDOMAIN",
    "YXRRSET",
    "NXRRSET",
    "NOTAUTH",
    "NOTZONE",
    "RCODE11",
    "RCODE12",
    "RCODE13",
    "RCODE14",
    "RCODE15",
)

_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_SRV_FIXED = struct.Struct("!HHH")  # priority, weight, port
_SOA_TIMERS = struct.Struct("!IIIII")  # serial, refresh, retry, expire, minimum


def qtype_name(qtype: int) -> str:
    return QTYPE_NAMES.get(qtype, "other")


def encode_name(name: str) -> bytes:
    """A domain name in wire format, lower case; "" and "." are the root.

    Raises ValueError for what cannot be a DNS name (an empty or too long label,
    too long a name, non-ASCII text).
    """
    name = name.rstrip(".").lower() if name != "." else ""
    if not name:
        return b"\x00"
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{name!r} is not an ASCII DNS name") from None
    out = bytearray()
    for label in raw.split(b"."):
        if not label or len(label) > MAX_LABEL:
            raise ValueError(f"{name!r} has an empty label or one longer than {MAX_LABEL} bytes")
        out.append(len(label))
        out += label
    out.append(0)
    if len(out) > MAX_NAME:
        raise ValueError(f"{name!r} is longer than {MAX_NAME} bytes in wire format")
    return bytes(out)


def name_end(data: bytes, offset: int) -> int:
    """The offset just past an uncompressed name starting at `offset`, or -1 if malformed.

    Compression pointers are refused here: a question's name has nothing before it
    to point at.
    """
    end = len(data)
    start = offset
    while offset < end:
        length = data[offset]
        if length == 0:
            offset += 1
            return offset if offset - start <= MAX_NAME else -1
        if length > MAX_LABEL:
            return -1
        offset += length + 1
    return -1


def skip_name(data: bytes, offset: int) -> int:
    """The offset just past a name that may end in a compression pointer, or -1."""
    end = len(data)
    while offset < end:
        length = data[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2 if offset + 2 <= end else -1
        if length > MAX_LABEL:
            return -1
        offset += length + 1
    return -1


def name_at(data: bytes, offset: int) -> int:
    """The offset just past a possibly compressed name at `offset` if it decodes (every
    pointer strictly backwards, no reserved label type, at most 255 bytes), else -1:
    the strict form of `skip_name`, for names a client will follow (upstream answers)."""
    after = -1
    limit = offset  # a pointer must point before the name or pointer that led to it
    total = 0
    position = offset
    while position < len(data):
        length = data[position]
        if length == 0:
            return position + 1 if after < 0 else after
        kind = length & 0xC0
        if kind == 0xC0:
            if position + 2 > len(data):
                return -1
            target = ((length & 0x3F) << 8) | data[position + 1]
            if target >= limit:
                return -1
            if after < 0:
                after = position + 2
            limit = position = target
            continue
        if kind or length > MAX_LABEL:
            return -1  # 0x40 and 0x80 are reserved label types
        total += length + 1
        if total >= MAX_NAME:
            return -1
        position += length + 1
    return -1


def is_subdomain(name: bytes, zone: bytes) -> bool:
    """Whether wire name `name` is `zone` or below it, on label boundaries (both lower case)."""
    if not name.endswith(zone):
        return False
    offset, cut = 0, len(name) - len(zone)
    while offset < cut:
        offset += name[offset] + 1
    return offset == cut


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes, rclass: int = CLASS_IN) -> bytes:
    return owner + _RR_FIXED.pack(rtype, rclass, ttl, len(rdata)) + rdata


def address_rdata(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, bytes]:
    """(TYPE_A or TYPE_AAAA, rdata) for an address."""
    return (TYPE_A if ip.version == 4 else TYPE_AAAA), ip.packed


def srv_rdata(priority: int, weight: int, port: int, target: bytes) -> bytes:
    return _SRV_FIXED.pack(priority, weight, port) + target


def soa_rdata(mname: bytes, rname: bytes, serial: int, minimum: int) -> bytes:
    # refresh, retry and expire as CoreDNS sets them; minimum is the negative-answer TTL.
    return mname + rname + _SOA_TIMERS.pack(serial & 0xFFFFFFFF, 7200, 1800, 86400, minimum)


def opt_record(payload_size: int, dnssec_ok: bool, ext_rcode: int = 0) -> bytes:
    """An OPT pseudo-record without options: root owner, class = UDP payload size."""
    flags = 0x8000 if dnssec_ok else 0
    return b"\x00" + _RR_FIXED.pack(TYPE_OPT, payload_size, ext_rcode << 24 | flags, 0)


def header_tail(flags: int, qdcount: int, ancount: int, nscount: int, arcount: int) -> bytes:
    """A header without its ID: flags and the four counts."""
    return struct.pack("!HHHHH", flags, qdcount, ancount, nscount, arcount)


def reverse_name(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """ "10.0.96.10.in-addr.arpa" or the ip6.arpa nibble name."""
    return ip.reverse_pointer
