"""Whether an upstream record's data is well formed, for the types whose layout the
sidecar knows: a forwarded answer is relayed only if every client can parse it (a
resolver that relays a broken record breaks its clients' parsers, not its own).
Types not listed here are relayed as they came (RFC 3597: opaque data)."""

from __future__ import annotations

from meshlet.sidecar.dns.wire import name_at

_NAME_ONLY = {2, 3, 4, 5, 7, 8, 9, 12, 39}  # NS MD MF CNAME MB MG MR PTR DNAME
_TWO_NAMES = {14, 17}  # MINFO RP
_PREFERENCE_NAME = {15, 18, 21, 36}  # MX AFSDB RT KX
_FIXED = {1: 4, 28: 16}  # A AAAA
_STRINGS = {16, 99}  # TXT SPF
_SOA, _SRV, _SVCB, _HTTPS = 6, 33, 64, 65


def _names(data: bytes, offset: int, count: int) -> int:
    for _ in range(count):
        offset = name_at(data, offset)
        if offset < 0:
            return -1
    return offset


def _strings_fill(data: bytes, offset: int, end: int) -> bool:
    while offset < end:
        offset += data[offset] + 1
    return offset == end


def _svc_params_fill(data: bytes, offset: int, end: int) -> bool:
    last = -1
    while offset < end:
        if offset + 4 > end:
            return False
        key = int.from_bytes(data[offset : offset + 2], "big")
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        if key <= last:
            return False  # RFC 9460 2.2: strictly increasing keys
        last = key
        offset += 4 + length
    return offset == end


def valid_rdata(data: bytes, rtype: int, start: int, end: int) -> bool:
    """Whether data[start:end] is well formed for `rtype` (names may point into `data`)."""
    if rtype in _FIXED:
        return end - start == _FIXED[rtype]
    if rtype in _NAME_ONLY:
        return _names(data, start, 1) == end
    if rtype in _TWO_NAMES:
        return _names(data, start, 2) == end
    if rtype in _PREFERENCE_NAME:
        return end - start > 2 and _names(data, start + 2, 1) == end
    if rtype == _SOA:
        names_end = _names(data, start, 2)
        return names_end >= 0 and names_end + 20 == end
    if rtype == _SRV:
        return end - start > 6 and _names(data, start + 6, 1) == end
    if rtype in (_SVCB, _HTTPS):
        target_end = _names(data, start + 2, 1) if end - start > 2 else -1
        return 0 <= target_end <= end and _svc_params_fill(data, target_end, end)
    if rtype in _STRINGS:
        return end > start and _strings_fill(data, start, end)
    return True
