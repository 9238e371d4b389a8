"""`meshlet check` against real peers: a network namespace with real nftables and the
kernel's NAT, a real control plane, and the real test Kubernetes API server.

The capture checks run in a pod of their own (a network namespace), so the table
they add and delete is in it; the leftover check looks only at that table's name.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from meshlet.binaries import find_binary
from meshlet.checks import FAIL, PASS
from meshlet.controlplane.sources.kubernetes import RBAC_RULES
from meshlet.devmesh import netns
from meshlet.inject import keeper
from meshlet.inject.certs import make_ca
from tests.envoy_peer import CONVERGE
from tests.helm_chart import objects, render
from tests.k8s.cluster import Cluster
from tests.netlab import lab_pod
from tests.procs import PYTHON, control_plane, free_port, wait_until
from tests.test_k8s_webhook import IMAGE, ca_bundle

TABLE = re.compile(r"table inet (meshlet-check-\d+-[0-9a-f]+) added and deleted")


def check(
    argv: Sequence[str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`meshlet check ARGS`, under the argv prefix `argv` (a namespace, setpriv)."""
    return subprocess.run(
        [*argv, PYTHON, "-m", "meshlet", "check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def line(output: str, start: str) -> str:
    found = [text for text in output.splitlines() if text.startswith(start)]
    assert len(found) == 1, f"one line starting {start!r} in:\n{output}"
    return found[0]


def marks(output: str) -> dict[str, bool]:
    """Each check's name (up to its detail) -> whether it passed."""
    found = {}
    for text in output.splitlines():
        if text.startswith(f"{PASS} "):
            found[text[2:].split(" (")[0]] = True
        elif text.startswith(f"{FAIL} "):
            found[text[2:].split(": ")[0].split(" (")[0]] = False
    return found


def tables(namespace: str) -> str:
    nft = find_binary("nft")
    assert nft is not None
    result = subprocess.run(
        netns.exec_argv(namespace, [nft, "list", "tables"]),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


CAPTURE = (
    "nft runs",
    "CAP_NET_ADMIN is held",
    "the kernel does NAT REDIRECT",
    "SO_ORIGINAL_DST gives a redirected connection's destination",
)


# --- in a pod ------------------------------------------------------------------------


def test_in_a_pod_capture_and_a_ready_control_plane_pass_and_no_table_is_left(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    with (
        lab_pod() as (_mesh, pod),
        # This thread in the pod: the control plane started from it runs there too.
        netns.entered(pod.namespace),
        control_plane(folder, tmp_path) as plane,
    ):
        shown = check([], f"--control-plane=127.0.0.1:{plane.admin_port}")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert marks(shown.stdout) == {
            **dict.fromkeys(CAPTURE, True),
            "the control plane is reachable": True,
            "the control plane is ready": True,
        }, shown.stdout
        assert "SO_ORIGINAL_DST gives a redirected connection's destination (IPv4, IPv6)" in (
            shown.stdout
        )
        assert shown.stdout.rstrip().endswith("all 6 checks passed")
        match = TABLE.search(shown.stdout)
        assert match is not None, shown.stdout
        # Its own table is gone; meshlet's (none here) and others' are not its business.
        assert match.group(1) not in tables(pod.namespace)


def test_in_a_pod_a_closed_control_plane_port_fails(tmp_path: Path) -> None:
    with lab_pod() as (_mesh, pod), netns.entered(pod.namespace):
        port = free_port()  # in the pod: nothing listens there
        shown = check([], f"--control-plane=127.0.0.1:{port}")
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert marks(shown.stdout) == {
        **dict.fromkeys(CAPTURE, True),
        "the control plane is reachable": False,
        "the control plane is ready": False,
    }, shown.stdout
    reachable = line(shown.stdout, f"{FAIL} the control plane is reachable")
    assert f"nothing answered at 127.0.0.1:{port}: Connection refused" in reachable
    assert "    hint: give its admin address with --control-plane HOST:PORT" in shown.stdout
    assert shown.stdout.rstrip().endswith("2 of 6 checks failed")
    assert "Traceback" not in shown.stderr


def test_a_failure_after_the_table_was_added_still_deletes_it() -> None:
    with lab_pod() as (_mesh, pod):
        # No loopback: the table goes in, the connection through it cannot be made.
        netns.ip("link", "set", "lo", "down", namespace=pod.namespace)
        shown = check(netns.exec_argv(pod.namespace, []), "--control-plane=127.0.0.1:1")
        left = tables(pod.namespace)
    assert shown.returncode == 1, shown.stdout + shown.stderr
    found = marks(shown.stdout)
    assert found["the kernel does NAT REDIRECT"] is True, shown.stdout
    assert found["SO_ORIGINAL_DST gives a redirected connection's destination"] is False
    original = line(shown.stdout, f"{FAIL} SO_ORIGINAL_DST gives a redirected connection's")
    assert "IPv4: the connection to 127.0.0.1 port " in original
    assert "was not redirected (" in original  # unreachable, or timed out
    assert "    hint: the loopback connection through the redirect did not arrive" in shown.stdout
    match = TABLE.search(shown.stdout)
    assert match is not None, shown.stdout
    assert match.group(1) not in left


def _setpriv() -> str:
    setpriv = find_binary("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    return setpriv


@pytest.mark.parametrize("how", ["root without CAP_NET_ADMIN", "an unprivileged uid"])
def test_without_cap_net_admin_the_capability_check_fails(how: str) -> None:
    with lab_pod() as (_mesh, pod):
        if how == "an unprivileged uid":
            argv = netns.exec_argv(pod.namespace, [], uid=65534)
        else:
            argv = netns.exec_argv(pod.namespace, [_setpriv(), "--bounding-set=-net_admin", "--"])
        shown = check(argv)
        left = tables(pod.namespace)
    assert shown.returncode == 1, shown.stdout + shown.stderr
    found = marks(shown.stdout)
    assert found["nft runs"] is True, shown.stdout
    assert found["CAP_NET_ADMIN is held"] is False, shown.stdout
    assert found["the kernel does NAT REDIRECT"] is False, shown.stdout
    capability = line(shown.stdout, f"{FAIL} CAP_NET_ADMIN is held: ")
    assert re.search(r"\(CapEff [0-9a-f]{16}\) lack it", capability), capability
    assert "    hint: run as root, or give the container the NET_ADMIN capability" in shown.stdout
    redirect = line(shown.stdout, f"{FAIL} the kernel does NAT REDIRECT: ")
    assert "not tried: CAP_NET_ADMIN is missing" in redirect
    assert "meshlet-check-" not in left
    assert "Traceback" not in shown.stderr


# --- on Kubernetes ---------------------------------------------------------------------

K8S = pytest.mark.timeout(300)  # the first one to run starts the test cluster


@K8S
def test_pre_passes_for_the_admin_and_fails_for_an_account_without_rights(
    kube: Cluster, namespace: str
) -> None:
    admin = check([], "--pre", f"--kubeconfig={kube.admin_kubeconfig}")
    assert admin.returncode == 0, admin.stdout + admin.stderr
    assert marks(admin.stdout) == {
        "the Kubernetes API server is reachable": True,
        "Kubernetes is new enough for EndpointSlices": True,
        "you may create what the chart installs": True,
        "you may grant what the chart grants the control plane": True,
    }, admin.stdout
    assert f"{PASS} the Kubernetes API server is reachable ({kube.server}, kubeconfig " in (
        admin.stdout
    )
    assert re.search(r"EndpointSlices \(discovery.k8s.io/v1, 1.21\+\) \(v1\.\d+", admin.stdout)

    # Someone who may only read services: may neither install nor grant.
    reader = [{"apiGroups": [""], "resources": ["services"], "verbs": ["get"]}]
    with kube.service_account(namespace, "reader", reader) as account:
        shown = check([], "--pre", f"--kubeconfig={account.kubeconfig()}")
    assert shown.returncode == 1, shown.stdout + shown.stderr
    create = line(shown.stdout, f"{FAIL} you may create what the chart installs: ")
    assert "not allowed: create namespaces, create clusterroles.rbac.authorization.k8s.io" in (
        create
    )
    grant = line(shown.stdout, f"{FAIL} you may grant what the chart grants the control plane: ")
    assert "list services" in grant
    assert "Traceback" not in shown.stderr


def service_webhook_configuration(name: str, namespace: str) -> dict[str, Any]:
    """As the chart makes it (the control plane's Service), selecting no namespace (a label
    no namespace has) and ignoring failures: the API server never needs to call it."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "inject.meshlet.io",
                "clientConfig": {
                    "service": {
                        "name": "meshlet",
                        "namespace": namespace,
                        "path": "/inject",
                        "port": 443,
                    }
                },
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {"matchLabels": {"meshlet.io/check-test": name}},
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "failurePolicy": "Ignore",
            }
        ],
    }


@contextlib.contextmanager
def registered(kube: Cluster, name: str, namespace: str) -> Iterator[None]:
    kube.apply(service_webhook_configuration(name, namespace))
    try:
        yield
    finally:
        kube.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")


@K8S
def test_cluster_passes_with_a_running_control_plane_and_fails_on_a_wrong_ca_bundle(
    kube: Cluster, namespace: str, tmp_path: Path
) -> None:
    configuration = f"meshlet-injector-{namespace}"
    rules = keeper.rbac_rules(namespace, f"{configuration}-tls", configuration)
    settings = tmp_path / "injector.yaml"
    settings.write_text(
        yaml.safe_dump({"image": IMAGE, "controlPlane": f"meshlet.{namespace}.svc:15010"})
    )
    flags = [
        "--cluster",
        f"--kubeconfig={kube.admin_kubeconfig}",
        f"--system-namespace={namespace}",
        f"--webhook-configuration={configuration}",
    ]
    with (
        registered(kube, configuration, namespace),
        # The chart's RBAC for the chart's ServiceAccount name, in the test's namespace.
        kube.service_account(
            namespace, "meshlet", [*RBAC_RULES, *rules["cluster"]], rules["namespaced"]
        ) as account,
    ):
        with control_plane(
            None,
            tmp_path,
            kubeconfig=account.kubeconfig(),
            extra_args=[
                f"--webhook-address=127.0.0.1:{free_port()}",
                f"--system-namespace={namespace}",
                f"--webhook-configuration={configuration}",
                f"--injector-settings={settings}",
            ],
        ) as plane:
            # It made its CA and serving certificate, and set the caBundle.
            wait_until(
                all, CONVERGE, "the caBundle", observe=lambda: ca_bundle(kube, configuration)
            )
            admin = f"--control-plane=127.0.0.1:{plane.admin_port}"
            shown = check([], *flags, admin)
            assert shown.returncode == 0, shown.stdout + shown.stderr
            assert marks(shown.stdout) == {
                "the Kubernetes API server is reachable": True,
                "Kubernetes is new enough for EndpointSlices": True,
                "the control plane's ServiceAccount may do what it needs": True,
                "the MutatingWebhookConfiguration exists": True,
                "the webhook calls the control plane's Service": True,
                "the webhook's caBundle verifies the control plane's certificate": True,
                "the control plane is reachable": True,
                "the control plane is ready": True,
            }, shown.stdout
            assert f"may do what it needs ({namespace}/meshlet) (" in shown.stdout
            assert f"(Secret {namespace}/{configuration}-tls) (valid until " in shown.stdout

        # The control plane stopped (it would put its CA back): another CA's bundle.
        other = make_ca(datetime.datetime.now(datetime.UTC), name="someone else's CA")
        webhooks = k8s.AdmissionregistrationV1Api(kube.api)
        webhooks.patch_mutating_webhook_configuration(
            configuration,
            [
                {
                    "op": "replace",
                    "path": "/webhooks/0/clientConfig/caBundle",
                    "value": base64.b64encode(other.cert).decode(),
                }
            ],
            _content_type="application/json-patch+json",
        )
        shown = check([], *flags, f"--control-plane=127.0.0.1:{free_port()}")
    assert shown.returncode == 1, shown.stdout + shown.stderr
    found = marks(shown.stdout)
    assert found["the control plane's ServiceAccount may do what it needs"] is True, shown.stdout
    assert found["the webhook calls the control plane's Service"] is True, shown.stdout
    ca = line(
        shown.stdout, f"{FAIL} the webhook's caBundle verifies the control plane's certificate"
    )
    assert (
        "inject.meshlet.io: the certificate (issued by CN=meshlet webhook CA) is not signed by "
        "its caBundle (CN=someone else's CA)"
    ) in ca
    assert "Traceback" not in shown.stderr


# --- the checks themselves, on what a probe could have seen ---------------------------


def test_an_old_kubernetes_fails_the_version_check() -> None:
    from meshlet.checks.kube_api import ApiProbe, check_version

    old = check_version(ApiProbe(version={"major": "1", "minor": "20", "gitVersion": "v1.20.15"}))
    assert not old.ok and old.detail == "v1.20.15 is older than 1.21", old
    eks = check_version(ApiProbe(version={"major": "1", "minor": "30+"}))
    assert eks.ok and eks.detail == "1.30", eks


def _probe(hooks: list[dict[str, Any]], secret: dict[str, Any] | None) -> Any:
    from meshlet.checks.kube_webhook import WebhookProbe

    return WebhookProbe("cfg", {"webhooks": hooks}, "", "ns/cfg-tls", secret)


def test_the_ca_check_wants_the_host_the_api_server_calls_and_a_valid_certificate() -> None:
    from meshlet.checks.kube_webhook import check_ca_bundle, check_target
    from meshlet.inject.certs import issue_serving

    now = datetime.datetime.now(datetime.UTC)
    ca = make_ca(now)
    serving = issue_serving(ca, ["meshlet.ns.svc"], now)
    secret = {"data": {"tls.crt": base64.b64encode(serving.cert).decode()}}
    bundle = base64.b64encode(ca.cert).decode()

    def hook(config: dict[str, Any]) -> dict[str, Any]:
        return {"name": "inject.meshlet.io", "clientConfig": {**config, "caBundle": bundle}}

    service = hook({"service": {"name": "meshlet", "namespace": "ns"}})
    assert check_ca_bundle(_probe([service], secret), now).ok
    assert check_target(_probe([service], secret), "ns", "meshlet").ok
    moved = check_target(_probe([service], secret), "other", "meshlet")
    assert not moved.ok and moved.detail == "inject.meshlet.io calls the Service ns/meshlet"

    by_url = hook({"url": "https://10.0.0.9:15017/inject"})
    unnamed = check_ca_bundle(_probe([by_url], secret), now)
    assert not unnamed.ok
    assert unnamed.detail == "inject.meshlet.io: the certificate does not name 10.0.0.9"
    target = check_target(_probe([by_url], secret), "ns", "meshlet")
    assert target.ok and "by URL https://10.0.0.9:15017/inject" in target.detail

    later = now + datetime.timedelta(days=400)
    expired = check_ca_bundle(_probe([service], secret), later)
    assert not expired.ok and expired.detail.startswith("its certificate is valid only from ")
    assert not check_ca_bundle(_probe([service], None), now).ok


# --- what --pre asks it may create: the chart's kinds ---------------------------------

RELEASE_NAMESPACE = "meshlet-system"  # render's, and the namespace chart_objects is asked for
# Values that between them render every template: the defaults, the PodDisruptionBudget
# (2 replicas or more), and the optional monitoring objects.
CHART_VALUES: tuple[dict[str, Any], ...] = (
    {},
    {"controlPlane": {"replicas": 2}},
    {"monitoring": {"grafanaDashboard": {"enabled": True}, "prometheusRule": {"enabled": True}}},
)
# In chart_objects but no template of the chart's: `helm install --create-namespace` makes it.
NOT_RENDERED = {("", "namespaces", "")}
# Rendered, deliberately not asked by --pre: off by default (monitoring.prometheusRule), and
# its CRD is the Prometheus Operator's, not the chart's; whoever turns it on installs that
# operator. (The Grafana dashboard is a ConfigMap: chart_objects covers it.)
OPTIONAL = {("monitoring.coreos.com", "prometheusrules", RELEASE_NAMESPACE)}


def _rendered_kind(found: dict[str, Any]) -> tuple[str, str, str]:
    """(API group, resource, namespace or "" cluster-wide) of a rendered object. The
    resource is the kind in lower case plus "s", true of every kind the chart renders:
    a kind that breaks it fails below as not covered, never passes unseen."""
    group = found["apiVersion"].rpartition("/")[0]
    namespace = found["metadata"].get("namespace") or ""
    return group, found["kind"].lower() + "s", namespace


def test_pre_asks_to_create_every_kind_the_chart_renders_and_nothing_else(
    tmp_path: Path,
) -> None:
    from meshlet.checks.kube_access import chart_objects

    accesses = chart_objects(RELEASE_NAMESPACE)
    assert {(a.verb, a.name) for a in accesses} == {("create", "")}, accesses
    asked = {(a.group, a.resource, a.namespace) for a in accesses}
    rendered: dict[str, set[tuple[str, str, str]]] = {}
    for number, values in enumerate(CHART_VALUES):
        folder = tmp_path / str(number)
        folder.mkdir()
        text = render(values, folder, namespace=RELEASE_NAMESPACE)
        rendered[str(values)] = {_rendered_kind(o) for o in objects(text)}

    defaults = rendered[str({})]
    assert not defaults & OPTIONAL, "an optional kind is rendered by default"
    for values, kinds in rendered.items():
        missing = kinds - OPTIONAL - asked
        assert not missing, f"with {values}, not in chart_objects: {missing}"
    every = set().union(*rendered.values())
    assert not OPTIONAL - every, f"optional, rendered by no values: {OPTIONAL - every}"
    assert not OPTIONAL & asked, f"optional, yet chart_objects asks: {OPTIONAL & asked}"
    assert asked - every == NOT_RENDERED, f"chart_objects, never rendered: {asked - every}"
