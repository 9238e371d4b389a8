"""Original destination -> what to do with the connection, rebuilt when the state changes.

Per connection the proxy does one dict lookup: (ip, port) -> Route. What a route
needs (the cluster's config and counters) is prepared when an accepted xDS state
arrives, not per connection. A cluster's balancer is built the first time a
connection needs it: a sidecar of a mesh with 10,000 services talks to a few of
them, and builds (and rebuilds on every EDS change) only their balancers.

A cluster's runtime (balancer, open connections, counters) lives on across
states for as long as the cluster exists, and a new balancer takes the old
one's hosts, so an EDS update changes where new connections go and nothing
else: open connections keep their endpoint.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshlet.model import Endpoint, LbPolicy
from meshlet.sidecar.proxy.balancer import (
    ClusterBalancer,
    HostLoad,
    open_connections,
    open_requests,
)
from meshlet.sidecar.proxy.counters import ClusterCounters
from meshlet.sidecar.proxy.original_dst import destination_key
from meshlet.sidecar.state import ClusterConfig, ListenerConfig, RouteConfig, SidecarState
from meshlet.xds import contract, types


@dataclass(eq=False, slots=True)
class ClusterRuntime:
    """One cluster as the proxy runs it: its balancer, open connections and counters."""

    name: str
    config: ClusterConfig
    endpoints: tuple[Endpoint, ...] = ()
    zone: str = ""
    rng: random.Random | None = None
    load: HostLoad = open_connections  # what least request compares
    # Its requests are balanced one by one (an HTTP port's route points at it).
    http: bool = False
    # None until a connection needs it (see balancer()).
    built: ClusterBalancer | None = None
    active: int = 0  # open connections and connects in progress (the circuit breaker's count)
    counters: ClusterCounters = field(default_factory=ClusterCounters)

    @property
    def used(self) -> bool:
        """Whether any connection came to it (its balancer is built at the first)."""
        counters = self.counters
        return (
            self.built is not None or counters.opened > 0 or self.active > 0 or counters.refused > 0
        )

    def _host_load(self) -> HostLoad:
        # An HTTP cluster's requests are balanced one by one: compare open requests.
        return open_requests if self.http or self.config.http2 else self.load

    def balancer(self) -> ClusterBalancer:
        built = self.built
        if built is None:
            built = self.built = ClusterBalancer(
                self.config, self.endpoints, self.zone, rng=self.rng, load=self._host_load()
            )
        return built

    def balance_requests(self) -> None:
        """From now on least request compares open requests (an HTTP route uses it)."""
        if self.http:
            return
        self.http = True
        if self.built is not None:
            self.built = ClusterBalancer(
                self.config, self.endpoints, self.zone, self.built, self.rng, open_requests
            )

    def change(self, config: ClusterConfig, endpoints: tuple[Endpoint, ...]) -> None:
        if config == self.config and endpoints is self.endpoints:
            return
        self.config, self.endpoints = config, endpoints
        if self.built is not None:
            self.built = ClusterBalancer(
                config, endpoints, self.zone, self.built, self.rng, self._host_load()
            )


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """What the HTTP handler needs of a listener: its routes and its header limits."""

    routes: RouteConfig
    max_headers_count: int = contract.MAX_HEADERS_COUNT
    upstream_http2: bool = False  # requests go upstream as HTTP/2 (else HTTP/1.1)
    codec: str = "AUTO"  # what clients may speak: AUTO (either), HTTP1 or HTTP2


@dataclass(frozen=True, eq=False, slots=True)
class Route:
    cluster: ClusterRuntime
    # Hash the client's IP (ClientIP affinity, ring hash / maglev on the source).
    hash_source_ip: bool = False
    idle_timeout: float = contract.TCP_PROXY_IDLE_TIMEOUT_SECONDS
    passthrough: bool = False
    # A hashing policy without a source-IP hash: each connection hashes a random key.
    random_key: bool = False
    # Requests balanced one by one (an HTTP port); None: relayed at L4.
    http: HttpRoute | None = None


# Before the first config, and when none names one: connect where the client meant to.
_DEFAULT_PASSTHROUGH = ClusterConfig(name=types.PASSTHROUGH_CLUSTER, original_destination=True)


def _default_passthrough() -> Route:
    return Route(ClusterRuntime(_DEFAULT_PASSTHROUGH.name, _DEFAULT_PASSTHROUGH), passthrough=True)


@dataclass
class Router:
    zone: str = ""
    # Where round robin starts in a new balancer (Envoy starts at a random place too,
    # so sidecars do not all send their first connections to the same endpoint).
    rng: random.Random = field(default_factory=random.Random)
    # destination_key(VIP, port) -> Route: what the proxy looks up per connection.
    routes: Mapping[bytes, Route] = field(default_factory=dict)
    clusters: dict[str, ClusterRuntime] = field(default_factory=dict)
    # Removed clusters whose connections are still open: one that comes back takes its
    # runtime up again, so its circuit breaker still counts those connections.
    retired: dict[str, ClusterRuntime] = field(default_factory=dict)
    passthrough: Route = field(init=False)
    _default: Route = field(default_factory=_default_passthrough)
    _state: SidecarState | None = None

    def __post_init__(self) -> None:
        self.passthrough = self._default

    def route(self, key: bytes) -> Route:
        """The route for a destination_key (the passthrough for any other destination)."""
        return self.routes.get(key) or self.passthrough

    def update(self, state: SidecarState) -> None:
        """Take a newly accepted state (the xDS client calls this for every one)."""
        if state is self._state:
            return
        previous, self._state = self._state, state
        if previous is not None and _endpoints_only(previous, state):
            # An EDS update: only the clusters whose endpoints changed, each rebuilt
            # alone; the routes, which point at the runtimes, stay as they are.
            for name, held in self.clusters.items():
                endpoints = state.endpoints.get(name, ())
                if endpoints is not held.endpoints:
                    held.change(held.config, endpoints)
            return
        clusters: dict[str, ClusterRuntime] = {}
        for name, config in state.clusters.items():
            endpoints = state.endpoints.get(name, ())
            runtime = self.clusters.get(name) or self.retired.pop(name, None)
            if runtime is None:
                runtime = ClusterRuntime(name, config, endpoints, self.zone, self.rng)
            else:
                runtime.change(config, endpoints)
            clusters[name] = runtime
        gone = [
            *self.retired.values(),
            *(r for r in self.clusters.values() if r.name not in clusters),
        ]
        self.retired = {r.name: r for r in gone if r.active > 0 and r.name not in clusters}
        self.clusters = clusters
        routes: dict[bytes, Route] = {}
        for (ip, port), listener in state.listeners.items():
            target = _target(listener, state)
            runtime = clusters.get(target[0]) if target is not None else None
            if runtime is not None and target is not None:
                routes[destination_key(ip, port)] = _route(runtime, listener, *target[1:])
        self.routes = routes
        outbound = state.outbound_listener
        fallback = clusters.get(outbound.cluster) if outbound is not None else None
        if outbound is not None and fallback is not None and fallback.config.original_destination:
            self.passthrough = _route(fallback, outbound, outbound.hash_source_ip)
        else:
            self.passthrough = self._default


def _endpoints_only(before: SidecarState, after: SidecarState) -> bool:
    """Whether only endpoints changed between the two states (clusters, listeners and
    the capture target are the very same objects)."""
    return (
        after.clusters is before.clusters
        and after.listeners is before.listeners
        and after.outbound_listener is before.outbound_listener
        and after.routes is before.routes
    )


def _target(
    listener: ListenerConfig, state: SidecarState
) -> tuple[str, bool, RouteConfig | None] | None:
    """The cluster a listener's connections go to, whether they hash the client's IP,
    and an HTTP listener's routes; None while those routes have not come.
    """
    if listener.http is None:
        return listener.cluster, listener.hash_source_ip, None
    routes = state.routes.get(listener.http.route_config)
    if routes is None:
        return None
    return routes.default.cluster, routes.default.hash_source_ip, routes


_HASHING = frozenset({LbPolicy.RING_HASH, LbPolicy.MAGLEV})


def _route(
    runtime: ClusterRuntime,
    listener: ListenerConfig,
    hash_client: bool,
    routes: RouteConfig | None = None,
) -> Route:
    config = runtime.config
    hash_source_ip = hash_client or config.client_ip_affinity
    http = None
    manager = listener.http
    if routes is not None and manager is not None:
        http = HttpRoute(routes, manager.max_headers_count, config.http2, manager.codec)
        runtime.balance_requests()
    return Route(
        runtime,
        hash_source_ip=hash_source_ip,
        idle_timeout=listener.idle_timeout_seconds,
        passthrough=config.original_destination,
        random_key=not hash_source_ip and config.lb_policy in _HASHING,
        http=http,
    )
