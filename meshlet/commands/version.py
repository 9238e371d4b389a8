"""`meshlet version`: this binary's version, and the control plane's when reachable."""

from __future__ import annotations

import argparse
import json
import sys

from meshlet import build_info
from meshlet.commands.admin_client import AdminError, get_json
from meshlet.commands.common import add_control_plane_admin, add_output
from meshlet.flags import grpc_address


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "version",
        help="this binary's version and the control plane's",
        description="Print this binary's version and, from its admin port, the control "
        "plane's: exit 1 when the control plane cannot be asked (unless --client).",
    )
    add_control_plane_admin(p)
    p.add_argument("--client", action="store_true", help="only this binary's version")
    add_output(p)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    client = build_info()
    found: dict[str, object] = {"client": client}
    address = grpc_address(*args.control_plane)
    error = ""
    if not args.client:
        try:
            found["controlPlane"] = get_json(address, "/version", "the control plane")
        except AdminError as exc:
            error = str(exc)
    if args.output == "json":
        print(json.dumps(found | ({"error": error} if error else {}), indent=2, sort_keys=True))
    else:
        print(f"client: meshlet {client['version']} (Python {client['python']})")
        server = found.get("controlPlane")
        if isinstance(server, dict):
            print(f"control plane: meshlet {server.get('version', '?')} at {address}")
    if error:
        print(f"meshlet version: {error}", file=sys.stderr)
        return 1
    return 0
