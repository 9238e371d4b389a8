"""CoreDNS with its kubernetes plugin on the test cluster: the reference for service DNS.

The Corefile is kubeadm's (`pods insecure`, the reverse zones, fallthrough), with
the cache optional (off for comparisons, so both sides answer from live state) and
`forward` pointed at a port where nothing answers: nothing here leaves the machine.
It runs with kubeadm's `system:coredns` RBAC, as a ServiceAccount of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshlet import defaults
from tests.k8s.cluster import Cluster
from tests.procs import Process, free_port, http_get, running, wait_until

# kubeadm's ClusterRole system:coredns.
RBAC_RULES = (
    {
        "apiGroups": [""],
        "resources": ["endpoints", "services", "pods", "namespaces"],
        "verbs": ["list", "watch"],
    },
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["list", "watch"],
    },
)


@dataclass
class CoreDns:
    process: Process
    port: int


def corefile(port: int, kubeconfig: Path, ready_port: int, health_port: int, cache: bool) -> str:
    domain = defaults.CLUSTER_DOMAIN
    # kubeadm's cache block: 30 s for names outside the cluster domain only.
    cache_block = (
        "    cache 30 {\n"
        f"        disable success {domain}\n"
        f"        disable denial {domain}\n"
        "    }\n"
        if cache
        else ""
    )
    return (
        f".:{port} {{\n"
        "    bind 127.0.0.1\n"
        "    errors\n"
        f"    health 127.0.0.1:{health_port}\n"
        f"    ready 127.0.0.1:{ready_port}\n"
        f"    kubernetes {domain} in-addr.arpa ip6.arpa {{\n"
        f"        kubeconfig {kubeconfig}\n"
        "        pods insecure\n"
        "        fallthrough in-addr.arpa ip6.arpa\n"
        "        ttl 30\n"
        "    }\n"
        f"    forward . 127.0.0.1:{free_port()}\n"
        f"{cache_block}"
        "    loadbalance\n"
        "}\n"
    )


def corefile_for_pod() -> str:
    """kubeadm's Corefile, for CoreDNS as the cluster DNS in a pod (in-cluster config)."""
    domain = defaults.CLUSTER_DOMAIN
    return (
        ".:53 {\n"
        "    errors\n"
        "    health :8080\n"
        "    ready :8181\n"
        f"    kubernetes {domain} in-addr.arpa ip6.arpa {{\n"
        "        pods insecure\n"
        "        fallthrough in-addr.arpa ip6.arpa\n"
        "        ttl 30\n"
        "    }\n"
        "    forward . /etc/resolv.conf\n"
        "    cache 30\n"
        "    loadbalance\n"
        "}\n"
    )


def cluster_dns_objects(image: str, cluster_ip: str) -> list[dict[str, Any]]:
    """CoreDNS as kubeadm deploys it: kube-system/coredns behind the kube-dns Service."""
    labels = {"k8s-app": "kube-dns"}
    corefile = corefile_for_pod()
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "coredns", "namespace": "kube-system"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "system:coredns"}, "rules": list(RBAC_RULES)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}]},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "coredns", "namespace": "kube-system"},
         "data": {"Corefile": corefile}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
         "spec": {
             "replicas": 1,
             "selector": {"matchLabels": labels},
             "template": {
                 "metadata": {"labels": labels},
                 "spec": {
                     "serviceAccountName": "coredns",
                     "dnsPolicy": "Default",
                     "containers": [{
                         "name": "coredns",
                         "image": image,
                         "imagePullPolicy": "Never",
                         "args": ["-conf", "/etc/coredns/Corefile"],
                         "ports": [{"containerPort": 53, "protocol": "UDP", "name": "dns"},
                                   {"containerPort": 53, "protocol": "TCP", "name": "dns-tcp"}],
                         "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181},
                                            "periodSeconds": 1},
                         "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                         "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                     }],
                     "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                 },
             },
         }},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
         "spec": {"clusterIP": cluster_ip, "selector": labels,
                  "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}},
    ]  # fmt: skip


@contextlib.contextmanager
def coredns(
    kube: Cluster,
    namespace: str,
    tmp_path: Path,
    *,
    cache: bool = False,
    gomaxprocs: int | None = None,
    cpu: int | None = None,
) -> Iterator[CoreDns]:
    """CoreDNS on a loopback port of its own, ready (its first lists done) when yielded."""
    port, ready_port, health_port = free_port(), free_port(), free_port()
    with kube.service_account(namespace, "coredns", RBAC_RULES) as account:
        path = tmp_path / f"Corefile-{port}"
        path.write_text(corefile(port, account.kubeconfig(), ready_port, health_port, cache))
        argv = [str(kube.binaries["coredns"]), "-conf", str(path)]
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        env = {"GOMAXPROCS": str(gomaxprocs)} if gomaxprocs else None
        with running(argv, "coredns", tmp_path / f"coredns-{port}.log", env=env) as process:

            def ready() -> int:
                process.check_alive()
                return http_get(f"http://127.0.0.1:{ready_port}/ready", timeout=2)[0]

            wait_until(lambda status: status == 200, 60, "CoreDNS /ready", observe=ready)
            yield CoreDns(process, port)
