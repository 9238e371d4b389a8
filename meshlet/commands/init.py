"""`meshlet init`: program the pod's capture rules."""

from __future__ import annotations

import argparse
import sys

from meshlet import defaults
from meshlet.flags import add_flag, cidr, id_number, ip_address, port_number


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "init",
        help="program the pod's capture rules (nftables), then exit",
        description="Write the pod's nftables table (inet meshlet) that sends its service "
        "traffic to the sidecar, in one atomic transaction; or print or remove it.",
    )
    add_flag(
        p,
        "--outbound-port",
        type=port_number,
        default=str(defaults.OUTBOUND_PORT),
        help="the outbound proxy",
    )
    add_flag(
        p, "--dns-port", type=port_number, default=str(defaults.DNS_PORT), help="the sidecar's DNS"
    )
    add_flag(
        p,
        "--service-cidr",
        type=cidr,
        action="append",
        default=[],
        metavar="CIDR",
        help="TCP to these goes to the outbound port (repeatable; "
        f"default {defaults.SERVICE_CIDR})",
    )
    add_flag(
        p,
        "--dns-server",
        type=ip_address,
        action="append",
        default=[],
        metavar="IP",
        help="DNS to these goes to the DNS port (repeatable; default: the nameservers "
        "of --resolv-conf)",
    )
    add_flag(
        p,
        "--resolv-conf",
        default="/etc/resolv.conf",
        metavar="PATH",
        help="where the pod's nameservers are read from",
    )
    add_flag(
        p, "--proxy-uid", type=id_number, default=str(defaults.PROXY_UID), help="the sidecar's uid"
    )
    add_flag(p, "--proxy-gid", type=id_number, default=None, help="the sidecar's gid")
    add_flag(
        p,
        "--exclude-port",
        type=port_number,
        action="append",
        default=[],
        metavar="PORT",
        help="destination ports never captured (repeatable)",
    )
    add_flag(
        p,
        "--exclude-cidr",
        type=cidr,
        action="append",
        default=[],
        metavar="CIDR",
        help="destinations never captured (repeatable)",
    )
    add_flag(p, "--dry-run", action="store_true", help="print the nft script, change nothing")
    add_flag(p, "--remove", action="store_true", help="delete meshlet's table, nothing else")
    add_flag(p, "--nft", default="nft", metavar="PATH", help="the nft binary")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from meshlet.capture.app import InitRequest, run
    from meshlet.capture.ruleset import CaptureConfig
    from meshlet.resolv import DNS_PORT, read_resolv_conf

    dns_servers = args.dns_server
    if not dns_servers and not args.remove:
        try:
            nameservers = read_resolv_conf(args.resolv_conf).nameservers
        except OSError as exc:
            print(f"meshlet init: cannot read {args.resolv_conf}: {exc}", file=sys.stderr)
            return 2
        # Only port 53 is redirected: a nameserver on another port is left alone.
        dns_servers = [ip_address(ip) for ip, port in nameservers if port == DNS_PORT]
        if not dns_servers:
            print(
                f"meshlet init: {args.resolv_conf} names no nameserver on port 53: "
                "DNS is not captured (give --dns-server)",
                file=sys.stderr,
            )
    config = CaptureConfig(
        outbound_port=args.outbound_port,
        dns_port=args.dns_port,
        service_cidrs=tuple(args.service_cidr or [cidr(defaults.SERVICE_CIDR)]),
        dns_servers=tuple(dns_servers),
        proxy_uid=args.proxy_uid,
        proxy_gid=args.proxy_gid,
        exclude_ports=tuple(args.exclude_port),
        exclude_cidrs=tuple(args.exclude_cidr),
    )
    return run(InitRequest(config, dry_run=args.dry_run, remove=args.remove, nft=args.nft))
