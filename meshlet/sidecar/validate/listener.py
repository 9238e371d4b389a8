"""Listener -> ListenerConfig (pure): an address and the one network filter behind it,
a tcp_proxy (L4) or an http_connection_manager whose routes come over RDS."""

from __future__ import annotations

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshlet.sidecar.state import HttpConfig, ListenerConfig
from meshlet.sidecar.validate import fields
from meshlet.sidecar.validate.errors import Where
from meshlet.xds import contract
from meshlet.xds.error_detail import quoted as q

_TCP_PROXY = fields.type_url(tcp_proxy_pb2.TcpProxy)
_HCM = fields.type_url(hcm_pb2.HttpConnectionManager)
_ROUTER = fields.type_url(router_pb2.Router)
_CODECS = {
    hcm_pb2.HttpConnectionManager.AUTO: "AUTO",
    hcm_pb2.HttpConnectionManager.HTTP1: "HTTP1",
    hcm_pb2.HttpConnectionManager.HTTP2: "HTTP2",
}
# What an Upgrade may become: an L4 tunnel to the picked endpoint.
_UPGRADES = frozenset({"websocket"})
# HttpConnectionManager fields that change what a request becomes: meshlet does
# none of it, so a manager that sets one is refused rather than half honoured.
_HCM_UNSUPPORTED = (
    "scoped_routes",
    "tracing",
    "forward_client_cert_details",
    "set_current_client_cert_details",
    "internal_address_config",
    "local_reply_config",
    "request_id_extension",
    "original_ip_detection_extensions",
    "early_header_mutation_extensions",
    "path_normalization_options",
    "normalize_path",
    "strip_matching_host_port",
    "strip_any_host_port",
    "http3_protocol_options",
)


def _filters_seen(chain: listener_components_pb2.FilterChain) -> str:
    shown = [q(f.name) or fields.type_name(f.typed_config) for f in chain.filters[: fields.LISTED]]
    return fields.listing(shown, len(chain.filters), "none")


def _tcp_proxy(where: Where, path: str, proxy: tcp_proxy_pb2.TcpProxy) -> tuple[bool, float]:
    """Whether the proxy hashes on the client's IP, and its idle timeout."""
    if proxy.WhichOneof("cluster_specifier") != "cluster" or not proxy.cluster:
        raise where.fail(f"{path} must name one cluster (weighted_clusters is not supported)")
    if proxy.HasField("tunneling_config"):
        raise where.fail(f"{path}.tunneling_config is not supported")
    hash_source_ip = False
    for k, policy in enumerate(proxy.hash_policy):
        kind = policy.WhichOneof("policy_specifier")
        if kind != "source_ip":
            raise where.fail(f"{path}.hash_policy[{k}] {kind} is not supported (only source_ip)")
        hash_source_ip = True
    idle_timeout = contract.TCP_PROXY_IDLE_TIMEOUT_SECONDS
    if proxy.HasField("idle_timeout"):
        idle_timeout = fields.seconds(where, f"{path}.idle_timeout", proxy.idle_timeout)
        if idle_timeout < 0:
            raise where.fail(f"{path}.idle_timeout must not be negative")
    return hash_source_ip, idle_timeout


def _http_filters(where: Where, path: str, manager: hcm_pb2.HttpConnectionManager) -> None:
    filters = manager.http_filters
    if len(filters) != 1 or filters[0].typed_config.type_url != _ROUTER:
        shown = [q(f.name) or fields.type_name(f.typed_config) for f in filters[: fields.LISTED]]
        got = fields.listing(shown, len(filters), "none")
        raise where.fail(f"{path}.http_filters must be the router alone (got {got})")
    router = fields.decode(
        where, f"{path}.http_filters[0]", filters[0].typed_config, router_pb2.Router
    )
    if router.ListFields():
        raise where.fail(f"{path}.http_filters[0] router settings are not supported")


def _http(where: Where, path: str, manager: hcm_pb2.HttpConnectionManager) -> HttpConfig:
    fields.refuse_set(where, path, manager, _HCM_UNSUPPORTED)
    if manager.WhichOneof("route_specifier") != "rds":
        kind = manager.WhichOneof("route_specifier") or "nothing"
        raise where.fail(f"{path} must take its routes from rds (got {kind})")
    rds = manager.rds
    source = rds.config_source.WhichOneof("config_source_specifier")
    if source not in ("ads", "self"):
        raise where.fail(f"{path}.rds.config_source must be ADS (got {source or 'nothing'})")
    if not rds.route_config_name:
        raise where.fail(f"{path}.rds.route_config_name is empty")
    codec = _CODECS.get(manager.codec_type)
    if codec is None:
        name = fields.enum_name(
            where, f"{path}.codec_type", hcm_pb2.HttpConnectionManager.CodecType, manager.codec_type
        )
        raise where.fail(f"{path}.codec_type {name} is not supported")
    _http_filters(where, path, manager)
    upgrades = set()
    for i, upgrade in enumerate(manager.upgrade_configs):
        kind = upgrade.upgrade_type.lower()
        if kind not in _UPGRADES or upgrade.filters:
            raise where.fail(
                f'{path}.upgrade_configs[{i}] "{q(upgrade.upgrade_type)}" is not supported'
                " (only websocket, without filters)"
            )
        if not upgrade.HasField("enabled") or upgrade.enabled.value:
            upgrades.add(kind)
    headers_kb = contract.MAX_REQUEST_HEADERS_KB
    if manager.HasField("max_request_headers_kb"):
        headers_kb = manager.max_request_headers_kb.value
        if not 1 <= headers_kb <= 8192:  # Envoy's own bounds
            raise where.fail(f"{path}.max_request_headers_kb {headers_kb} is out of range 1-8192")
    headers_count = contract.MAX_HEADERS_COUNT
    options = manager.common_http_protocol_options
    if options.HasField("max_headers_count"):
        headers_count = options.max_headers_count.value
        if headers_count < 1:
            raise where.fail(
                f"{path}.common_http_protocol_options.max_headers_count must be positive"
            )
    return HttpConfig(
        route_config=rds.route_config_name,
        codec=codec,
        max_request_headers_kb=headers_kb,
        max_headers_count=headers_count,
        upgrades=frozenset(upgrades),
    )


def decode_listener(name: str, listener: listener_pb2.Listener) -> ListenerConfig | None:
    """A socket listener's config; None for an API listener, which is for proxyless gRPC."""
    if listener.HasField("api_listener"):
        return None
    where = Where("Listener", name)
    if listener.HasField("internal_listener"):
        raise where.fail("internal_listener is not supported")
    if not listener.HasField("address"):
        raise where.fail("has no address")
    ip, port = fields.socket_address(where, "address", listener.address)
    chains = [(f"filter_chains[{i}]", c) for i, c in enumerate(listener.filter_chains)]
    if listener.HasField("default_filter_chain"):
        chains.append(("default_filter_chain", listener.default_filter_chain))
    if len(chains) != 1:
        raise where.fail(f"has {len(chains)} filter chains; meshlet supports exactly one")
    path, chain = chains[0]
    if chain.HasField("transport_socket"):
        raise where.fail(f"{path}.transport_socket (TLS) is not supported")
    filters = chain.filters
    kind = filters[0].typed_config.type_url if len(filters) == 1 else ""
    if kind == _HCM:
        manager = fields.decode(
            where, f"{path}.filters[0]", filters[0].typed_config, hcm_pb2.HttpConnectionManager
        )
        http = _http(where, f"{path}.filters[0] http_connection_manager", manager)
        if listener.use_original_dst.value:
            raise where.fail("use_original_dst with an http_connection_manager is not supported")
        return ListenerConfig(name=name, address=ip, port=port, cluster="", http=http)
    if kind != _TCP_PROXY:
        raise where.fail(
            f"{path}.filters must be a single tcp_proxy or http_connection_manager"
            f" (got {_filters_seen(chain)})"
        )
    proxy = fields.decode(
        where, f"{path}.filters[0]", filters[0].typed_config, tcp_proxy_pb2.TcpProxy
    )
    hash_source_ip, idle_timeout = _tcp_proxy(where, f"{path}.filters[0] tcp_proxy", proxy)
    return ListenerConfig(
        name=name,
        address=ip,
        port=port,
        cluster=proxy.cluster,
        hash_source_ip=hash_source_ip,
        use_original_dst=listener.use_original_dst.value,
        idle_timeout_seconds=idle_timeout,
    )
