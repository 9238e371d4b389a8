"""Service port -> Cluster and ClusterLoadAssignment (pure)."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.maglev.v3 import maglev_pb2
from envoy.extensions.load_balancing_policies.random.v3 import random_pb2
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from google.protobuf import struct_pb2, wrappers_pb2
from google.protobuf.message import Message

from meshlet.app_protocols import PortProtocol
from meshlet.model import Endpoint, Health, LbPolicy, Service, ServicePort
from meshlet.xds import contract, types
from meshlet.xds.http import upstream_protocol_options
from meshlet.xds.wire import duration, pack

# Outlier detection, where meshlet chooses other than Envoy's defaults (the rest
# are in meshlet.xds.contract): look every 5 s, and eject up to half a cluster.
_OUTLIER_INTERVAL_SECONDS = 5
_MAX_EJECTION_PERCENT = 50

_POLICY_MESSAGES: dict[LbPolicy, tuple[str, type[Message]]] = {
    LbPolicy.ROUND_ROBIN: ("envoy.load_balancing_policies.round_robin", round_robin_pb2.RoundRobin),
    LbPolicy.LEAST_REQUEST: (
        "envoy.load_balancing_policies.least_request",
        least_request_pb2.LeastRequest,
    ),
    LbPolicy.RANDOM: ("envoy.load_balancing_policies.random", random_pb2.Random),
    LbPolicy.RING_HASH: ("envoy.load_balancing_policies.ring_hash", ring_hash_pb2.RingHash),
    LbPolicy.MAGLEV: ("envoy.load_balancing_policies.maglev", maglev_pb2.Maglev),
}

_HEALTH = {
    Health.HEALTHY: health_check_pb2.HEALTHY,
    Health.DRAINING: health_check_pb2.DRAINING,
}


# Made once: every cluster carries the same three (a message field copies them).
_CONNECT_TIMEOUT = duration(contract.CONNECT_TIMEOUT_SECONDS)
_OUTLIER_INTERVAL = duration(_OUTLIER_INTERVAL_SECONDS)
_BASE_EJECTION = duration(contract.OUTLIER_BASE_EJECTION_SECONDS)


def _policy_entry(policy: LbPolicy) -> cluster_pb2.LoadBalancingPolicy.Policy:
    name, message_type = _POLICY_MESSAGES[policy]
    entry = cluster_pb2.LoadBalancingPolicy.Policy()
    entry.typed_extension_config.name = name
    entry.typed_extension_config.typed_config.CopyFrom(pack(message_type()))
    return entry


def _load_balancing_policy(policy: LbPolicy) -> cluster_pb2.LoadBalancingPolicy:
    # The list form, ending in round robin: Envoy and gRPC each take the first
    # entry they know, so a policy gRPC lacks (maglev) degrades to round robin
    # instead of a NACK, which the deprecated lb_policy enum would cause.
    policies = [_policy_entry(policy)]
    if policy is not LbPolicy.ROUND_ROBIN:
        policies.append(_policy_entry(LbPolicy.ROUND_ROBIN))
    return cluster_pb2.LoadBalancingPolicy(policies=policies)


def port_lb_policy(service: Service, protocol: PortProtocol) -> LbPolicy:
    """The Service's policy; where it chose none, least request for an HTTP port (power
    of two choices on open requests: Istio's default, Envoy's LEAST_REQUEST with
    choice_count 2) and round robin (or ClientIP's ring hash) for a TCP one."""
    if protocol.is_http and service.lb_policy_default and not service.client_ip_affinity:
        return LbPolicy.LEAST_REQUEST
    return service.lb_policy


def build_cluster(
    service: Service, name: str, protocol: PortProtocol = PortProtocol.TCP
) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        connect_timeout=_CONNECT_TIMEOUT,
        load_balancing_policy=_load_balancing_policy(port_lb_policy(service, protocol)),
        # Written out even where they equal Envoy's defaults: every peer reads the same.
        outlier_detection=outlier_detection_pb2.OutlierDetection(
            consecutive_5xx=wrappers_pb2.UInt32Value(value=contract.OUTLIER_CONSECUTIVE_5XX),
            interval=_OUTLIER_INTERVAL,
            base_ejection_time=_BASE_EJECTION,
            max_ejection_percent=wrappers_pb2.UInt32Value(value=_MAX_EJECTION_PERCENT),
        ),
    )
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    cluster.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.V3
    cluster.circuit_breakers.thresholds.add(
        max_connections=wrappers_pb2.UInt32Value(value=contract.MAX_CONNECTIONS)
    )
    info = struct_pb2.Struct()
    info.update({contract.SERVICE: service.name, contract.NAMESPACE: service.namespace})
    if service.prefer_same_zone:
        info.update({contract.PREFER_SAME_ZONE: True})
    if service.client_ip_affinity:
        info.update({contract.CLIENT_IP_AFFINITY: True})
    cluster.metadata.filter_metadata[contract.METADATA_KEY].CopyFrom(info)
    if protocol.is_http:
        for key, options in upstream_protocol_options(protocol is PortProtocol.HTTP2).items():
            cluster.typed_extension_protocol_options[key].CopyFrom(options)
    return cluster


def build_passthrough_cluster() -> cluster_pb2.Cluster:
    """Where the virtual outbound listener sends destinations that are no service."""
    return cluster_pb2.Cluster(
        name=types.PASSTHROUGH_CLUSTER,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=_CONNECT_TIMEOUT,
    )


def _lb_endpoint(endpoint: Endpoint) -> endpoint_components_pb2.LbEndpoint:
    lb_endpoint = endpoint_components_pb2.LbEndpoint(
        health_status=_HEALTH[endpoint.health],
        load_balancing_weight=wrappers_pb2.UInt32Value(value=endpoint.weight),
    )
    lb_endpoint.endpoint.address.socket_address.CopyFrom(
        address_pb2.SocketAddress(address=endpoint.address, port_value=endpoint.port)
    )
    if endpoint.hostname:
        lb_endpoint.endpoint.hostname = endpoint.hostname
    return lb_endpoint


def build_load_assignment(port: ServicePort, name: str) -> endpoint_pb2.ClusterLoadAssignment:
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    by_zone: dict[str, list[Endpoint]] = {}
    for endpoint in port.endpoints:
        by_zone.setdefault(endpoint.zone, []).append(endpoint)
    for zone in sorted(by_zone):
        endpoints = by_zone[zone]
        # gRPC rejects a locality without `locality` or without a weight; the
        # weight is the locality's share of endpoints so traffic spreads evenly.
        locality = assignment.endpoints.add(
            load_balancing_weight=wrappers_pb2.UInt32Value(value=sum(e.weight for e in endpoints)),
            lb_endpoints=[_lb_endpoint(e) for e in endpoints],
        )
        locality.locality.SetInParent()
        locality.locality.zone = zone
    return assignment
