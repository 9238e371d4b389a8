"""The mesh bench/k8s_source.py writes into the test cluster, and how it writes it.

S Services (`svc-<i>` in `ns-<i % namespaces>`, one TCP port 80 -> 8080, no selector,
so no controller of kube-controller-manager's writes their slices), every
`headless_every`-th headless, each with its own P pods (`svc-<i>-<k>`, bound to one
of the test cluster's nodes, reported Running and Ready with an IP, as the tests'
kubelet stand-in does) and one EndpointSlice listing them, written as the
EndpointSlice controller would (ready, serving, nodeName, zone, targetRef). For the
readiness changes, `pairs` ClusterIP Services spread over the range each get a
headless twin (`svc-<i>-hl`, its slice listing the same pods), as a StatefulSet has
a governing headless Service next to its ClusterIP one: one pod's readiness then
shows in DNS (the headless twin) and in the proxy (the ClusterIP Service).

Everything goes through the API with the admin's credentials, from a pool of
threads (one HTTP connection each), responses left undecoded.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

DOMAIN = "cluster.local"
PORT = 80
TARGET_PORT = 8080
# Far from the service CIDR (10.96.0.0/12) and the kubelet stand-in's 10.244.0.0/16.
POD_BASE = ipaddress.ip_address("10.128.0.0")
# The test cluster's nodes (tests/k8s/cluster.py NODES) and their InternalIPs.
NODES = (
    ("node-a", "zone-a", "10.240.0.1"),
    ("node-b", "zone-b", "10.240.0.2"),
    ("node-c", "zone-c", "10.240.0.3"),
)
MANAGED_BY = "meshlet-bench"


@dataclass(frozen=True)
class Layout:
    services: int
    pods_per_service: int
    namespaces: int
    headless_every: int
    pairs: int

    def namespace(self, i: int) -> str:
        return f"ns-{i % self.namespaces}"

    def headless(self, i: int) -> bool:
        return self.headless_every > 0 and i % self.headless_every == 0

    def pod(self, i: int, k: int) -> tuple[str, str, int]:
        """(name, IP, node index) of service i's k-th pod."""
        p = i * self.pods_per_service + k
        return f"svc-{i}-{k}", str(POD_BASE + 256 + p), p % len(NODES)

    def targets(self) -> list[int]:
        """The ClusterIP services whose pods change readiness, spread over the range."""
        out = []
        for t in range(self.pairs):
            i = t * self.services // self.pairs + 1
            while self.headless(i) or i in out:
                i += 1
            out.append(i)
        return out

    def fqdn(self, name: str, i: int) -> str:
        return f"{name}.{self.namespace(i)}.svc.{DOMAIN}"

    def cluster(self, i: int) -> str:
        """The xDS cluster of ClusterIP service i's port."""
        return f"outbound|{PORT}||{self.fqdn(f'svc-{i}', i)}"

    @property
    def pods(self) -> int:
        return self.services * self.pods_per_service

    @property
    def headless_count(self) -> int:
        return sum(1 for i in range(self.services) if self.headless(i))


def service_body(name: str, headless: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ports": [{"name": "http", "port": PORT, "targetPort": TARGET_PORT, "protocol": "TCP"}]
    }
    if headless:
        spec["clusterIP"] = "None"
    return {"metadata": {"name": name}, "spec": spec}


def pod_body(layout: Layout, i: int, k: int) -> dict[str, Any]:
    name, _, node = layout.pod(i, k)
    return {
        "metadata": {"name": name, "labels": {"app": f"svc-{i}"}},
        "spec": {
            "nodeName": NODES[node][0],
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
            # No token volume and no service links: smaller objects, nothing reads them.
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
        },
    }


def ready_conditions(ready: bool) -> list[dict[str, str]]:
    flag = "True" if ready else "False"
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return [
        {"type": kind, "status": value, "lastTransitionTime": now}
        for kind, value in (
            ("PodReadyToStartContainers", "True"),
            ("Initialized", "True"),
            ("ContainersReady", flag),
            ("Ready", flag),
            ("PodScheduled", "True"),
        )
    ]


def pod_status(layout: Layout, i: int, k: int) -> dict[str, Any]:
    """What a kubelet reports for a started, Ready pod."""
    _, ip, node = layout.pod(i, k)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "status": {
            "phase": "Running",
            "hostIP": NODES[node][2],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": now,
            "conditions": ready_conditions(True),
        }
    }


def endpoints(layout: Layout, i: int, not_ready: int | None = None) -> list[dict[str, Any]]:
    """Service i's pods as the EndpointSlice controller lists them (pod `not_ready` not
    ready: serving follows ready for a pod that is not terminating)."""
    out = []
    for k in range(layout.pods_per_service):
        name, ip, node = layout.pod(i, k)
        ready = k != not_ready
        out.append(
            {
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": ready, "terminating": False},
                "nodeName": NODES[node][0],
                "zone": NODES[node][1],
                "targetRef": {"kind": "Pod", "namespace": layout.namespace(i), "name": name},
            }
        )
    return out


def slice_body(service: str, eps: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{service}-bench",
            "labels": {
                "kubernetes.io/service-name": service,
                # Not the EndpointSlice controller's: it leaves the slice alone.
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": eps,
    }


class Api:
    """The admin's clients with a connection pool as big as the thread pool."""

    def __init__(self, kubeconfig: Path, threads: int) -> None:
        configuration = k8s.Configuration()
        k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        # The default pool (5 per CPU) is smaller than the thread pool: connections
        # would be dropped and TLS handshakes redone.
        configuration.connection_pool_maxsize = threads + 4
        self.client = k8s.ApiClient(configuration)
        self.core: Any = k8s.CoreV1Api(self.client)
        self.discovery: Any = k8s.DiscoveryV1Api(self.client)
        self.threads = threads

    def close(self) -> None:
        self.client.close()

    def each(self, calls: Iterable[Callable[[], Any]]) -> int:
        """Run every call on the pool; the first failure is raised. Returns how many ran."""

        def run(call: Callable[[], Any]) -> None:
            response = call()
            _ = response.data  # read whole: the connection goes back to the pool

        count = 0
        with ThreadPoolExecutor(self.threads) as pool:
            for _ in pool.map(run, calls):
                count += 1
        return count

    # --- the readiness changes ---------------------------------------------------

    def set_pod_ready(self, layout: Layout, i: int, k: int, ready: bool) -> None:
        name, _, _ = layout.pod(i, k)
        body = {"status": {"conditions": ready_conditions(ready)}}
        response = self.core.patch_namespaced_pod_status(
            name, layout.namespace(i), body, _preload_content=False
        )
        _ = response.data

    def patch_slice(self, layout: Layout, i: int, service: str, not_ready: int | None) -> None:
        body = {"endpoints": endpoints(layout, i, not_ready)}
        response = self.discovery.patch_namespaced_endpoint_slice(
            f"{service}-bench", layout.namespace(i), body, _preload_content=False
        )
        _ = response.data


def populate(api: Api, layout: Layout, say: Callable[[str], None]) -> list[tuple[str, float]]:
    """Write the whole mesh; returns (phase, seconds) for each phase."""
    phases: list[tuple[str, float]] = []

    def phase(name: str, calls: Sequence[Callable[[], Any]]) -> None:
        started = time.monotonic()
        count = api.each(calls)
        took = time.monotonic() - started
        phases.append((name, took))
        say(f"setup: {name}: {count:,} objects in {took:.1f} s ({count / max(took, 1e-9):,.0f}/s)")

    core, discovery = api.core, api.discovery
    namespaces = [f"ns-{n}" for n in range(min(layout.namespaces, layout.services))]

    def namespace(name: str) -> Any:
        return core.create_namespace({"metadata": {"name": name}}, _preload_content=False)

    phase("namespaces", [partial(namespace, ns) for ns in namespaces])
    started = time.monotonic()
    # ServiceAccount admission refuses pods until the namespace has its `default`.
    while True:
        response = core.list_service_account_for_all_namespaces(
            field_selector="metadata.name=default", _preload_content=False
        )
        made = {sa["metadata"]["namespace"] for sa in json.loads(response.data)["items"]}
        if made.issuperset(namespaces):
            break
        if time.monotonic() - started > 120:
            raise RuntimeError(f"{len(set(namespaces) - made)} namespaces have no default account")
        time.sleep(0.2)
    phases.append(("default accounts", time.monotonic() - started))

    twins = layout.targets()

    def service(name: str, i: int, headless: bool) -> Any:
        body = service_body(name, headless)
        return core.create_namespaced_service(layout.namespace(i), body, _preload_content=False)

    def pod(i: int, k: int) -> Any:
        ns = layout.namespace(i)
        _ = core.create_namespaced_pod(ns, pod_body(layout, i, k), _preload_content=False).data
        return core.patch_namespaced_pod_status(
            layout.pod(i, k)[0], ns, pod_status(layout, i, k), _preload_content=False
        )

    def endpoint_slice(name: str, i: int) -> Any:
        body = slice_body(name, endpoints(layout, i))
        return discovery.create_namespaced_endpoint_slice(
            layout.namespace(i), body, _preload_content=False
        )

    services = [partial(service, f"svc-{i}", i, layout.headless(i)) for i in range(layout.services)]
    services += [partial(service, f"svc-{i}-hl", i, True) for i in twins]
    phase("services", services)
    phase(
        "pods (create, then status Running and Ready)",
        [
            partial(pod, i, k)
            for i in range(layout.services)
            for k in range(layout.pods_per_service)
        ],
    )
    slices = [partial(endpoint_slice, f"svc-{i}", i) for i in range(layout.services)]
    slices += [partial(endpoint_slice, f"svc-{i}-hl", i) for i in twins]
    phase("EndpointSlices", slices)
    return phases
