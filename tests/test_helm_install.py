"""The chart installed into the real test cluster with the real `helm`: the API
server validates every object; the RBAC it makes allows the control plane exactly
what it needs (`kubectl auth can-i` as the chart's ServiceAccount); the control
plane, run with that ServiceAccount's token and the args, environment and settings
file the chart rendered, becomes ready, serves xDS and injects a pod through the
webhook configuration the chart installed; `helm upgrade` changes what it runs with
(and keeps the caBundle); `helm uninstall` leaves nothing of the release.

The API server calls the webhook by `url:` on loopback (the chart's value for a
control plane outside the cluster): the test API server has no route to a Service.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shlex
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshlet.xds.types import CLUSTER
from tests.envoy_peer import CONVERGE
from tests.helm_chart import (
    CHART,
    control_plane_container,
    env_of,
    find,
    helm,
    objects,
    settings_text,
    values_file,
)
from tests.k8s.cluster import Cluster
from tests.k8s.kubelet import Kubelet
from tests.procs import ControlPlane, free_port, http_get, running, wait_until
from tests.test_k8s_webhook import ca_bundle, containers, deployment, pods_of
from tests.xds_watch import DeltaWatch

pytestmark = pytest.mark.timeout(300)  # the first one to run starts the test cluster

ROOT = Path(__file__).resolve().parent.parent


def token_kubeconfig(kube: Cluster, namespace: str, account: str) -> Path:
    """A kubeconfig with a token of the chart's ServiceAccount, as its pod would get."""
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    response = kube.core.create_namespaced_service_account_token(
        account, namespace, request, _preload_content=False
    )
    token = json.loads(response.data)["status"]["token"]
    return kube.kubeconfig(f"{namespace}-{account}", token=token)


@contextlib.contextmanager
def chart_control_plane(
    manifest: Sequence[Mapping[str, Any]], kubeconfig: Path, webhook_port: int, tmp_path: Path
) -> Iterator[ControlPlane]:
    """`meshlet` with exactly the Deployment's args and environment, but the listen
    addresses on loopback, the ConfigMap's settings file where its mount would be, and
    the API server reached through a kubeconfig instead of in-cluster."""
    container = control_plane_container(manifest)
    settings = tmp_path / f"settings-{uuid.uuid4().hex[:6]}.yaml"
    settings.write_text(settings_text(manifest))
    xds, admin = free_port(), free_port()
    local = {
        "--xds-address": f"127.0.0.1:{xds}",
        "--admin-address": f"127.0.0.1:{admin}",
        "--webhook-address": f"127.0.0.1:{webhook_port}",
        "--injector-settings": str(settings),
    }
    args: list[str] = []
    for arg in container["args"]:
        flag = arg.split("=", 1)[0]
        args.append(f"{flag}={local.pop(flag)}" if flag in local else arg)
        if arg == "control-plane":
            args.append(f"--kubeconfig={kubeconfig}")
    assert not local, f"the chart's args lack {sorted(local)}"
    env = {**env_of(container), "POD_NAME": "meshlet-test"}
    log = tmp_path / f"control-plane-{admin}.log"
    with running(
        [sys.executable, "-m", "meshlet", *args], "chart control plane", log, env=env
    ) as p:
        plane = ControlPlane(p, None, xds, admin, 15001)

        def ready() -> int:
            p.check_alive()
            return http_get(plane.url("/readyz"), timeout=2)[0]

        wait_until(lambda status: status == 200, 60, "/readyz to be 200", observe=ready)
        yield plane


def can_i(kube: Cluster, account: str, verb: str, what: str, namespace: str | None) -> bool:
    where = ["--all-namespaces"] if namespace is None else ["-n", namespace]
    result = kube.kubectl("auth", "can-i", verb, what, *where, f"--as={account}", check=False)
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip() == "yes"


def rbac_table(system: str, webhook: str) -> list[tuple[str, str, str | None, bool]]:
    """(verb, resource, namespace (None: all), allowed)."""
    secret = f"{webhook}-tls"
    return [
        # What the source watches, cluster-wide.
        *[(v, "services", None, True) for v in ("get", "list", "watch")],
        *[(v, "endpointslices.discovery.k8s.io", None, True) for v in ("get", "list", "watch")],
        # The webhook configuration whose caBundle it keeps, and only that one.
        ("get", f"mutatingwebhookconfigurations/{webhook}", None, True),
        ("patch", f"mutatingwebhookconfigurations/{webhook}", None, True),
        ("patch", "mutatingwebhookconfigurations/another", None, False),
        ("list", "mutatingwebhookconfigurations", None, False),
        ("delete", f"mutatingwebhookconfigurations/{webhook}", None, False),
        # A pod's namespace, read for its Pod Security label: one at a time, never listed.
        ("get", "namespaces", None, True),
        ("list", "namespaces", None, False),
        ("update", "namespaces", None, False),
        # Its certificate's Secret and Lease, in its own namespace only.
        ("create", "secrets", system, True),
        ("get", f"secrets/{secret}", system, True),
        ("update", f"secrets/{secret}", system, True),
        ("get", "secrets/another", system, False),
        ("list", "secrets", system, False),
        ("delete", f"secrets/{secret}", system, False),
        ("get", "secrets", None, False),
        ("create", "secrets", "default", False),
        ("create", "leases.coordination.k8s.io", system, True),
        ("update", f"leases.coordination.k8s.io/{secret}", system, True),
        ("update", "leases.coordination.k8s.io/another", system, False),
        # Nothing it does not use.
        ("create", "services", "default", False),
        ("update", "endpointslices.discovery.k8s.io", "default", False),
        ("list", "pods", None, False),
        ("create", "pods", "default", False),
        ("list", "nodes", None, False),
        ("list", "configmaps", system, False),
    ]


def release_objects(kube: Cluster, release: str) -> list[str]:
    """What is left of the release, by the instance label the chart puts on everything."""
    found = kube.kubectl(
        "get",
        "all,configmaps,serviceaccounts,roles,rolebindings,clusterroles,clusterrolebindings,"
        "poddisruptionbudgets,mutatingwebhookconfigurations",
        "--all-namespaces",
        f"-l=app.kubernetes.io/instance={release}",
        "-o=name",
    ).stdout.split()
    return sorted(found)


def leftovers(kube: Cluster, system: str, webhook: str) -> list[str]:
    """What the control plane made at run time, if still there."""
    left = []
    for kind in ("secret", "lease"):
        got = kube.kubectl("get", kind, f"{webhook}-tls", "-n", system, check=False)
        if got.returncode == 0:
            left.append(f"{kind}/{webhook}-tls")
    return left


def test_helm_install_upgrade_and_uninstall(
    kube: Cluster, kubelet: Kubelet, tmp_path: Path
) -> None:
    release = f"meshlet-{uuid.uuid4().hex[:6]}"
    webhook = f"{release}-injector"
    system = kube.new_namespace("meshlet-system")
    meshed = kube.new_namespace("meshed")
    kube.kubectl("label", "namespace", meshed, "meshlet.io/inject=enabled")
    port = free_port()
    home = tmp_path / "helm-home"
    values: dict[str, Any] = {
        "webhook": {"url": f"https://127.0.0.1:{port}/inject"},
        "sidecar": {"image": {"repository": "registry.example/meshlet", "tag": "1.0.0"}},
    }
    admin = kube.admin_kubeconfig

    def run_helm(*args: str) -> str:
        return helm(*args, "--namespace", system, kubeconfig=admin, home=home).stdout

    def installed() -> list[dict[str, Any]]:
        return objects(run_helm("get", "manifest", release))

    try:
        out = run_helm("install", release, str(CHART), "-f", str(values_file(values, tmp_path)))
        assert "STATUS: deployed" in out
        assert "kubectl label namespace NAMESPACE meshlet.io/inject=enabled" in out  # NOTES
        manifest = installed()
        # The API server took every object as the chart wrote it.
        for obj in manifest:
            where = ["-n", system] if obj["metadata"].get("namespace") else []
            kube.kubectl("get", obj["kind"].lower(), obj["metadata"]["name"], *where)

        account = f"system:serviceaccount:{system}:{release}"
        table = rbac_table(system, webhook)
        got = [(v, r, ns, can_i(kube, account, v, r, ns)) for v, r, ns, _ in table]
        assert got == table

        kubeconfig = token_kubeconfig(kube, system, release)
        with chart_control_plane(manifest, kubeconfig, port, tmp_path) as plane:
            # xDS: the cluster's own kubernetes Service, over a real delta stream.
            name = "outbound|443||kubernetes.default.svc.cluster.local"
            with DeltaWatch(plane.xds_address, "helm-test", CLUSTER, [name]) as watch:
                wait_until(lambda n: n >= 1, CONVERGE, "a Cluster", observe=watch.count)
            bundle = wait_until(
                lambda found: all(found), CONVERGE, "the caBundle",
                observe=lambda: ca_bundle(kube, webhook),
            )  # fmt: skip
            kube.apply({**deployment("web"), "metadata": {"name": "web", "namespace": meshed}})
            for pod in pods_of(kube, meshed, "web", 2):
                assert containers(pod) == (["meshlet-init", "meshlet-proxy"], ["web"])
                assert pod["spec"]["initContainers"][1]["image"] == "registry.example/meshlet:1.0.0"
            owners = kube.core.read_namespaced_secret(f"{webhook}-tls", system)
            assert [o.kind for o in owners.metadata.owner_references] == [
                "MutatingWebhookConfiguration"
            ]

        # An upgrade: what the control plane runs with changes; the caBundle stays.
        values["sidecar"]["image"]["tag"] = "2.0.0"
        values["controlPlane"] = {"replicas": 2, "logLevel": "debug"}
        values["serviceCIDRs"] = ["10.96.0.0/12", "fd00:10:96::/112"]
        run_helm("upgrade", release, str(CHART), "-f", str(values_file(values, tmp_path)))
        assert ca_bundle(kube, webhook) == bundle
        manifest = installed()
        container = control_plane_container(manifest)
        assert "--log-level=debug" in container["args"]
        assert env_of(container)["MESHLET_INJECTOR_IMAGE"] == "registry.example/meshlet:2.0.0"
        assert yaml.safe_load(settings_text(manifest))["serviceCIDRs"] == values["serviceCIDRs"]
        find(manifest, "PodDisruptionBudget")
        kube.kubectl("get", "poddisruptionbudget", release, "-n", system)
        with chart_control_plane(manifest, kubeconfig, port, tmp_path) as plane:
            kube.kubectl("delete", "deployment", "web", "-n", meshed)
            kube.apply({**deployment("api"), "metadata": {"name": "api", "namespace": meshed}})
            for pod in pods_of(kube, meshed, "api", 2):
                init, proxy = pod["spec"]["initContainers"]
                assert proxy["image"] == "registry.example/meshlet:2.0.0"
                assert "--service-cidr=fd00:10:96::/112" in init["args"]
            run_helm("uninstall", release)
            # Nothing of the release is left; what the control plane made goes with its
            # owner while the control plane still runs (its token died with its
            # ServiceAccount; a replica that could still write would wait for an owner).
            wait_until(lambda left: left == [], CONVERGE, "no object of the release",
                       observe=lambda: release_objects(kube, release))  # fmt: skip
            wait_until(lambda left: left == [], CONVERGE, "the Secret and Lease gone",
                       observe=lambda: leftovers(kube, system, webhook))  # fmt: skip
            plane.process.check_alive()
    finally:
        helm("uninstall", release, "--namespace", system, kubeconfig=admin, home=home, check=False)
        kube.kubectl("delete", "mutatingwebhookconfiguration", webhook, "--ignore-not-found")
        for namespace in (meshed, system):
            kube.delete_namespace(namespace)


# The install of the README and docs/kubernetes.md, run as shown (kubectl and helm on the
# test cluster's admin kubeconfig), with the control plane run from the chart as above.
DEMO = "meshlet-demo"
README_INSTALL = [
    "helm install meshlet helm/meshlet --namespace meshlet-system --create-namespace"
    " --set controlPlane.image.repository=ghcr.io/meshlet/meshlet-control-plane"
    " --set controlPlane.image.tag=0.1.0 --set controlPlane.image.pullPolicy=IfNotPresent"
    " --set sidecar.image.repository=ghcr.io/meshlet/meshlet"
    " --set sidecar.image.tag=0.1.0 --set sidecar.image.pullPolicy=IfNotPresent",
    "kubectl -n meshlet-system rollout status deployment/meshlet --timeout=120s",
    "kubectl get mutatingwebhookconfiguration meshlet-injector"
    " -o jsonpath='{.webhooks[0].clientConfig.caBundle}'",
    f"kubectl create namespace {DEMO}",
    f"kubectl label namespace {DEMO} meshlet.io/inject=enabled"
    " pod-security.kubernetes.io/enforce=privileged",
    f"kubectl apply -n {DEMO} -f examples/kubernetes/demo.yaml -f examples/kubernetes/client.yaml",
]
README_UPGRADE = (
    "helm upgrade meshlet helm/meshlet --namespace meshlet-system --reuse-values"
    " --set controlPlane.replicas=2"
)
README_UNINSTALL = [
    f"kubectl delete namespace {DEMO}",
    "helm uninstall meshlet --namespace meshlet-system",
    "kubectl delete namespace meshlet-system",
]


def test_the_readmes_install_upgrade_and_uninstall(
    kube: Cluster, kubelet: Kubelet, tmp_path: Path
) -> None:
    home = tmp_path / "helm-home"

    def run(command: str) -> str:
        tool, *args = shlex.split(command)
        if tool == "kubectl":
            return kube.kubectl(*args, timeout=150).stdout
        assert tool == "helm", command
        return helm(*args, kubeconfig=kube.admin_kubeconfig, home=home, cwd=ROOT).stdout

    # Fixed names, as the README's: a run before this one may still be deleting them.
    for name in (DEMO, "meshlet-system"):
        wait_until(lambda gone: gone, 2 * CONVERGE, f"namespace {name} gone",
                   observe=lambda name=name: kube.kubectl(  # type: ignore[misc]
                       "get", "namespace", name, check=False).returncode != 0)  # fmt: skip
    try:
        run(README_INSTALL[0])
        manifest = objects(helm("get", "manifest", "meshlet", "-n", "meshlet-system",
                                kubeconfig=kube.admin_kubeconfig, home=home).stdout)  # fmt: skip
        kubeconfig = token_kubeconfig(kube, "meshlet-system", "meshlet")
        with chart_control_plane(manifest, kubeconfig, free_port(), tmp_path):
            run(README_INSTALL[1])  # the stand-in kubelet reports the Deployment's pod Ready
            bundle = wait_until(
                bool, CONVERGE, "the caBundle", observe=lambda: run(README_INSTALL[2])
            )
            assert base64.b64decode(bundle).startswith(b"-----BEGIN CERTIFICATE-----")
            run(README_INSTALL[3])
            run(README_INSTALL[4])
            labels = kube.core.read_namespace(DEMO).metadata.labels
            assert labels["meshlet.io/inject"] == "enabled"
            assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
            # The API server takes the demo's workloads there (no kubelet runs their pods).
            run(README_INSTALL[5])
            kube.kubectl("get", "deployment", "web", "api", "client", "-n", DEMO)
            run(README_UPGRADE)
            kube.kubectl("get", "poddisruptionbudget", "meshlet", "-n", "meshlet-system")
            assert ca_bundle(kube, "meshlet-injector") == [bundle]
            run(README_UNINSTALL[0])
            run(README_UNINSTALL[1])
        wait_until(lambda left: left == [], CONVERGE, "no object of the release",
                   observe=lambda: release_objects(kube, "meshlet"))  # fmt: skip
        wait_until(lambda left: left == [], CONVERGE, "the Secret and Lease gone",
                   observe=lambda: leftovers(kube, "meshlet-system", "meshlet-injector"),
                   )  # fmt: skip
        run(README_UNINSTALL[2])
    finally:
        helm("uninstall", "meshlet", "-n", "meshlet-system", kubeconfig=kube.admin_kubeconfig,
             home=home, check=False)  # fmt: skip
        kube.kubectl("delete", "mutatingwebhookconfiguration", "meshlet-injector",
                     "--ignore-not-found")  # fmt: skip
        for namespace in (DEMO, "meshlet-system"):
            kube.delete_namespace(namespace)
