"""`meshlet wait`: wait until the pod's sidecar is ready."""

from __future__ import annotations

import argparse

from meshlet import defaults
from meshlet.flags import add_flag, seconds


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "wait",
        help="wait until the pod's sidecar is ready (a postStart hook holding the app)",
        description="Poll the sidecar's readiness until it says ready or the timeout passes: "
        "exit 0 when ready, 1 when not in time.",
    )
    add_flag(
        p,
        "--url",
        default=f"http://127.0.0.1:{defaults.HEALTH_PORT}/healthz/ready",
        help="what to poll",
    )
    add_flag(p, "--timeout", type=seconds, default="60", help="give up after this long")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from meshlet.sidecar.wait import wait_ready

    return wait_ready(args.url, args.timeout)
