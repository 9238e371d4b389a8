"""The connect-and-retry plan, driven by events and a clock of its own: no sockets, no root."""

from __future__ import annotations

import errno
import random

from meshlet.model import Endpoint
from meshlet.sidecar.proxy.connect_plan import GIVE_UP, MAX_RETRIES, Action, ConnectPlan, Try
from meshlet.sidecar.proxy.router import ClusterRuntime
from meshlet.sidecar.state import ClusterConfig, OutlierConfig

# Ejects an endpoint at its second consecutive failure.
OUTLIER = OutlierConfig(True, 2, 10.0, 30.0, 100)


def runtime(n: int, outlier: OutlierConfig = OUTLIER) -> ClusterRuntime:
    endpoints = tuple(Endpoint(f"10.1.0.{i}", 8080) for i in range(1, n + 1))
    config = ClusterConfig("web", outlier=outlier, connect_timeout_seconds=2.5)
    return ClusterRuntime("web", config, endpoints, rng=random.Random(3))


def plan_for(cluster: ClusterRuntime, passthrough: tuple[str, int] | None = None) -> ConnectPlan:
    return ConnectPlan(cluster, 0, random.Random(5), passthrough)


def address(action: Action) -> tuple[str, int]:
    assert isinstance(action, Try), action
    return action.address


def test_the_first_try_goes_to_an_endpoint_with_the_clusters_timeout() -> None:
    cluster = runtime(3)
    action = plan_for(cluster).start(0.0)
    assert isinstance(action, Try)
    assert action.host is not None and action.address == action.host.address
    assert action.timeout == 2.5
    assert cluster.counters.retries == 0


def test_a_failed_try_moves_to_an_endpoint_not_tried_yet_and_counts_a_retry() -> None:
    cluster = runtime(3)
    plan = plan_for(cluster)
    seen = [address(plan.start(0.0))]
    seen.append(address(plan.failed(0.1)))
    seen.append(address(plan.failed(0.2)))
    assert len(set(seen)) == 3
    assert cluster.counters.retries == 2 and cluster.counters.connect_failures == 2
    host = plan.connected()
    assert host is not None and host.address == seen[-1] and host.connections == 1
    assert cluster.counters.no_endpoint == 0


def test_when_every_endpoint_failed_it_gives_up_once_and_counts_no_endpoint() -> None:
    cluster = runtime(2)
    plan = plan_for(cluster)
    plan.start(0.0)
    assert isinstance(plan.failed(0.1), Try)
    assert plan.failed(0.2) is GIVE_UP
    assert cluster.counters.no_endpoint == 1 and cluster.counters.connect_failures == 2


def test_it_stops_after_max_retries_even_with_endpoints_left() -> None:
    cluster = runtime(10)
    plan = plan_for(cluster)
    action = plan.start(0.0)
    tries = 0
    while isinstance(action, Try):
        tries += 1
        action = plan.failed(float(tries))
    assert tries == 1 + MAX_RETRIES
    assert cluster.counters.retries == MAX_RETRIES


def test_a_failure_that_ejects_an_endpoint_says_which() -> None:
    cluster = runtime(2)
    first = plan_for(cluster)
    target = address(first.start(0.0))
    first.failed(0.1)
    assert first.ejected is None  # one failure: not yet
    # A second connection's first try lands on the same endpoint (round robin wraps).
    for _ in range(2):  # two endpoints: one of two first tries is the target
        second = plan_for(cluster)
        if address(second.start(0.2)) == target:
            break
        second.connected()
    else:
        raise AssertionError(f"no first try went to {target}")
    second.failed(0.3)
    assert second.ejected is not None and second.ejected.address == target
    assert cluster.counters.ejections == 1
    # Ejected: the next connections skip it.
    picks = {address(plan_for(cluster).start(1.0)) for _ in range(4)}
    assert target not in picks


def test_out_of_fds_gives_up_at_once_and_blames_no_endpoint() -> None:
    cluster = runtime(3)
    plan = plan_for(cluster)
    plan.start(0.0)
    assert plan.local_failure(errno.EMFILE, 0.1) is GIVE_UP
    counters = cluster.counters
    assert counters.local_failures == 1
    assert counters.connect_failures == 0 and counters.no_endpoint == 0 and counters.ejections == 0


def test_no_free_port_to_one_address_spares_the_others() -> None:
    cluster = runtime(3)
    plan = plan_for(cluster)
    first = address(plan.start(0.0))
    second = plan.local_failure(errno.EADDRNOTAVAIL, 0.1)
    assert address(second) != first
    assert cluster.counters.local_failures == 1 and cluster.counters.connect_failures == 0


def test_a_passthrough_connection_has_one_address_and_no_retry() -> None:
    cluster = runtime(0)
    plan = plan_for(cluster, passthrough=("10.9.9.9", 443))
    action = plan.start(0.0)
    assert isinstance(action, Try) and action.address == ("10.9.9.9", 443) and action.host is None
    assert plan.failed(0.1) is GIVE_UP
    assert plan.connected() is None
    assert cluster.counters.retries == 0 and cluster.counters.no_endpoint == 1


def test_a_cluster_without_endpoints_gives_up_at_the_start() -> None:
    cluster = runtime(0)
    assert plan_for(cluster).start(0.0) is GIVE_UP
    assert cluster.counters.no_endpoint == 1
