"""What a push changed, in words an operator reads in a log line.

"shop/web: endpoints 3 -> 2", "shop/cart: added (ClusterIP, 2 endpoints)", "shop/old:
removed": the first few services of a build, and how many more.
"""

from __future__ import annotations

from collections.abc import Mapping

from meshlet.model import Service

Change = tuple[Service | None, Service | None]  # (before, after)
SHOWN = 5


def endpoint_count(service: Service) -> int:
    """Its distinct endpoint addresses, whatever their ports (a headless service's too)."""
    addresses = {e.address for port in service.ports for e in port.endpoints}
    return len(addresses | {e.address for e in service.pod_addresses})


def describe(key: str, before: Service | None, after: Service | None) -> str:
    if after is None:
        return f"{key}: removed"
    count = endpoint_count(after)
    if before is None:
        return f"{key}: added ({after.kind.value}, {count} endpoints)"
    parts = []
    if (old := endpoint_count(before)) != count:
        parts.append(f"endpoints {old} -> {count}")
    if [p.port for p in before.ports] != [p.port for p in after.ports]:
        parts.append(f"ports {_ports(before)} -> {_ports(after)}")
    if before.cluster_ips != after.cluster_ips:
        parts.append(f"IPs {_ips(before)} -> {_ips(after)}")
    if not parts:
        same = [p.endpoints for p in before.ports] == [p.endpoints for p in after.ports]
        parts.append("settings changed" if same else f"endpoints changed ({count})")
    return f"{key}: {', '.join(parts)}"


def summary(changes: Mapping[str, Change], shown: int = SHOWN) -> str:
    """The first `shown` services by key, and how many more; "" when none changed."""
    keys = sorted(changes)
    words = [describe(key, *changes[key]) for key in keys[:shown]]
    if len(keys) > shown:
        words.append(f"and {len(keys) - shown} more")
    return "; ".join(words)


def _ports(service: Service) -> str:
    return ",".join(str(p.port) for p in service.ports) or "none"


def _ips(service: Service) -> str:
    return ",".join(service.cluster_ips) or "none"
