"""`meshlet version`: this binary's version, and the control plane's when reachable."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

from meshlet import build_info, defaults
from meshlet.flags import add_flag, grpc_address, host_port


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "version",
        help="this binary's version and the control plane's",
        description="Print this binary's version and, from its admin port, the control "
        "plane's: exit 1 when the control plane cannot be asked (unless --client).",
    )
    add_flag(
        p,
        "--control-plane",
        type=host_port,
        default=f"127.0.0.1:{defaults.CONTROL_PLANE_ADMIN_PORT}",
        metavar="HOST:PORT",
        help="the control plane's admin address (kubectl port-forward to it on Kubernetes)",
    )
    p.add_argument("--client", action="store_true", help="only this binary's version")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    found: dict[str, object] = {"client": build_info()}
    address = grpc_address(*args.control_plane)
    if not args.client:
        try:
            with urllib.request.urlopen(f"http://{address}/version", timeout=5) as response:
                found["controlPlane"] = json.loads(response.read())
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            found["controlPlane"] = {"error": f"not reachable at {address}: {reason}"}
    if args.output == "json":
        print(json.dumps(found, indent=2, sort_keys=True))
    else:
        client = found["client"]
        print(f"client: meshlet {client['version']} (Python {client['python']})")  # type: ignore[index]
        server = found.get("controlPlane")
        if isinstance(server, dict):
            if "error" in server:
                print(f"control plane: {server['error']}")
            else:
                print(f"control plane: meshlet {server.get('version')} at {address}")
    reachable = args.client or "error" not in found.get("controlPlane", {})  # type: ignore[operator]
    if not reachable:
        print("meshlet version: the control plane could not be asked", file=sys.stderr)
    return 0 if reachable else 1
