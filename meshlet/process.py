"""Running a meshlet process: uvloop, SIGTERM and SIGINT stop it, start-up errors in one line."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

import uvloop

log = logging.getLogger(__name__)


def run_until_signal(name: str, serve: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Runs `serve(stop)` until it returns; SIGTERM or SIGINT sets `stop`."""

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stopping(sig: signal.Signals) -> None:
            if not stop.is_set():
                log.info("%s: stopping (%s)", name, sig.name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping, sig)
        code = await serve(stop)
        log.info("%s: stopped", name)
        return code

    try:
        return uvloop.run(main())
    except (OSError, RuntimeError) as exc:  # grpcio reports a busy port as RuntimeError
        print(f"meshlet {name}: {exc}", file=sys.stderr)
        return 1
