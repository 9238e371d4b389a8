"""Mesh -> the NameTables the sidecars answer DNS from, one per namespace (pure)."""

from __future__ import annotations

from meshlet._proto.meshlet.v1 import nametable_pb2
from meshlet.app_protocols import PortProtocol, port_protocol
from meshlet.model import Health, Mesh, Service, ServiceKind, ServicePort


def _service_entry(service: Service) -> nametable_pb2.NameInfo:
    info = nametable_pb2.NameInfo(
        namespace=service.namespace,
        service=service.name,
        headless=service.kind is ServiceKind.HEADLESS,
        ports=[_port(p) for p in service.ports],
    )
    if service.kind is ServiceKind.EXTERNAL_NAME:
        info.cname = service.external_name.rstrip(".").lower()
    elif service.kind is ServiceKind.HEADLESS:
        # Ready pods only; publishNotReadyAddresses already made the rest HEALTHY.
        info.ips.extend(a.address for a in service.pod_addresses if a.health is Health.HEALTHY)
    else:
        info.ips.extend(service.cluster_ips)
    return info


def _port(port: ServicePort) -> nametable_pb2.Port:
    protocol = port_protocol(port.name, port.app_protocol)
    return nametable_pb2.Port(
        name=port.name,
        port=port.port,
        protocol=port.protocol.lower(),
        app_protocol=protocol.value if protocol is not PortProtocol.TCP else "",
    )


def service_entries(service: Service, domain: str) -> bytes:
    """The service's names as NameTable bytes: its own name, and on a headless service
    its pods' hostnames. A NameTable has one field, so the tables of many services
    concatenated are the table of them all: a change re-serializes one service."""
    table = nametable_pb2.NameTable()
    fqdn = service.fqdn(domain).lower()
    table.table[fqdn].CopyFrom(_service_entry(service))
    if service.kind is ServiceKind.HEADLESS:
        # Pods of a headless service with a hostname get <hostname>.<service fqdn>.
        for pod in service.pod_addresses:
            if pod.hostname and pod.health is Health.HEALTHY:
                entry = table.table[f"{pod.hostname}.{fqdn}".lower()]
                entry.namespace = service.namespace
                entry.service = service.name
                entry.ips.append(pod.address)
    return table.SerializeToString(deterministic=True)


def build_name_tables(mesh: Mesh, domain: str) -> dict[str, nametable_pb2.NameTable]:
    """One NameTable per namespace, by namespace."""
    by_namespace: dict[str, list[bytes]] = {}
    for service in mesh.services:
        by_namespace.setdefault(service.namespace, []).append(service_entries(service, domain))
    return {
        namespace: nametable_pb2.NameTable.FromString(b"".join(parts))
        for namespace, parts in by_namespace.items()
    }
