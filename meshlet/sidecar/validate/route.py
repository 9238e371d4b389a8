"""RouteConfiguration -> RouteConfig (pure): one virtual host for every domain, and its
routes in order, each to one cluster with its timeout, retry policy and hash.

The sidecar balances requests; it does not route them by content. So a route may
match on the request's method alone (how a retry policy is kept to idempotent
methods), and the last route must match every request. Anything else a route
could do (rewrites, redirects, header matches, weighted clusters) is refused with
its field, never half honoured.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2

from meshlet.sidecar.state import RetryPolicy, RouteConfig, RouteRule
from meshlet.sidecar.validate import fields
from meshlet.sidecar.validate.errors import Where
from meshlet.xds import contract
from meshlet.xds.error_detail import quoted as q

# The retry_on conditions the proxy honours. Each either means the server never saw
# the request, or names a response the route's policy says is safe to retry.
RETRY_ON = frozenset(
    {
        "connect-failure",
        "refused-stream",
        "reset-before-request",
        "retriable-status-codes",
        "5xx",
        "gateway-error",
        "unavailable",
    }
)
# The one retry host predicate the proxy has: it always tries another endpoint.
_PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
# Its config's type, imported so /config_dump can print the routes that carry one.
_PREVIOUS_HOSTS_TYPE = fields.type_url(previous_hosts_pb2.PreviousHostsPredicate)
_METHOD = ":method"

_ROUTE_CONFIG_UNSUPPORTED = (
    "vhds",
    "request_headers_to_add",
    "request_headers_to_remove",
    "response_headers_to_add",
    "response_headers_to_remove",
    "typed_per_filter_config",
    "cluster_specifier_plugins",
    "request_mirror_policies",
)
_VIRTUAL_HOST_UNSUPPORTED = (
    "require_tls",
    "virtual_clusters",
    "rate_limits",
    "request_headers_to_add",
    "request_headers_to_remove",
    "response_headers_to_add",
    "response_headers_to_remove",
    "cors",
    "typed_per_filter_config",
    "retry_policy",
    "retry_policy_typed_config",
    "hedge_policy",
    "request_mirror_policies",
    "matcher",
)
_ROUTE_UNSUPPORTED = (
    "metadata",
    "decorator",
    "typed_per_filter_config",
    "request_headers_to_add",
    "request_headers_to_remove",
    "response_headers_to_add",
    "response_headers_to_remove",
    "tracing",
    "per_request_buffer_limit_bytes",
)
_MATCH_UNSUPPORTED = ("query_parameters", "grpc", "tls_context", "runtime_fraction")
_ACTION_UNSUPPORTED = (
    "metadata_match",
    "prefix_rewrite",
    "regex_rewrite",
    "path_rewrite_policy",
    "host_rewrite_literal",
    "host_rewrite_header",
    "host_rewrite_path_regex",
    "auto_host_rewrite",
    "idle_timeout",
    "request_mirror_policies",
    "rate_limits",
    "hedge_policy",
    "max_stream_duration",
    "cors",
    "upgrade_configs",
    "internal_redirect_policy",
    "retry_policy_typed_config",
)
_RETRY_UNSUPPORTED = (
    "per_try_idle_timeout",
    "retry_priority",
    "retry_options_predicates",
    "rate_limited_retry_back_off",
    "retriable_headers",
    "retriable_request_headers",
)


def _methods(where: Where, path: str, match: rc_pb2.RouteMatch) -> frozenset[str] | None:
    """The methods a route matches (its `:method` exact matches); None for every request."""
    if not match.headers:
        return None
    methods: set[str] = set()
    for i, header in enumerate(match.headers):
        at = f"{path}.headers[{i}]"
        if header.name != _METHOD:
            raise where.fail(f'{at} matches "{q(header.name)}" (only :method is supported)')
        kind = header.WhichOneof("header_match_specifier")
        string_match = header.string_match
        if (
            kind != "string_match"
            or string_match.WhichOneof("match_pattern") != "exact"
            or string_match.ignore_case
            or header.invert_match
            or header.treat_missing_header_as_empty
        ):
            raise where.fail(f"{at} must be an exact string_match")
        methods.add(string_match.exact)
    if len(methods) > 1:
        # Every header matcher of a route must match: two methods match nothing.
        raise where.fail(f"{path}.headers name {len(methods)} methods; a route matches one")
    return frozenset(methods)


def _match(where: Where, path: str, match: rc_pb2.RouteMatch) -> frozenset[str] | None:
    fields.refuse_set(where, path, match, _MATCH_UNSUPPORTED)
    kind = match.WhichOneof("path_specifier")
    if kind != "prefix" or match.prefix not in ("", "/"):
        shown = f'{kind} "{q(getattr(match, kind))}"' if kind else "nothing"
        raise where.fail(f'{path} must match the prefix "/" (got {shown})')
    return _methods(where, path, match)


def _retry(where: Where, path: str, policy: rc_pb2.RetryPolicy) -> RetryPolicy:
    fields.refuse_set(where, path, policy, _RETRY_UNSUPPORTED)
    conditions = {c.strip() for c in policy.retry_on.split(",") if c.strip()}
    unknown = sorted(conditions - RETRY_ON)
    if unknown:
        shown = fields.listing([f'"{q(c)}"' for c in unknown[: fields.LISTED]], len(unknown), "")
        raise where.fail(
            f"{path}.retry_on {shown} is not supported (meshlet retries what the server"
            " never saw, and the responses a policy names)"
        )
    for i, predicate in enumerate(policy.retry_host_predicate):
        kind = predicate.typed_config.type_url
        if predicate.name != _PREVIOUS_HOSTS or kind not in ("", _PREVIOUS_HOSTS_TYPE):
            raise where.fail(
                f'{path}.retry_host_predicate[{i}] "{q(predicate.name)}" is not supported'
            )
    codes = set()
    for i, code in enumerate(policy.retriable_status_codes):
        if not 100 <= code <= 599:
            raise where.fail(f"{path}.retriable_status_codes[{i}] {code} is not an HTTP status")
        codes.add(code)
    retries = contract.NUM_RETRIES
    if policy.HasField("num_retries"):
        retries = policy.num_retries.value
    per_try = 0.0
    if policy.HasField("per_try_timeout"):
        per_try = fields.seconds(where, f"{path}.per_try_timeout", policy.per_try_timeout)
        if per_try < 0:
            raise where.fail(f"{path}.per_try_timeout must not be negative")
    base = contract.RETRY_BACKOFF_BASE_SECONDS
    backoff = policy.retry_back_off
    if policy.HasField("retry_back_off"):
        base = fields.positive_seconds(
            where, f"{path}.retry_back_off.base_interval", backoff.base_interval
        )
    maximum = base * 10
    if backoff.HasField("max_interval"):
        maximum = fields.positive_seconds(
            where, f"{path}.retry_back_off.max_interval", backoff.max_interval
        )
        if maximum < base:
            raise where.fail(f"{path}.retry_back_off.max_interval is below its base_interval")
    return RetryPolicy(
        retry_on=frozenset(conditions),
        num_retries=retries,
        per_try_timeout_seconds=per_try,
        retriable_status_codes=frozenset(codes),
        backoff_base_seconds=base,
        backoff_max_seconds=maximum,
    )


def _hash_source_ip(where: Where, path: str, action: rc_pb2.RouteAction) -> bool:
    source_ip = False
    for i, policy in enumerate(action.hash_policy):
        kind = policy.WhichOneof("policy_specifier")
        if kind == "connection_properties" and policy.connection_properties.source_ip:
            source_ip = True
        elif kind == "filter_state" and policy.filter_state.key == "io.grpc.channel_id":
            pass  # proxyless gRPC's channel: the sidecar's client is the connection's source
        else:
            raise where.fail(
                f"{path}.hash_policy[{i}] {kind or 'nothing'} is not supported"
                " (only connection_properties source_ip)"
            )
    return source_ip


def _route(where: Where, path: str, route: rc_pb2.Route) -> RouteRule:
    fields.refuse_set(where, path, route, _ROUTE_UNSUPPORTED)
    methods = _match(where, f"{path}.match", route.match)
    if route.WhichOneof("action") != "route":
        raise where.fail(
            f"{path} {route.WhichOneof('action') or 'nothing'} is not supported (only route)"
        )
    action = route.route
    at = f"{path}.route"
    fields.refuse_set(where, at, action, _ACTION_UNSUPPORTED)
    if action.WhichOneof("cluster_specifier") != "cluster" or not action.cluster:
        raise where.fail(f"{at} must name one cluster (weighted_clusters is not supported)")
    timeout = contract.ROUTE_TIMEOUT_SECONDS
    if action.HasField("timeout"):
        timeout = fields.seconds(where, f"{at}.timeout", action.timeout)
        if timeout < 0:
            raise where.fail(f"{at}.timeout must not be negative")
    retry = (
        _retry(where, f"{at}.retry_policy", action.retry_policy)
        if action.HasField("retry_policy")
        else None
    )
    return RouteRule(
        cluster=action.cluster,
        methods=methods,
        timeout_seconds=timeout,
        retry=retry,
        hash_source_ip=_hash_source_ip(where, at, action),
    )


def decode_route_configuration(name: str, config: route_pb2.RouteConfiguration) -> RouteConfig:
    where = Where("RouteConfiguration", name)
    fields.refuse_set(where, "route configuration", config, _ROUTE_CONFIG_UNSUPPORTED)
    hosts = config.virtual_hosts
    if len(hosts) != 1 or list(hosts[0].domains) != ["*"]:
        shown = fields.listing(
            [f'"{q(h.name)}"' for h in hosts[: fields.LISTED]], len(hosts), "none"
        )
        raise where.fail(f'virtual_hosts must be one virtual host for the domain "*" (got {shown})')
    host = hosts[0]
    fields.refuse_set(where, "virtual_hosts[0]", host, _VIRTUAL_HOST_UNSUPPORTED)
    if not host.routes:
        raise where.fail("virtual_hosts[0].routes is empty")
    routes = tuple(
        _route(where, f"virtual_hosts[0].routes[{i}]", r) for i, r in enumerate(host.routes)
    )
    if routes[-1].methods is not None:
        raise where.fail(
            f"virtual_hosts[0].routes[{len(routes) - 1}] is the last route and must match"
            " every request (no headers)"
        )
    return RouteConfig(name=name, routes=routes)
