"""What the sidecar has accepted from the control plane: one immutable value, swapped whole.

The xDS client builds a new SidecarState from every accepted response; the DNS
server and the proxy only ever read the latest one, never a half-applied update.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf import any_pb2, json_format

from meshlet._proto.meshlet.v1.nametable_pb2 import NameTable
from meshlet.model import Endpoint, LbPolicy
from meshlet.xds import contract


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    # False when the cluster has no outlier_detection: never eject.
    enabled: bool = True
    consecutive_failures: int = contract.OUTLIER_CONSECUTIVE_5XX
    interval_seconds: float = contract.OUTLIER_INTERVAL_SECONDS
    base_ejection_seconds: float = contract.OUTLIER_BASE_EJECTION_SECONDS
    max_ejection_percent: int = contract.OUTLIER_MAX_EJECTION_PERCENT


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    lb_policy: LbPolicy = LbPolicy.ROUND_ROBIN
    connect_timeout_seconds: float = contract.CONNECT_TIMEOUT_SECONDS
    max_connections: int = contract.MAX_CONNECTIONS
    outlier: OutlierConfig = OutlierConfig()
    prefer_same_zone: bool = False
    # ORIGINAL_DST (the passthrough cluster): connect to where the client meant to.
    original_destination: bool = False
    service: str = ""
    namespace: str = ""
    # sessionAffinity: ClientIP (the listener's hash_source_ip is what the proxy keys on).
    client_ip_affinity: bool = False
    # The upstream protocol of an HTTP port (typed_extension_protocol_options'
    # explicit_http_config): HTTP/2 where it sets http2_protocol_options.
    http2: bool = False


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """An http_connection_manager: its routes come over RDS, by name."""

    route_config: str
    codec: str = "AUTO"  # HttpConnectionManager.codec_type: AUTO, HTTP1 or HTTP2
    max_request_headers_kb: int = contract.MAX_REQUEST_HEADERS_KB
    max_headers_count: int = contract.MAX_HEADERS_COUNT
    # upgrade_configs: the Upgrade types tunnelled at L4 to the picked endpoint.
    upgrades: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    address: str
    port: int
    # tcp_proxy's cluster; empty for an HTTP listener, whose routes name theirs.
    cluster: str
    # tcp_proxy hash_policy source_ip: ring hash / maglev keyed on the client IP.
    hash_source_ip: bool = False
    # The virtual outbound listener: hands each connection to the listener of its
    # original destination, or to `cluster` (the passthrough) when there is none.
    use_original_dst: bool = False
    # tcp_proxy idle_timeout: a connection with no bytes either way for this long is
    # closed; 0 means never.
    idle_timeout_seconds: float = contract.TCP_PROXY_IDLE_TIMEOUT_SECONDS
    # An http_connection_manager instead of a tcp_proxy.
    http: HttpConfig | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A route's retry_policy, in Envoy's terms."""

    retry_on: frozenset[str] = frozenset()
    num_retries: int = contract.NUM_RETRIES
    per_try_timeout_seconds: float = 0.0  # 0: the route's timeout bounds each try
    retriable_status_codes: frozenset[int] = frozenset()
    backoff_base_seconds: float = contract.RETRY_BACKOFF_BASE_SECONDS
    backoff_max_seconds: float = contract.RETRY_BACKOFF_BASE_SECONDS * 10


@dataclass(frozen=True, slots=True)
class RouteRule:
    """One route: what it matches and where it sends the request."""

    cluster: str
    # A `:method` header match: the request's method is one of these; None matches all.
    methods: frozenset[str] | None = None
    timeout_seconds: float = contract.ROUTE_TIMEOUT_SECONDS  # 0 means none
    retry: RetryPolicy | None = None
    # hash_policy connection_properties source_ip: ring hash / maglev on the client's IP.
    hash_source_ip: bool = False


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """A RouteConfiguration: one virtual host for every domain, its routes in order."""

    name: str
    routes: tuple[RouteRule, ...]

    @property
    def default(self) -> RouteRule:
        """The last route, which matches every request (the decoder makes sure)."""
        return self.routes[-1]


@dataclass(frozen=True, slots=True)
class AcceptedResource:
    """One resource as accepted, for /config_dump."""

    name: str
    version: str
    type_url: str
    # The serialized resource as received (Any.value): kept as bytes, turned into
    # JSON only when asked, so holding it costs no more than the wire size.
    body: bytes

    @property
    def json(self) -> dict[str, object]:
        packed = any_pb2.Any(type_url=self.type_url, value=self.body)
        try:
            result: dict[str, object] = json_format.MessageToDict(packed)
        except (TypeError, KeyError, json_format.Error):  # a type this process cannot print
            return {"@type": self.type_url, "bytes": len(self.body)}
        return result


@dataclass(frozen=True, slots=True)
class SidecarState:
    clusters: Mapping[str, ClusterConfig] = field(default_factory=dict)
    # Cluster name -> endpoints (from ClusterLoadAssignments).
    endpoints: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    # (VIP, port) -> the listener for connections to it.
    listeners: Mapping[tuple[str, int], ListenerConfig] = field(default_factory=dict)
    # The capture target (use_original_dst), kept apart from the per-VIP listeners.
    outbound_listener: ListenerConfig | None = None
    # RouteConfiguration name -> its routes (for the HTTP listeners that name it).
    routes: Mapping[str, RouteConfig] = field(default_factory=dict)
    # Namespace -> its NameTable (one per namespace with services).
    name_tables: Mapping[str, NameTable] = field(default_factory=dict)
    # type URL -> name -> what was accepted, for /config_dump.
    accepted: Mapping[str, Mapping[str, AcceptedResource]] = field(default_factory=dict)
    # type URL -> the version_info (SotW) or system version (delta) last accepted.
    type_versions: Mapping[str, str] = field(default_factory=dict)
