"""What the real-pod journeys share: the chart installed with the images built here,
injected namespaces, the demo's workloads as the test apps run them, and reading pods.

Everything a helper makes it removes when its block ends, also when a test fails:
the release (and its namespace), the test's namespaces.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from meshlet import defaults
from meshlet.inject.pod import INIT_NAME, PROXY_NAME
from tests.helm_chart import CHART, helm
from tests.k8s import node_images
from tests.k8s.node import Node
from tests.procs import http_get, wait_until

SYSTEM = defaults.SYSTEM_NAMESPACE
RELEASE = "meshlet"
CONTROL_PLANE_SELECTOR = "app.kubernetes.io/name=meshlet"
INJECT_LABEL = {"meshlet.io/inject": "enabled"}
# The README's install, with the images put into the node's store (never pulled).
IMAGE_VALUES = ("controlPlane.image.pullPolicy=Never", "sidecar.image.pullPolicy=Never")


def install_command(*values: str) -> list[str]:
    """`helm install`'s arguments as the docs give them (plus `--set`s of the test's)."""
    argv = ["install", RELEASE, str(CHART), "--namespace", SYSTEM, "--create-namespace"]
    for value in (*IMAGE_VALUES, *values):
        argv += ["--set", value]
    return [*argv, "--wait", "--timeout", "180s"]


@contextlib.contextmanager
def installed_chart(node: Node, home: Path, *values: str) -> Iterator[None]:
    """The chart installed and its control plane Ready; uninstalled after, and its
    namespace gone."""
    kubeconfig = node.cluster.admin_kubeconfig
    try:
        helm(*install_command(*values), kubeconfig=kubeconfig, home=home, timeout=240)
        yield
    finally:
        uninstall = ("uninstall", RELEASE, "--namespace", SYSTEM, "--wait")
        helm(*uninstall, kubeconfig=kubeconfig, home=home, check=False, timeout=240)
        delete_namespace(node, SYSTEM)


def upgrade_chart(node: Node, home: Path, *values: str) -> None:
    """`helm upgrade` of the installed release with these values changed, waited for."""
    argv = ["upgrade", RELEASE, str(CHART), "-n", SYSTEM, "--reuse-values"]
    for value in values:
        argv += ["--set", value]
    helm(*argv, "--wait", kubeconfig=node.cluster.admin_kubeconfig, home=home, timeout=240)


def delete_namespace(node: Node, name: str, wait: float = 120) -> None:
    with contextlib.suppress(k8s.ApiException):
        node.cluster.core.delete_namespace(name, grace_period_seconds=0)

    def left() -> str:
        """'' once the namespace is gone, else what is still in it (said on a timeout)."""
        try:
            node.cluster.core.read_namespace(name)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return ""
            raise
        found = node.cluster.core.list_namespaced_pod(name).items
        return "; ".join(f"{p.metadata.name} {_states(p)}" for p in found) or "no pods"

    wait_until(
        lambda said: said == "", wait, f"namespace {name} to be gone", observe=left, interval=0.5
    )


def _states(found: Any) -> str:
    status = found.status
    every = [*(status.init_container_statuses or ()), *(status.container_statuses or ())]
    states = {c.name: next((k for k, v in c.state.to_dict().items() if v), "?") for c in every}
    return f"{status.phase} {states}"


@contextlib.contextmanager
def fresh_namespace(node: Node, name: str, injected: bool = True) -> Iterator[str]:
    labels = INJECT_LABEL if injected else {}
    node.cluster.core.create_namespace(
        k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name, labels=labels))
    )
    try:
        yield name
    finally:
        delete_namespace(node, name)


def app_container(name: str, args: Sequence[str], port: int | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": node_images.APP,
        "imagePullPolicy": "Never",
        "args": list(args),
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
    }
    if port is not None:
        container["ports"] = [{"name": "http", "containerPort": port}]
        container["readinessProbe"] = {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 1,
        }
    return container


def backend(name: str, replicas: int, port: int, service_port: int) -> list[dict[str, Any]]:
    """A Deployment of the test app serving HTTP (the demo's web and api) and its Service."""
    labels = {"app": name}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": name, "labels": labels},
         "spec": {
             "replicas": replicas,
             "selector": {"matchLabels": labels},
             "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
             "template": {
                 "metadata": {"labels": labels},
                 "spec": {
                     "terminationGracePeriodSeconds": 10,
                     "containers": [app_container(name, ["serve", f"--port={port}"], port)],
                 },
             },
         }},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
         "spec": {"selector": labels,
                  "ports": [{"name": "http", "port": service_port, "targetPort": "http"}]}},
    ]  # fmt: skip


def demo(web: int = 3) -> list[dict[str, Any]]:
    """The demo's services (examples/kubernetes/demo.yaml) with the test app for agnhost."""
    return [*backend("web", web, 8080, 80), *backend("api", 1, 9090, 8080)]


def one_shot_pod(
    name: str,
    args: Sequence[str],
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": dict(labels or {}),
            "annotations": dict(annotations or {}),
        },
        "spec": {"restartPolicy": "Never", "containers": [app_container("app", args)]},
    }


def apply(node: Node, namespace: str, *objects: Mapping[str, Any]) -> None:
    node.cluster.apply(
        *[{**o, "metadata": {**o["metadata"], "namespace": namespace}} for o in objects]
    )


def pod(node: Node, namespace: str, name: str) -> Any:
    return node.cluster.core.read_namespaced_pod(name, namespace)


def pods(node: Node, namespace: str, selector: str) -> list[Any]:
    """The pods matching `selector` that are not being deleted."""
    return [
        p for p in every_pod(node, namespace, selector) if p.metadata.deletion_timestamp is None
    ]


def every_pod(node: Node, namespace: str, selector: str) -> list[Any]:
    """The pods matching `selector`, also those terminating (still endpoints, maybe)."""
    found: list[Any] = node.cluster.core.list_namespaced_pod(
        namespace, label_selector=selector
    ).items
    return found


def wait_gone(node: Node, namespace: str, selector: str, timeout: float = 90) -> None:
    """Until no pod matches, not even a terminating one."""
    what = f"every pod {selector} in {namespace} gone"
    wait_until(lambda: not every_pod(node, namespace, selector), timeout, what, interval=0.5)


def wait_phase(
    node: Node, namespace: str, name: str, phases: Sequence[str], timeout: float = 120
) -> Any:
    def phase() -> str:
        node.check_alive()
        return str(pod(node, namespace, name).status.phase)

    what = f"pod {namespace}/{name} {phases}"
    wait_until(lambda found: found in phases, timeout, what, observe=phase, interval=0.5)
    return pod(node, namespace, name)


def logs(node: Node, namespace: str, name: str, container: str = "app") -> str:
    return node.kubectl("logs", "-n", namespace, name, "-c", container).stdout


def json_lines(text: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                found.append(value)
    return found


def status_of(found: Any, container: str) -> Any:
    """The status of one container (app, init or native sidecar) of a pod."""
    every = [
        *(found.status.init_container_statuses or ()),
        *(found.status.container_statuses or ()),
    ]
    return next(s for s in every if s.name == container)


def container_names(found: Any) -> tuple[list[str], list[str]]:
    return (
        [c.name for c in found.spec.init_containers or ()],
        [c.name for c in found.spec.containers],
    )


def injected(found: Any) -> bool:
    init, main = container_names(found)
    return INIT_NAME in init and (PROXY_NAME in init or PROXY_NAME in main)


def metrics(pod_ip: str) -> str:
    """The sidecar's read-only metrics on the pod IP (the host routes the pod range)."""
    status, text = http_get(f"http://{pod_ip}:{defaults.METRICS_PORT}/stats/prometheus")
    assert status == 200, text
    return text


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        series, _, rest = head.partition("{")
        if series != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(value)
    return total


def log_lines(node: Node, found: Any, container: str) -> list[tuple[datetime.datetime, str]]:
    """A container's log lines with the runtime's timestamps (nanoseconds, where the
    API's container times have seconds), from the kubelet's log files on the node."""
    meta = found.metadata
    path = node.pod_logs / f"{meta.namespace}_{meta.name}_{meta.uid}" / container / "0.log"
    out = []
    for line in path.read_text(errors="replace").splitlines():
        stamp, _, rest = line.partition(" ")
        at = datetime.datetime.fromisoformat(stamp[:26] + "+00:00")
        out.append((at, rest.split(" ", 2)[-1]))  # past the stream and the F/P tag
    return out


def first_log_at(
    node: Node, found: Any, container: str, containing: str = ""
) -> datetime.datetime | None:
    return next((at for at, text in log_lines(node, found, container) if containing in text), None)
