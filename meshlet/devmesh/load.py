"""A load generator for the local mesh: HTTP requests to services by name, counted by
the backend that answered.

    python -m meshlet.devmesh.load --target web=http://web/ --count 90
    python -m meshlet.devmesh.load --target web=http://web/ --target api=http://api:8080/ \\
        --duration 20 --rate 40 --report-every 0.5

Each request resolves the name through the system resolver (glibc, so the pod's
resolv.conf and search path apply), opens a new connection, sends one GET, and
reads the backend's name from the body. Reports go to stdout as JSON lines,
cumulative since the start: per target the requests that succeeded, failed, and
which backend answered, plus what the names resolved to. The last line has
"final": true. The process exits 0 when it is done (errors are in the report).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

REQUEST_TIMEOUT = 5.0


@dataclass
class Target:
    name: str
    host: str
    port: int
    path: str
    ok: int = 0
    errors: int = 0
    endpoints: dict[str, int] = field(default_factory=dict)
    last_error: str = ""
    addresses: list[str] = field(default_factory=list)

    def report(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "errors": self.errors,
            "endpoints": dict(sorted(self.endpoints.items())),
            "last_error": self.last_error,
            "addresses": self.addresses,
        }


def parse_target(text: str) -> Target:
    name, sep, url = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=URL")
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{url!r}: expected http://HOST[:PORT]/PATH")
    return Target(name, parts.hostname, parts.port or 80, parts.path or "/")


async def request(target: Target) -> str:
    """One GET on a new connection; the answering backend's name."""
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        get = f"GET {target.path} HTTP/1.1\r\nHost: {target.host}\r\nConnection: close\r\n\r\n"
        writer.write(get.encode())
        response = await reader.read()
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if status != [b"200"]:
        raise ConnectionError(f"HTTP {status[0].decode() if status else '(no response)'}")
    return body.decode(errors="replace").strip() or "(empty)"


async def one(target: Target) -> None:
    try:
        backend = await asyncio.wait_for(request(target), REQUEST_TIMEOUT)
    except (OSError, TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
        target.errors += 1
        target.last_error = f"{type(exc).__name__}: {exc}"
        return
    target.ok += 1
    target.endpoints[backend] = target.endpoints.get(backend, 0) + 1


async def resolve(target: Target) -> None:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        target.addresses = [f"error: {exc}"]
        return
    target.addresses = sorted({str(info[4][0]) for info in infos})


async def worker(target: Target, stop: asyncio.Event, count: int | None, pause: float) -> None:
    done = 0
    while not stop.is_set() and (count is None or done < count):
        started = time.monotonic()
        await one(target)
        done += 1
        if pause:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, pause - (time.monotonic() - started)))


def emit(targets: list[Target], started: float, final: bool = False) -> None:
    line = {
        "elapsed": round(time.monotonic() - started, 3),
        "targets": {t.name: t.report() for t in targets},
        "final": final,
    }
    print(json.dumps(line), flush=True)


async def run(args: argparse.Namespace) -> int:
    targets: list[Target] = args.target
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    for target in targets:
        await resolve(target)
    pause = args.concurrency / args.rate if args.rate else 0.0
    workers = [
        asyncio.create_task(worker(t, stop, args.count, pause))
        for t in targets
        for _ in range(args.concurrency)
    ]
    if args.duration:
        loop.call_later(args.duration, stop.set)

    async def reporter() -> None:
        while True:
            await asyncio.sleep(args.report_every)
            for target in targets:
                await resolve(target)
            emit(targets, started)

    reporting = asyncio.create_task(reporter()) if args.report_every else None
    await asyncio.gather(*workers)
    if reporting is not None:
        reporting.cancel()
    emit(targets, started, final=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--target", type=parse_target, action="append", required=True, metavar="NAME=URL"
    )
    parser.add_argument("--count", type=int, help="requests per worker, then stop")
    parser.add_argument("--duration", type=float, help="seconds, then stop")
    parser.add_argument("--concurrency", type=int, default=1, help="workers per target")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="requests/s per target (0: flat out)"
    )
    parser.add_argument("--report-every", type=float, default=0.0, help="seconds between reports")
    args = parser.parse_args(argv)
    if args.count is None and args.duration is None:
        parser.error("give --count or --duration")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
