"""`meshlet inject`: inject meshlet into manifests."""

from __future__ import annotations

import argparse

from meshlet.flags import add_flag, dial_address_text


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "inject",
        help="add the sidecar to the pods and pod templates of manifests (to stdout)",
        description="Read manifests (YAML or JSON, multi-document, Lists), inject meshlet into "
        "every Pod and the pod template of every Deployment, StatefulSet, DaemonSet, ReplicaSet, "
        "Job and CronJob, pass everything else through, and write the result to stdout.",
    )
    add_flag(
        p,
        "-f",
        dest="file",
        action="append",
        default=[],
        metavar="FILE",
        help="a manifest file, - for stdin (repeatable; default: stdin)",
    )
    add_flag(p, "--settings", default=None, metavar="PATH", help="the injector's settings file")
    add_flag(p, "--image", default=None, help="the meshlet image (overrides the settings)")
    add_flag(
        p,
        "--control-plane",
        type=dial_address_text,
        default=None,
        metavar="HOST:PORT",
        help="what sidecars dial for xDS (overrides the settings)",
    )
    add_flag(
        p,
        "--mode",
        default=None,
        choices=["native", "classic"],
        help="native sidecars (Kubernetes 1.29+) or classic (overrides the settings)",
    )
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from meshlet.inject.command import run

    overrides = {"image": args.image, "control_plane": args.control_plane, "mode": args.mode}
    return run(args.file, args.settings, overrides)
