"""Small meshes and snapshots shared by the control-plane tests."""

from __future__ import annotations

from meshlet.controlplane.builder import SnapshotBuilder
from meshlet.controlplane.cache import Snapshot
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


# Each snapshot made here, with the builder that made it, so the next one follows it.
_BUILT: dict[int, tuple[Snapshot, SnapshotBuilder]] = {}


def snapshot_of(*services: Service, previous: Snapshot | None = None) -> Snapshot:
    """The snapshot the control plane builds for `services`, after `previous` (made here)."""
    if previous is None:
        builder = SnapshotBuilder(DOMAIN)
    else:
        held, made_by = _BUILT.pop(id(previous), (None, None))
        assert held is previous and made_by is not None, (
            "snapshot_of follows only a snapshot it made, and only once"
        )
        builder = made_by
    # New Service objects every call: each is looked at, and what is equal stays as it was.
    snapshot = builder.build({s.key: s for s in services}, None, 0.0)
    assert snapshot is not None
    _BUILT[id(snapshot)] = (snapshot, builder)
    return snapshot


def sidecar_state(mesh: Mesh, outbound_port: int = 15001) -> SidecarState:
    """What a sidecar holds after accepting everything the control plane serves for `mesh`."""
    by_type: dict[str, list[Received]] = {}
    for generated in translate(mesh, DOMAIN, outbound_port):
        if generated.on_demand:
            continue  # API listeners: only for clients that ask for them by name
        received = Received(generated.name, "1", pack(generated.message))
        by_type.setdefault(generated.type_url, []).append(received)
    state = SidecarState()
    for type_url in types.PUSH_ORDER:
        update = Update(type_url, "1", by_type.get(type_url, []))
        state = apply_update(state, update, DOMAIN)
    return state
