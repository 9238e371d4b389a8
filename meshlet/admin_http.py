"""A tiny HTTP/1.1 server for admin endpoints (GET only, one request per connection).

Admin traffic is a probe or a scrape every few seconds; a full web framework
would cost more memory per pod than it saves.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
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


Handler = Callable[[dict[str, list[str]]], Response | Awaitable[Response]]


class AdminServer:
    def __init__(self, routes: dict[str, Handler]) -> None:
        self._routes = routes
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            response, head_only = await self._respond(reader)
            head = (
                f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if head_only else response.body))
            await writer.drain()
        except (ConnectionError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            pass  # a client that hung up, stalled, or sent a line too long to read
        finally:
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[Response, bool]:
        """The response, and whether only its head is wanted (HEAD)."""
        request_line = await asyncio.wait_for(reader.readline(), timeout=10)
        while (await asyncio.wait_for(reader.readline(), timeout=10)) not in (b"\r\n", b"\n", b""):
            pass  # headers: nothing here needs them
        parts = request_line.decode("latin-1").split()
        if len(parts) != 3:
            return Response.text("bad request line\n", 400), False
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return Response.text("only GET\n", 405), False
        return await self._route(target), method == "HEAD"

    async def _route(self, target: str) -> Response:
        url = urlsplit(target)
        handler = self._routes.get(url.path)
        if handler is None:
            listing = "".join(f"{p}\n" for p in sorted(self._routes))
            return Response.text(f"not found; try:\n{listing}", 404)
        try:
            result = handler(parse_qs(url.query))
            return await result if isinstance(result, Awaitable) else result
        except Exception:
            log.exception("admin handler %s failed", url.path)
            return Response.text("internal error\n", 500)
