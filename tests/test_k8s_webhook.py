"""The injection webhook on the real test cluster.

The control plane runs as a ServiceAccount with exactly the source's and the
webhook's RBAC, keeps its own CA in a Secret of its namespace, and sets the
caBundle of a MutatingWebhookConfiguration made as the chart makes it, except
that the API server calls it by `url:` on loopback (as envtest does: the test
API server has no route to a Service). Pods come from Kubernetes' own
controllers; the kubelet stand-in binds them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from meshlet import defaults
from meshlet.controlplane.sources.kubernetes import RBAC_RULES
from meshlet.inject import keeper
from tests.envoy_peer import CONVERGE
from tests.k8s.cluster import Cluster
from tests.k8s.kubelet import Kubelet
from tests.k8s.observe import pods
from tests.procs import ControlPlane, control_plane, free_port, peer_certificate, wait_until

pytestmark = pytest.mark.timeout(300)  # the first one to run starts the test cluster

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "registry.example/meshlet:test"


def webhook_configuration(name: str, port: int, failure_policy: str = "Fail") -> dict[str, Any]:
    """As the chart makes it; twice the same webhook, so every pod is injected twice."""

    def hook(hook_name: str) -> dict[str, Any]:
        return {
            "name": hook_name,
            "clientConfig": {"url": f"https://127.0.0.1:{port}/inject"},
            "rules": [
                {
                    "operations": ["CREATE"],
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "resources": ["pods"],
                    "scope": "Namespaced",
                }
            ],
            "namespaceSelector": {"matchLabels": {"meshlet.io/inject": "enabled"}},
            "objectSelector": {
                "matchExpressions": [
                    {"key": "meshlet.io/inject", "operator": "NotIn", "values": ["false"]}
                ]
            },
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": 10,
            "failurePolicy": failure_policy,
        }

    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [hook("inject.meshlet.io"), hook("again.inject.meshlet.io")],
    }


@contextlib.contextmanager
def registered(kube: Cluster, name: str, port: int) -> Iterator[None]:
    kube.apply(webhook_configuration(name, port))
    try:
        yield
    finally:
        kube.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")


@contextlib.contextmanager
def injecting_plane(
    kube: Cluster,
    system: str,
    configuration: str,
    port: int,
    tmp_path: Path,
    account_name: str = "meshlet",
    wait_ready: bool = True,
) -> Iterator[ControlPlane]:
    rules = keeper.rbac_rules(system, f"{configuration}-tls", configuration)
    settings = tmp_path / "injector.yaml"
    settings.write_text(
        yaml.safe_dump({"image": IMAGE, "controlPlane": f"meshlet.{system}.svc:15010"})
    )
    with (
        kube.service_account(
            system, account_name, [*RBAC_RULES, *rules["cluster"]], rules["namespaced"]
        ) as account,
        control_plane(
            None,
            tmp_path,
            kubeconfig=account.kubeconfig(),
            wait_ready=wait_ready,
            extra_args=[
                f"--webhook-address=127.0.0.1:{port}",
                "--webhook-host=127.0.0.1",
                f"--system-namespace={system}",
                f"--webhook-configuration={configuration}",
                f"--injector-settings={settings}",
            ],
        ) as plane,
    ):
        yield plane


def ca_bundle(kube: Cluster, name: str) -> list[str]:
    api = k8s.AdmissionregistrationV1Api(kube.api)
    found = json.loads(api.read_mutating_webhook_configuration(name, _preload_content=False).data)
    return [(h.get("clientConfig") or {}).get("caBundle", "") for h in found["webhooks"]]


def containers(pod: dict[str, Any]) -> tuple[list[str], list[str]]:
    spec = pod["spec"]
    return [c["name"] for c in spec.get("initContainers", [])], [
        c["name"] for c in spec["containers"]
    ]


def deployment(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    pod_labels = {"app": name, **(labels or {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {"containers": [{"name": name, "image": "registry.k8s.io/pause:3.10"}]},
            },
        },
    }


def pods_of(kube: Cluster, namespace: str, app: str, count: int) -> list[dict[str, Any]]:
    return wait_until(
        lambda found: len(found) == count,
        CONVERGE,
        f"{count} pods of {app}",
        observe=lambda: [
            p
            for p in pods(kube, namespace, f"app={app}")
            if not p["metadata"].get("deletionTimestamp")
        ],
    )


def test_the_webhook_injects_labelled_namespaces_and_nothing_else(
    kube: Cluster, kubelet: Kubelet, namespace: str, tmp_path: Path
) -> None:
    configuration, port = f"meshlet-injector-{namespace}", free_port()
    meshed = kube.new_namespace("meshed")
    plain = kube.new_namespace("plain")
    try:
        kube.kubectl("label", "namespace", meshed, "meshlet.io/inject=enabled")
        with (
            registered(kube, configuration, port),
            injecting_plane(kube, namespace, configuration, port, tmp_path) as plane,
        ):
            # The control plane made its CA, keeps it in its Secret, and set the caBundle.
            bundles = wait_until(
                lambda found: all(found),
                CONVERGE,
                "the caBundle",
                observe=lambda: ca_bundle(kube, configuration),
            )
            secret = kube.core.read_namespaced_secret(f"{configuration}-tls", namespace)
            assert bundles == [secret.data["ca.crt"]] * 2
            assert plane.get_json("/debug/problems") == []

            for ns in (meshed, plain):
                kube.kubectl(
                    "apply",
                    "-n",
                    ns,
                    "-f",
                    "-",
                    input=yaml.safe_dump_all(
                        [deployment("web"), deployment("opt-out", {"meshlet.io/inject": "false"})]
                    ),
                )
            injected = pods_of(kube, meshed, "web", 2)
            for pod in injected:
                # Two webhooks saw it, one sidecar: meshlet.io/status made the second a no-op.
                assert containers(pod) == (["meshlet-init", "meshlet-proxy"], ["web"]), pod["spec"]
                assert "meshlet.io/status" in pod["metadata"]["annotations"]
                proxy = pod["spec"]["initContainers"][1]
                assert proxy["restartPolicy"] == "Always" and proxy["image"] == IMAGE
            for ns, app in ((meshed, "opt-out"), (plain, "web"), (plain, "opt-out")):
                for pod in pods_of(kube, ns, app, 2):
                    assert containers(pod) == ([], [app])
                    assert "meshlet.io/status" not in (pod["metadata"].get("annotations") or {})

            # The zone reaches the sidecar through the downward API: Kubernetes' own
            # PodTopologyLabels admission copied the node's zone onto the bound pod.
            for pod in pods_of(kube, meshed, "web", 2):
                node = kube.core.read_node(pod["spec"]["nodeName"])
                zone = node.metadata.labels["topology.kubernetes.io/zone"]
                assert pod["metadata"]["labels"]["topology.kubernetes.io/zone"] == zone

            # An app as the proxy's uid: created, not injected, and kubectl shows why.
            sneaky = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "sneaky"},
                "spec": {
                    "securityContext": {"runAsUser": defaults.PROXY_UID},
                    "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
                },
            }
            created = kube.kubectl("create", "-n", meshed, "-f", "-", input=yaml.safe_dump(sneaky))
            assert "Warning: meshlet: container app runs as uid 1337" in created.stderr
            pod = kube.core.read_namespaced_pod("sneaky", meshed)
            assert "meshlet.io/inject-skipped" in pod.metadata.annotations
            assert not pod.spec.init_containers

            # A bad annotation: refused, with the reason.
            bad = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "bad",
                    "annotations": {"meshlet.io/sidecar-mode": "sidecarless"},
                },
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
            }
            refused = kube.kubectl(
                "create", "-n", meshed, "-f", "-", input=yaml.safe_dump(bad), check=False
            )
            assert refused.returncode != 0
            assert (
                "meshlet: cannot inject this pod: annotation meshlet.io/sidecar-mode"
                in refused.stderr
            )

        # The control plane is gone: with failurePolicy Fail, pods in a meshed namespace
        # are refused (never created without their sidecar) ...
        lone = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "lone"},
            "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
        }
        with registered(kube, configuration, port):
            failed = kube.kubectl(
                "create", "-n", meshed, "-f", "-", input=yaml.safe_dump(lone), check=False
            )
            assert failed.returncode != 0, failed.stdout
            assert "failed calling webhook" in failed.stderr, failed.stderr
            # ... and with Ignore they are created without it; unlabelled namespaces never notice.
            kube.apply(webhook_configuration(configuration, port, failure_policy="Ignore"))
            kube.kubectl("create", "-n", meshed, "-f", "-", input=yaml.safe_dump(lone))
            assert not kube.core.read_namespaced_pod("lone", meshed).spec.init_containers
    finally:
        kube.delete_namespace(meshed)
        kube.delete_namespace(plain)


def test_meshlet_inject_output_passes_the_api_servers_validation(
    kube: Cluster, namespace: str
) -> None:
    data = ROOT / "tests" / "data" / "inject"
    docs = []
    for golden in sorted(data.glob("*.golden.yaml")):
        for doc in yaml.safe_load_all(golden.read_text()):
            items = doc["items"] if doc.get("kind") == "List" else [doc]
            for item in items:
                if item["metadata"].get("namespace") == "shop":
                    item["metadata"]["namespace"] = namespace
                    docs.append(item)
    kinds = {d["kind"] for d in docs}
    assert {
        "Pod",
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "Job",
        "CronJob",
    } <= kinds
    result = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs))
    assert result.stdout.count("(server dry run)") == len(docs), result.stdout


def test_pod_security_the_init_container_needs_privileged_the_rest_meets_restricted(
    kube: Cluster, namespace: str
) -> None:
    kube.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    app = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "namespace": namespace},
        "spec": {
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "app",
                    "image": "registry.k8s.io/pause:3.10",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    injected_text = subprocess.run(
        [sys.executable, "-m", "meshlet", "inject"],
        input=yaml.safe_dump(app),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    injected = yaml.safe_load(injected_text)
    refused = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=injected_text, check=False)
    assert refused.returncode != 0
    assert 'container "meshlet-init" must not include "NET_ADMIN"' in refused.stderr, refused.stderr
    # The app with its sidecar alone (the init container left out) is restricted.
    injected["spec"]["initContainers"] = [
        c for c in injected["spec"]["initContainers"] if c["name"] != "meshlet-init"
    ]
    kube.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(injected))


def bare_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
    }


def test_a_namespace_enforcing_baseline_gets_its_pods_uninjected_and_kubectl_says_why(
    kube: Cluster, namespace: str, tmp_path: Path
) -> None:
    configuration, port = f"meshlet-injector-{namespace}", free_port()
    guarded = kube.new_namespace("baseline")
    try:
        kube.kubectl(
            "label", "namespace", guarded,
            "meshlet.io/inject=enabled", "pod-security.kubernetes.io/enforce=baseline",
        )  # fmt: skip
        with (
            registered(kube, configuration, port),
            injecting_plane(kube, namespace, configuration, port, tmp_path) as plane,
        ):
            wait_until(
                all, CONVERGE, "the caBundle", observe=lambda: ca_bundle(kube, configuration)
            )
            # Created, not injected, and the reason reaches the client (kubectl prints a
            # webhook's warnings on stderr).
            created = kube.kubectl(
                "create", "-n", guarded, "-f", "-", input=yaml.safe_dump(bare_pod("app"))
            )
            assert (
                f"Warning: meshlet: not injected: namespace {guarded} enforces Pod Security"
                ' "baseline", which refuses meshlet-init (root, NET_ADMIN); label it'
                " pod-security.kubernetes.io/enforce=privileged, or opt the pod out with"
                ' meshlet.io/inject: "false"'
            ) in created.stderr, created.stderr
            pod = kube.core.read_namespaced_pod("app", guarded)
            assert not pod.spec.init_containers
            assert "meshlet.io/status" not in (pod.metadata.annotations or {})
            # A Deployment's pods too: they exist (none refused by Pod Security).
            kube.kubectl("apply", "-n", guarded, "-f", "-", input=yaml.safe_dump(deployment("web")))
            for found in pods_of(kube, guarded, "web", 2):
                assert containers(found) == ([], ["web"])

            # What meshlet spares it: the injected pod, which Pod Security refuses.
            injected = subprocess.run(
                [sys.executable, "-m", "meshlet", "inject"],
                input=yaml.safe_dump(bare_pod("injected")),
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            ).stdout
            refused = kube.kubectl("create", "-n", guarded, "-f", "-", input=injected, check=False)
            assert refused.returncode != 0
            assert 'violates PodSecurity "baseline' in refused.stderr, refused.stderr
            assert 'container "meshlet-init" must not include "NET_ADMIN"' in refused.stderr

            # The fix the warning names: once the namespace is privileged, pods are
            # injected (within the webhook's few seconds of caching the labels).
            kube.kubectl(
                "label", "namespace", guarded,
                "pod-security.kubernetes.io/enforce=privileged", "--overwrite",
            )  # fmt: skip
            tries = iter(range(1000))

            def create_one() -> list[str]:
                name = f"after-{next(tries)}"
                kube.kubectl(
                    "create", "-n", guarded, "-f", "-", input=yaml.safe_dump(bare_pod(name))
                )
                made = kube.core.read_namespaced_pod(name, guarded)
                return [c.name for c in made.spec.init_containers or []]

            init = wait_until(bool, CONVERGE, "a pod injected", observe=create_one, interval=1)
            assert init == ["meshlet-init", "meshlet-proxy"]
            assert plane.get_json("/debug/problems") == []
    finally:
        kube.delete_namespace(guarded)


def test_the_certificate_survives_a_restart_and_the_bundle_is_put_back(
    kube: Cluster, namespace: str, tmp_path: Path
) -> None:
    configuration, port = f"meshlet-injector-{namespace}", free_port()
    leases = k8s.CoordinationV1Api(kube.api)
    lease = f"{configuration}-tls"
    with registered(kube, configuration, port):
        with injecting_plane(kube, namespace, configuration, port, tmp_path):
            first = wait_until(
                lambda f: all(f),
                CONVERGE,
                "the caBundle",
                observe=lambda: ca_bundle(kube, configuration),
            )
            assert leases.read_namespaced_lease(lease, namespace).spec.holder_identity
        # It stopped: it gave the Lease up, so a successor need not wait for it to lapse.
        assert not leases.read_namespaced_lease(lease, namespace).spec.holder_identity
        # Someone (a helm upgrade, say) resets the bundle; a new control plane reuses the
        # Secret's CA (replicas and restarts share it) and sets the bundle again.
        kube.kubectl(
            "replace", "-f", "-", input=yaml.safe_dump(webhook_configuration(configuration, port))
        )
        assert ca_bundle(kube, configuration) == ["", ""]
        with injecting_plane(kube, namespace, configuration, port, tmp_path, "meshlet-again"):
            again = wait_until(
                lambda f: all(f),
                CONVERGE,
                "the caBundle again",
                observe=lambda: ca_bundle(kube, configuration),
            )
    assert again == first
    ca = base64.b64decode(first[0])
    assert b"BEGIN CERTIFICATE" in ca


def test_two_replicas_serve_one_certificate_and_one_holds_the_lease(
    kube: Cluster, namespace: str, tmp_path: Path
) -> None:
    configuration, ports = f"meshlet-injector-{namespace}", (free_port(), free_port())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    leases = k8s.CoordinationV1Api(kube.api)
    with (
        registered(kube, configuration, ports[0]),
        injecting_plane(kube, namespace, configuration, ports[0], tmp_path / "a", "meshlet-a"),
        injecting_plane(kube, namespace, configuration, ports[1], tmp_path / "b", "meshlet-b"),
    ):
        bundle = wait_until(
            lambda f: all(f),
            CONVERGE,
            "the caBundle",
            observe=lambda: ca_bundle(kube, configuration),
        )
        trust = ssl.create_default_context(cadata=base64.b64decode(bundle[0]).decode())
        # Both answer, with the one certificate of the Secret, trusted by the one bundle.
        served = wait_until(
            lambda certs: len(certs) == 2,
            CONVERGE,
            "both webhooks",
            observe=lambda: [peer_certificate(port, trust) for port in ports],
            ignoring=(OSError, ssl.SSLError),
        )
        assert served[0] == served[1]
        lease = leases.read_namespaced_lease(f"{configuration}-tls", namespace)
        assert lease.spec.holder_identity and not lease.spec.lease_transitions


def test_nothing_is_made_before_the_webhook_configuration_exists(
    kube: Cluster, namespace: str, tmp_path: Path
) -> None:
    """The Secret and Lease are made only with an owner (so `helm uninstall` leaves
    neither): before the configuration exists the control plane waits, says so, and is
    not ready; once it exists, it makes them owned by it."""
    configuration, port = f"meshlet-injector-{namespace}", free_port()
    with injecting_plane(kube, namespace, configuration, port, tmp_path, wait_ready=False) as plane:
        wait_until(
            lambda text: f"no MutatingWebhookConfiguration {configuration}" in text,
            CONVERGE,
            "the keeper to say it waits",
            observe=lambda: str(plane.get_json("/debug/problems")),
        )
        assert plane.get("/readyz")[0] == 503
        for kind in ("secret", "lease"):
            got = kube.kubectl("get", kind, f"{configuration}-tls", "-n", namespace, check=False)
            assert got.returncode != 0, got.stdout
        with registered(kube, configuration, port):
            wait_until(
                lambda s: s == 200, CONVERGE, "ready", observe=lambda: plane.get("/readyz")[0]
            )
            secret = kube.core.read_namespaced_secret(f"{configuration}-tls", namespace)
            (owner,) = secret.metadata.owner_references
            assert (owner.kind, owner.name) == ("MutatingWebhookConfiguration", configuration)
            lease = k8s.CoordinationV1Api(kube.api).read_namespaced_lease(
                f"{configuration}-tls", namespace
            )
            assert [o.name for o in lease.metadata.owner_references] == [configuration]
            assert plane.get_json("/debug/problems") == []
