"""`meshlet sidecar`: the per-pod sidecar."""

from __future__ import annotations

import argparse
import socket

from meshlet import defaults
from meshlet.commands.common import missing
from meshlet.flags import (
    add_flag,
    dial_address,
    dns_upstream,
    domain_name,
    host_port,
    seconds,
    ttl_seconds,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sidecar",
        help="learn the mesh over xDS, answer the pod's DNS, proxy its service connections",
        description="The per-pod sidecar: an xDS client, a DNS server, the outbound proxy "
        "and an admin port.",
    )
    add_flag(
        p,
        "--xds-address",
        type=dial_address,
        required=False,
        metavar="HOST:PORT",
        help="the control plane's ADS address (HOST an IP or a DNS name, resolved through "
        "the pod's own nameservers)",
    )
    add_flag(p, "--node-id", default=socket.gethostname(), help="this node's xDS id")
    add_flag(p, "--namespace", default="default", help="the pod's namespace (short names)")
    add_flag(p, "--zone", default="", help="the pod's zone (locality)")
    add_flag(
        p,
        "--cluster-domain",
        type=domain_name,
        default=defaults.CLUSTER_DOMAIN,
        help="the cluster's DNS domain",
    )
    add_flag(
        p,
        "--dns-address",
        type=host_port,
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="where to answer DNS, UDP and TCP (repeatable; default "
        f"127.0.0.1:{defaults.DNS_PORT}, and [::1]:{defaults.DNS_PORT} when IPv6 is up)",
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
        default=f"127.0.0.1:{defaults.SIDECAR_ADMIN_PORT}",
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
    add_flag(
        p,
        "--outbound-address",
        type=host_port,
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="where captured connections arrive (repeatable; default "
        f"127.0.0.1:{defaults.OUTBOUND_PORT}, and [::1]:{defaults.OUTBOUND_PORT} when IPv6 is up)",
    )
    add_flag(
        p,
        "--drain-seconds",
        type=seconds,
        default="5",
        help="on SIGTERM, how long open connections may take to finish",
    )
    add_flag(
        p,
        "--drain-accept",
        action="store_true",
        help="while draining, keep taking new outbound connections for the whole window "
        "(a classic sidecar, beside an app that is shutting down)",
    )
    add_flag(
        p,
        "--quit-endpoint",
        action="store_true",
        help="serve POST /quitquitquit on the admin port (a classic sidecar: a Job's main "
        "container stops it when done)",
    )
    add_flag(
        p,
        "--health-address",
        type=host_port,
        default=None,
        metavar="HOST:PORT",
        help=f"serve /healthz/ready here (the pod IP's :{defaults.HEALTH_PORT} in a pod; "
        "default: not served)",
    )
    add_flag(
        p,
        "--metrics-address",
        type=host_port,
        default=None,
        metavar="HOST:PORT",
        help=f"serve /stats/prometheus and /metrics here (:{defaults.METRICS_PORT} in a pod; "
        "default: not served)",
    )
    add_flag(
        p,
        "--state-dir",
        default=None,
        metavar="DIR",
        help="keep the last accepted config here, and serve from it at once after a "
        f"restart while the control plane is away ({defaults.STATE_DIR}, an emptyDir, in "
        "an injected pod; default: not kept)",
    )
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from meshlet.sidecar.app import SidecarConfig, run

    if not args.xds_address:
        return missing("sidecar", "--xds-address HOST:PORT")
    return run(
        SidecarConfig(
            xds_address=args.xds_address,
            node_id=args.node_id,
            namespace=args.namespace,
            zone=args.zone,
            cluster_domain=args.cluster_domain,
            dns_addresses=tuple(args.dns_address),
            upstream_dns=tuple(args.upstream_dns),
            resolv_conf=args.resolv_conf,
            admin_address=args.admin_address,
            xds_protocol=args.xds_protocol,
            dns_ttl=args.dns_ttl,
            outbound_addresses=tuple(args.outbound_address),
            drain_seconds=args.drain_seconds,
            drain_accept=args.drain_accept,
            quit_endpoint=args.quit_endpoint,
            health_address=args.health_address,
            metrics_address=args.metrics_address,
            state_dir=args.state_dir or None,
        )
    )
