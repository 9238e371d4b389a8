"""The outbound proxy on real sockets, behind real capture rules.

Each test runs inside a fresh network namespace where `meshlet init` redirected
TCP to the service CIDRs to the proxy's port (tests/netlab.py). The proxy runs
on the test's event loop; its state is what the sidecar would hold after
accepting the control plane's resources for a small mesh. Backends are small
TCP servers on loopback addresses that greet with their name, echo what they
get, and say "bye" when the client ends its side. Clients connect to the
service's ClusterIP, exactly as an application in the pod does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import re
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from meshlet.model import Endpoint, LbPolicy, Mesh, Service, ServicePort
from meshlet.sidecar.proxy.metrics import ProxyMetrics
from meshlet.sidecar.proxy.router import ClusterRuntime, Router
from meshlet.sidecar.proxy.server import OutboundProxy
from meshlet.sidecar.state import SidecarState
from meshlet.telemetry import Telemetry
from tests.netlab import Lab, inside_capture_lab
from tests.xds_fixtures import sidecar_state

VIP, VIP6, PORT = "10.96.0.10", "fd00:96::10", 80
WEB = "outbound|80||web.default.svc.cluster.local"
BACKENDS = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
BACKEND_PORT = 8080
TIMEOUT = 10.0


@pytest.fixture
def lab() -> Iterator[Lab]:
    with inside_capture_lab() as lab:
        yield lab


@dataclass
class Backend:
    name: str
    host: str
    server: asyncio.Server | None = None
    # Connections it accepted; while `reading` is clear it reads nothing (backpressure).
    accepted: int = 0
    reading: asyncio.Event = field(default_factory=asyncio.Event)
    received: bytearray = field(default_factory=bytearray)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> None:
        self.reading.set()
        self.server = await asyncio.start_server(self._serve, self.host, BACKEND_PORT)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in self.writers:
                writer.transport.abort()
            await self.server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        writer.write(f"{self.name}\n".encode())
        try:
            await self.reading.wait()
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
            writer.write(b"bye\n")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def backends(hosts: list[str] = BACKENDS) -> AsyncIterator[list[Backend]]:
    started = [Backend(f"web-{i}", host) for i, host in enumerate(hosts)]
    try:
        for backend in started:
            await backend.start()
        yield started
    finally:
        for backend in started:
            await backend.stop()


def web(
    hosts: list[str] = BACKENDS,
    policy: LbPolicy = LbPolicy.ROUND_ROBIN,
    ips: tuple[str, ...] = (VIP,),
    affinity: bool = False,
) -> Service:
    endpoints = tuple(Endpoint(h, BACKEND_PORT) for h in hosts)
    return Service(
        "web",
        "default",
        cluster_ips=ips,
        ports=(ServicePort("web", PORT, endpoints=endpoints),),
        lb_policy=policy,
        client_ip_affinity=affinity,
    )


@contextlib.asynccontextmanager
async def proxy_for(state: SidecarState, seed: int = 7) -> AsyncIterator[OutboundProxy]:
    router = Router()
    router.update(state)
    proxy = OutboundProxy(router, random.Random(seed))
    proxy.listen([("127.0.0.1", 15001), ("::1", 15001)])
    try:
        yield proxy
    finally:
        await proxy.close()


async def greeting(
    host: str = VIP, port: int = PORT, local_port: int | None = None
) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    local = ("0.0.0.0", local_port) if local_port else None
    connect = asyncio.open_connection(host, port, local_addr=local)
    reader, writer = await asyncio.wait_for(connect, TIMEOUT)
    name = await asyncio.wait_for(reader.readline(), TIMEOUT)
    return name.decode().strip(), reader, writer


async def exchange(host: str = VIP, port: int = PORT) -> str:
    """One connection: the backend's name, checked to echo and to end cleanly."""
    name, reader, writer = await greeting(host, port)
    writer.write(b"ping\n")
    writer.write_eof()
    rest = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    assert rest == b"ping\nbye\n", f"{name}: {rest!r}"
    return name


async def eventually(condition: Callable[[], object], what: str) -> None:
    """Until `condition()` holds, letting the event loop (and the proxy on it) run."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def expect_reset(host: str = VIP, port: int = PORT, local_port: int | None = None) -> None:
    """The proxy resets the connection (as soon as it is made, or at the first read)."""
    local = ("0.0.0.0", local_port) if local_port else None
    with pytest.raises(ConnectionResetError):
        connect = asyncio.open_connection(host, port, local_addr=local)
        reader, writer = await asyncio.wait_for(connect, TIMEOUT)
        try:
            await asyncio.wait_for(reader.read(), TIMEOUT)
        finally:
            writer.close()


def cluster(proxy: OutboundProxy, name: str = WEB):  # type: ignore[no-untyped-def]
    return proxy.router.clusters[name]


# --- routing and balancing ---------------------------------------------------------


async def test_connections_to_the_vip_are_spread_round_robin(lab: Lab) -> None:
    async with backends() as started, proxy_for(sidecar_state(Mesh((web(),)))) as proxy:
        names = [await exchange() for _ in range(30)]
        assert Counter(names) == {"web-0": 10, "web-1": 10, "web-2": 10}
        assert [b.accepted for b in started] == [10, 10, 10]
        runtime = cluster(proxy)
        assert runtime.counters.opened == 30 and runtime.active == 0
        assert runtime.counters.bytes_up == 30 * len(b"ping\n")
        assert runtime.counters.bytes_down == sum(
            len(f"web-{i}\nping\nbye\n") * 10 for i in range(3)
        )
        assert sorted(h.connections for h in runtime.balancer().hosts) == [10, 10, 10]


async def test_an_ipv6_cluster_ip_is_captured_and_proxied(lab: Lab) -> None:
    service = web(ips=(VIP, VIP6))
    async with backends(), proxy_for(sidecar_state(Mesh((service,)))):
        names = {await exchange(VIP6) for _ in range(3)}
        assert names == {"web-0", "web-1", "web-2"}


async def test_client_ip_affinity_keeps_a_client_on_one_endpoint(lab: Lab) -> None:
    service = web(policy=LbPolicy.RING_HASH, affinity=True)
    async with backends(), proxy_for(sidecar_state(Mesh((service,)))):
        names = {await exchange() for _ in range(12)}
        assert len(names) == 1


async def test_least_request_sends_new_connections_away_from_busy_endpoints(lab: Lab) -> None:
    service = web(policy=LbPolicy.LEAST_REQUEST)
    async with backends(), proxy_for(sidecar_state(Mesh((service,)))):
        held = [await greeting() for _ in range(4)]  # open, so they count as load
        busy = Counter(name for name, _, _ in held)
        names = Counter([await exchange() for _ in range(9)])
        for _, _, writer in held:
            writer.close()
        least_busy = min(busy.get(f"web-{i}", 0) for i in range(3))
        assert all(busy.get(n, 0) <= least_busy + 1 for n in names)


async def test_a_connection_to_the_proxy_itself_is_refused_not_looped(lab: Lab) -> None:
    # Not redirected, so its destination is the proxy's own port: passing it through
    # would connect the proxy to itself, again and again. (Passing unknown
    # destinations through needs the proxy's uid, so it is shown end to end.)
    async with backends(), proxy_for(sidecar_state(Mesh((web(),)))) as proxy:
        await expect_reset("127.0.0.1", 15001)
        assert proxy.counters.not_redirected == 1


# --- failures ----------------------------------------------------------------------


async def test_a_dead_endpoint_is_retried_elsewhere_then_ejected(lab: Lab) -> None:
    async with backends(BACKENDS[:2]), proxy_for(sidecar_state(Mesh((web(),)))) as proxy:
        # 127.0.0.13 has no backend: connects there are refused.
        names = [await exchange() for _ in range(30)]
        assert set(names) == {"web-0", "web-1"}
        runtime = cluster(proxy)
        assert (
            runtime.counters.retries >= 5
            and runtime.counters.connect_failures == runtime.counters.retries
        )
        assert runtime.counters.ejections == 1
        dead = next(h for h in runtime.balancer().hosts if h.endpoint.address == "127.0.0.13")
        assert dead.outlier.ejected_until is not None and dead.connections == 0
        assert runtime.counters.no_endpoint == 0


async def test_with_every_endpoint_down_the_client_gets_a_reset(lab: Lab) -> None:
    async with proxy_for(sidecar_state(Mesh((web(),)))) as proxy:
        await expect_reset()
        runtime = cluster(proxy)
        assert (
            runtime.counters.no_endpoint == 1 and runtime.counters.connect_failures == 3
        )  # each tried once
        assert runtime.counters.retries == 2
        assert runtime.active == 0


async def test_a_connect_that_hangs_times_out_and_is_retried(lab: Lab) -> None:
    # Nobody answers ARP for the lab's silent address: the SYN goes nowhere.
    hosts = [lab.silent_address, BACKENDS[0]]
    state = sidecar_state(Mesh((web(hosts),)))
    name = next(iter(state.clusters.keys() - {"PassthroughCluster"}))
    quick = dataclasses.replace(state.clusters[name], connect_timeout_seconds=0.3)
    state = dataclasses.replace(state, clusters={**state.clusters, name: quick})
    async with backends(BACKENDS[:1]), proxy_for(state) as proxy:
        # Round robin comes to the silent endpoint at least once in two connections;
        # each try there times out and goes on to web-0.
        assert {await exchange() for _ in range(2)} == {"web-0"}
        runtime = cluster(proxy)
        assert (
            runtime.counters.retries == runtime.counters.connect_failures
            and 1 <= runtime.counters.retries <= 2
        )


async def test_over_the_circuit_breaker_new_connections_are_refused(lab: Lab) -> None:
    state = sidecar_state(Mesh((web(),)))
    capped = dataclasses.replace(state.clusters[WEB], max_connections=2)
    state = dataclasses.replace(state, clusters={**state.clusters, WEB: capped})
    async with backends(), proxy_for(state) as proxy:
        held = [await greeting() for _ in range(2)]
        await expect_reset()
        assert cluster(proxy).counters.refused == 1
        held[0][2].close()
        await eventually(lambda: cluster(proxy).active < 2, "the closed connection to count off")
        assert await exchange() in {"web-0", "web-1", "web-2"}
        held[1][2].close()


async def test_a_cluster_removed_and_added_again_still_counts_its_open_connections(
    lab: Lab,
) -> None:
    state = sidecar_state(Mesh((web(),)))
    capped = dataclasses.replace(state.clusters[WEB], max_connections=2)
    state = dataclasses.replace(state, clusters={**state.clusters, WEB: capped})
    async with backends(), proxy_for(state) as proxy:
        router, runtime = proxy.router, cluster(proxy)
        held = [await greeting() for _ in range(2)]  # at the cap
        router.update(sidecar_state(Mesh(())))  # the service goes away ...
        assert router.retired[WEB] is runtime and WEB not in router.clusters
        held[0][2].close()  # ... a connection ends while it is away ...
        await eventually(lambda: runtime.active == 1, "the closed connection to count off")
        router.update(state)  # ... and it comes back with one connection still open
        assert cluster(proxy) is runtime and not router.retired
        held.append(await greeting())  # two open: at the cap
        await expect_reset()
        for _, _, writer in held[1:]:
            writer.close()
        await eventually(lambda: runtime.active == 0, "every connection to count off")
        router.update(sidecar_state(Mesh(())))
        assert not router.retired  # nothing open: nothing kept


# --- the relay -----------------------------------------------------------------------


async def test_half_close_reaches_the_backend_which_still_answers(lab: Lab) -> None:
    async with backends(), proxy_for(sidecar_state(Mesh((web(),)))):
        _, reader, writer = await greeting()
        writer.write(b"a" * 100_000)
        writer.write_eof()  # the client is done sending; the backend is not
        rest = await asyncio.wait_for(reader.read(), TIMEOUT)
        assert rest == b"a" * 100_000 + b"bye\n"
        writer.close()


async def test_bulk_bytes_arrive_intact_both_ways(lab: Lab) -> None:
    payload = random.Random(3).randbytes(8 << 20)
    async with backends(), proxy_for(sidecar_state(Mesh((web(),)))):
        _, reader, writer = await greeting()

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        echoed = await asyncio.wait_for(reader.read(), 30)
        await sender
        assert echoed == payload + b"bye\n"
        writer.close()


async def test_a_slow_reader_does_not_make_the_proxy_buffer(lab: Lab) -> None:
    async with backends() as started, proxy_for(sidecar_state(Mesh((web(),)))) as proxy:
        for backend in started:
            backend.reading.clear()
        sock = socket.create_connection((VIP, PORT), timeout=TIMEOUT)
        with sock:
            sock.setblocking(False)
            sent, chunk = 0, b"x" * 65536
            await eventually(lambda: proxy.tcp.relays, "the connection to be relayed")
            # Push until the client's own kernel refuses more: everything beyond the
            # socket buffers would have to be held by the proxy.
            stalls = 0
            while stalls < 20:
                try:
                    sent += sock.send(chunk)
                    stalls = 0
                except BlockingIOError:
                    stalls += 1
                    await asyncio.sleep(0.02)
            assert sent < 48 << 20, f"{sent} bytes went in: something buffers without bound"
            relay = next(iter(proxy.tcp.relays))
            assert relay.up.pending > 0  # the proxy stopped reading: its pipe waits
            assert relay.client_interest & 1 == 0  # not reading the client (EPOLLIN off)
            for backend in started:
                backend.reading.set()
            sock.setblocking(True)
            sock.shutdown(socket.SHUT_WR)
            received = bytearray()
            while data := await asyncio.get_running_loop().run_in_executor(
                None, sock.recv, 1 << 20
            ):
                received += data
        echoed_by = next(b for b in started if b.received)
        assert len(echoed_by.received) == sent


async def test_an_idle_connection_is_closed_after_the_idle_timeout(lab: Lab) -> None:
    state = sidecar_state(Mesh((web(),)))
    key = (VIP, PORT)
    short = dataclasses.replace(state.listeners[key], idle_timeout_seconds=0.5)
    state = dataclasses.replace(state, listeners={**state.listeners, key: short})
    async with backends(), proxy_for(state) as proxy:
        _, reader, writer = await greeting()
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # closed by the proxy
        writer.close()
        assert not proxy.tcp.relays


async def test_a_removed_endpoint_keeps_its_open_connection(lab: Lab) -> None:
    async with backends(), proxy_for(sidecar_state(Mesh((web(),)))) as proxy:
        name, reader, writer = await greeting()
        gone = BACKENDS[int(name[-1])]
        proxy.router.update(sidecar_state(Mesh((web([h for h in BACKENDS if h != gone]),))))
        names = {await exchange() for _ in range(6)}
        assert names == {"web-0", "web-1", "web-2"} - {name}
        writer.write(b"still here\n")
        assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"still here\n"
        writer.close()


async def test_sigterm_drain_lets_open_connections_finish(lab: Lab) -> None:
    async with backends(), proxy_for(sidecar_state(Mesh((web(),)))) as proxy:
        _, reader, writer = await greeting()
        drained = asyncio.create_task(proxy.drain(TIMEOUT))
        await asyncio.sleep(0)  # one turn of the loop: the drain stops accepting first
        # No new connections: the listener is closed, the redirect meets a closed port.
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(VIP, PORT)
        writer.write(b"last words\n")
        assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"last words\n"
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"bye\n"
        writer.close()
        assert await asyncio.wait_for(drained, TIMEOUT) == 0


async def test_the_drain_deadline_closes_what_is_still_open(lab: Lab) -> None:
    async with backends(), proxy_for(sidecar_state(Mesh((web(),)))) as proxy:
        _, reader, writer = await greeting()
        assert await asyncio.wait_for(proxy.drain(0.3), TIMEOUT) == 1
        with pytest.raises(ConnectionResetError):  # cut, and told so
            await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()


async def test_a_half_closed_connection_with_a_slow_reader_does_not_spin(lab: Lab) -> None:
    async with backends(), proxy_for(sidecar_state(Mesh((web(),)))) as proxy:
        sock = socket.create_connection((VIP, PORT), timeout=TIMEOUT)
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"z" * 1_000_000)
            sock.shutdown(socket.SHUT_WR)  # the backend echoes, says bye and closes
            await eventually(lambda: proxy.tcp.relays, "the connection to be relayed")
            relay = next(iter(proxy.tcp.relays))
            # Half done, the reader slow: the client's side ended, the backend's waits.
            await eventually(lambda: relay.up.ended and relay.down.pending, "that state")
            # Nothing to do until the client reads: the proxy must not burn CPU waiting.
            cpu = time.thread_time()
            await asyncio.sleep(1.0)
            assert time.thread_time() - cpu < 0.5
            sock.setblocking(True)
            received = bytearray()
            loop = asyncio.get_running_loop()
            while data := await loop.run_in_executor(None, sock.recv, 1 << 20):
                received += data
        assert received[:4] == b"web-" and received[6:-4] == b"z" * 1_000_000
        assert received.endswith(b"bye\n")
        assert not proxy.tcp.relays


async def test_the_proxys_own_captured_connection_is_refused_not_looped(lab: Lab) -> None:
    # The proxy runs as root here, which the lab's rules capture: its passthrough
    # connect to an unknown VIP comes straight back. It must notice and refuse.
    async with proxy_for(sidecar_state(Mesh((web(),)))) as proxy:
        await expect_reset("10.96.5.5", 9999)
        assert proxy.counters.looped >= 1
        await eventually(
            lambda: not proxy.tcp.connecting and not proxy.tcp.relays, "nothing left open"
        )
        assert proxy.router.passthrough.cluster.active == 0


class ProxyProcess:
    """The proxy in a process of its own (tests/proxy_child.py), whose fd budget no
    other thread of the test process can move; the test's clients stay in this one."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{command}\n".encode())
        line = await asyncio.wait_for(self.process.stdout.readline(), TIMEOUT)
        assert line, f"the proxy process ended at {command!r}"
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def eventually(self, condition: Callable[[dict[str, Any]], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition(await self.ask("counters")):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def proxy_process() -> AsyncIterator[ProxyProcess]:
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tests.proxy_child", VIP, str(PORT), str(BACKEND_PORT)),
        *BACKENDS,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), TIMEOUT) == b"ready\n"
        yield ProxyProcess(process)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


def no_endpoint_blamed(counters: dict[str, Any]) -> bool:
    cluster = counters["cluster"]
    blamed = cluster["connect_failures"] or cluster["ejections"] or cluster["no_endpoint"]
    return not blamed and all(h == [0, 0] for h in counters["hosts"].values())


async def test_running_out_of_fds_pauses_accepting_instead_of_spinning(lab: Lab) -> None:
    async with backends(), proxy_process() as proxy:
        await proxy.ask("limit 0")
        waiting = [asyncio.create_task(greeting()) for _ in range(20)]
        await proxy.eventually(lambda c: c["accept_failures"] > 0, "accept to run out of fds")
        await asyncio.sleep(0.5)  # a window in which a spinning accept would count up
        assert (await proxy.ask("counters"))["accept_failures"] < 20  # paused 0.1 s, not spun
        await proxy.ask("unlimit")
        served = await asyncio.gather(*waiting)  # waiting clients are served once fds are back
        assert {name for name, _, _ in served} <= {"web-0", "web-1", "web-2"}
        for _, _, writer in served:
            writer.close()
        assert await exchange() in {"web-0", "web-1", "web-2"}


async def test_closing_while_accept_is_paused_closes_every_listener(lab: Lab) -> None:
    async with backends(), proxy_process() as proxy:
        await proxy.ask("limit 0")
        waiting = asyncio.create_task(greeting())
        await proxy.eventually(lambda c: c["accept_failures"] > 0, "accept to run out of fds")
        await proxy.ask("close")  # the listener is out of the epoll set for its pause
        (outcome,) = await asyncio.gather(waiting, return_exceptions=True)
        if not isinstance(outcome, ConnectionError):  # its backlog went with the listener
            assert outcome[0] == "", "a connection was served after close"
            outcome[2].close()
        for address in (("127.0.0.1", 15001), ("::1", 15001)):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(address, timeout=TIMEOUT).close()


def one_ephemeral_port() -> None:
    # The lab namespace's own setting; it goes with the namespace.
    Path("/proc/sys/net/ipv4/ip_local_port_range").write_text("40000 40000")


def assert_no_endpoint_blamed(runtime: ClusterRuntime) -> None:
    assert (
        runtime.counters.connect_failures == 0
        and runtime.counters.ejections == 0
        and runtime.counters.no_endpoint == 0
    )
    for host in runtime.balancer().hosts:
        assert host.connect_failures == 0 and host.outlier.consecutive_failures == 0, host.name


async def test_no_socket_for_the_upstream_blames_no_endpoint(lab: Lab) -> None:
    async with backends(), proxy_process() as proxy:
        await proxy.ask("limit 1")  # the accepted connection; none upstream
        await expect_reset()
        counters = await proxy.ask("counters")
        assert counters["cluster"]["local_failures"] == 1  # given up at once: all would fail
        assert counters["cluster"]["retries"] == 0
        assert no_endpoint_blamed(counters)
        await proxy.ask("unlimit")
        assert await exchange() in {"web-0", "web-1", "web-2"}


async def test_no_free_port_to_the_endpoint_blames_it_not(lab: Lab) -> None:
    # One ephemeral port in the namespace: the proxy's second connection to the one
    # endpoint has no source port left (EADDRNOTAVAIL). The clients bind their own ports.
    one_ephemeral_port()
    async with (
        backends(BACKENDS[:1]),
        proxy_for(sidecar_state(Mesh((web(BACKENDS[:1]),)))) as proxy,
    ):
        held = await greeting(local_port=50001)
        assert held[0] == "web-0"
        await expect_reset(local_port=50002)
        runtime = cluster(proxy)
        assert runtime.counters.local_failures == 1
        assert_no_endpoint_blamed(runtime)
        held[2].close()


async def test_without_fds_for_a_pipe_bytes_are_copied_instead(lab: Lab) -> None:
    async with backends(), proxy_process() as proxy:
        await proxy.ask("no-pipes")  # no pooled pipes to fall back on
        name, reader, writer = await greeting()
        await proxy.ask("limit 0")  # the relay exists; a pipe for its bytes cannot be made
        payload = b"q" * 300_000
        writer.write(payload)
        writer.write_eof()
        rest = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        assert rest == payload + b"bye\n" and name.startswith("web-")
        await proxy.eventually(lambda c: c["cluster"]["bytes_up"] == len(payload), "the count")


async def test_connect_times_and_durations_are_histograms_of_the_clusters_used(
    lab: Lab,
) -> None:
    telemetry = Telemetry("test-proxy")
    api_port = ServicePort("web", PORT, endpoints=(Endpoint(BACKENDS[0], BACKEND_PORT),))
    unused = Service("api", "default", cluster_ips=("10.96.0.11",), ports=(api_port,))
    try:
        async with backends(), proxy_for(sidecar_state(Mesh((web(), unused)))) as proxy:
            ProxyMetrics(telemetry, proxy.router, lambda: proxy)
            for _ in range(3):
                assert await exchange() in {"web-0", "web-1", "web-2"}
            await eventually(lambda: cluster(proxy).active == 0, "the connections to close")
            text = telemetry.prometheus_text().decode()
    finally:
        telemetry.shutdown()
    label = f'cluster="{WEB}"'
    for name in ("connect_duration", "connection_duration"):
        lines = [
            line for line in text.splitlines() if line.startswith(f"meshlet_proxy_{name}_seconds")
        ]
        assert f"meshlet_proxy_{name}_seconds_count{{{label}}} 3.0" in lines, name
        inf = f'meshlet_proxy_{name}_seconds_bucket{{{label},le="+Inf"}} 3.0'
        assert inf in lines, lines
    # A cluster no connection used (api's, PassthroughCluster) has no series at all:
    # a scrape grows with the clusters the pod talks to, not with the mesh.
    counted = set(re.findall(r'^meshlet_proxy_connections_total\{cluster="([^"]*)"', text, re.M))
    assert counted == {WEB}
    clusters = set(
        re.findall(r'^meshlet_proxy_connect_duration_seconds_count\{cluster="([^"]*)"', text, re.M)
    )
    assert clusters == {WEB}
