"""Listener -> ListenerConfig (pure): an address and the one tcp_proxy behind it."""

from __future__ import annotations

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshlet.sidecar.state import ListenerConfig
from meshlet.sidecar.validate import fields
from meshlet.sidecar.validate.errors import Where
from meshlet.xds import contract
from meshlet.xds.error_detail import quoted as q

_TCP_PROXY = "type.googleapis.com/" + tcp_proxy_pb2.TcpProxy.DESCRIPTOR.full_name


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
    if len(filters) != 1 or filters[0].typed_config.type_url != _TCP_PROXY:
        raise where.fail(f"{path}.filters must be a single tcp_proxy (got {_filters_seen(chain)})")
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
