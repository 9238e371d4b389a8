"""`meshlet proxy-config`: a sidecar's clusters, endpoints, listeners or DNS names as a
table, from its admin port (as `istioctl proxy-config`)."""

from __future__ import annotations

import argparse
import json
import sys

from meshlet import defaults
from meshlet.commands.admin_client import AdminError, get_json
from meshlet.commands.common import add_output
from meshlet.commands.config_tables import TABLES
from meshlet.commands.tables import render
from meshlet.flags import add_flag, dial_address, grpc_address

# The raw form -o json prints of the tables built from /config_dump: their type's part.
_DUMP_PART = {"listeners": "lds", "routes": "rds", "names": "nds"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "proxy-config",
        help="a sidecar's clusters, endpoints, listeners, routes or DNS names",
        description="Print what a sidecar holds, from its admin port (/clusters and "
        "/config_dump): clusters (service, LB policy, endpoints), endpoints (health, zone, "
        "ejected), listeners (address -> cluster or routes), routes (methods -> cluster, "
        "retries, timeout) or names (DNS name -> addresses). Exit 1 "
        "when the sidecar cannot be asked.",
    )
    p.add_argument("what", choices=tuple(TABLES), help="which part of the config")
    add_flag(
        p,
        "--admin",
        type=dial_address,
        default=f"127.0.0.1:{defaults.SIDECAR_ADMIN_PORT}",
        metavar="HOST:PORT",
        help="the sidecar's admin address (on loopback in its pod: kubectl port-forward "
        "to it, or run this in the pod)",
    )
    add_output(p)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    address = grpc_address(*args.admin)
    path, build = TABLES[args.what]
    try:
        page = get_json(address, path, "the sidecar")
    except AdminError as exc:
        print(f"meshlet proxy-config: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        part = _DUMP_PART.get(args.what)
        raw = page.get("resources", {}).get(part, {}) if part else page
        print(json.dumps(raw, indent=2, sort_keys=True))
    else:
        header, rows = build(page)
        print(render(header, rows) if rows else f"no {args.what}")
    return 0
