"""`meshlet <command>`: the one entry point of every meshlet process."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from meshlet import __version__
from meshlet.commands import control_plane, demo, init, inject, sidecar, wait
from meshlet.flags import add_flag


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshlet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"meshlet {__version__}")
    add_flag(
        parser,
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (control_plane, sidecar, init, wait, inject, demo):
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
