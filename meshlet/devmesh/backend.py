"""A tiny HTTP/1.1 server that says who it is: the backends of the local mesh.

    python -m meshlet.devmesh.backend --name web-0 --listen 10.250.0.5:8080

Every request gets `200` with the body "<name>\\n"; connections are kept alive
unless the client asks otherwise, so a test can hold one open across config
changes. It stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

_MAX_HEAD = 16384


async def _serve(name: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_HEAD:
                return
            lines = head.decode("latin-1").split("\r\n")
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
            }
            length = int(headers.get("content-length", "0") or 0)
            if length:
                await reader.readexactly(length)
            close = headers.get("connection", "").lower() == "close"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                b"Connection: %s\r\n\r\n%s"
                % (len(name), b"close" if close else b"keep-alive", name)
            )
            await writer.drain()
            if close:
                return
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        return
    finally:
        writer.close()


async def serve(name: str, host: str, port: int) -> None:
    body = f"{name}\n".encode()
    server = await asyncio.start_server(
        lambda r, w: _serve(body, r, w), host, port, reuse_address=True, backlog=1024
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"{name} listening on {host}:{port}", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--listen", required=True, metavar="IP:PORT")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.name, host.strip("[]"), int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
