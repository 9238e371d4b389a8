"""Services -> the xDS resources the control plane serves (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from meshlet import defaults
from meshlet.app_protocols import port_protocol
from meshlet.model import Mesh, Service, ServiceKind
from meshlet.xds import names, types
from meshlet.xds.clusters import build_cluster, build_load_assignment, build_passthrough_cluster
from meshlet.xds.http import build_route_configuration
from meshlet.xds.listeners import (
    build_api_listener,
    build_outbound_listener,
    build_socket_listener,
    hashes_client,
)
from meshlet.xds.nametable import build_name_tables

DEFAULT_OUTBOUND_PORT = defaults.OUTBOUND_PORT


@dataclass(frozen=True)
class Generated:
    type_url: str
    name: str
    message: Message
    # Sent only to clients that ask for it by name, never to wildcard subscribers.
    on_demand: bool = False


def fixed_resources(outbound_port: int = DEFAULT_OUTBOUND_PORT) -> list[Generated]:
    """What every mesh has, whatever its services: the passthrough and the capture target."""
    return [
        Generated(types.CLUSTER, types.PASSTHROUGH_CLUSTER, build_passthrough_cluster()),
        Generated(types.LISTENER, types.OUTBOUND_LISTENER, build_outbound_listener(outbound_port)),
    ]


def service_resources(service: Service, domain: str) -> list[Generated]:
    """One service's clusters, load assignments, listeners and (HTTP ports) route
    configurations; its names are in the NameTable."""
    out: list[Generated] = []
    if service.kind is ServiceKind.EXTERNAL_NAME:
        return out  # answered by DNS alone; nothing to balance
    for port in service.ports:
        if port.protocol != "TCP":
            continue  # the proxy is TCP only; DNS still lists the port for SRV
        cluster = names.cluster_name(service, port.port, domain)
        protocol = port_protocol(port.name, port.app_protocol)
        out.append(Generated(types.CLUSTER, cluster, build_cluster(service, cluster, protocol)))
        out.append(Generated(types.ENDPOINT, cluster, build_load_assignment(port, cluster)))
        api_name = names.api_listener_name(service, port.port, domain)
        out.append(
            Generated(
                types.LISTENER,
                api_name,
                build_api_listener(service, api_name, cluster),
                on_demand=True,
            )
        )
        route_config = ""
        if protocol.is_http and service.cluster_ips:
            route_config = names.route_config_name(service, port.port, domain)
            routes = build_route_configuration(
                route_config, cluster, service.route_policy, hashes_client(service)
            )
            out.append(Generated(types.ROUTE, route_config, routes))
        for ip in service.cluster_ips:
            name = names.socket_listener_name(ip, port.port)
            listener = build_socket_listener(service, name, ip, port.port, cluster, route_config)
            out.append(Generated(types.LISTENER, name, listener))
    return out


def translate(
    mesh: Mesh, domain: str, outbound_port: int = DEFAULT_OUTBOUND_PORT
) -> list[Generated]:
    """Every resource of a whole mesh at once (the control plane builds them a service
    at a time: `controlplane.builder`)."""
    out = fixed_resources(outbound_port)
    for namespace, table in build_name_tables(mesh, domain).items():
        out.append(Generated(types.NAME_TABLE, namespace, table))
    for service in mesh.services:
        out += service_resources(service, domain)
    return out
