"""Running a meshlet process: uvloop, SIGTERM and SIGINT stop it, start-up errors in one line."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

import uvloop


def run_until_signal(name: str, serve: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Runs `serve(stop)` until it returns; SIGTERM or SIGINT sets `stop`."""

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await serve(stop)

    try:
        return uvloop.run(main())
    except (OSError, RuntimeError) as exc:  # grpcio reports a busy port as RuntimeError
        print(f"meshlet {name}: {exc}", file=sys.stderr)
        return 1
