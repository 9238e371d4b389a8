"""Small meshes and snapshots shared by the control-plane tests."""

from __future__ import annotations

from meshlet.controlplane.cache import Snapshot, build_snapshot
from meshlet.model import Endpoint, Health, Mesh, Service, ServicePort
from meshlet.xds.translate import translate

DOMAIN = "cluster.local"


def web(*addresses: str, port: int = 80, ip: str = "10.96.0.10") -> Service:
    endpoints = tuple(Endpoint(a, 8080) for a in addresses)
    return Service(
        "web",
        "default",
        cluster_ips=(ip,),
        ports=(ServicePort("http", port, endpoints=endpoints),),
        pod_addresses=tuple(Endpoint(a, 0, Health.HEALTHY) for a in addresses),
    )


def api(*addresses: str) -> Service:
    endpoints = tuple(Endpoint(a, 9090) for a in addresses)
    return Service(
        "api",
        "shop",
        cluster_ips=("10.96.0.20",),
        ports=(ServicePort("grpc", 9090, endpoints=endpoints),),
    )


def snapshot_of(*services: Service, previous: Snapshot | None = None) -> Snapshot:
    return build_snapshot(translate(Mesh(services), DOMAIN), previous, 0.0)
