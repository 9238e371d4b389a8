"""Kubernetes Service and EndpointSlice objects for the local mesh and the tests, written
as `kubectl get -o yaml` would print them, and replaced atomically so the control
plane's watch never reads half a file."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


def write_atomically(path: Path, text: str) -> None:
    """Replace a file's content in one step (a temp name the source ignores, then rename)."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


def service_manifest(
    name: str,
    namespace: str,
    cluster_ip: str,
    ports: Sequence[tuple[str, int, int | str]],
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A v1 Service; `ports` are (name, port, targetPort)."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ports": [
                {"name": n, "port": p, "protocol": "TCP", "targetPort": t} for n, p, t in ports
            ],
        },
    }


def endpoint_slice_manifest(
    service: str,
    namespace: str,
    ports: Sequence[tuple[str, int]],
    addresses: Sequence[str],
) -> dict[str, Any]:
    """A discovery.k8s.io/v1 EndpointSlice of ready endpoints; `ports` are (name, port)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-abc12",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
    }


def write_manifests(path: Path, *objects: Mapping[str, Any]) -> None:
    """Write Kubernetes objects as one multi-document YAML file, replacing it atomically."""
    write_atomically(path, yaml.safe_dump_all([dict(o) for o in objects], sort_keys=False))
