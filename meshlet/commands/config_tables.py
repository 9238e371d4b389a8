"""`meshlet proxy-config`'s tables, from a sidecar's /clusters and /config_dump
(pure: JSON in, text rows out)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Table = tuple[list[str], list[list[str]]]


def clusters_table(clusters: Mapping[str, Any]) -> Table:
    """/clusters: each cluster, its service, LB policy and how many endpoints."""
    rows = [
        [
            name,
            str(c.get("service") or "-"),
            str(c.get("lb_policy", "")),
            str(len(c.get("endpoints", []))),
        ]
        for name, c in sorted(clusters.items())
    ]
    return ["NAME", "SERVICE", "LB POLICY", "ENDPOINTS"], rows


def _ejected(endpoint: Mapping[str, Any]) -> str:
    # Without "ejected" the proxy has not built the cluster's hosts: none is ejected.
    if not endpoint.get("ejected"):
        return "no"
    return f"yes, {endpoint.get('ejected_for_seconds', 0)}s more"


def endpoints_table(clusters: Mapping[str, Any]) -> Table:
    """/clusters: each endpoint of each cluster, its health, zone and whether ejected."""
    rows = [
        [
            name,
            str(e.get("address", "")),
            str(e.get("health", "")),
            str(e.get("zone") or "-"),
            _ejected(e),
        ]
        for name, c in clusters.items()
        for e in c.get("endpoints", [])
    ]
    return ["CLUSTER", "ENDPOINT", "HEALTH", "ZONE", "EJECTED"], sorted(rows)


def _resources(dump: Mapping[str, Any], type_name: str) -> Mapping[str, Any]:
    found: Mapping[str, Any] = dump.get("resources", {}).get(type_name, {}).get("resources", {})
    return found


def _address(listener: Mapping[str, Any]) -> str:
    socket = listener.get("address", {}).get("socketAddress")
    if not socket:
        return "-"
    host = str(socket.get("address", ""))
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{socket.get('portValue', 0)}"


def _listener_cluster(listener: Mapping[str, Any]) -> str:
    """The cluster its TCP proxy sends to (the first filter that names one)."""
    for chain in listener.get("filterChains", []):
        for filter_ in chain.get("filters", []):
            cluster = filter_.get("typedConfig", {}).get("cluster")
            if cluster:
                return str(cluster)
    return "-"


def listeners_table(dump: Mapping[str, Any]) -> Table:
    """/config_dump's LDS: each listener's address and the cluster it sends to."""
    rows = [
        [name, _address(r.get("resource", {})), _listener_cluster(r.get("resource", {}))]
        for name, r in sorted(_resources(dump, "lds").items())
    ]
    return ["NAME", "ADDRESS", "CLUSTER"], rows


def _answers(info: Mapping[str, Any]) -> str:
    if info.get("cname"):
        return f"CNAME {info['cname']}"
    return ", ".join(info.get("ips", [])) or "-"


def names_table(dump: Mapping[str, Any]) -> Table:
    """/config_dump's NameTables: each DNS name, what it answers and its service."""
    rows = []
    for table in _resources(dump, "nds").values():
        for name, info in table.get("resource", {}).get("table", {}).items():
            service = f"{info.get('namespace', '')}/{info.get('service', '')}"
            kind = " (headless)" if info.get("headless") else ""
            rows.append([name, _answers(info), service + kind])
    return ["NAME", "ADDRESSES", "SERVICE"], sorted(rows)


# What each table is built from: the admin page, and its builder.
TABLES = {
    "clusters": ("/clusters", clusters_table),
    "endpoints": ("/clusters", endpoints_table),
    "listeners": ("/config_dump", listeners_table),
    "names": ("/config_dump", names_table),
}
