"""`meshlet sidecar`: the xDS client feeding DNS and the outbound proxy, with an admin port."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from meshlet import defaults
from meshlet._proto.meshlet.v1.nametable_pb2 import NameTable
from meshlet.flags import grpc_address
from meshlet.listen import listening
from meshlet.process import run_until_signal
from meshlet.resolv import read_resolv_conf
from meshlet.sidecar.admin import Probes, build_admin
from meshlet.sidecar.dns.forwarder import Forwarder
from meshlet.sidecar.dns.server import DnsServer
from meshlet.sidecar.dns.table import DnsTable, DnsTables
from meshlet.sidecar.metrics import SidecarMetrics
from meshlet.sidecar.proxy.metrics import ProxyMetrics
from meshlet.sidecar.proxy.router import Router
from meshlet.sidecar.proxy.server import OutboundProxy
from meshlet.sidecar.proxy.tracing import tracer_from_env
from meshlet.sidecar.state import SidecarState
from meshlet.sidecar.state_file import StateFile
from meshlet.sidecar.xds_client import XdsClient, XdsProtocol
from meshlet.telemetry import Telemetry
from meshlet.xds.types import NAME_TABLE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SidecarConfig:
    xds_address: tuple[str, int]
    node_id: str
    namespace: str = "default"
    zone: str = ""
    cluster_domain: str = defaults.CLUSTER_DOMAIN
    # Empty: 127.0.0.1:15053, and [::1]:15053 when IPv6 is up (capture sends a pod's
    # IPv6 DNS to ::1).
    dns_addresses: tuple[tuple[str, int], ...] = ()
    upstream_dns: tuple[tuple[str, int], ...] = ()
    resolv_conf: str = "/etc/resolv.conf"
    admin_address: tuple[str, int] = ("127.0.0.1", defaults.SIDECAR_ADMIN_PORT)
    xds_protocol: XdsProtocol = "delta"
    dns_ttl: int = 5
    # Empty: 127.0.0.1:15001, and [::1]:15001 when IPv6 is up.
    outbound_addresses: tuple[tuple[str, int], ...] = ()
    drain_seconds: float = 5.0
    # Keep taking new outbound connections while draining (a classic sidecar: the app
    # shuts down beside it and may still call out); else stop at once (native: the
    # app is gone by then).
    drain_accept: bool = False
    # POST /quitquitquit on the admin port: only a classic sidecar needs it, and any
    # process of the pod could use it.
    quit_endpoint: bool = False
    # Read-only, on the pod IP for the kubelet and Prometheus (None: not served).
    health_address: tuple[str, int] | None = None
    metrics_address: tuple[str, int] | None = None
    # Where to keep the last accepted config for a restart (None: not kept).
    state_dir: str | None = None


DEFAULT_OUTBOUND_PORT = defaults.OUTBOUND_PORT
DEFAULT_DNS_PORT = defaults.DNS_PORT


class DnsView:
    """The DNS answers of the latest accepted NameTables, rebuilt a namespace at a time."""

    def __init__(self, config: SidecarConfig) -> None:
        self._config = config
        self._source: Mapping[str, NameTable] | None = None
        self._tables = DnsTables(config.namespace, config.cluster_domain, config.dns_ttl)
        self.table: DnsTable | None = None

    def update(self, state: SidecarState) -> None:
        # Before the first NameTable response there is no table (every name goes upstream).
        if NAME_TABLE not in state.type_versions or state.name_tables is self._source:
            return
        try:
            table = self._tables.update(state.name_tables)
        except ValueError as exc:  # the xDS client validated it; this is a last guard
            log.error("name table not usable, keeping the previous one: %s", exc)
            return
        self._source = state.name_tables
        self.table = table


def upstreams_of(config: SidecarConfig) -> tuple[tuple[str, int], ...]:
    configured = config.upstream_dns or read_resolv_conf(config.resolv_conf).nameservers
    # Forwarding to ourselves would loop every unknown name until it times out.
    own = set(dns_addresses_of(config))
    return tuple(u for u in configured if u not in own)


def ipv6_loopback() -> bool:
    """Whether ::1 can be bound: IPv6 is up on loopback."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def _loopbacks(port: int) -> tuple[tuple[str, int], ...]:
    return (("127.0.0.1", port), *((("::1", port),) if ipv6_loopback() else ()))


def outbound_addresses_of(config: SidecarConfig) -> tuple[tuple[str, int], ...]:
    return config.outbound_addresses or _loopbacks(DEFAULT_OUTBOUND_PORT)


def dns_addresses_of(config: SidecarConfig) -> tuple[tuple[str, int], ...]:
    return config.dns_addresses or _loopbacks(DEFAULT_DNS_PORT)


def _raise_open_files_limit() -> None:
    # Two sockets per proxied connection, and pipes while bytes are in flight.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(config: SidecarConfig, stop: asyncio.Event) -> int:
    upstreams = upstreams_of(config)
    if not upstreams:
        print(
            "meshlet sidecar: no upstream DNS: neither --upstream-dns nor "
            f"{config.resolv_conf} names a nameserver other than this sidecar",
            file=sys.stderr,
        )
        return 2
    dns_view = DnsView(config)
    router = Router(zone=config.zone)
    saved = StateFile(config.state_dir, config.cluster_domain) if config.state_dir else None
    restoring = True

    def on_state(state: SidecarState) -> None:
        dns_view.update(state)
        router.update(state)
        if saved is not None and not restoring:
            saved.note(state)

    client = XdsClient(
        grpc_address(*config.xds_address),
        config.node_id,
        config.namespace,
        config.zone,
        config.cluster_domain,
        config.xds_protocol,
        on_state=on_state,
    )
    if saved is not None:
        restored = saved.load()
        if restored is not None:
            client.restore(restored.state, saved.path)
    restoring = False
    _raise_open_files_limit()
    telemetry = Telemetry("meshlet-sidecar")
    metrics = SidecarMetrics(telemetry, client.status)
    proxy = OutboundProxy(router, tracer=tracer_from_env("meshlet-sidecar"))
    ProxyMetrics(telemetry, router, lambda: proxy)
    forwarder = Forwarder(upstreams, on_attempt=metrics.forward_attempt)
    metrics.observe_forwarder(forwarder)
    dns_servers = [
        DnsServer(
            lambda: dns_view.table,
            forwarder,
            on_query=metrics.dns_queries,
            on_answered=metrics.dns_durations,
        )
        for _ in dns_addresses_of(config)
    ]
    admin = build_admin(
        lambda: client.state,
        client.status,
        telemetry,
        router,
        proxy.loop.time,
        quit=stop.set if config.quit_endpoint else None,
    )
    probes = Probes(client.status, telemetry)
    xds: asyncio.Task[None] | None = None
    try:
        outbound: list[tuple[str, int]] = []
        for address in outbound_addresses_of(config):
            with listening("the outbound proxy", *address):
                outbound += proxy.listen([address])
        # DNS names UDP or TCP itself: they are bound one after the other.
        dns_bound = [
            await server.start(*address)
            for server, address in zip(dns_servers, dns_addresses_of(config), strict=True)
        ]
        with listening("admin", *config.admin_address):
            admin_port = await admin.start(*config.admin_address)
        for where in await probes.start(config.health_address, config.metrics_address):
            log.info("%s", where)
        log.info(
            "outbound proxy on %s, DNS on %s (upstreams %s), admin on %s:%d, xDS from %s:%d (%s)",
            ", ".join(grpc_address(h, p) for h, p in outbound),
            ", ".join(grpc_address(h, p) for h, p in dns_bound),
            ", ".join(grpc_address(h, p) for h, p in upstreams),
            config.admin_address[0],
            admin_port,
            *config.xds_address,
            config.xds_protocol,
        )
        xds = asyncio.create_task(client.run())
        # What start-up made lives as long as the process: keep the collector off it.
        gc.freeze()
        await stop.wait()
        if config.drain_accept:
            # The app is shutting down beside us: it may still call out until the window ends.
            log.info("draining for %gs, still taking new connections", config.drain_seconds)
            await asyncio.sleep(config.drain_seconds)
            left = await proxy.drain(0)
        else:
            # No new connections; open ones get up to drain_seconds to finish, while
            # the xDS client and DNS keep serving.
            log.info("draining %d connections for up to %gs", proxy.active, config.drain_seconds)
            left = await proxy.drain(config.drain_seconds)
        if left:
            log.warning("closed %d connections still open at the drain deadline", left)
    finally:
        if xds is not None:
            xds.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await xds
        await proxy.close()
        if saved is not None:
            await saved.close()
        for server in dns_servers:
            await server.close()
        await admin.close()
        await probes.close()
        telemetry.shutdown()
    return 0


def run(config: SidecarConfig) -> int:
    return run_until_signal("sidecar", lambda stop: serve(config, stop))
