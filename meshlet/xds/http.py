"""HTTP service port -> its listener's http_connection_manager, its RouteConfiguration
and its cluster's upstream protocol (pure).

One RouteConfiguration per service port, named like the service's API listener
(`web.default.svc.cluster.local:80`) and shared by its VIPs, so a change is the
size of its service. Routes balance, they do not route by content: one catch-all
route to the port's cluster, after one route per idempotent method, which alone
may retry an HTTP 503 (a request the server answered may have had effects, so
only a method that is safe to repeat, or a Service that says every method is,
is retried after an answer). What the server never saw is retried everywhere.
"""

from __future__ import annotations

from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as options_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2, wrappers_pb2

from meshlet.model import RoutePolicy
from meshlet.xds.wire import duration, pack

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
# Envoy's key for a cluster's upstream HTTP protocol (typed_extension_protocol_options).
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Refused before the server saw it: always safe to retry on another endpoint.
UNSEEN = ("connect-failure", "refused-stream", "reset-before-request")
# Methods RFC 9110 calls idempotent: repeating one has the effect of doing it once.
IDEMPOTENT_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE")
RETRIED_STATUS = 503
_PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
# How often a retry may pick again to avoid the endpoints it tried (Envoy's advice).
_HOST_SELECTION_ATTEMPTS = 5


def http_filter_chain(route_config: str) -> listener_components_pb2.FilterChain:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=route_config,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(
            route_config_name=route_config,
            config_source=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource(),
                resource_api_version=config_source_pb2.V3,
            ),
        ),
        http_filters=[
            hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_pb2.Router()))
        ],
        # An Upgrade (WebSocket) becomes a tunnel to the picked endpoint.
        upgrade_configs=[hcm_pb2.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
    )
    chain = listener_components_pb2.FilterChain()
    chain.filters.add(name=HCM_FILTER, typed_config=pack(manager))
    return chain


def _retry_policy(policy: RoutePolicy, answered_too: bool) -> rc_pb2.RetryPolicy:
    conditions = list(UNSEEN)
    if answered_too:
        conditions += ["retriable-status-codes", "unavailable"]
    retry = rc_pb2.RetryPolicy(
        retry_on=",".join(conditions),
        num_retries=wrappers_pb2.UInt32Value(value=policy.retries),
        retry_host_predicate=[rc_pb2.RetryPolicy.RetryHostPredicate(name=_PREVIOUS_HOSTS)],
        host_selection_retry_max_attempts=_HOST_SELECTION_ATTEMPTS,
    )
    # Envoy requires the predicate's typed config, empty as it is.
    retry.retry_host_predicate[0].typed_config.CopyFrom(
        pack(previous_hosts_pb2.PreviousHostsPredicate())
    )
    if answered_too:
        retry.retriable_status_codes.append(RETRIED_STATUS)
    if policy.per_try_timeout_seconds:
        retry.per_try_timeout.CopyFrom(duration(policy.per_try_timeout_seconds))
    return retry


def _route(
    cluster: str, policy: RoutePolicy, hash_source_ip: bool, method: str | None
) -> rc_pb2.Route:
    action = rc_pb2.RouteAction(cluster=cluster, timeout=duration(policy.timeout_seconds))
    if policy.retries:
        answered_too = method is not None or policy.idempotent
        action.retry_policy.CopyFrom(_retry_policy(policy, answered_too))
    if hash_source_ip:
        action.hash_policy.add().connection_properties.source_ip = True
    match = rc_pb2.RouteMatch(prefix="/")
    if method is not None:
        match.headers.add(name=":method", string_match=string_pb2.StringMatcher(exact=method))
    return rc_pb2.Route(match=match, route=action)


def build_route_configuration(
    name: str, cluster: str, policy: RoutePolicy, hash_source_ip: bool
) -> route_pb2.RouteConfiguration:
    routes = []
    if policy.retries and not policy.idempotent:
        # Only idempotent methods retry a 503; with every method idempotent, one route does.
        routes += [_route(cluster, policy, hash_source_ip, m) for m in IDEMPOTENT_METHODS]
    routes.append(_route(cluster, policy, hash_source_ip, None))
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[rc_pb2.VirtualHost(name=name, domains=["*"], routes=routes)],
    )


def upstream_protocol_options(http2: bool) -> dict[str, any_pb2.Any]:
    """The cluster's typed_extension_protocol_options for HTTP/2 or HTTP/1.1 upstream."""
    options = options_pb2.HttpProtocolOptions()
    if http2:
        options.explicit_http_config.http2_protocol_options.SetInParent()
    else:
        options.explicit_http_config.http_protocol_options.SetInParent()
    return {HTTP_PROTOCOL_OPTIONS: pack(options)}
