"""What every command's flag handling shares."""

from __future__ import annotations

import argparse
import sys

from meshlet import defaults
from meshlet.flags import add_flag, dial_address, env_name


def missing(command: str, flag: str) -> int:
    # Not argparse's `required`: the flag may come from its MESHLET_* variable.
    name = flag.split()[0]
    print(f"meshlet {command}: {flag} is required (or {env_name(name)})", file=sys.stderr)
    return 2


def add_control_plane_admin(parser: argparse.ArgumentParser, what: str = "") -> None:
    """--control-plane: the control plane's admin port, for the commands that ask it.
    Its variable is not MESHLET_CONTROL_PLANE, which is `meshlet inject`'s xDS address."""
    add_flag(
        parser,
        "--control-plane",
        env="MESHLET_CONTROL_PLANE_ADMIN",
        type=dial_address,
        default=f"127.0.0.1:{defaults.CONTROL_PLANE_ADMIN_PORT}",
        metavar="HOST:PORT",
        help=f"the control plane's admin address{what}: an IP, or a Service's name from "
        "inside the cluster (else kubectl port-forward to it)",
    )


def add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", choices=("text", "json"), default="text", help="a table, or raw JSON"
    )
