"""Service port -> socket Listener (VIP:port, tcp_proxy) and API listener (proxyless gRPC)."""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import wrappers_pb2

from meshlet.model import LbPolicy, Service
from meshlet.xds import types
from meshlet.xds.http import http_filter_chain
from meshlet.xds.wire import pack

TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
_HASHING_POLICIES = frozenset({LbPolicy.RING_HASH, LbPolicy.MAGLEV})


def hashes_client(service: Service) -> bool:
    """Whether the service's balancer keys on its client (ClientIP affinity, a hash policy)."""
    return service.client_ip_affinity or service.lb_policy in _HASHING_POLICIES


def _tcp_proxy_chain(cluster: str, hash_source_ip: bool) -> listener_components_pb2.FilterChain:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster)
    if hash_source_ip:
        # The only key an L4 hash has: the client's address (ClientIP affinity).
        proxy.hash_policy.add().source_ip.SetInParent()
    chain = listener_components_pb2.FilterChain()
    chain.filters.add(name=TCP_PROXY_FILTER, typed_config=pack(proxy))
    return chain


def _socket_address(ip: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=ip, port_value=port)
    )


def build_socket_listener(
    service: Service, name: str, ip: str, port: int, cluster: str, route_config: str = ""
) -> listener_pb2.Listener:
    """A VIP:port's listener: a tcp_proxy to `cluster`, or for an HTTP port an
    http_connection_manager whose routes (`route_config`) come over RDS."""
    if route_config:
        chain = http_filter_chain(route_config)
    else:
        chain = _tcp_proxy_chain(cluster, hashes_client(service))
    return listener_pb2.Listener(
        name=name,
        address=_socket_address(ip, port),
        # The VIP exists on no interface: connections reach this listener through
        # the virtual outbound listener's original-destination hand-off.
        bind_to_port=wrappers_pb2.BoolValue(value=False),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[chain],
    )


def build_outbound_listener(port: int) -> listener_pb2.Listener:
    """The capture target: hands each connection to the listener of its original destination."""
    return listener_pb2.Listener(
        name=types.OUTBOUND_LISTENER,
        address=_socket_address("0.0.0.0", port),
        use_original_dst=wrappers_pb2.BoolValue(value=True),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[_tcp_proxy_chain(types.PASSTHROUGH_CLUSTER, False)],
    )


def build_api_listener(service: Service, name: str, cluster: str) -> listener_pb2.Listener:
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix=""),
        route=route_components_pb2.RouteAction(cluster=cluster),
    )
    if hashes_client(service):
        # Proxyless clients have no source IP to hash; gRPC's channel id gives
        # the same stickiness per client.
        route.route.hash_policy.add().filter_state.key = "io.grpc.channel_id"
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        route_config=route_pb2.RouteConfiguration(
            name=name,
            virtual_hosts=[
                route_components_pb2.VirtualHost(name=name, domains=["*"], routes=[route])
            ],
        ),
        http_filters=[
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=pack(router_pb2.Router())
            )
        ],
    )
    listener = listener_pb2.Listener(name=name)
    listener.api_listener.api_listener.CopyFrom(pack(manager))
    return listener
