"""`meshlet proxy-status`: every client of the control plane, and whether each holds
what is served now, per resource type (as `istioctl proxy-status`)."""

from __future__ import annotations

import argparse
import json
import sys

from meshlet.commands.admin_client import AdminError, get_json
from meshlet.commands.common import add_control_plane_admin, add_output
from meshlet.commands.status_tables import status_json, status_table
from meshlet.flags import grpc_address


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "proxy-status",
        help="each connected client: SYNCED, STALE or NACKED per resource type",
        description="Ask the control plane's admin port which clients are connected and "
        "print, per client and resource type, SYNCED (it ACKed what is served now), STALE "
        "(a response is not ACKed yet, or a newer version is not sent yet) or NACKED (with "
        "the client's message below the table), and the version it holds. Exit 1 when the "
        "control plane cannot be asked.",
    )
    add_control_plane_admin(p)
    add_output(p)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    address = grpc_address(*args.control_plane)
    try:
        # The versions first: a stream then never looks ahead of what they say.
        versions = get_json(address, "/debug/versions", "the control plane")
        clients = get_json(address, "/debug/clients", "the control plane", list)
    except AdminError as exc:
        print(f"meshlet proxy-status: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(status_json(clients, versions), indent=2, sort_keys=True))
    else:
        print(status_table(clients, versions))
    return 0
