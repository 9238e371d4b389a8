"""What the tests read off the test cluster and off the data planes fed from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.envoy_peer import CONVERGE, Envoy
from tests.k8s.cluster import Cluster
from tests.procs import wait_until
from tests.sidecar_peer import Sidecar

ROOT = Path(__file__).resolve().parent.parent.parent
# The demo's services as Kubernetes workloads.
DEMO = ROOT / "examples" / "kubernetes" / "demo.yaml"

Hosts = dict[str, str]  # "ip:port" -> health (HEALTHY, DRAINING)


def cluster_name(service: str, namespace: str, port: int) -> str:
    return f"outbound|{port}||{service}.{namespace}.svc.cluster.local"


def envoy_hosts(proxy: Envoy, cluster: str) -> Hosts:
    statuses = proxy.get_json("/clusters?format=json").get("cluster_statuses", [])
    for status in statuses:
        if status["name"] == cluster:
            return {
                f"{h['address']['socket_address']['address']}:"
                f"{h['address']['socket_address']['port_value']}": h.get("health_status", {}).get(
                    "eds_health_status", "HEALTHY"
                )
                for h in status.get("host_statuses", [])
            }
    return {}


def sidecar_hosts(car: Sidecar, cluster: str) -> Hosts:
    found = car.admin("/clusters").get(cluster)
    return {e["address"]: e["health"] for e in found["endpoints"]} if found else {}


def pods(kube: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = kube.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def ready_ips(
    kube: Cluster, namespace: str, selector: str, count: int, timeout: float = CONVERGE
) -> list[str]:
    """The IPs of the `count` Ready pods there will be (waits for them, up to `timeout`)."""

    def ready() -> list[str]:
        found = [
            p["status"]["podIP"]
            for p in pods(kube, namespace, selector)
            if not p["metadata"].get("deletionTimestamp")
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions", [])
            )
        ]
        return sorted(found) if len(found) == count else []

    ips: list[str] = wait_until(ready, timeout, f"{count} ready pods of {selector}")
    return ips


def healthy(ips: list[str], port: int) -> Hosts:
    return {f"{ip}:{port}": "HEALTHY" for ip in ips}


def service(kube: Cluster, namespace: str, name: str) -> dict[str, Any]:
    out = kube.kubectl("get", "service", "-n", namespace, name, "-o", "json").stdout
    found: dict[str, Any] = json.loads(out)
    return found
