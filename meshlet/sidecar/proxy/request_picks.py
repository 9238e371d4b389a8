"""What the HTTP handlers share about a request's endpoint: the pick, the retry budget,
and what an answer tells outlier detection.

One per proxy, so the turns of least request's tie-break (balancer.open_requests)
count the picks of every handler alike.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from meshlet.sidecar.proxy.balancer import Host
from meshlet.sidecar.proxy.http_retry import Failure, RetryBudget, RetryState
from meshlet.sidecar.proxy.policies import stable_hash
from meshlet.sidecar.proxy.router import ClusterRuntime, Route


class RequestPicks:
    def __init__(
        self, rng: random.Random, cluster_named: Callable[[str], ClusterRuntime | None]
    ) -> None:
        self.rng = rng
        self.cluster_named = cluster_named  # a route's rule names its cluster
        self.picks = 0  # requests picked an endpoint for
        self.budgets: dict[str, RetryBudget] = {}

    def pick(
        self, cluster: ClusterRuntime, tried: list[Host], now: float, key: int | None = None
    ) -> Host | None:
        """An endpoint for one try of a request, counted as open on it (release() gives
        it back); None, counted, when none is left. `key` is what a hashing policy
        hashes (the client's IP, see client_key); None: a random one per request."""
        rng = self.rng
        if key is None:
            key = rng.getrandbits(64)
        host = cluster.balancer().choose(key, tried, now, rng)
        if host is None:
            cluster.counters.no_endpoint += 1
            return None
        tried.append(host)
        host.requests += 1
        self.picks += 1
        host.picked = self.picks
        return host

    @staticmethod
    def client_key(route: Route, peer: tuple[str, int]) -> int | None:
        """What a client connection's requests hash: its IP where the route hashes it
        (ClientIP affinity, ring hash or maglev on the source), else nothing."""
        return stable_hash(peer[0]) if route.hash_source_ip else None

    @staticmethod
    def release(host: Host) -> None:
        host.requests -= 1

    def budget(self, cluster: ClusterRuntime) -> RetryBudget:
        budget = self.budgets.get(cluster.name)
        if budget is None:
            budget = self.budgets[cluster.name] = RetryBudget()
        return budget

    def requested(self, cluster: ClusterRuntime, now: float) -> None:
        cluster.counters.requests += 1
        self.budget(cluster).request(now)

    def may_retry(
        self, cluster: ClusterRuntime, retry: RetryState, failure: Failure, now: float
    ) -> bool:
        """Whether the request goes again (counted when it does)."""
        allowed = retry.may_retry(failure, now, self.budget(cluster))
        if allowed:
            cluster.counters.retries += 1
        return allowed

    @staticmethod
    def outcome(cluster: ClusterRuntime, host: Host | None, status: int, now: float) -> None:
        """An answer (or a failure, as 503) for outlier detection: 5xx counts against."""
        if host is None:
            return
        balancer = cluster.balancer()
        if status >= 500:
            if balancer.connect_failed(host, now):
                cluster.counters.ejections += 1
        else:
            balancer.connect_succeeded(host)
