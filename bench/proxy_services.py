"""The Services of bench/proxy.py, written where the control plane and kube-proxy read them.

On the test cluster: Services without a selector, with EndpointSlices of the
bench's own (as a controller of its own would write them), through the API
server. Without it: the same objects in a manifest file the control plane
watches. Either way a change is one write of the whole slice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from meshlet.devmesh.manifests import endpoint_slice_manifest, service_manifest, write_manifests
from tests.k8s.cluster import Cluster

NAMESPACE = "default"
Ports = Sequence[tuple[str, int, int]]  # (name, port, targetPort)


def _slice(name: str, ports: Ports, ready: Mapping[str, bool]) -> dict[str, Any]:
    made = endpoint_slice_manifest(name, NAMESPACE, [(n, t) for n, _, t in ports], list(ready))
    made["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] = "bench"
    for endpoint in made["endpoints"]:
        endpoint["conditions"]["ready"] = ready[endpoint["addresses"][0]]
    return made


class ClusterServices:
    source = "the Kubernetes API (the test cluster's, as kube-proxy)"

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._ports: dict[str, Ports] = {}

    def publish(self, name: str, vip: str, ports: Ports, ready: Mapping[str, bool]) -> None:
        self._ports[name] = ports
        self._cluster.apply(
            service_manifest(name, NAMESPACE, vip, ports), _slice(name, ports, ready)
        )

    def set_ready(self, name: str, ready: Mapping[str, bool]) -> None:
        """Every endpoint's readiness at once, in one write (no kubectl start-up in it)."""
        made = _slice(name, self._ports[name], ready)
        k8s.DiscoveryV1Api(self._cluster.api).replace_namespaced_endpoint_slice(
            made["metadata"]["name"], NAMESPACE, made
        )


class ManifestServices:
    source = "a manifest file (no test cluster)"

    def __init__(self, path: Path) -> None:
        self._path = path
        self._objects: dict[str, tuple[dict[str, Any], Ports]] = {}
        self._ready: dict[str, Mapping[str, bool]] = {}

    def publish(self, name: str, vip: str, ports: Ports, ready: Mapping[str, bool]) -> None:
        self._objects[name] = (service_manifest(name, NAMESPACE, vip, ports), ports)
        self.set_ready(name, ready)

    def set_ready(self, name: str, ready: Mapping[str, bool]) -> None:
        self._ready[name] = dict(ready)
        objects: list[dict[str, Any]] = []
        for service, (manifest, ports) in self._objects.items():
            objects += [manifest, _slice(service, ports, self._ready[service])]
        write_manifests(self._path, *objects)


Services = ClusterServices | ManifestServices
