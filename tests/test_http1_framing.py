"""HTTP/1.1 framing (pure): heads parsed and checked as a server must, bodies scanned
for their end without being changed, hop-by-hop headers dropped, and which HTTP a
client's first bytes are."""

from __future__ import annotations

import pytest

from meshlet.sidecar.proxy.http1_framing import (
    MAX_HEAD_BYTES,
    BadMessage,
    BodyScanner,
    Framing,
    head_end,
    parse_request,
    parse_response,
    rebuild,
    skip_blank_lines,
)
from meshlet.sidecar.proxy.sniff import Client, client_protocol

pytestmark = pytest.mark.unit


def request(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_plain_get_is_kept_alive_and_passed_on_as_it_came() -> None:
    raw = request("GET /who?x=1 HTTP/1.1", "Host: web", "Accept: */*")
    head = parse_request(raw)
    assert (head.method, head.target, head.version) == (b"GET", b"/who?x=1", b"HTTP/1.1")
    assert head.framing is Framing.NONE and head.keep_alive and not head.hop
    assert head.header(b"accept") == b"*/*"


@pytest.mark.parametrize(
    ("lines", "framing", "length"),
    [
        (("Content-Length: 12",), Framing.LENGTH, 12),
        (("Content-Length: 0",), Framing.NONE, 0),
        (("Content-Length: 7", "content-length: 7"), Framing.LENGTH, 7),
        (("Content-Length: 7, 7",), Framing.LENGTH, 7),
        (("Transfer-Encoding: Chunked",), Framing.CHUNKED, 0),
    ],
)
def test_request_bodies_are_framed_by_their_headers(
    lines: tuple[str, ...], framing: Framing, length: int
) -> None:
    head = parse_request(request("POST /echo HTTP/1.1", "Host: web", *lines))
    assert (head.framing, head.length) == (framing, length)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (
            request(
                "POST / HTTP/1.1", "Host: a", "Content-Length: 3", "Transfer-Encoding: chunked"
            ),
            400,
        ),
        (request("POST / HTTP/1.1", "Host: a", "Content-Length: 3", "Content-Length: 4"), 400),
        (request("POST / HTTP/1.1", "Host: a", "Content-Length: 3, 4"), 400),
        (request("POST / HTTP/1.1", "Host: a", "Content-Length: +3"), 400),
        (request("POST / HTTP/1.1", "Host: a", "Content-Length: 1" + "0" * 19), 400),
        (request("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: gzip, chunked"), 501),
        (request("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked, gzip"), 501),
        (request("POST / HTTP/1.0", "Transfer-Encoding: chunked"), 400),
        (request("GET / HTTP/1.1"), 400),  # no Host
        (request("GET / HTTP/1.1", "Host: a", "Host: b"), 400),
        (request("GET / HTTP/1.1", "Host: a", " folded"), 400),
        (request("GET / HTTP/1.1", "Host: a", "Bad Name: x"), 400),
        (request("GET / HTTP/1.1", "Host : a"), 400),
        (request("GET / HTTP/1.1", "Host: a", "x: a\x00b"), 400),
        (request("GET / HTTP/1.1", "Host: a\nx: b"), 400),
        (request("GET /  HTTP/1.1", "Host: a"), 400),
        (request("G@T / HTTP/1.1", "Host: a"), 400),
        (request("GET / HTTP/2.0", "Host: a"), 505),
        (request("GET / HTTX/1.1", "Host: a"), 400),
        (request("GET / HTTP/1.1", "Host: a", *(f"x-{i}: y" for i in range(100))), 431),
    ],
)
def test_what_a_server_must_refuse_is_refused_with_its_status(raw: bytes, status: int) -> None:
    with pytest.raises(BadMessage) as refused:
        parse_request(raw)
    assert refused.value.status == status


def test_a_head_is_found_whole_or_refused_past_the_limit() -> None:
    raw = request("GET / HTTP/1.1", "Host: a")
    assert head_end(raw[:-1]) == -1
    assert head_end(raw + b"rest") == len(raw)
    assert skip_blank_lines(b"\r\n\r\n" + raw) == 4
    with pytest.raises(BadMessage) as refused:
        head_end(b"GET / HTTP/1.1\r\nx: " + b"a" * MAX_HEAD_BYTES)
    assert refused.value.status == 431


def test_keep_alive_follows_the_version_and_connection() -> None:
    assert not parse_request(request("GET / HTTP/1.1", "Host: a", "Connection: close")).keep_alive
    assert not parse_request(request("GET / HTTP/1.0")).keep_alive
    assert parse_request(request("GET / HTTP/1.0", "Connection: Keep-Alive")).keep_alive


def test_hop_by_hop_headers_are_dropped_and_the_rest_kept_in_order() -> None:
    head = parse_request(
        request(
            "GET / HTTP/1.1",
            "Host: a",
            "Connection: keep-alive, X-Secret",
            "Keep-Alive: timeout=5",
            "X-Secret: 1",
            "TE: trailers",
            "Accept: b",
        )
    )
    assert head.hop
    assert rebuild(head) == request("GET / HTTP/1.1", "Host: a", "Accept: b")
    assert rebuild(head, ((b"Connection", b"close"),)).endswith(
        b"Accept: b\r\nConnection: close\r\n\r\n"
    )


def test_an_upgrade_keeps_its_connection_and_upgrade_headers() -> None:
    head = parse_request(
        request("GET /ws HTTP/1.1", "Host: a", "Connection: Upgrade", "Upgrade: websocket")
    )
    assert head.upgrade == b"websocket"
    assert rebuild(head, keep_upgrade=True) == request(
        "GET /ws HTTP/1.1", "Host: a", "Connection: upgrade", "Upgrade: websocket"
    )
    # Upgrade without Connection naming it is no upgrade.
    assert parse_request(request("GET / HTTP/1.1", "Host: a", "Upgrade: websocket")).upgrade == b""


@pytest.mark.parametrize(
    ("status", "method", "lines", "framing", "keep_alive"),
    [
        (200, b"GET", ("Content-Length: 5",), Framing.LENGTH, True),
        (200, b"HEAD", ("Content-Length: 5",), Framing.NONE, True),
        (204, b"GET", (), Framing.NONE, True),
        (304, b"GET", ("Content-Length: 5",), Framing.NONE, True),
        (100, b"POST", (), Framing.NONE, True),
        (200, b"CONNECT", (), Framing.NONE, True),
        (200, b"GET", ("Transfer-Encoding: chunked",), Framing.CHUNKED, True),
        (200, b"GET", ("Transfer-Encoding: chunked", "Content-Length: 5"), Framing.CHUNKED, False),
        (200, b"GET", ("Transfer-Encoding: gzip",), Framing.UNTIL_CLOSE, False),
        (200, b"GET", (), Framing.UNTIL_CLOSE, False),
        (200, b"GET", ("Content-Length: 5", "Connection: close"), Framing.LENGTH, False),
    ],
)
def test_response_bodies_are_framed_by_status_method_and_headers(
    status: int, method: bytes, lines: tuple[str, ...], framing: Framing, keep_alive: bool
) -> None:
    head = parse_response(request(f"HTTP/1.1 {status} Whatever", *lines), method)
    assert (head.status, head.framing, head.keep_alive) == (status, framing, keep_alive)


def test_a_malformed_answer_is_a_bad_gateway() -> None:
    for raw in (request("HTTP/1.1 2000 OK"), request("HTTP/1.1 OK"), request("ICY 200 OK")):
        with pytest.raises(BadMessage) as refused:
            parse_response(raw, b"GET")
        assert refused.value.status == 502
    with pytest.raises(BadMessage):
        parse_response(request("HTTP/1.1 200 OK", "Content-Length: 1, 2"), b"GET")


def test_a_length_body_ends_after_its_bytes_however_they_come() -> None:
    scanner = BodyScanner(Framing.LENGTH, 10)
    assert scanner.scan(b"abcd") == 4 and not scanner.done
    assert scanner.scan(b"xxefghijNEXT", 2) == 8 and scanner.done


CHUNKED = b"3;ext=1\r\nabc\r\n10\r\n" + b"z" * 16 + b"\r\n0\r\nx-who: a\r\nx-two: b\r\n\r\n"


@pytest.mark.parametrize("piece", [1, 2, 3, 7, len(CHUNKED)])
def test_a_chunked_body_ends_after_its_trailers_in_pieces_of_any_size(piece: int) -> None:
    data = CHUNKED + b"GET /next"
    scanner = BodyScanner(Framing.CHUNKED)
    end = 0
    for start in range(0, len(data), piece):
        block = data[start : start + piece]
        stop = scanner.scan(block)
        if scanner.done:
            end = start + stop
            break
        assert stop == len(block)
    assert scanner.done and end == len(CHUNKED)


@pytest.mark.parametrize(
    "body",
    [
        b"3\r\nabcd\r\n0\r\n\r\n",  # longer than its size
        b"x\r\nabc\r\n",  # not hex
        b"\r\n",  # no size
        b"-1\r\n",
        b"3\nabc\r\n",  # a bare LF
        b"1" * 5000,  # a size line without end
    ],
)
def test_a_malformed_chunked_body_is_refused(body: bytes) -> None:
    with pytest.raises(BadMessage):
        BodyScanner(Framing.CHUNKED).scan(body)


def test_too_many_trailer_bytes_are_refused() -> None:
    scanner = BodyScanner(Framing.CHUNKED)
    scanner.scan(b"0\r\n")
    with pytest.raises(BadMessage) as refused:
        for _ in range(MAX_HEAD_BYTES // 1000 + 1):
            scanner.scan(b"x: " + b"a" * 1000 + b"\r\n")
    assert refused.value.status == 431


def test_a_body_until_close_takes_everything() -> None:
    scanner = BodyScanner(Framing.UNTIL_CLOSE)
    assert scanner.scan(b"anything at all") == 15 and not scanner.done


@pytest.mark.parametrize(
    ("first", "client"),
    [
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Client.HTTP2),
        (b"PRI ", Client.HTTP2),
        (b"PR", None),
        (b"P", None),
        (b"POST", Client.HTTP1),
        (b"GET ", Client.HTTP1),
        (b"\r\nGET", Client.HTTP1),
        (b"", Client.GONE),
    ],
)
def test_a_clients_first_bytes_say_which_http_it_speaks(
    first: bytes, client: Client | None
) -> None:
    assert client_protocol(first) is client


def test_an_http10_answer_can_go_on_as_http11() -> None:
    head = parse_response(request("HTTP/1.0 200 OK", "Content-Length: 3"), b"GET")
    assert not head.keep_alive
    assert rebuild(head, as_http11=True) == request("HTTP/1.1 200 OK", "Content-Length: 3")
    assert rebuild(head) == head.raw
