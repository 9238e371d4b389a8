"""Cluster -> ClusterConfig (pure): how the sidecar finds, balances and guards its endpoints."""

from __future__ import annotations

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3 import base_pb2
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.maglev.v3 import maglev_pb2
from envoy.extensions.load_balancing_policies.random.v3 import random_pb2
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as http_options_pb2
from google.protobuf import struct_pb2

from meshlet.model import LbPolicy
from meshlet.sidecar.state import ClusterConfig, OutlierConfig
from meshlet.sidecar.validate import fields
from meshlet.sidecar.validate.errors import Where
from meshlet.xds import contract
from meshlet.xds.error_detail import quoted as q

# Policies are chosen by their config's type, as Envoy and gRPC do; the
# extension's name is only a label.
_LB_BY_TYPE = {
    fields.type_url(round_robin_pb2.RoundRobin): LbPolicy.ROUND_ROBIN,
    fields.type_url(least_request_pb2.LeastRequest): LbPolicy.LEAST_REQUEST,
    fields.type_url(random_pb2.Random): LbPolicy.RANDOM,
    fields.type_url(ring_hash_pb2.RingHash): LbPolicy.RING_HASH,
    fields.type_url(maglev_pb2.Maglev): LbPolicy.MAGLEV,
}
_LB_BY_ENUM = {
    Cluster.ROUND_ROBIN: LbPolicy.ROUND_ROBIN,
    Cluster.LEAST_REQUEST: LbPolicy.LEAST_REQUEST,
    Cluster.RANDOM: LbPolicy.RANDOM,
    Cluster.RING_HASH: LbPolicy.RING_HASH,
    Cluster.MAGLEV: LbPolicy.MAGLEV,
}
_PRIORITIES = frozenset(base_pb2.RoutingPriority.values())
# typed_extension_protocol_options: the key Envoy reads the upstream HTTP protocol from.
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HTTP_OPTIONS_TYPE = fields.type_url(http_options_pb2.HttpProtocolOptions)


def _upstream_http2(where: Where, cluster: Cluster) -> bool:
    """Whether requests go upstream as HTTP/2 (explicit_http_config http2_protocol_options)."""
    http2 = False
    for key in sorted(cluster.typed_extension_protocol_options):
        path = f'typed_extension_protocol_options["{q(key)}"]'
        if key != HTTP_PROTOCOL_OPTIONS:
            raise where.fail(f"{path} is not supported")
        packed = cluster.typed_extension_protocol_options[key]
        if packed.type_url != _HTTP_OPTIONS_TYPE:
            raise where.fail(
                f"{path} is of type {fields.type_name(packed)}, not HttpProtocolOptions"
            )
        options = fields.decode(where, path, packed, http_options_pb2.HttpProtocolOptions)
        kind = options.WhichOneof("upstream_protocol_options")
        if kind != "explicit_http_config":
            raise where.fail(
                f"{path} upstream protocol {kind or 'nothing'} is not supported"
                " (explicit_http_config only)"
            )
        explicit = options.explicit_http_config
        http2 = explicit.WhichOneof("protocol_config") == "http2_protocol_options"
        if explicit.WhichOneof("protocol_config") == "http3_protocol_options":
            raise where.fail(f"{path}.explicit_http_config.http3_protocol_options is not supported")
    return http2


def _discovery(where: Where, cluster: Cluster) -> bool:
    """Checks how the cluster finds its endpoints; True for ORIGINAL_DST."""
    if cluster.HasField("cluster_type"):
        raise where.fail(f"cluster_type {q(cluster.cluster_type.name)} is not supported")
    if cluster.type == Cluster.ORIGINAL_DST:
        return True
    if cluster.type != Cluster.EDS:
        kind = fields.enum_name(where, "type", Cluster.DiscoveryType, cluster.type)
        raise where.fail(
            f"type {kind} is not supported (meshlet supports EDS over ADS and ORIGINAL_DST)"
        )
    eds = cluster.eds_cluster_config
    source = eds.eds_config.WhichOneof("config_source_specifier")
    if source not in ("ads", "self"):
        raise where.fail(f"eds_cluster_config.eds_config must be ADS (got {source or 'nothing'})")
    if eds.service_name and eds.service_name != where.name:
        raise where.fail(
            f'eds_cluster_config.service_name "{q(eds.service_name)}" is not supported '
            "(the load assignment must have the cluster's name)"
        )
    return False


def _lb_policy(where: Where, cluster: Cluster) -> LbPolicy:
    if cluster.HasField("load_balancing_policy"):
        for entry in cluster.load_balancing_policy.policies:
            found = _LB_BY_TYPE.get(entry.typed_extension_config.typed_config.type_url)
            if found is not None:
                return found
        entries = cluster.load_balancing_policy.policies
        listed = fields.listing(
            [
                q(e.typed_extension_config.name)
                or fields.type_name(e.typed_extension_config.typed_config)
                for e in entries[: fields.LISTED]
            ],
            len(entries),
            "an empty list",
        )
        raise where.fail(f"load_balancing_policy has no policy meshlet supports (got {listed})")
    policy = _LB_BY_ENUM.get(cluster.lb_policy)
    if policy is None:
        name = fields.enum_name(where, "lb_policy", Cluster.LbPolicy, cluster.lb_policy)
        raise where.fail(f"lb_policy {name} is not supported")
    return policy


def _max_connections(where: Where, cluster: Cluster) -> int:
    found: int | None = None
    for i, threshold in enumerate(cluster.circuit_breakers.thresholds):
        if threshold.priority not in _PRIORITIES:
            path = f"circuit_breakers.thresholds[{i}].priority"
            fields.enum_name(where, path, base_pb2.RoutingPriority, threshold.priority)
        # The first of a priority counts, as in Envoy; HIGH is for requests the proxy never sees.
        if found is None and threshold.priority == base_pb2.DEFAULT:
            found = contract.MAX_CONNECTIONS
            if threshold.HasField("max_connections"):
                found = threshold.max_connections.value
    return contract.MAX_CONNECTIONS if found is None else found


def _outlier(where: Where, cluster: Cluster) -> OutlierConfig:
    if not cluster.HasField("outlier_detection"):
        return OutlierConfig(enabled=False)
    od = cluster.outlier_detection
    path = "outlier_detection"
    consecutive = contract.OUTLIER_CONSECUTIVE_5XX
    if od.HasField("consecutive_5xx"):
        consecutive = od.consecutive_5xx.value
        if consecutive == 0:
            # As Envoy: 0 turns the detector off (Istio's consecutive5xxErrors: 0),
            # and it is the only one meshlet runs.
            return OutlierConfig(enabled=False)
    percent = contract.OUTLIER_MAX_EJECTION_PERCENT
    if od.HasField("max_ejection_percent"):
        percent = od.max_ejection_percent.value
        if percent > 100:
            raise where.fail(f"{path}.max_ejection_percent {percent} is over 100")
    interval = contract.OUTLIER_INTERVAL_SECONDS
    if od.HasField("interval"):
        interval = fields.positive_seconds(where, f"{path}.interval", od.interval)
    base = contract.OUTLIER_BASE_EJECTION_SECONDS
    if od.HasField("base_ejection_time"):
        base = fields.positive_seconds(where, f"{path}.base_ejection_time", od.base_ejection_time)
    return OutlierConfig(
        enabled=True,
        consecutive_failures=consecutive,
        interval_seconds=interval,
        base_ejection_seconds=base,
        max_ejection_percent=percent,
    )


_FLAGS = (contract.PREFER_SAME_ZONE, contract.CLIENT_IP_AFFINITY)
_NAMES = (contract.SERVICE, contract.NAMESPACE)


def _metadata(where: Where, cluster: Cluster) -> dict[str, bool | str]:
    """meshlet's own fields (see meshlet.xds.contract); others are left to other readers."""
    if contract.METADATA_KEY not in cluster.metadata.filter_metadata:
        return {}
    info = cluster.metadata.filter_metadata[contract.METADATA_KEY]
    path = f'metadata.filter_metadata["{contract.METADATA_KEY}"]'
    out: dict[str, bool | str] = {}
    for key in (*_FLAGS, *_NAMES):
        if key not in info.fields:
            continue
        value: struct_pb2.Value = info.fields[key]
        kind, expected = ("bool_value", "bool") if key in _FLAGS else ("string_value", "str")
        if value.WhichOneof("kind") != kind:
            raise where.fail(f"{path}.{key} must be a {expected}")
        if kind == "string_value" and not fields.is_dns_label(value.string_value):
            raise where.fail(
                f'{path}.{key} "{q(value.string_value)}" is not a Kubernetes object name'
            )
        out[key] = getattr(value, kind)
    return out


def decode_cluster(
    name: str, cluster: Cluster, outliers: dict[OutlierConfig, OutlierConfig] | None = None
) -> ClusterConfig:
    """The cluster's config; equal outlier settings are one object through `outliers`
    (most clusters share one)."""
    where = Where("Cluster", name)
    original_destination = _discovery(where, cluster)
    if cluster.HasField("transport_socket"):
        raise where.fail("transport_socket (upstream TLS) is not supported")
    # ORIGINAL_DST connects where the client meant to: nothing to balance.
    lb_policy = LbPolicy.ROUND_ROBIN if original_destination else _lb_policy(where, cluster)
    connect_timeout = contract.CONNECT_TIMEOUT_SECONDS
    if cluster.HasField("connect_timeout"):
        connect_timeout = fields.positive_seconds(where, "connect_timeout", cluster.connect_timeout)
    metadata = _metadata(where, cluster)
    outlier = _outlier(where, cluster)
    if outliers is not None:
        outlier = outliers.setdefault(outlier, outlier)
    return ClusterConfig(
        name=name,
        lb_policy=lb_policy,
        connect_timeout_seconds=connect_timeout,
        max_connections=_max_connections(where, cluster),
        outlier=outlier,
        prefer_same_zone=bool(metadata.get(contract.PREFER_SAME_ZONE, False)),
        original_destination=original_destination,
        service=str(metadata.get(contract.SERVICE, "")),
        namespace=str(metadata.get(contract.NAMESPACE, "")),
        client_ip_affinity=bool(metadata.get(contract.CLIENT_IP_AFFINITY, False)),
        http2=_upstream_http2(where, cluster),
    )
