"""The proxy's pure cores: policies, priority pools, outlier detection (no sockets, no clock)."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

from meshlet.model import Endpoint, Health, LbPolicy
from meshlet.sidecar.proxy.balancer import ClusterBalancer, Host, open_requests
from meshlet.sidecar.proxy.outlier import MAX_EJECTION_SECONDS, OutlierRecord, record_failure
from meshlet.sidecar.proxy.policies import MAX_RING, Maglev, RingHash, RoundRobin, stable_hash
from meshlet.sidecar.state import ClusterConfig, OutlierConfig

OUTLIER = OutlierConfig(True, 3, 10.0, 30.0, 50)


def endpoints(n: int, **fields: object) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(f"10.1.0.{i}", 8080, **fields) for i in range(1, n + 1))  # type: ignore[arg-type]


def balancer(
    eps: tuple[Endpoint, ...],
    policy: LbPolicy = LbPolicy.ROUND_ROBIN,
    zone: str = "",
    **config: object,
) -> ClusterBalancer:
    config.setdefault("outlier", OUTLIER)
    cluster = ClusterConfig("c", lb_policy=policy, **config)  # type: ignore[arg-type]
    return ClusterBalancer(cluster, eps, zone)


def picks(
    lb: ClusterBalancer,
    n: int,
    key: int = 0,
    tried: tuple[Host, ...] = (),
    now: float = 0.0,
    seed: int = 1,
) -> Counter[str]:
    rng = random.Random(seed)
    out: Counter[str] = Counter()
    for _ in range(n):
        host = lb.choose(key, tried, now, rng)
        assert host is not None
        out[host.endpoint.address] += 1
    return out


def test_round_robin_takes_turns_from_a_random_start() -> None:
    addresses = ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
    rotations = [addresses[i:] + addresses[:i] for i in range(3)]
    starts = set()
    for seed in range(20):
        lb = ClusterBalancer(ClusterConfig("c"), endpoints(3), rng=random.Random(seed))
        chosen = [lb.choose(0, (), 0.0, random.Random()) for _ in range(6)]
        order = [h.endpoint.address for h in chosen if h]
        assert order[:3] in rotations and order[3:] == order[:3]
        starts.add(order[0])
    assert len(starts) == 3  # sidecars do not all begin with the same endpoint


def test_weighted_round_robin_is_proportional_and_smooth() -> None:
    eps = (Endpoint("10.1.0.1", 80, weight=5), Endpoint("10.1.0.2", 80), Endpoint("10.1.0.3", 80))
    policy = RoundRobin(tuple((i, e.weight) for i, e in enumerate(eps)))
    order = [policy.pick(lambda _: True, 0, lambda _: 0, random.Random()) for _ in range(7)]
    assert Counter(order) == {0: 5, 1: 1, 2: 1}
    assert order == [0, 0, 1, 0, 2, 0, 0]  # never five in a row


def test_least_request_avoids_the_busy_endpoint() -> None:
    lb = balancer(endpoints(3), LbPolicy.LEAST_REQUEST)
    lb.hosts[0].active = 10
    counts = picks(lb, 300)
    assert "10.1.0.1" not in counts
    assert counts["10.1.0.2"] > 100 and counts["10.1.0.3"] > 100


def test_least_request_compares_the_load_it_is_given() -> None:
    """The load is a callable: open connections at L4 by default, anything else a handler
    counts (open requests, say) when it passes its own."""
    busy = {"10.1.0.2": 50}
    cluster = ClusterConfig("c", lb_policy=LbPolicy.LEAST_REQUEST, outlier=OUTLIER)
    lb = ClusterBalancer(cluster, endpoints(3), load=lambda h: busy.get(h.address[0], 0))
    lb.hosts[0].active = 10  # open connections: not what this balancer compares
    counts = picks(lb, 300)
    assert "10.1.0.2" not in counts
    assert counts["10.1.0.1"] > 100 and counts["10.1.0.3"] > 100


def test_open_requests_break_ties_by_the_endpoint_picked_longest_ago() -> None:
    """Calls one at a time (none open) take turns rather than land at random, and an
    endpoint that joins takes its turn without catching up on the others' share."""
    cluster = ClusterConfig("c", lb_policy=LbPolicy.LEAST_REQUEST, outlier=OUTLIER)
    lb = ClusterBalancer(cluster, endpoints(3), load=open_requests)
    rng = random.Random(3)
    counts: Counter[str] = Counter()
    for turn in range(1, 3001):
        host = lb.choose(0, (), 0.0, rng)
        assert host is not None
        host.picked = turn
        counts[host.endpoint.address] += 1
    assert all(abs(c - 1000) <= 50 for c in counts.values()), counts
    lb.hosts[0].requests = 1  # one open request outweighs any turn
    assert Counter(lb.choose(0, (), 0.0, rng).endpoint.address for _ in range(50))["10.1.0.1"] == 0  # type: ignore[union-attr]


def test_least_request_weighs_load_by_weight() -> None:
    eps = (Endpoint("10.1.0.1", 80, weight=4), Endpoint("10.1.0.2", 80, weight=1))
    lb = balancer(eps, LbPolicy.LEAST_REQUEST)
    lb.hosts[0].active, lb.hosts[1].active = 3, 1  # 3/4 < 1/1: the heavy one is less loaded
    assert picks(lb, 20) == {"10.1.0.1": 20}


def test_random_spreads_by_weight() -> None:
    eps = (Endpoint("10.1.0.1", 80, weight=2), Endpoint("10.1.0.2", 80), Endpoint("10.1.0.3", 80))
    counts = picks(balancer(eps, LbPolicy.RANDOM), 4000)
    assert 1800 < counts["10.1.0.1"] < 2200
    assert 800 < counts["10.1.0.2"] < 1200 and 800 < counts["10.1.0.3"] < 1200


def hashing_map(policy: LbPolicy, n: int, keys: range) -> dict[int, str]:
    lb = balancer(endpoints(n), policy)
    rng = random.Random()
    out = {}
    for k in keys:
        host = lb.choose(stable_hash(str(k)), (), 0.0, rng)
        assert host is not None
        out[k] = host.endpoint.address
    return out


def test_ring_hash_is_sticky_spread_and_consistent() -> None:
    keys = range(3000)
    four = hashing_map(LbPolicy.RING_HASH, 4, keys)
    assert four == hashing_map(LbPolicy.RING_HASH, 4, keys)  # same key, same endpoint
    shares = Counter(four.values())
    assert len(shares) == 4 and min(shares.values()) > 3000 / 4 * 0.7
    # Take the 4th endpoint away: only its keys move.
    three = hashing_map(LbPolicy.RING_HASH, 3, keys)
    assert all(three[k] == four[k] for k in keys if four[k] != "10.1.0.4")


def test_maglev_is_even_and_moves_little_when_an_endpoint_goes() -> None:
    keys = range(3000)
    four = hashing_map(LbPolicy.MAGLEV, 4, keys)
    shares = Counter(four.values())
    assert min(shares.values()) > 3000 / 4 * 0.85
    three = hashing_map(LbPolicy.MAGLEV, 3, keys)
    kept = [k for k in keys if four[k] != "10.1.0.4"]
    assert sum(three[k] == four[k] for k in kept) / len(kept) > 0.8


def test_hashing_policies_skip_what_was_tried_and_stay_deterministic() -> None:
    for policy in (LbPolicy.RING_HASH, LbPolicy.MAGLEV):
        lb = balancer(endpoints(3), policy)
        key = stable_hash("10.0.0.7")
        first = lb.choose(key, (), 0.0, random.Random())
        assert first is not None
        second = lb.choose(key, (first,), 0.0, random.Random())
        assert second is not None and second is not first
        assert lb.choose(key, (first,), 0.0, random.Random()) is second
        assert lb.choose(key, tuple(lb.hosts), 0.0, random.Random()) is None


def test_maglev_keeps_keys_when_the_endpoint_count_crosses_table_sizes() -> None:
    keys = range(3000)
    for n in (2, 5, 10):
        before, after = (
            hashing_map(LbPolicy.MAGLEV, n, keys),
            hashing_map(LbPolicy.MAGLEV, n + 1, keys),
        )
        moved = sum(before[k] != after[k] for k in keys) / len(keys)
        assert moved < 1.5 / (n + 1), f"{n} -> {n + 1} endpoints moved {moved:.0%} of keys"


def test_huge_weights_do_not_make_a_huge_ring() -> None:
    policy = RingHash(((0, 1), (1, 3_000_000)), ["a", "b"])
    assert len(policy._hashes) <= MAX_RING + 2
    owners = Counter(policy._owners)
    assert owners[0] >= 1 and owners[1] > 0.99 * len(policy._hashes)


def test_a_large_weighted_pool_gets_a_bounded_proportional_schedule() -> None:
    pool = tuple((i, 1 + i % 3) for i in range(3000))
    order = RoundRobin(pool)._order
    assert len(order) <= 4096 + 3000
    counts = Counter(order)
    assert counts[2] >= counts[0]  # weight 3 gets at least what weight 1 gets


def test_ring_hash_weights_give_more_of_the_ring() -> None:
    eps = (Endpoint("10.1.0.1", 80, weight=3), Endpoint("10.1.0.2", 80))
    policy = RingHash(tuple((i, e.weight) for i, e in enumerate(eps)), ["a", "b"])
    owners = Counter(
        policy.pick(lambda _: True, stable_hash(str(k)), lambda _: 0, random.Random())
        for k in range(4000)
    )
    assert 2600 < owners[0] < 3400


def test_maglev_table_follows_weights() -> None:
    policy = Maglev(((0, 3), (1, 1)), ["a", "b"])
    owners = Counter(policy._table)
    assert abs(owners[0] / len(policy._table) - 0.75) < 0.02


# --- pools: zone and health ---------------------------------------------------------


def test_same_zone_is_preferred_then_other_zones() -> None:
    eps = (
        Endpoint("10.1.0.1", 80, zone="zone-a"),
        Endpoint("10.1.0.2", 80, zone="zone-b"),
        Endpoint("10.1.0.3", 80, zone="zone-a"),
    )
    lb = balancer(eps, zone="zone-a", prefer_same_zone=True)
    assert picks(lb, 10) == {"10.1.0.1": 5, "10.1.0.3": 5}
    local = tuple(h for h in lb.hosts if h.endpoint.zone == "zone-a")
    assert picks(lb, 4, tried=local) == {"10.1.0.2": 4}
    # Without the service asking for it, zones do not matter.
    assert len(picks(balancer(eps, zone="zone-a"), 9)) == 3


def test_draining_endpoints_only_when_nothing_healthy_is_left() -> None:
    eps = (Endpoint("10.1.0.1", 80), Endpoint("10.1.0.2", 80, Health.DRAINING))
    lb = balancer(eps)
    assert picks(lb, 6) == {"10.1.0.1": 6}
    assert picks(lb, 2, tried=(lb.hosts[0],)) == {"10.1.0.2": 2}
    assert lb.choose(0, tuple(lb.hosts), 0.0, random.Random()) is None


# --- outlier detection -------------------------------------------------------------


def test_consecutive_failures_eject_for_a_growing_time() -> None:
    lb = balancer(endpoints(3))
    bad = lb.hosts[0]
    assert not lb.connect_failed(bad, 0.0)
    assert not lb.connect_failed(bad, 0.0)
    assert lb.connect_failed(bad, 0.0)  # the 3rd in a row
    assert lb.ejected(1.0) == [bad]
    assert "10.1.0.1" not in picks(lb, 10, now=1.0)
    assert lb.ejected(30.0) == []  # base ejection time: 30 s
    assert "10.1.0.1" in picks(lb, 10, now=30.0)
    for _ in range(3):
        lb.connect_failed(bad, 31.0)
    assert bad.outlier.ejected_until == 31.0 + 60.0  # ejected twice: twice as long
    assert bad.outlier.ejections == 2


def test_failures_while_ejected_do_not_count_and_a_return_starts_afresh() -> None:
    lb = balancer(endpoints(3))
    host = lb.hosts[0]
    for _ in range(3):
        lb.connect_failed(host, 0.0)
    assert lb.ejected(1.0) == [host]
    lb.connect_failed(host, 1.0)  # a panic-mode try while ejected
    assert not lb.connect_failed(host, 30.0)  # back at 30 s: the first failure of a new run
    assert lb.ejected(30.0) == []


def test_a_success_resets_the_count() -> None:
    lb = balancer(endpoints(3))
    host = lb.hosts[0]
    lb.connect_failed(host, 0.0)
    lb.connect_failed(host, 0.0)
    lb.connect_succeeded(host)
    assert not lb.connect_failed(host, 0.0)
    assert lb.ejected(0.0) == []


def test_ejection_time_shrinks_back_and_is_capped() -> None:
    config = OutlierConfig(True, 1, 10.0, 100.0, 100)
    record = OutlierRecord()
    now = 0.0
    for _ in range(6):
        assert record_failure(record, config, now, 0, 10)
        now = record.ejected_until or now
    assert record.ejected_until is not None
    assert record.ejected_until - now <= MAX_EJECTION_SECONDS
    # Long healthy: the multiplier decays one step per interval.
    later = now + 1000.0
    record.is_ejected(later)
    assert record_failure(record, config, later, 0, 10)
    assert record.times_ejected == 1


def test_no_more_than_the_max_share_is_ejected_but_always_one() -> None:
    lb = balancer(endpoints(4))  # max 50%
    for host in lb.hosts:
        for _ in range(3):
            lb.connect_failed(host, 0.0)
    assert len(lb.ejected(0.0)) == 2
    one = balancer(endpoints(1), outlier=dataclasses.replace(OUTLIER, max_ejection_percent=10))
    for _ in range(3):
        one.connect_failed(one.hosts[0], 0.0)
    assert len(one.ejected(0.0)) == 1


def test_when_everything_is_ejected_ejection_is_ignored() -> None:
    lb = balancer(endpoints(1))
    for _ in range(3):
        lb.connect_failed(lb.hosts[0], 0.0)
    assert lb.ejected(1.0) == lb.hosts
    assert picks(lb, 2, now=1.0) == {"10.1.0.1": 2}


def test_disabled_outlier_detection_never_ejects() -> None:
    lb = balancer(endpoints(2), outlier=OutlierConfig(enabled=False))
    for _ in range(50):
        assert not lb.connect_failed(lb.hosts[0], 0.0)


def test_a_new_balancer_keeps_the_hosts_of_the_old_one() -> None:
    old = balancer(endpoints(3))
    old.hosts[1].active = 4
    for _ in range(3):
        old.connect_failed(old.hosts[1], 0.0)
    eps = (*endpoints(3)[1:], Endpoint("10.1.0.9", 8080))  # 10.1.0.1 gone, 10.1.0.9 new
    new = ClusterBalancer(old.config, eps, "", old)
    assert new.hosts[0] is old.hosts[1]
    assert new.hosts[0].active == 4 and new.ejected(1.0) == [new.hosts[0]]
    assert new.hosts[2].active == 0 and new.hosts[2].endpoint.address == "10.1.0.9"
