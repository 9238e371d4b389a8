"""What the sidecar has accepted from the control plane: one immutable value, swapped whole.

The xDS client builds a new SidecarState from every accepted response; the DNS
server and the proxy only ever read the latest one, never a half-applied update.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from meshlet._proto.meshlet.v1.nametable_pb2 import NameTable
from meshlet.model import Endpoint, LbPolicy


@dataclass(frozen=True)
class OutlierConfig:
    consecutive_failures: int = 5
    interval_seconds: float = 5.0
    base_ejection_seconds: float = 30.0
    max_ejection_percent: int = 50


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    lb_policy: LbPolicy = LbPolicy.ROUND_ROBIN
    connect_timeout_seconds: float = 5.0
    max_connections: int = 1024
    outlier: OutlierConfig = OutlierConfig()
    prefer_same_zone: bool = False
    # ORIGINAL_DST (the passthrough cluster): connect to where the client meant to.
    original_destination: bool = False
    service: str = ""
    namespace: str = ""


@dataclass(frozen=True)
class ListenerConfig:
    name: str
    address: str
    port: int
    cluster: str
    # tcp_proxy hash_policy source_ip: ring hash / maglev keyed on the client IP.
    hash_source_ip: bool = False


@dataclass(frozen=True)
class AcceptedResource:
    """One resource as accepted, for /config_dump."""

    name: str
    version: str
    json: Mapping[str, object]


@dataclass(frozen=True)
class SidecarState:
    clusters: Mapping[str, ClusterConfig] = field(default_factory=dict)
    # Cluster name -> endpoints (from ClusterLoadAssignments).
    endpoints: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    # (VIP, port) -> the listener for connections to it.
    listeners: Mapping[tuple[str, int], ListenerConfig] = field(default_factory=dict)
    name_table: NameTable | None = None
    # type URL -> name -> what was accepted, for /config_dump.
    accepted: Mapping[str, Mapping[str, AcceptedResource]] = field(default_factory=dict)
    # type URL -> the version_info (SotW) or system version (delta) last accepted.
    type_versions: Mapping[str, str] = field(default_factory=dict)
