"""HTTP/1.1 message framing (pure): where a head ends, what it says, where its body ends.

The proxy passes an HTTP/1.1 body on as it came (chunked stays chunked, trailers
and all) and needs of it only where it ends, so a body is scanned, not decoded.
A head is parsed and checked as a server must (RFC 9112) before anything of it
goes upstream, because request smuggling lives in the differences between two
parsers: both Content-Length and Transfer-Encoding, an unparsable or
contradictory Content-Length, a transfer coding other than chunked, an obsolete
line folding, white space in a header name, a bare CR or LF, a head over the
limits. Each is refused with the status a server gives (400, 431, 501, 505).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from meshlet.xds import contract

MAX_HEAD_BYTES = contract.MAX_REQUEST_HEADERS_KB * 1024
MAX_HEADERS = contract.MAX_HEADERS_COUNT
_MAX_CHUNK_LINE = 4096
_END = b"\r\n\r\n"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters a field value may not hold (HTAB is allowed).
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
# Hop-by-hop headers: about one connection, never passed on (RFC 9110 7.6.1).
# Content-Length and Transfer-Encoding stay: the body goes on framed as it came.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade"})
_NO_BODY_STATUS = (204, 304)


class Framing(enum.IntEnum):
    NONE = 0  # no body
    LENGTH = 1  # Content-Length bytes
    CHUNKED = 2  # chunks, up to the last chunk and its trailers
    UNTIL_CLOSE = 3  # a response read until its connection ends


class BadMessage(Exception):
    """A message the proxy refuses: the status a server answers it with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class Head:
    raw: bytes  # the head as it came, up to and including its blank line
    version: bytes
    headers: list[tuple[bytes, bytes]]  # names as they came
    framing: Framing = Framing.NONE
    length: int = 0
    keep_alive: bool = True  # the sender keeps its connection open after this message
    # It has hop-by-hop headers to drop (a `Connection: keep-alive` alone is not
    # dropped: it is true of the next hop too while that connection is kept alive).
    hop: bool = False
    connection: frozenset[bytes] = frozenset()  # the Connection header's tokens, lower case
    method: bytes = b""  # requests
    target: bytes = b""
    status: int = 0  # responses
    upgrade: bytes = b""  # the Upgrade header, where Connection names it
    expect_continue: bool = False

    def header(self, name: bytes) -> bytes:
        """The first value of a header (name in lower case), b"" when absent."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return b""


def head_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """Where the head that starts at `start` ends (past its blank line), -1 if it has not
    all come; BadMessage once more than MAX_HEAD_BYTES came without one."""
    end = buffer.find(_END, start)
    if end < 0:
        if len(buffer) - start > MAX_HEAD_BYTES:
            raise BadMessage(431, "request headers too large")
        return -1
    end += 4
    if end - start > MAX_HEAD_BYTES:
        raise BadMessage(431, "request headers too large")
    return end


def skip_blank_lines(buffer: bytes | bytearray, start: int = 0) -> int:
    """A server ignores empty lines before a request line (RFC 9112 2.2)."""
    while buffer.startswith(b"\r\n", start):
        start += 2
    return start


def parse_request(raw: bytes) -> Head:
    lines = _lines(raw)
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise BadMessage(400, "malformed request line")
    method, target, version = parts
    if version not in _VERSIONS:
        if version.startswith(b"HTTP/"):
            raise BadMessage(505, "HTTP version not supported")
        raise BadMessage(400, "malformed request line")
    head = Head(raw, version, _headers(lines), method=method, target=target)
    _frame_request(head)
    return head


def parse_response(raw: bytes, request_method: bytes) -> Head:
    lines = _lines(raw)
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if version not in _VERSIONS or not code.isdigit() or rest[3:4] not in (b"", b" "):
        raise BadMessage(502, "malformed response status line")
    head = Head(raw, version, _headers(lines), status=int(code))
    _frame_response(head, request_method)
    return head


def _lines(raw: bytes) -> list[bytes]:
    lines = raw[:-4].split(b"\r\n")
    for line in lines:
        if b"\n" in line or b"\r" in line:
            raise BadMessage(400, "bare CR or LF in the head")
    return lines


def _headers(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    if len(lines) - 1 > MAX_HEADERS:
        raise BadMessage(431, f"more than {MAX_HEADERS} headers")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            # A line starting with white space is an obsolete folding (RFC 9112 5.2).
            raise BadMessage(400, "malformed header line")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise BadMessage(400, "control character in a header value")
        headers.append((name, value))
    return headers


def _tokens(value: bytes) -> set[bytes]:
    return {t.strip(b" \t").lower() for t in value.split(b",")} - {b""}


def _scan_headers(head: Head) -> tuple[list[bytes], list[bytes], int]:
    """The Content-Length and Transfer-Encoding values, and how many Host headers,
    noting Connection, Upgrade and Expect on the way."""
    lengths: list[bytes] = []
    codings: list[bytes] = []
    hosts = 0
    connection: set[bytes] = set()
    hop = False
    for name, value in head.headers:
        lower = name.lower()
        if lower == b"content-length":
            lengths.append(value)
        elif lower == b"transfer-encoding":
            codings.append(value)
        elif lower == b"host":
            hosts += 1
        elif lower == b"connection":
            # Only what it says is hop-by-hop: a bare keep-alive may pass to a client
            # whose connection is kept alive too.
            connection |= _tokens(value)
        elif lower in HOP_BY_HOP:
            hop = True
            if lower == b"upgrade":
                head.upgrade = value
        elif lower == b"expect":
            head.expect_continue = value.lower() == b"100-continue"
    if connection - {b"keep-alive"}:
        hop = True  # close, upgrade, or headers of its own to drop
    head.hop = hop
    head.connection = frozenset(connection)
    if b"upgrade" not in connection:
        head.upgrade = b""
    if head.version == b"HTTP/1.1":
        head.keep_alive = b"close" not in connection
    else:
        head.keep_alive = b"keep-alive" in connection
    return lengths, codings, hosts


def _content_length(values: list[bytes], status: int) -> int:
    found = {v.strip(b" \t") for value in values for v in value.split(b",")}
    if len(found) != 1:
        raise BadMessage(status, "conflicting Content-Length values")
    (value,) = found
    if not value.isdigit() or len(value) > 18:
        raise BadMessage(status, "invalid Content-Length")
    return int(value)


def _frame_request(head: Head) -> None:
    lengths, codings, hosts = _scan_headers(head)
    if hosts > 1 or (hosts == 0 and head.version == b"HTTP/1.1"):
        raise BadMessage(400, "a request needs exactly one Host header")
    if codings:
        if lengths:
            raise BadMessage(400, "both Content-Length and Transfer-Encoding")
        if head.version != b"HTTP/1.1":
            raise BadMessage(400, "Transfer-Encoding in an HTTP/1.0 request")
        if [c.strip(b" \t").lower() for c in codings] != [b"chunked"]:
            raise BadMessage(501, "a transfer coding other than chunked")
        head.framing = Framing.CHUNKED
    elif lengths:
        head.length = _content_length(lengths, 400)
        head.framing = Framing.LENGTH if head.length else Framing.NONE


def _frame_response(head: Head, request_method: bytes) -> None:
    lengths, codings, _ = _scan_headers(head)
    status = head.status
    if status < 200 or status in _NO_BODY_STATUS or request_method == b"HEAD":
        head.framing = Framing.NONE
        return
    if request_method == b"CONNECT" and status < 300:
        head.framing = Framing.NONE  # a tunnel follows
        return
    if codings:
        final = codings[-1].split(b",")[-1].strip(b" \t").lower()
        if final == b"chunked":
            head.framing = Framing.CHUNKED
        else:
            head.framing = Framing.UNTIL_CLOSE
        if lengths:  # a sender that says both is not to be trusted with the connection
            head.keep_alive = False
    elif lengths:
        head.length = _content_length(lengths, 502)
        head.framing = Framing.LENGTH if head.length else Framing.NONE
    else:
        head.framing = Framing.UNTIL_CLOSE
    if head.framing is Framing.UNTIL_CLOSE:
        head.keep_alive = False


def rebuild(
    head: Head,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    keep_upgrade: bool = False,
    drop: frozenset[bytes] = frozenset(),
    as_http11: bool = False,
) -> bytes:
    """The head without its hop-by-hop headers (and those its Connection names, and
    `drop`), with `extra` added; an upgrade keeps its Connection and Upgrade.
    `as_http11`: an HTTP/1.0 answer goes on as HTTP/1.1, whose client keeps its
    connection (its body is framed by length: nothing else changes)."""
    dropped = HOP_BY_HOP | drop | (head.connection - {b"content-length", b"transfer-encoding"})
    first = head.raw[: head.raw.find(b"\r\n")]
    if as_http11 and head.version == b"HTTP/1.0":
        first = b"HTTP/1.1" + first[8:]
    out = [first, b"\r\n"]
    for name, value in head.headers:
        if name.lower() not in dropped:
            out += (name, b": ", value, b"\r\n")
    if keep_upgrade and head.upgrade:
        out += (b"Connection: upgrade\r\nUpgrade: ", head.upgrade, b"\r\n")
    for name, value in extra:
        out += (name, b": ", value, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


class _Chunk(enum.IntEnum):
    SIZE = 0  # reading a chunk-size line
    DATA = 1  # inside a chunk's data
    DATA_END = 2  # the CRLF after a chunk's data
    TRAILER = 3  # trailer lines, up to the empty one


class BodyScanner:
    """Finds where a body ends in the bytes that come, without changing them."""

    __slots__ = ("_line", "_state", "_trailer_bytes", "done", "framing", "remaining")

    def __init__(self, framing: Framing, length: int = 0) -> None:
        self.framing = framing
        self.remaining = length  # LENGTH: bytes left; CHUNKED: bytes left of this chunk
        self.done = framing is Framing.NONE
        self._state = _Chunk.SIZE
        self._line = bytearray()
        self._trailer_bytes = 0

    def scan(self, data: bytes | bytearray | memoryview, start: int = 0) -> int:
        """How far into `data` (from `start`) the body goes: its end once `done`, else
        len(data), all of it body."""
        if self.done:
            return start
        framing = self.framing
        if framing is Framing.UNTIL_CLOSE:
            return len(data)
        if framing is Framing.LENGTH:
            take = min(self.remaining, len(data) - start)
            self.remaining -= take
            self.done = self.remaining == 0
            return start + take
        return self._scan_chunked(data, start)

    def _scan_chunked(self, data: bytes | bytearray | memoryview, pos: int) -> int:
        end = len(data)
        while pos < end:
            state = self._state
            if state is _Chunk.DATA:
                take = min(self.remaining, end - pos)
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self._state = _Chunk.DATA_END
                continue
            newline = bytes(data[pos : pos + _MAX_CHUNK_LINE + 2]).find(b"\n")
            if newline < 0:
                self._line += data[pos:end]
                if len(self._line) > _MAX_CHUNK_LINE:
                    raise BadMessage(400, "chunk line too long")
                return end
            line = bytes(self._line) + bytes(data[pos : pos + newline + 1])
            self._line.clear()
            pos += newline + 1
            if not line.endswith(b"\r\n") or len(line) > _MAX_CHUNK_LINE:
                raise BadMessage(400, "malformed chunk line")
            if state is _Chunk.DATA_END:
                if line != b"\r\n":
                    raise BadMessage(400, "chunk data longer than its size")
                self._state = _Chunk.SIZE
            elif state is _Chunk.SIZE:
                size = line[:-2].split(b";", 1)[0].rstrip(b" \t")
                if not size or len(size) > 15 or size.strip(b"0123456789abcdefABCDEF"):
                    raise BadMessage(400, "malformed chunk size")
                self.remaining = int(size, 16)
                self._state = _Chunk.DATA if self.remaining else _Chunk.TRAILER
            else:  # a trailer line; the empty one ends the body
                if line == b"\r\n":
                    self.done = True
                    return pos
                self._trailer_bytes += len(line)
                if self._trailer_bytes > MAX_HEAD_BYTES:
                    raise BadMessage(431, "trailers too large")
        return end
