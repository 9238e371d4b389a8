"""`meshlet <command>`: the one entry point of every meshlet process."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence

from meshlet import __version__
from meshlet.flags import (
    add_flag,
    dns_upstream,
    domain_name,
    env_name,
    host_port,
    port_number,
    ttl_seconds,
)


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


def _missing(command: str, flag: str) -> int:
    # Not argparse's `required`: the flag may come from its MESHLET_* variable.
    name = flag.split()[0]
    print(f"meshlet {command}: {flag} is required (or {env_name(name)})", file=sys.stderr)
    return 2


def _run_control_plane(args: argparse.Namespace) -> int:
    from meshlet.controlplane.app import ControlPlaneConfig, run

    if not args.manifests:
        return _missing("control-plane", "--manifests PATH")
    return run(
        ControlPlaneConfig(
            manifests=args.manifests,
            xds_address=args.xds_address,
            admin_address=args.admin_address,
            cluster_domain=args.cluster_domain,
            outbound_port=args.outbound_port,
        )
    )


def _sidecar(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sidecar",
        help="learn the mesh over xDS and answer the pod's DNS",
        description="The per-pod sidecar: an xDS client, a DNS server and an admin port.",
    )
    add_flag(
        p,
        "--xds-address",
        type=host_port,
        required=False,
        metavar="HOST:PORT",
        help="the control plane's ADS address",
    )
    add_flag(p, "--node-id", default=socket.gethostname(), help="this node's xDS id")
    add_flag(p, "--namespace", default="default", help="the pod's namespace (short names)")
    add_flag(p, "--zone", default="", help="the pod's zone (locality)")
    add_flag(
        p,
        "--cluster-domain",
        type=domain_name,
        default="cluster.local",
        help="the cluster's DNS domain",
    )
    add_flag(
        p,
        "--dns-address",
        type=host_port,
        default="127.0.0.1:15053",
        metavar="HOST:PORT",
        help="where to answer DNS (UDP and TCP)",
    )
    add_flag(
        p,
        "--upstream-dns",
        type=dns_upstream,
        action="append",
        default=[],
        metavar="IP[:PORT]",
        help="resolver for names outside the mesh (repeatable; "
        "default: the nameservers of --resolv-conf)",
    )
    add_flag(
        p,
        "--resolv-conf",
        default="/etc/resolv.conf",
        metavar="PATH",
        help="the pod's original resolv.conf",
    )
    add_flag(
        p,
        "--admin-address",
        type=host_port,
        default="127.0.0.1:15000",
        metavar="HOST:PORT",
        help="where to serve /ready, /config_dump, /clusters, /metrics",
    )
    add_flag(
        p,
        "--xds-protocol",
        default="delta",
        choices=["delta", "sotw"],
        help="incremental (delta) or state-of-the-world ADS",
    )
    add_flag(p, "--dns-ttl", type=ttl_seconds, default="5", help="TTL of mesh answers, seconds")
    p.set_defaults(run=_run_sidecar)


def _run_sidecar(args: argparse.Namespace) -> int:
    from meshlet.sidecar.app import SidecarConfig, run

    if not args.xds_address:
        return _missing("sidecar", "--xds-address HOST:PORT")
    return run(
        SidecarConfig(
            xds_address=args.xds_address,
            node_id=args.node_id,
            namespace=args.namespace,
            zone=args.zone,
            cluster_domain=args.cluster_domain,
            dns_address=args.dns_address,
            upstream_dns=tuple(args.upstream_dns),
            resolv_conf=args.resolv_conf,
            admin_address=args.admin_address,
            xds_protocol=args.xds_protocol,
            dns_ttl=args.dns_ttl,
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
    _sidecar(sub)
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
