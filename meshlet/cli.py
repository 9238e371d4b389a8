"""`meshlet <command>`: the one entry point of every meshlet process."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence

from meshlet import __version__, defaults
from meshlet.flags import (
    add_flag,
    cidr,
    dial_address,
    dial_address_text,
    dns_upstream,
    domain_name,
    env_name,
    host_port,
    host_port_or_off,
    id_number,
    ip_address,
    namespace_name,
    port_number,
    seconds,
    ttl_seconds,
)


def _control_plane(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "control-plane",
        help="watch services and serve them over xDS (ADS)",
        description="Serve Kubernetes services over xDS (SotW and delta ADS), watched on the "
        "Kubernetes API or read from a folder of manifests.",
    )
    add_flag(
        p,
        "--manifests",
        required=False,
        metavar="PATH",
        help="serve a YAML file or folder of Service and EndpointSlice objects instead of "
        "watching the Kubernetes API",
    )
    add_flag(
        p,
        "--kubeconfig",
        default=None,
        metavar="PATH",
        help="the Kubernetes API's kubeconfig (default: KUBECONFIG, else in-cluster, "
        "else ~/.kube/config)",
    )
    add_flag(
        p,
        "--watch-namespace",
        type=namespace_name,
        action="append",
        default=[],
        metavar="NS",
        help="watch only these namespaces (repeatable; default: all)",
    )
    add_flag(
        p,
        "--xds-address",
        type=host_port,
        default=f"0.0.0.0:{defaults.XDS_PORT}",
        metavar="HOST:PORT",
        help="where to serve ADS over gRPC",
    )
    add_flag(
        p,
        "--admin-address",
        type=host_port,
        default=f"0.0.0.0:{defaults.CONTROL_PLANE_ADMIN_PORT}",
        metavar="HOST:PORT",
        help="where to serve /healthz, /readyz, /metrics and /debug/*",
    )
    add_flag(
        p,
        "--cluster-domain",
        type=domain_name,
        default=defaults.CLUSTER_DOMAIN,
        help="the cluster's DNS domain",
    )
    add_flag(
        p,
        "--outbound-port",
        type=port_number,
        default=str(defaults.OUTBOUND_PORT),
        help="port of the sidecars' virtual outbound listener",
    )
    _webhook_flags(p)
    p.set_defaults(run=_run_control_plane)


def _webhook_flags(p: argparse.ArgumentParser) -> None:
    add_flag(
        p,
        "--webhook-address",
        type=host_port_or_off,
        default=f"0.0.0.0:{defaults.WEBHOOK_PORT}",
        metavar="HOST:PORT|off",
        help="where to serve the injection webhook (HTTPS, POST /inject)",
    )
    add_flag(
        p,
        "--injector-settings",
        default=None,
        metavar="PATH",
        help="the injector's settings file (read again when it changes; default: built in)",
    )
    add_flag(
        p,
        "--system-namespace",
        type=namespace_name,
        default=defaults.SYSTEM_NAMESPACE,
        metavar="NS",
        help="the control plane's own namespace: its webhook Secret and Lease live there",
    )
    add_flag(
        p,
        "--webhook-configuration",
        default=defaults.WEBHOOK_CONFIGURATION,
        metavar="NAME",
        help="the MutatingWebhookConfiguration whose caBundle the control plane keeps",
    )
    add_flag(
        p,
        "--webhook-service",
        default=defaults.CONTROL_PLANE_SERVICE,
        metavar="NAME",
        help="the control plane's Service in --system-namespace: the webhook certificate's name",
    )
    add_flag(
        p,
        "--webhook-host",
        action="append",
        default=[],
        metavar="HOST",
        help="another name or IP the webhook certificate carries (repeatable)",
    )
    add_flag(
        p,
        "--webhook-cert-file",
        default=None,
        metavar="PATH",
        help="serve this certificate (cert-manager's) instead of keeping one; read again "
        "when it changes",
    )
    add_flag(p, "--webhook-key-file", default=None, metavar="PATH", help="its private key")


def _missing(command: str, flag: str) -> int:
    # Not argparse's `required`: the flag may come from its MESHLET_* variable.
    name = flag.split()[0]
    print(f"meshlet {command}: {flag} is required (or {env_name(name)})", file=sys.stderr)
    return 2


def _run_control_plane(args: argparse.Namespace) -> int:
    from meshlet.controlplane.app import ControlPlaneConfig, run
    from meshlet.controlplane.injection import WebhookConfig

    if args.manifests and (args.kubeconfig or args.watch_namespace):
        print(
            "meshlet control-plane: --manifests serves a folder; --kubeconfig and "
            "--watch-namespace are for the Kubernetes API: give one or the other",
            file=sys.stderr,
        )
        return 2
    if bool(args.webhook_cert_file) != bool(args.webhook_key_file):
        print(
            "meshlet control-plane: --webhook-cert-file and --webhook-key-file go together",
            file=sys.stderr,
        )
        return 2
    webhook = None
    if args.webhook_address is not None:
        webhook = WebhookConfig(
            address=args.webhook_address,
            system_namespace=args.system_namespace,
            configuration=args.webhook_configuration,
            service=args.webhook_service,
            cluster_domain=args.cluster_domain,
            extra_hosts=tuple(args.webhook_host),
            settings_path=args.injector_settings,
            cert_file=args.webhook_cert_file,
            key_file=args.webhook_key_file,
        )
    return run(
        ControlPlaneConfig(
            webhook=webhook,
            manifests=args.manifests or None,
            kubeconfig=args.kubeconfig or None,
            watch_namespaces=tuple(args.watch_namespace),
            xds_address=args.xds_address,
            admin_address=args.admin_address,
            cluster_domain=args.cluster_domain,
            outbound_port=args.outbound_port,
        )
    )


def _sidecar(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
            dns_addresses=tuple(args.dns_address),
            upstream_dns=tuple(args.upstream_dns),
            resolv_conf=args.resolv_conf,
            admin_address=args.admin_address,
            xds_protocol=args.xds_protocol,
            dns_ttl=args.dns_ttl,
            outbound_addresses=tuple(args.outbound_address),
            drain_seconds=args.drain_seconds,
            drain_accept=args.drain_accept,
            health_address=args.health_address,
            metrics_address=args.metrics_address,
        )
    )


def _wait(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "wait",
        help="wait until the pod's sidecar is ready (a postStart hook holding the app)",
        description="Poll the sidecar's readiness until it says ready or the timeout passes: "
        "exit 0 when ready, 1 when not in time.",
    )
    add_flag(
        p,
        "--url",
        default=f"http://127.0.0.1:{defaults.HEALTH_PORT}/healthz/ready",
        help="what to poll",
    )
    add_flag(p, "--timeout", type=seconds, default="60", help="give up after this long")
    p.set_defaults(run=_run_wait)


def _run_wait(args: argparse.Namespace) -> int:
    from meshlet.sidecar.wait import wait_ready

    return wait_ready(args.url, args.timeout)


def _init(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    p.set_defaults(run=_run_init)


def _run_init(args: argparse.Namespace) -> int:
    from meshlet.capture.app import InitRequest, run
    from meshlet.capture.ruleset import CaptureConfig
    from meshlet.sidecar.dns.resolv import DNS_PORT, read_resolv_conf

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


def _inject(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    p.set_defaults(run=_run_inject)


def _run_inject(args: argparse.Namespace) -> int:
    from meshlet.inject.command import run

    overrides = {"image": args.image, "control_plane": args.control_plane, "mode": args.mode}
    return run(args.file, args.settings, overrides)


def _demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run a whole mesh on this machine, in network namespaces (needs root)",
        description="A control plane, two services, a client pod with capture and a sidecar, "
        "traffic, a dying replica and a scale-up, shown live; everything is removed at the end.",
    )
    add_flag(
        p,
        "--duration",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="stop after this long (default: run until Ctrl-C)",
    )
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from meshlet.devmesh.demo import run

    return run(args.duration or None)


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
    _init(sub)
    _wait(sub)
    _inject(sub)
    _demo(sub)
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
