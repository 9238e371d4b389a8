"""`meshlet <command>`: the one entry point of every meshlet process."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from meshlet import __version__, logs
from meshlet.commands import (
    check,
    control_plane,
    demo,
    init,
    inject,
    proxy_config,
    proxy_status,
    sidecar,
    version,
    wait,
)
from meshlet.flags import DefaultsHelpFormatter, add_flag, env_name


def _global_flags(parser: argparse.ArgumentParser, on_subcommand: bool) -> None:
    """--log-level and --log-format, before the subcommand or after it. On a subcommand
    they default to nothing, so a value given before it is not reset."""
    for flag, choices, default, help_text in (
        ("--log-level", logs.LEVELS, "info", "log verbosity"),
        ("--log-format", logs.FORMATS, "text", "log lines as text or as JSON objects"),
    ):
        if on_subcommand:
            parser.add_argument(
                flag,
                type=str.lower,
                choices=choices,
                default=argparse.SUPPRESS,
                help=f"{help_text} (default: {default}; also before the subcommand) "
                f"[env {env_name(flag)}]",
            )
        else:
            add_flag(parser, flag, type=str.lower, choices=choices, default=default, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshlet", description=__doc__, formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"meshlet {__version__}")
    _global_flags(parser, on_subcommand=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = (control_plane, sidecar, init, wait, inject, demo, version, check)
    for command in (*commands, proxy_status, proxy_config):
        command.register(sub)
    for subparser in sub.choices.values():
        subparser.formatter_class = DefaultsHelpFormatter
        _global_flags(subparser, on_subcommand=True)
        subparser.set_defaults(subparser=subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # with the subcommand's usage, not the top level's
        args.subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logs.configure(args.log_level, args.log_format)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
