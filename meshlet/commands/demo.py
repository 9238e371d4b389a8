"""`meshlet demo`: a whole mesh on this machine."""

from __future__ import annotations

import argparse

from meshlet.flags import add_flag, seconds


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run a whole mesh on this machine, in network namespaces (needs root)",
        description="A control plane, two services, a client pod with capture and a sidecar, "
        "traffic, a dying replica and a scale-up, shown live; everything is removed at the end.",
    )
    add_flag(
        p,
        "--duration",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="stop after this long (default: run until Ctrl-C)",
    )
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from meshlet.devmesh.demo import run

    return run(args.duration or None)
