"""Small meshes and snapshots shared by the control-plane tests."""

from __future__ import annotations

from meshlet.controlplane.cache import Snapshot, build_snapshot
from meshlet.model import Endpoint, Health, Mesh, Service, ServicePort
from meshlet.sidecar.state import SidecarState
from meshlet.sidecar.validate import Received, Update, apply_update
from meshlet.xds import types
from meshlet.xds.translate import translate
from meshlet.xds.wire import pack

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


def sidecar_state(mesh: Mesh, outbound_port: int = 15001) -> SidecarState:
    """What a sidecar holds after accepting everything the control plane serves for `mesh`."""
    by_type: dict[str, list[Received]] = {}
    for generated in translate(mesh, DOMAIN, outbound_port):
        if generated.on_demand:
            continue  # API listeners: only for clients that ask for them by name
        received = Received(generated.name, "1", pack(generated.message))
        by_type.setdefault(generated.type_url, []).append(received)
    state = SidecarState()
    for type_url in (types.CLUSTER, types.ENDPOINT, types.LISTENER, types.NAME_TABLE):
        update = Update(type_url, "1", by_type.get(type_url, []))
        state = apply_update(state, update, DOMAIN)
    return state
