"""`meshlet control-plane` on the real test cluster, judged by real Envoy and a meshlet sidecar.

Workloads are applied with kubectl; their EndpointSlices come from Kubernetes'
own controller (the kubelet stand-in only reports pods Running and Ready). The
control plane runs as a ServiceAccount bound to exactly the source's RBAC rules,
with a token from the TokenRequest API: least privilege is what these tests run.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshlet import __version__
from meshlet.controlplane.sources.kubernetes import RBAC_RULES
from tests.envoy_peer import CONVERGE, Envoy, envoy
from tests.k8s.cluster import Cluster
from tests.k8s.kubelet import HOLD_TERMINATION, Kubelet
from tests.k8s.observe import (
    DEMO,
    Hosts,
    cluster_name,
    envoy_hosts,
    healthy,
    pods,
    ready_ips,
    service,
    sidecar_hosts,
)
from tests.procs import ControlPlane, control_plane, wait_until
from tests.sidecar_peer import Sidecar, sidecar
from tests.test_cli import run_meshlet

pytestmark = pytest.mark.timeout(300)  # the first one to run starts the test cluster


@dataclass
class DataPlanes:
    """Envoy over SotW, Envoy over delta and a meshlet sidecar, on one control plane."""

    plane: ControlPlane
    envoys: tuple[Envoy, ...]
    car: Sidecar

    def hosts(self, cluster: str) -> dict[str, Hosts]:
        found = {proxy.node_id: envoy_hosts(proxy, cluster) for proxy in self.envoys}
        found["sidecar"] = sidecar_hosts(self.car, cluster)
        return found

    def agree(self, cluster: str, expected: Hosts, what: str) -> None:
        """Wait until every data plane has exactly `expected` for `cluster`."""
        wait_until(
            lambda seen: all(hosts == expected for hosts in seen.values()),
            CONVERGE,
            f"{what}: {cluster} to be {expected} everywhere",
            observe=lambda: self.hosts(cluster),
            interval=0.1,
        )


@contextlib.contextmanager
def data_planes(kube: Cluster, namespace: str, tmp_path: Path) -> Iterator[DataPlanes]:
    with (
        kube.service_account(namespace, "meshlet", RBAC_RULES) as account,
        control_plane(None, tmp_path, kubeconfig=account.kubeconfig()) as plane,
        envoy(plane, tmp_path, "GRPC") as sotw,
        envoy(plane, tmp_path, "DELTA_GRPC") as delta,
        sidecar(plane, tmp_path, "delta", namespace=namespace) as car,
    ):
        yield DataPlanes(plane, (sotw, delta), car)


def test_workloads_reach_envoy_and_a_sidecar(
    kube: Cluster, kubelet: Kubelet, namespace: str, tmp_path: Path
) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", str(DEMO))
    web, api = cluster_name("web", namespace, 80), cluster_name("api", namespace, 8080)
    with data_planes(kube, namespace, tmp_path) as planes:
        # Named targetPorts, resolved per pod through the slices' ports.
        planes.agree(web, healthy(ready_ips(kube, namespace, "app=web", 3), 8080), "start")
        planes.agree(api, healthy(ready_ips(kube, namespace, "app=api", 2), 9090), "start")
        rcode, answers = planes.car.ask(f"web.{namespace}.svc.cluster.local")
        web_ip = service(kube, namespace, "web")["spec"]["clusterIP"]
        assert (rcode, answers) == ("NOERROR", [web_ip])

        kube.kubectl("scale", "-n", namespace, "deployment/web", "--replicas=5")
        ips = ready_ips(kube, namespace, "app=web", 5)
        planes.agree(web, healthy(ips, 8080), "scaled to 5")

        # A pod whose readiness probe fails leaves every data plane.
        (failing,) = [p for p in pods(kube, namespace, "app=web") if p["status"]["podIP"] == ips[0]]
        kubelet.set_ready(namespace, failing["metadata"]["name"], False)
        planes.agree(web, healthy(ips[1:], 8080), "one pod NotReady")

        # A pod deleted with a grace period serves as DRAINING until it is gone.
        (leaving,) = [p for p in pods(kube, namespace, "app=web") if p["status"]["podIP"] == ips[1]]
        name = leaving["metadata"]["name"]
        kube.kubectl("annotate", "-n", namespace, f"pod/{name}", f"{HOLD_TERMINATION}=true")
        kube.kubectl("delete", "-n", namespace, f"pod/{name}", "--grace-period=30", "--wait=false")
        replacement = ready_ips(kube, namespace, "app=web", 4)  # the ReplicaSet makes one more
        expected = healthy(sorted(set(replacement) - {ips[0]}), 8080)
        expected[f"{ips[1]}:8080"] = "DRAINING"
        planes.agree(web, expected, "one pod terminating")
        kubelet.finish(namespace, name)
        del expected[f"{ips[1]}:8080"]
        planes.agree(web, expected, "the terminated pod gone")

        # api was never touched: it still has what it had.
        planes.agree(api, healthy(ready_ips(kube, namespace, "app=api", 2), 9090), "the end")


def deployment(name: str, replicas: int, port: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": name,
                            "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
                            "ports": [{"name": "http", "containerPort": port}],
                        }
                    ]
                },
            },
        },
    }


def test_a_service_of_250_pods_split_over_several_slices(
    kube: Cluster, kubelet: Kubelet, namespace: str, tmp_path: Path
) -> None:
    big = deployment("big", 250, 8080)
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "big"},
        "spec": {"selector": {"app": "big"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([big, svc]))
    # 250 pods made, bound and reported Ready one by one: over 30 s on a loaded 2-core host.
    ips = ready_ips(kube, namespace, "app=big", 250, timeout=180)
    slices = json.loads(
        kube.kubectl(
            "get",
            "endpointslices",
            "-n",
            namespace,
            "-l",
            "kubernetes.io/service-name=big",
            "-o",
            "json",
        ).stdout
    )["items"]
    assert len(slices) >= 3, "Kubernetes' controller puts at most 100 endpoints in a slice"
    with data_planes(kube, namespace, tmp_path) as planes:
        planes.agree(cluster_name("big", namespace, 80), healthy(ips, 8080), "250 pods")


def test_external_name_and_a_headless_service_with_per_pod_names(
    kube: Cluster, kubelet: Kubelet, namespace: str, tmp_path: Path
) -> None:
    labels = {"app": "db"}
    objects = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "search"},
            "spec": {"type": "ExternalName", "externalName": "search.example.com"},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "db"},
            "spec": {
                "clusterIP": "None",
                "selector": labels,
                "ports": [{"name": "pg", "port": 5432}],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db"},
            "spec": {
                "serviceName": "db",
                "replicas": 2,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "db", "image": "postgres:17"}]},
                },
            },
        },
    ]
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))
    by_name = {}
    ready_ips(kube, namespace, "app=db", 2)
    for pod in pods(kube, namespace, "app=db"):
        by_name[pod["metadata"]["name"]] = pod["status"]["podIP"]
    domain = f"{namespace}.svc.cluster.local"
    with data_planes(kube, namespace, tmp_path) as planes:
        car = planes.car
        wait_until(
            lambda answer: answer == ("NOERROR", sorted(by_name.values())),
            CONVERGE,
            "the headless service's pod IPs",
            observe=lambda: car.ask(f"db.{domain}"),
        )
        for name, ip in by_name.items():
            assert car.ask(f"{name}.db.{domain}") == ("NOERROR", [ip])
        assert car.ask(f"search.{domain}") == ("NOERROR", ["search.example.com."])
        assert car.ask(f"search.{domain}", "CNAME") == ("NOERROR", ["search.example.com."])
        assert car.ask(f"missing.{domain}")[0] == "NXDOMAIN"


def test_proxy_status_and_proxy_config_on_the_kubernetes_control_plane(
    kube: Cluster, kubelet: Kubelet, namespace: str, tmp_path: Path
) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", str(DEMO))
    web = cluster_name("web", namespace, 80)
    with data_planes(kube, namespace, tmp_path) as planes:
        ips = ready_ips(kube, namespace, "app=web", 3)
        planes.agree(web, healthy(ips, 8080), "start")
        address = f"--control-plane=127.0.0.1:{planes.plane.admin_port}"
        # Envoy asks for no NameTables; the sidecar asks for every type (RDS too: the
        # demo's web port is named http).
        expected = {
            "envoy-grpc": ("SYNCED", "SYNCED", "SYNCED", "SYNCED", "-"),
            "envoy-delta_grpc": ("SYNCED", "SYNCED", "SYNCED", "SYNCED", "-"),
            "sidecar-1": ("SYNCED",) * 5,
        }

        def states() -> dict[str, tuple[str, ...]]:
            shown = run_meshlet("proxy-status", address, "-o", "json")
            assert shown.returncode == 0, shown.stderr
            status = json.loads(shown.stdout)["status"]
            return {
                s["node"]: tuple(s[t] for t in ("cds", "lds", "eds", "rds", "nds")) for s in status
            }

        def table_states() -> dict[str, list[str]]:
            table = run_meshlet("proxy-status", address).stdout
            rows = [line.split() for line in table.splitlines() if line.strip()]
            return {row[0]: [c for c in row if c in ("SYNCED", "STALE", "-")] for row in rows}

        wait_until(lambda s: s == expected, CONVERGE, "every client SYNCED", observe=states)
        # The table says the same (again until it does: pods of the demo may still be
        # turning Ready, and each change makes a client STALE until it ACKs it).
        wanted = {node: list(cells) for node, cells in expected.items()}
        wait_until(
            lambda s: all(s.get(node) == cells for node, cells in wanted.items()),
            CONVERGE,
            "the table to show every client SYNCED",
            observe=table_states,
        )

        admin = f"--admin=127.0.0.1:{planes.car.admin_port}"
        shown = run_meshlet("proxy-config", "endpoints", admin)
        assert shown.returncode == 0, shown.stderr
        rows = [line.split()[:3] for line in shown.stdout.splitlines() if line.startswith(web)]
        assert rows == sorted([web, f"{ip}:8080", "HEALTHY"] for ip in ips)
        names = run_meshlet("proxy-config", "names", admin).stdout
        web_ip = service(kube, namespace, "web")["spec"]["clusterIP"]
        name = f"web.{namespace}.svc.cluster.local"
        (row,) = [line.split() for line in names.splitlines() if line.startswith(f"{name} ")]
        assert row == [name, web_ip, f"{namespace}/web"]
        version = run_meshlet("version", address)
        assert version.returncode == 0, version.stderr
        assert f"control plane: meshlet {__version__} at 127.0.0.1:" in version.stdout
