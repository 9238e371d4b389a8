"""A tiny HTTP/1.1 server for admin endpoints (one request per connection).

Admin traffic is a probe or a scrape every few seconds; a full web framework
would cost more memory per pod than it saves. GET (and HEAD) routes take the
query; POST routes take the body too (bounded: `max_body`), and TLS is an
`ssl.SSLContext` away (the injection webhook).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from meshlet import logs

log = logging.getLogger(__name__)

_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode())

    @classmethod
    def json(cls, value: object, status: int = 200) -> Response:
        body = json.dumps(value, indent=2, sort_keys=True).encode() + b"\n"
        return cls(status, body, "application/json")


_REQUEST_SECONDS = 10.0
_MAX_HEADERS = 100

Handler = Callable[[dict[str, list[str]]], Response | Awaitable[Response]]
# A POST route: the query and the request body.
PostHandler = Callable[[dict[str, list[str]], bytes], Response | Awaitable[Response]]


class AdminServer:
    def __init__(
        self,
        routes: dict[str, Handler],
        post_routes: dict[str, PostHandler] | None = None,
        max_body: int = 1 << 20,
        max_concurrent: int = 64,
        loopback_only: frozenset[str] = frozenset(),
    ) -> None:
        self._routes = routes
        self._posts = post_routes or {}
        # Paths that change the process: served only to a client on this host.
        self._loopback_only = loopback_only
        self._max_body = max_body
        # Requests read at once: a flood of slow clients costs at most this many bodies.
        self._slots = asyncio.Semaphore(max_concurrent)
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Listen on HOST:PORT; 0.0.0.0 means every address, IPv6 too where the host has
        it (a pod on an IPv6 or dual-stack cluster is probed on its IPv6 address)."""
        # (Port 0 would give each address a port of its own: one address then.)
        hosts: list[str] = [host, "::"] if host == "0.0.0.0" and port else [host]
        while True:
            try:
                self._server = await asyncio.start_server(
                    self._serve,
                    hosts,
                    port,
                    ssl=tls,
                    ssl_handshake_timeout=10 if tls else None,
                )
                break
            except OSError:
                if len(hosts) == 1:
                    raise
                hosts = hosts[:1]  # no IPv6 here: IPv4 alone
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with self._slots:
                # One deadline for the whole request: stray bytes do not keep it open.
                async with asyncio.timeout(_REQUEST_SECONDS):
                    response, head_only = await self._respond(reader, _from_loopback(writer))
            head = (
                f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if head_only else response.body))
            await writer.drain()
        except (
            ConnectionError,
            TimeoutError,
            ValueError,
            asyncio.IncompleteReadError,
            ssl.SSLError,
        ):
            pass  # a client that hung up, stalled, sent a line too long, or failed TLS
        finally:
            writer.close()

    async def _respond(
        self, reader: asyncio.StreamReader, from_loopback: bool
    ) -> tuple[Response, bool]:
        """The response, and whether only its head is wanted (HEAD)."""
        request_line = await reader.readline()
        lengths: list[str] = []
        transfer_encoding = False
        headers = 0
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            headers += 1
            if headers > _MAX_HEADERS:
                return Response.text("too many header lines\n", 400), False
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                lengths.append(value.strip())
            elif name == "transfer-encoding":
                transfer_encoding = True
        parts = request_line.decode("latin-1").split()
        if len(parts) != 3:
            return Response.text("bad request line\n", 400), False
        method, target, _ = parts
        url = urlsplit(target)
        if url.path in self._loopback_only and not from_loopback:
            return Response.text("only from this host (loopback)\n", 403), False
        if method == "POST" and url.path in self._posts:
            length = body_length(lengths, transfer_encoding, self._max_body)
            if isinstance(length, Response):
                return length, False
            body = await reader.readexactly(length) if length else b""
            handler = self._posts[url.path]
            return await self._call(url.path, lambda: handler(parse_qs(url.query), body)), False
        if url.path in self._posts and url.path not in self._routes:
            return Response.text("only POST\n", 405), False
        if method not in ("GET", "HEAD") and url.path in self._routes:
            return Response.text("only GET\n", 405), False
        return await self._route(url.path, url.query), method == "HEAD"

    async def _route(self, path: str, query: str) -> Response:
        handler = self._routes.get(path)
        if handler is None:
            listing = "".join(f"{p}\n" for p in sorted(self._routes.keys() | self._posts.keys()))
            return Response.text(f"not found; try:\n{listing}", 404)
        return await self._call(path, lambda: handler(parse_qs(query)))

    async def _call(
        self, path: str, call: Callable[[], Response | Awaitable[Response]]
    ) -> Response:
        try:
            result = call()
            return await result if isinstance(result, Awaitable) else result
        except Exception:
            log.exception("admin handler %s failed", path)
            return Response.text("internal error\n", 500)


def body_length(lengths: list[str], transfer_encoding: bool, max_body: int) -> int | Response:
    """The size of a request's body from its Content-Length values and whether it had a
    Transfer-Encoding (RFC 9112 section 6.3), or the response that refuses it."""
    if transfer_encoding:
        # Admin bodies are small and every client sends them with a length; refusing
        # any transfer coding also leaves no doubt about where the body ends.
        return Response.text("Transfer-Encoding is not supported: send Content-Length\n", 501)
    if not lengths:
        return 0  # neither header: no body, as `curl -X POST` sends
    if len(set(lengths)) != 1 or not (lengths[0].isascii() and lengths[0].isdigit()):
        return Response.text(f"bad Content-Length: {', '.join(lengths)[:40]!r}\n", 400)
    length = int(lengths[0])
    if length > max_body:
        return Response.text(f"body over {max_body} bytes\n", 413)
    return length


def _from_loopback(writer: asyncio.StreamWriter) -> bool:
    peer = writer.get_extra_info("peername")
    if not isinstance(peer, tuple):
        return False
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


def log_level_routes() -> tuple[dict[str, Handler], dict[str, PostHandler]]:
    """GET /logging: the log levels; POST /logging?level=debug (every logger) or
    ?meshlet.sidecar.dns=debug (one): change them, as Envoy's /logging does."""

    def change(query: dict[str, list[str]], _body: bytes) -> Response:
        wanted = {name: values[-1] for name, values in query.items()}
        if not wanted:
            return Response.text(f"say ?level=<{'|'.join(logs.LEVELS)}>\n", 400)
        try:
            now = logs.set_levels(wanted)
        except ValueError as exc:
            return Response.text(f"{exc}\n", 400)
        changed = ", ".join(f"{name}={level}" for name, level in wanted.items())
        log.info("log levels set over the admin port: %s", changed)
        return Response.json(now)

    return {"/logging": lambda _: Response.json(logs.levels())}, {"/logging": change}
