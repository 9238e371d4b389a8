"""The control plane when its API server goes away, comes back past a compaction, is not
there at start-up, or refuses it (RBAC): it keeps serving, says so, and catches up.

The control plane talks to a second kube-apiserver on the cluster's etcd (as in an
HA control plane), so that one can be stopped while the controller manager and the
kubelet stand-in go on changing the cluster through the first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshlet.controlplane.sources.kubernetes import RBAC_RULES
from meshlet.xds import types
from tests.envoy_peer import CONVERGE
from tests.k8s.cluster import Cluster
from tests.k8s.kubelet import Kubelet
from tests.k8s.observe import DEMO, cluster_name, healthy, ready_ips, sidecar_hosts
from tests.procs import ControlPlane, control_plane, http_get, wait_until
from tests.prom import sample
from tests.sidecar_peer import sidecar
from tests.xds_watch import DeltaWatch

pytestmark = pytest.mark.timeout(300)  # the first one to run starts the test cluster


# How long a recovery may take: the watch's backoff cap (30 s) and then some.
BACK = 30 + CONVERGE


def problems(plane: ControlPlane) -> list[str]:
    found: list[str] = plane.get_json("/debug/problems")
    return found


def eds_sent(plane: ControlPlane, node: str) -> str:
    """The EDS version the control plane last sent to that node's stream."""
    status = plane.client(node)
    assert status is not None, f"{node} is not connected"
    return str(status["types"][types.short_name(types.ENDPOINT)]["version_sent"])


def reflectors(plane: ControlPlane) -> dict[str, dict[str, Any]]:
    status = plane.get_json("/debug/sources")["kubernetes"]["reflectors"]
    return {r["resource"]: r for r in status}  # one namespace (or all): one per resource


def test_api_server_outage_then_back_past_a_compaction(
    kube: Cluster, kubelet: Kubelet, namespace: str, tmp_path: Path
) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", str(DEMO))
    web, api = cluster_name("web", namespace, 80), cluster_name("api", namespace, 8080)
    with (
        kube.second_apiserver() as apiserver,
        kube.service_account(namespace, "meshlet", RBAC_RULES) as account,
        # This namespace only: other tests' namespaces may be going away meanwhile,
        # and those changes would be real differences too.
        control_plane(
            None,
            tmp_path,
            kubeconfig=account.kubeconfig(apiserver.server),
            extra_args=[f"--watch-namespace={namespace}"],
        ) as plane,
        sidecar(plane, tmp_path, "delta", namespace=namespace) as car,
        DeltaWatch(plane.xds_address, "api-only", types.ENDPOINT, [api]) as api_only,
    ):
        before = healthy(ready_ips(kube, namespace, "app=web", 3), 8080)
        wait_until(
            lambda h: h == before, CONVERGE, "3 web pods", observe=lambda: sidecar_hosts(car, web)
        )
        wait_until(lambda n: n == 1, CONVERGE, "api's endpoints", observe=api_only.count)

        told_before = {r: s["events"] for r, s in reflectors(plane).items()}
        sent_before = eds_sent(plane, "api-only")
        apiserver.stop()
        wait_until(
            lambda found: any("cannot reach" in p for p in found),
            CONVERGE,
            "the outage to be a problem",
            observe=lambda: problems(plane),
        )
        # Still serving what it had, still ready: an API server blink is no mesh outage.
        assert plane.get("/readyz")[0] == 200
        assert sidecar_hosts(car, web) == before

        # Meanwhile the cluster goes on (through the other API server), and etcd is
        # compacted past what the control plane last saw.
        kube.kubectl("scale", "-n", namespace, "deployment/web", "--replicas=4")
        after = healthy(ready_ips(kube, namespace, "app=web", 4), 8080)
        kube.etcd_bump_and_compact()
        apiserver.start()

        # The control plane's retry may be up to its backoff cap (30 s) away.
        wait_until(
            lambda h: h == after, BACK, "the scale-up", observe=lambda: sidecar_hosts(car, web)
        )
        wait_until(lambda found: found == [], BACK, "no problems", observe=lambda: problems(plane))
        status = reflectors(plane)
        assert status["endpointslices"]["relists"] >= 1, status
        assert status["services"]["relists"] >= 1, status
        # The relist told the registry only real differences: no Service changed, so
        # none was told again; and nothing went to a client that only watches the
        # untouched api service.
        assert status["services"]["events"] == told_before["services"], status
        assert status["endpointslices"]["events"] > told_before["endpointslices"], status
        # That stream subscribes to none of what changed, so it was not even woken: it
        # is still at the snapshot it last caught up with, and its client got nothing.
        served = plane.get_json("/debug/config")["generation"]
        caught_up = (plane.client("api-only") or {}).get("generation")
        assert isinstance(caught_up, int) and caught_up < served, (caught_up, served)
        assert eds_sent(plane, "api-only") == sent_before
        assert api_only.count() == 1
        # The source's health, as an alert would read it.
        metrics = plane.metrics()
        for resource in ("services", "endpointslices"):
            where = {"resource": resource, "namespace": namespace}
            assert sample(metrics, "meshlet_source_relists_total", **where) >= 1
            assert sample(metrics, "meshlet_source_failures_total", **where) >= 1
            assert sample(metrics, "meshlet_source_lists_total", **where) >= 2
            assert sample(metrics, "meshlet_source_synced", **where) == 1
            assert sample(metrics, "meshlet_source_seconds_since_heard", **where) >= 0


def test_api_server_unreachable_at_start_up(kube: Cluster, namespace: str, tmp_path: Path) -> None:
    with (
        kube.second_apiserver(started=False) as apiserver,
        kube.service_account(namespace, "meshlet", RBAC_RULES) as account,
        control_plane(
            None, tmp_path, kubeconfig=account.kubeconfig(apiserver.server), wait_ready=False
        ) as plane,
    ):
        found = wait_until(
            lambda found: len(found) == 2 and all("cannot reach" in p for p in found),
            CONVERGE,
            "both reflectors to say they cannot reach it",
            observe=lambda: problems(plane),
        )
        assert apiserver.server in found[0]
        assert plane.get("/healthz")[0] == 200
        status, body = plane.get("/readyz")
        assert (status, body) == (
            503,
            "waiting for the first complete list of Services and EndpointSlices\n",
        )
        apiserver.start()
        wait_until(lambda s: s == 200, BACK, "/readyz", observe=lambda: plane.get("/readyz")[0])
        assert problems(plane) == []


def test_rbac_refusing_then_granted(kube: Cluster, namespace: str, tmp_path: Path) -> None:
    services_only = [rule for rule in RBAC_RULES if "services" in rule["resources"]]
    with (
        kube.service_account(namespace, "meshlet", services_only) as account,
        control_plane(None, tmp_path, kubeconfig=account.kubeconfig(), wait_ready=False) as plane,
    ):
        (problem,) = wait_until(
            lambda found: len(found) == 1,
            CONVERGE,
            "the refused list to be a problem",
            observe=lambda: problems(plane),
        )
        assert problem.startswith(
            "kubernetes: endpointslices (all namespaces): HTTP 403: endpointslices.discovery.k8s.io"
            f' is forbidden: User "system:serviceaccount:{namespace}:meshlet" cannot list'
        ), problem
        # Half a picture is never served: services were listed, slices were not.
        assert http_get(plane.url("/readyz"))[0] == 503
        assert plane.get("/debug/config")[0] == 503
        account.grant(RBAC_RULES)
        wait_until(lambda s: s == 200, BACK, "/readyz", observe=lambda: plane.get("/readyz")[0])
        assert problems(plane) == []
