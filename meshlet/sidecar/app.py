"""`meshlet sidecar`: the xDS client feeding DNS, with an admin port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import dataclass

from meshlet._proto.meshlet.v1.nametable_pb2 import NameTable
from meshlet.flags import grpc_address
from meshlet.process import run_until_signal
from meshlet.sidecar.admin import build_admin
from meshlet.sidecar.dns.forwarder import Forwarder
from meshlet.sidecar.dns.resolv import read_resolv_conf
from meshlet.sidecar.dns.server import DnsServer
from meshlet.sidecar.dns.table import DnsTable, build_dns_table
from meshlet.sidecar.metrics import SidecarMetrics
from meshlet.sidecar.state import SidecarState
from meshlet.sidecar.xds_client import XdsClient, XdsProtocol
from meshlet.telemetry import Telemetry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SidecarConfig:
    xds_address: tuple[str, int]
    node_id: str
    namespace: str = "default"
    zone: str = ""
    cluster_domain: str = "cluster.local"
    dns_address: tuple[str, int] = ("127.0.0.1", 15053)
    upstream_dns: tuple[tuple[str, int], ...] = ()
    resolv_conf: str = "/etc/resolv.conf"
    admin_address: tuple[str, int] = ("127.0.0.1", 15000)
    xds_protocol: XdsProtocol = "delta"
    dns_ttl: int = 5


class DnsView:
    """The DNS answers of the latest accepted NameTable, rebuilt only when it changes."""

    def __init__(self, config: SidecarConfig) -> None:
        self._config = config
        self._source: NameTable | None = None
        self.table: DnsTable | None = None

    def update(self, state: SidecarState) -> None:
        if state.name_table is None or state.name_table is self._source:
            return
        try:
            table = build_dns_table(
                state.name_table,
                self._config.namespace,
                self._config.cluster_domain,
                self._config.dns_ttl,
            )
        except ValueError as exc:  # the xDS client validated it; this is a last guard
            log.error("name table not usable, keeping the previous one: %s", exc)
            return
        self._source = state.name_table
        self.table = table


def upstreams_of(config: SidecarConfig) -> tuple[tuple[str, int], ...]:
    configured = config.upstream_dns or read_resolv_conf(config.resolv_conf).nameservers
    # Forwarding to ourselves would loop every unknown name until it times out.
    return tuple(u for u in configured if u != config.dns_address)


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
    client = XdsClient(
        grpc_address(*config.xds_address),
        config.node_id,
        config.namespace,
        config.zone,
        config.cluster_domain,
        config.xds_protocol,
        on_state=dns_view.update,
    )
    telemetry = Telemetry("meshlet-sidecar")
    metrics = SidecarMetrics(telemetry, client.status)
    dns = DnsServer(lambda: dns_view.table, Forwarder(upstreams), on_query=metrics.dns_queries)
    dns_host, dns_port = await dns.start(*config.dns_address)
    admin = build_admin(lambda: client.state, client.status, telemetry)
    admin_port = await admin.start(*config.admin_address)
    log.info(
        "DNS on %s:%d (upstreams %s), admin on %s:%d, xDS from %s:%d (%s)",
        dns_host,
        dns_port,
        ", ".join(f"{h}:{p}" for h, p in upstreams),
        config.admin_address[0],
        admin_port,
        *config.xds_address,
        config.xds_protocol,
    )
    xds = asyncio.create_task(client.run())
    try:
        await stop.wait()
    finally:
        xds.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await xds
        await dns.close()
        await admin.close()
        telemetry.shutdown()
    return 0


def run(config: SidecarConfig) -> int:
    return run_until_signal("sidecar", lambda stop: serve(config, stop))
