"""`meshlet control-plane`: watch services and serve them over xDS, and the injection webhook."""

from __future__ import annotations

import argparse
import sys

from meshlet import defaults
from meshlet.flags import (
    add_flag,
    byte_size,
    byte_size_text,
    domain_name,
    host_port,
    host_port_or_off,
    namespace_name,
    port_number,
    seconds,
)

# The top-level packages of the `control-plane` extra (pyproject.toml).
CONTROL_PLANE_EXTRA = ("kubernetes", "cryptography")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        "--max-manifest-bytes",
        type=byte_size,
        default=byte_size_text(defaults.MAX_MANIFEST_BYTES),
        metavar="SIZE",
        help="the largest manifest file read (bytes, or with Ki, Mi or Gi); a bigger one is "
        "a problem of its own and its last good objects stay",
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
    add_flag(
        p,
        "--max-stream-age",
        type=seconds,
        default=f"{defaults.XDS_MAX_STREAM_AGE_SECONDS:g}",
        metavar="SECONDS",
        help="after about this long (+-10 %%) a client's xDS connection is asked to go and "
        "reconnects, resuming from what it holds, so clients spread over replicas again; "
        "0: never",
    )
    _webhook_flags(p)
    p.set_defaults(run=_run)


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
        "--injector-image",
        default=None,
        metavar="IMAGE",
        help="the sidecar image injected into pods, over the settings' image (the chart sets "
        "it through the environment, where a dev loop's image builder rewrites it)",
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


def _run(args: argparse.Namespace) -> int:
    try:
        from meshlet.controlplane.app import ControlPlaneConfig, run
        from meshlet.controlplane.injection import WebhookConfig
    except ModuleNotFoundError as exc:
        if exc.name not in CONTROL_PLANE_EXTRA:
            raise
        print(
            f"meshlet control-plane needs {exc.name!r}, which this install lacks: "
            "pip install 'meshlet[control-plane]' (the sidecar image leaves it out; "
            "run the control-plane image)",
            file=sys.stderr,
        )
        return 2

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
            image=args.injector_image,
            cert_file=args.webhook_cert_file,
            key_file=args.webhook_key_file,
        )
    return run(
        ControlPlaneConfig(
            webhook=webhook,
            manifests=args.manifests or None,
            max_manifest_bytes=args.max_manifest_bytes,
            kubeconfig=args.kubeconfig or None,
            watch_namespaces=tuple(args.watch_namespace),
            xds_address=args.xds_address,
            admin_address=args.admin_address,
            cluster_domain=args.cluster_domain,
            outbound_port=args.outbound_port,
            max_stream_age=args.max_stream_age,
        )
    )
