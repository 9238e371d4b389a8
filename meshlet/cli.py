"""`meshlet <command>`: the one entry point of every meshlet process."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from meshlet import __version__
from meshlet.flags import add_flag, domain_name, host_port, port_number


def _control_plane(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "control-plane",
        help="watch services and serve them over xDS (ADS)",
        description="Serve Kubernetes services from manifests over xDS (SotW and delta ADS).",
    )
    add_flag(
        p,
        "--manifests",
        required=False,
        metavar="PATH",
        help="a YAML file or folder of Service and EndpointSlice objects",
    )
    add_flag(
        p,
        "--xds-address",
        type=host_port,
        default="0.0.0.0:15010",
        metavar="HOST:PORT",
        help="where to serve ADS over gRPC",
    )
    add_flag(
        p,
        "--admin-address",
        type=host_port,
        default="0.0.0.0:15014",
        metavar="HOST:PORT",
        help="where to serve /healthz, /readyz, /metrics and /debug/*",
    )
    add_flag(
        p,
        "--cluster-domain",
        type=domain_name,
        default="cluster.local",
        help="the cluster's DNS domain",
    )
    add_flag(
        p,
        "--outbound-port",
        type=port_number,
        default="15001",
        help="port of the sidecars' virtual outbound listener",
    )
    p.set_defaults(run=_run_control_plane)


def _run_control_plane(args: argparse.Namespace) -> int:
    from meshlet.controlplane.app import ControlPlaneConfig, run

    if not args.manifests:
        print(
            "meshlet control-plane: --manifests PATH is required (or MESHLET_MANIFESTS)",
            file=sys.stderr,
        )
        return 2
    return run(
        ControlPlaneConfig(
            manifests=args.manifests,
            xds_address=args.xds_address,
            admin_address=args.admin_address,
            cluster_domain=args.cluster_domain,
            outbound_port=args.outbound_port,
        )
    )


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
    _control_plane(sub)
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
