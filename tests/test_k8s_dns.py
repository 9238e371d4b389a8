"""Differential DNS: a meshlet sidecar and CoreDNS (kubernetes plugin) on the same cluster.

Both are fed by the same API server (CoreDNS directly, the sidecar through the
meshlet control plane) and asked the same table of queries; they must give the
same rcode and the same answer section, TTLs aside (SRV priority and weight are
each one's policy, so an SRV record compares by port and target). Where they
differ on purpose, DIFFERENCES says how and why, and the test checks that they
still differ exactly so (a fixed difference must leave the list).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
import yaml

from meshlet import defaults
from meshlet.controlplane.sources.kubernetes import RBAC_RULES
from tests.envoy_peer import CONVERGE
from tests.k8s.cluster import Cluster
from tests.k8s.coredns import coredns
from tests.k8s.kubelet import Kubelet
from tests.k8s.observe import pods, ready_ips, service
from tests.procs import control_plane, wait_until
from tests.sidecar_peer import sidecar

pytestmark = pytest.mark.timeout(300)  # the first one to run starts the test cluster

Answer = tuple[str, frozenset[str]]


def ask(port: int, name: str, rdtype: str) -> Answer:
    """(rcode, the answer section without TTLs; SRV as port and target)."""
    try:
        response = dns.query.udp(
            dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=5
        )
    except dns.exception.Timeout:
        return "TIMEOUT", frozenset()
    records = set()
    for rrset in response.answer:
        for rr in rrset:
            srv = rr.rdtype == dns.rdatatype.SRV
            data = f"{rr.port} {rr.target}" if srv else rr.to_text()
            records.add(f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} {data}")
    return dns.rcode.to_text(response.rcode()), frozenset(records)


def workloads(namespace: str) -> list[dict[str, Any]]:
    def pods_of(name: str, replicas: int, port: int, **spec: Any) -> dict[str, Any]:
        labels = {"app": name}
        template = {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": name, "image": "registry.k8s.io/pause:3.10"}]},
        }
        kind = "StatefulSet" if "serviceName" in spec else "Deployment"
        return {
            "apiVersion": "apps/v1",
            "kind": kind,
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": template,
                **spec,
            },
        }

    def svc(name: str, ports: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": ports, **spec},
        }

    return [
        pods_of("web", 2, 8080),
        svc("web", [{"name": "http", "port": 80}, {"name": "grpc", "port": 9090}]),
        pods_of("db", 2, 5432, serviceName="db", podManagementPolicy="Parallel"),
        svc("db", [{"name": "pg", "port": 5432}], clusterIP="None"),
        pods_of("peers", 2, 7000),
        svc("peers", [{"name": "gossip", "port": 7000, "protocol": "UDP"}], clusterIP="None"),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "search"},
            "spec": {"type": "ExternalName", "externalName": "search.example.com"},
        },
    ]


def dashed(ip: str) -> str:
    return ip.replace(".", "-")


def test_the_same_answers_as_coredns(
    kube: Cluster, kubelet: Kubelet, namespace: str, tmp_path: Path
) -> None:
    kube.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(workloads(namespace))
    )
    web_pods = ready_ips(kube, namespace, "app=web", 2)
    ready_ips(kube, namespace, "app=db", 2)
    peer_ips = ready_ips(kube, namespace, "app=peers", 2)
    db = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods(kube, namespace, "app=db")}
    web_ip = service(kube, namespace, "web")["spec"]["clusterIP"]
    svc = f"{namespace}.svc.cluster.local"
    ptr = lambda ip: dns.reversename.from_address(ip).to_text()  # noqa: E731
    queries = [
        (f"web.{svc}", "A"),
        (f"web.{svc}", "AAAA"),  # a known name of the other family: NODATA
        (f"web.{svc}", "TXT"),
        (f"_http._tcp.web.{svc}", "SRV"),
        (f"_grpc._tcp.web.{svc}", "SRV"),
        (ptr(web_ip), "PTR"),
        (f"db.{svc}", "A"),
        (f"db-0.db.{svc}", "A"),
        (f"db-1.db.{svc}", "A"),
        (f"db-0.db.{svc}", "AAAA"),
        (f"_pg._tcp.db.{svc}", "SRV"),
        (ptr(db["db-0"]), "PTR"),
        (f"peers.{svc}", "A"),
        (f"{dashed(peer_ips[0])}.peers.{svc}", "A"),
        (f"_gossip._udp.peers.{svc}", "SRV"),
        (ptr(peer_ips[1]), "PTR"),
        (f"search.{svc}", "CNAME"),
        # Both answer an ExternalName's CNAME alone; CoreDNS's own try to resolve the
        # target fails here (its forwarder points nowhere), and the client's resolver
        # chases the CNAME, as with the sidecar.
        (f"search.{svc}", "A"),
        (f"missing.{svc}", "A"),
        ("web.no-such-namespace.svc.cluster.local", "A"),
        (f"_nope._tcp.web.{svc}", "SRV"),
        (f"{dashed(web_pods[0])}.{namespace}.pod.cluster.local", "A"),
        (f"{dashed(web_pods[0])}.{namespace}.pod.cluster.local", "AAAA"),
        (f"not-an-ip.{namespace}.pod.cluster.local", "A"),
    ]
    differences: dict[tuple[str, str], tuple[str, Callable[[Answer, Answer], bool]]] = {
        ("1-2-3-4.no-such-namespace.pod.cluster.local", "A"): (
            "a pod name in a namespace that does not exist: CoreDNS watches namespaces and says "
            "NXDOMAIN; the sidecar knows only namespaces that have services, and a pod's own "
            "namespace may have none, so it answers every namespace",
            lambda ours, theirs: (
                ours
                == (
                    "NOERROR",
                    frozenset({"1-2-3-4.no-such-namespace.pod.cluster.local. A 1.2.3.4"}),
                )
                and theirs[0] == "NXDOMAIN"
            ),
        ),
    }

    with (
        kube.service_account(namespace, "meshlet", RBAC_RULES) as account,
        control_plane(None, tmp_path, kubeconfig=account.kubeconfig()) as plane,
        sidecar(plane, tmp_path, "delta", namespace=namespace) as car,
        coredns(kube, namespace, tmp_path) as reference,
    ):
        # Both have the whole namespace once the last pod's names answer on both sides.
        last = (f"{dashed(peer_ips[1])}.peers.{svc}", "A")
        for port in (car.dns_port, reference.port):
            wait_until(
                lambda answer: answer[1],
                CONVERGE,
                f"{last} on port {port}",
                observe=lambda port=port: ask(port, *last),
            )
        mismatches = []
        for name, rdtype in queries:
            ours, theirs = ask(car.dns_port, name, rdtype), ask(reference.port, name, rdtype)
            if ours != theirs:
                mismatches.append(f"{name} {rdtype}:\n  meshlet {ours}\n  CoreDNS {theirs}")
        assert not mismatches, "\n".join(mismatches)
        for (name, rdtype), (why, holds) in differences.items():
            ours, theirs = ask(car.dns_port, name, rdtype), ask(reference.port, name, rdtype)
            assert holds(ours, theirs), (
                f"{name} {rdtype} no longer differs as said ({why}):\n"
                f"  meshlet {ours}\n  CoreDNS {theirs}"
            )
        # The answers have records at all: this compares something.
        assert ask(car.dns_port, f"db.{svc}", "A")[1] == frozenset(
            f"db.{svc}. A {ip}" for ip in db.values()
        )
        assert ipaddress.ip_address(web_ip) in ipaddress.ip_network(defaults.SERVICE_CIDR)
