"""Choosing an endpoint of one cluster for a new connection (pure; `now` is passed in).

Endpoints are tried in priority pools, the first pool with a usable endpoint wins:

1. healthy endpoints in the sidecar's zone, when the service prefers its zone;
2. the other healthy endpoints (all of them when it does not);
3. draining (terminating but serving) endpoints: only when nothing healthy is left.

Within a pool the cluster's policy picks, skipping endpoints already tried for
this connection and endpoints ejected by outlier detection. When every endpoint
is ejected, ejection is ignored rather than failing the connection (Envoy's panic
mode does the same).

A `Host` carries what must outlive a config change: open connections, counters
and outlier history. Building a balancer for new endpoints takes the hosts of
the previous one by address, so an update from the control plane keeps them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field

from meshlet.flags import grpc_address
from meshlet.model import Endpoint, Health
from meshlet.sidecar.proxy.outlier import OutlierRecord, record_failure, record_success
from meshlet.sidecar.proxy.policies import Policy, Pool, build_policy
from meshlet.sidecar.state import ClusterConfig


@dataclass(slots=True, eq=False)
class Host:
    endpoint: Endpoint
    name: str  # "ip:port", "[ip6]:port"
    address: tuple[str, int] = ("", 0)
    active: int = 0  # open connections
    requests: int = 0  # open requests (HTTP)
    picked: int = 0  # when a request last went to it, as a count of picks (HTTP)
    connections: int = 0  # connections made, ever
    connect_failures: int = 0
    outlier: OutlierRecord = field(default_factory=OutlierRecord)


# What least request compares: open connections at L4, open requests for HTTP.
HostLoad = Callable[[Host], int]


def open_connections(host: Host) -> int:
    return host.active


# Open requests count first; between equals, the one picked longest ago wins, so calls
# made one at a time (none open) take turns rather than land at random, and a new
# endpoint joins the turns instead of catching up on what the others had.
_TIE_BREAK = 1 << 48


def open_requests(host: Host) -> int:
    return host.requests * _TIE_BREAK + host.picked


def _anything(_index: int) -> bool:
    return True


def host_name(endpoint: Endpoint) -> str:
    return grpc_address(endpoint.address, endpoint.port)


def _pools(endpoints: Sequence[Endpoint], prefer_zone: str) -> list[Pool]:
    def pool(health: Health, zone: str | None = None, other_zones: bool = False) -> Pool:
        return tuple(
            (i, e.weight)
            for i, e in enumerate(endpoints)
            if e.health is health and (zone is None or (e.zone == zone) != other_zones)
        )

    if prefer_zone:
        pools = [
            pool(Health.HEALTHY, prefer_zone),
            pool(Health.HEALTHY, prefer_zone, other_zones=True),
        ]
    else:
        pools = [pool(Health.HEALTHY)]
    pools.append(pool(Health.DRAINING))
    return [p for p in pools if p]


class ClusterBalancer:
    def __init__(
        self,
        config: ClusterConfig,
        endpoints: Sequence[Endpoint],
        zone: str = "",
        previous: ClusterBalancer | None = None,
        rng: random.Random | None = None,
        load: HostLoad = open_connections,
    ) -> None:
        self.config = config
        self._load = load
        kept = {h.name: h for h in previous.hosts} if previous is not None else {}
        self.hosts: list[Host] = []
        for endpoint in endpoints:
            name = host_name(endpoint)
            host = kept.get(name)
            if host is None:
                host = Host(endpoint, name, (endpoint.address, endpoint.port))
            else:
                host.endpoint = endpoint  # health, zone or weight may have changed
            self.hosts.append(host)
        names = [h.name for h in self.hosts]
        prefer_zone = zone if config.prefer_same_zone else ""
        rng = rng or random.Random(0)
        self._policies: list[Policy] = [
            build_policy(config.lb_policy, pool, names, rng)
            for pool in _pools(endpoints, prefer_zone)
        ]
        self._ejected_any = any(h.outlier.ejected_until is not None for h in self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def _active(self, index: int) -> int:
        return self._load(self.hosts[index])

    def choose(
        self, key: int, tried: Container[Host], now: float, rng: random.Random
    ) -> Host | None:
        """The endpoint for a connection whose client hashes to `key`; None when none is left."""
        hosts = self.hosts
        if self._ejected_any:
            self._ejected_any = any(h.outlier.is_ejected(now) for h in hosts)
        if not tried and not self._ejected_any:  # the common case: anything goes
            for policy in self._policies:
                index = policy.pick(_anything, key, self._active, rng)
                if index is not None:
                    return hosts[index]
            return None

        def fresh(i: int) -> bool:
            host = hosts[i]
            return host not in tried and not host.outlier.is_ejected(now)

        def untried(i: int) -> bool:
            return hosts[i] not in tried

        checks = (fresh, untried) if self._ejected_any else (untried,)
        for usable in checks:
            for policy in self._policies:
                index = policy.pick(usable, key, self._active, rng)
                if index is not None:
                    return hosts[index]
        return None

    def connect_failed(self, host: Host, now: float) -> bool:
        """Counts a failed connect to `host`; True when that ejected it."""
        host.connect_failures += 1
        ejected = sum(1 for h in self.hosts if h.outlier.is_ejected(now))
        if record_failure(host.outlier, self.config.outlier, now, ejected, len(self.hosts)):
            self._ejected_any = True
            return True
        return False

    @staticmethod
    def connect_succeeded(host: Host) -> None:
        record_success(host.outlier)

    def ejected(self, now: float) -> list[Host]:
        return [h for h in self.hosts if h.outlier.is_ejected(now)]
