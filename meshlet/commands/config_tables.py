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


def _listener_destination(listener: Mapping[str, Any]) -> str:
    """The cluster its TCP proxy sends to, or the routes its HTTP manager takes."""
    for chain in listener.get("filterChains", []):
        for filter_ in chain.get("filters", []):
            config = filter_.get("typedConfig", {})
            if config.get("cluster"):
                return str(config["cluster"])
            routes = config.get("rds", {}).get("routeConfigName")
            if routes:
                return f"routes={routes}"
    return "-"


def listeners_table(dump: Mapping[str, Any]) -> Table:
    """/config_dump's LDS: each listener's address and where it sends (as istioctl's)."""
    rows = [
        [name, _address(r.get("resource", {})), _listener_destination(r.get("resource", {}))]
        for name, r in sorted(_resources(dump, "lds").items())
    ]
    return ["NAME", "ADDRESS", "DESTINATION"], rows


def _match(route: Mapping[str, Any]) -> str:
    methods = [
        str(h.get("stringMatch", {}).get("exact", "?"))
        for h in route.get("match", {}).get("headers", [])
        if h.get("name") == ":method"
    ]
    return " ".join(methods) or "*"


def routes_table(dump: Mapping[str, Any]) -> Table:
    """/config_dump's RDS: each route of each route configuration, in order: which
    methods it matches, its cluster, its retries and its timeout."""
    rows = []
    for name, held in sorted(_resources(dump, "rds").items()):
        for host in held.get("resource", {}).get("virtualHosts", []):
            for route in host.get("routes", []):
                action = route.get("route", {})
                retry = action.get("retryPolicy", {})
                rows.append(
                    [
                        name,
                        _match(route),
                        str(action.get("cluster", "-")),
                        str(retry.get("numRetries", 1)) if retry else "0",
                        str(retry.get("retryOn") or "-"),
                        str(action.get("timeout", "15s")),  # Envoy's default
                    ]
                )
    return ["NAME", "METHODS", "CLUSTER", "RETRIES", "RETRY ON", "TIMEOUT"], rows


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
    "routes": ("/config_dump", routes_table),
    "names": ("/config_dump", names_table),
}
