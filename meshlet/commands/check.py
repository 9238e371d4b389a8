"""`meshlet check`: pre-flight and health in one list, a mark per line, exit 1 on a failure."""

from __future__ import annotations

import argparse
import sys

from meshlet import defaults
from meshlet.commands.common import add_control_plane_admin
from meshlet.flags import add_flag, grpc_address, namespace_name

# The top-level packages of the `control-plane` extra, which --pre and --cluster need.
_KUBE_EXTRA = ("kubernetes", "cryptography")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check",
        help="check capture's prerequisites and the control plane (--pre, --cluster: the cluster)",
        description="In a pod: nft runs, CAP_NET_ADMIN is held, the kernel does NAT REDIRECT "
        "and SO_ORIGINAL_DST (with a throwaway nftables table of its own), and the control "
        "plane is ready. --pre: the Kubernetes API server, its version, and that you may "
        "install the chart. --cluster: the API server, the control plane's RBAC, the webhook "
        "configuration and its CA, and the control plane ready. Exit 0 when every check "
        "passes, 1 otherwise.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--pre", action="store_true", help="before install: may the chart be installed here?"
    )
    mode.add_argument(
        "--cluster", action="store_true", help="after install: is the control plane set up?"
    )
    add_control_plane_admin(p, ", whose /readyz is asked")
    add_flag(p, "--nft", default="nft", metavar="PATH", help="the nft binary")
    add_flag(
        p,
        "--kubeconfig",
        default=None,
        metavar="PATH",
        help="for --pre and --cluster (else KUBECONFIG, else in-cluster, else ~/.kube/config)",
    )
    add_flag(
        p,
        "--system-namespace",
        type=namespace_name,
        default=defaults.SYSTEM_NAMESPACE,
        metavar="NAMESPACE",
        help="the control plane's namespace",
    )
    add_flag(
        p,
        "--service-account",
        default=defaults.CONTROL_PLANE_SERVICE,
        metavar="NAME",
        help="the control plane's ServiceAccount in --system-namespace (--cluster)",
    )
    add_flag(
        p,
        "--webhook-service",
        default=defaults.CONTROL_PLANE_SERVICE,
        metavar="NAME",
        help="the control plane's Service, which the webhook must call (--cluster)",
    )
    add_flag(
        p,
        "--webhook-configuration",
        default=defaults.WEBHOOK_CONFIGURATION,
        metavar="NAME",
        help="the MutatingWebhookConfiguration; its Secret is NAME-tls in --system-namespace",
    )
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from meshlet.checks import Section, exit_code, render

    address = grpc_address(*args.control_plane)
    sections: list[Section] = []
    if args.pre or args.cluster:
        try:
            from meshlet.checks import kube
        except ModuleNotFoundError as exc:
            if exc.name not in _KUBE_EXTRA:
                raise
            print(
                f"meshlet check: --pre and --cluster need {exc.name!r}, which this install "
                "lacks: pip install 'meshlet[control-plane]' (or run the control-plane image)",
                file=sys.stderr,
            )
            return 2
        if args.pre:
            sections += kube.pre_checks(
                args.kubeconfig, args.system_namespace, args.webhook_configuration
            )
        else:
            sections += kube.cluster_checks(
                args.kubeconfig,
                args.system_namespace,
                args.service_account,
                args.webhook_service,
                args.webhook_configuration,
            )
    else:
        from meshlet.checks import capture

        sections.append(Section("capture", capture.run_checks(args.nft)))
    if not args.pre:
        from meshlet.checks import plane

        sections.append(Section("control plane", plane.run_checks(address)))
    _write(render(sections))
    return exit_code(sections)


def _write(text: str) -> None:
    """The marks where stdout can show them, ASCII ones where it cannot (LANG=C)."""
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        from meshlet.checks import FAIL, PASS

        text = text.replace(PASS, "+").replace(FAIL, "x")
    sys.stdout.write(text)
    sys.stdout.flush()
