"""End to end: pods as network namespaces on a bridge (meshlet.devmesh), the control
plane in one, three backends, and a client pod with `meshlet init` and a sidecar
running as the proxy uid. Everything the client does, it does as another uid,
through glibc's resolver and its own resolv.conf, as an application would.

Needs root (namespaces, nftables); the whole mesh is removed after each test,
also when it fails.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshlet.devmesh.stack import APP_UID, PROXY_UID, PYTHON, LocalMesh, ServiceSpec, http_get
from tests.local_mesh import local_mesh
from tests.procs import wait_until

ROOT = Path(__file__).resolve().parent.parent
WEB_IP = "10.96.0.20"
LEGACY_IP = "10.96.200.200"  # in the service CIDR, but no service of the mesh
# What these tests show is balancing at L4, connection by connection: the port is named
# so that it is not HTTP (tests/test_http1_balancing.py balances requests). Round robin
# is chosen because the tests count the spread.
WEB = ServiceSpec(
    "web", WEB_IP, 80, ("web-0", "web-1", "web-2"), lb_policy="round-robin", port_name="web"
)
WEB_CLUSTER = "outbound|80||web.default.svc.cluster.local"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalMesh]:
    with local_mesh(tmp_path, WEB) as local:
        yield local


def requests(stack: LocalMesh, count: int) -> dict[str, object]:
    report = stack.load(["web=http://web/"], f"--count={count}")
    web: dict[str, object] = report["targets"]["web"]
    return web


def test_glibc_resolves_service_names_through_the_captured_dns(stack: LocalMesh) -> None:
    assert stack.client is not None
    for name in ("web", "web.default", "web.default.svc", "web.default.svc.cluster.local"):
        result = stack.client.run(["getent", "hosts", name], uid=APP_UID)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert result.stdout.split()[0] == WEB_IP, result.stdout
    unknown = stack.client.run(["getent", "hosts", "nope.default.svc.cluster.local"], uid=APP_UID)
    assert unknown.returncode == 2  # NXDOMAIN: not found


def test_requests_to_a_service_are_balanced_and_survive_a_dead_backend(stack: LocalMesh) -> None:
    web = requests(stack, 90)
    assert web["errors"] == 0, web["last_error"]
    assert web["endpoints"] == {"web-0": 30, "web-1": 30, "web-2": 30}  # round robin
    stack.kill_backend("web-1")
    after = requests(stack, 60)
    assert after["errors"] == 0, after["last_error"]
    assert after["endpoints"] == {"web-0": 30, "web-2": 30}
    clusters = stack.sidecar_json("/clusters")
    web_cluster = clusters[WEB_CLUSTER]
    dead = next(
        e
        for e in web_cluster["endpoints"]
        if e["address"].startswith(stack.backends["web-1"].pod.ip)
    )
    assert dead["ejected"] and web_cluster["retries"] >= 1


def wait_for_policy(stack: LocalMesh, policy: str) -> None:
    wait_until(
        lambda seen: seen == policy,
        30,
        f"the sidecar to balance web by {policy}",
        observe=lambda: stack.sidecar_json("/clusters")[WEB_CLUSTER]["lb_policy"],
    )


@pytest.mark.parametrize("policy", ["least-request", "random"])
def test_every_policy_spreads_new_connections_and_survives_a_dead_backend(
    stack: LocalMesh, policy: str
) -> None:
    stack.write_services(
        [ServiceSpec("web", WEB_IP, 80, WEB.backends, port_name="web", lb_policy=policy)]
    )
    wait_for_policy(stack, policy)
    web = requests(stack, 60)
    assert web["errors"] == 0, web["last_error"]
    # Sequential connections, so nothing is ever busier than another: both pick among all
    # three. (Ring hash and maglev hash the client's IP: the affinity test below.)
    assert set(web["endpoints"]) == set(WEB.backends), web["endpoints"]  # type: ignore[call-overload]
    stack.kill_backend("web-1")
    after = requests(stack, 30)
    assert after["errors"] == 0, after["last_error"]
    assert "web-1" not in after["endpoints"]  # type: ignore[operator]


@pytest.mark.parametrize(
    ("spec", "policy"),
    [
        (
            ServiceSpec("web", WEB_IP, 80, WEB.backends, port_name="web", client_ip_affinity=True),
            "ring-hash",
        ),
        (
            ServiceSpec("web", WEB_IP, 80, WEB.backends, port_name="web", lb_policy="maglev"),
            "maglev",
        ),
    ],
    ids=["sessionAffinity-ClientIP", "maglev"],
)
def test_hashing_on_the_client_ip_keeps_a_client_on_one_backend_until_it_dies(
    stack: LocalMesh, spec: ServiceSpec, policy: str
) -> None:
    stack.write_services([spec])
    wait_for_policy(stack, policy)
    web = requests(stack, 30)
    assert web["errors"] == 0, web["last_error"]
    endpoints: dict[str, int] = web["endpoints"]  # type: ignore[assignment]
    assert len(endpoints) == 1 and sum(endpoints.values()) == 30, endpoints
    (chosen,) = endpoints
    stack.kill_backend(chosen)
    after = requests(stack, 30)
    assert after["errors"] == 0, after["last_error"]
    moved: dict[str, int] = after["endpoints"]  # type: ignore[assignment]
    assert len(moved) == 1 and chosen not in moved, moved  # one other backend, not a spread


def test_a_removed_endpoint_keeps_its_open_connection(stack: LocalMesh) -> None:
    with held_connection(stack) as (first, again):
        assert first in WEB.backends, first
        remaining = tuple(b for b in WEB.backends if b != first)
        stack.write_services([ServiceSpec("web", WEB_IP, 80, remaining, port_name="web")])
        gone = stack.backends[first].pod.ip + ":"
        wait_until(
            lambda held: len(held) == 2 and not any(e.startswith(gone) for e in held),
            30,
            f"the sidecar to drop {first}",
            observe=lambda: stack.cluster_endpoints("web", 80),
        )
        assert again() == first  # the old connection lives on
        web = requests(stack, 10)
        assert set(web["endpoints"]) == set(remaining)  # type: ignore[call-overload]


@contextlib.contextmanager
def held_connection(stack: LocalMesh) -> Iterator[tuple[str, Callable[[], str]]]:
    """A keep-alive connection to web from the client pod: the backend that answered its
    first request, and a function that asks again on the same connection."""
    assert stack.client is not None
    argv = stack.client.argv([PYTHON, "-m", "tests.hold_connection", "web", "80"], uid=APP_UID)
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    ) as holder:
        assert holder.stdout is not None and holder.stdin is not None
        out, into = holder.stdout, holder.stdin

        def again() -> str:
            into.write("again\n")
            into.flush()
            return out.readline().strip()

        try:
            yield out.readline().strip(), again
        finally:
            into.close()  # the holder's cue to close its connection and end
            holder.wait(timeout=10)


def passthrough_connections(stack: LocalMesh) -> int:
    return int(stack.sidecar_json("/clusters")["PassthroughCluster"]["connections"])


def test_unknown_destinations_pass_through_and_the_sidecar_is_never_captured(
    stack: LocalMesh,
) -> None:
    legacy = stack.mesh.add_pod("legacy", extra_addresses=[LEGACY_IP])
    argv = [PYTHON, "-m", "meshlet.devmesh.backend", "--name=legacy", f"--listen={LEGACY_IP}:8080"]
    legacy.spawn(argv, stack.log("legacy"), uid=APP_UID)
    target = f"legacy=http://{LEGACY_IP}:8080/"
    wait_until(  # straight there, as the proxy uid: until the server listens
        lambda report: report["targets"]["legacy"]["ok"] == 1,
        30,
        "the legacy server to listen",
        observe=lambda: stack.load([target], "--count=1", uid=PROXY_UID),
    )
    before = passthrough_connections(stack)
    # An application's connection to it is captured and passed through by the sidecar,
    # whose own connection (as the proxy uid) is not captured again: no loop.
    report = stack.load([target], "--count=3")["targets"]["legacy"]
    assert report["errors"] == 0, report["last_error"]
    assert report["endpoints"] == {"legacy": 3}
    assert passthrough_connections(stack) == before + 3
    # The proxy uid's own connections go straight out.
    direct = stack.load([target], "--count=2", uid=PROXY_UID)
    assert direct["targets"]["legacy"]["endpoints"] == {"legacy": 2}
    assert passthrough_connections(stack) == before + 3


def test_init_remove_leaves_no_table(stack: LocalMesh) -> None:
    assert stack.client is not None
    listed = stack.client.run(["nft", "list", "tables"])
    assert "inet meshlet" in listed.stdout
    removed = stack.client.run([PYTHON, "-m", "meshlet", "init", "--remove"])
    assert removed.returncode == 0, removed.stderr
    assert "meshlet init: removed table inet meshlet (1 chain, " in removed.stderr
    assert "meshlet" not in stack.client.run(["nft", "list", "ruleset"]).stdout


def test_proxy_metrics_count_connections_bytes_and_endpoints(stack: LocalMesh) -> None:
    web = requests(stack, 6)
    assert web["errors"] == 0
    status, body = http_get(stack.sidecar_url("/metrics"))
    assert status == 200
    text = body.decode()
    cluster = 'cluster="outbound|80||web.default.svc.cluster.local"'
    assert metric(text, "meshlet_proxy_connections_total", cluster) == 6
    assert metric(text, "meshlet_proxy_connections_active", cluster) == 0
    for backend in WEB.backends:
        endpoint = f'endpoint="{stack.backends[backend].pod.ip}:8080"'
        assert metric(text, "meshlet_proxy_endpoint_connections_total", cluster, endpoint) == 2
    assert metric(text, "meshlet_proxy_bytes_total", cluster, 'direction="upstream"') > 0
    assert metric(text, "meshlet_proxy_bytes_total", cluster, 'direction="downstream"') > 0
    assert metric(text, "meshlet_proxy_refused_total", cluster, 'reason="circuit_breaker"') == 0
    assert metric(text, "meshlet_proxy_retries_total", cluster) == 0


def metric(text: str, name: str, *labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(label in line for label in labels):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} with {labels} in:\n{text}")


def test_sigterm_drains_open_connections_then_exits(stack: LocalMesh) -> None:
    sidecar = stack.sidecar
    assert sidecar is not None
    with held_connection(stack) as (first, again):
        sidecar.send_signal(signal.SIGTERM)
        # Draining: new connections are refused, the open one still works.
        wait_until(
            lambda report: report["errors"] == 1,
            10,
            "new connections to be refused",
            observe=lambda: requests(stack, 1),
        )
        assert again() == first
        assert sidecar.poll() is None  # waiting for that connection
    # Its last connection closed: the sidecar exits well before the drain deadline.
    assert sidecar.wait(timeout=4) == 0
