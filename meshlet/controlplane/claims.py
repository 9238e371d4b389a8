"""Who is served when objects conflict: a ClusterIP claimed twice, a name defined twice.

Pure. Kubernetes never lets two Services hold one ClusterIP: the API server gives
it to the first and refuses the second. A folder of manifests (or a watch seen
mid-change) can still hold both, so the registry decides as the API server would
have: the older object keeps what it claims, by metadata.creationTimestamp, then
namespace/name, then the file it came from; an object without a timestamp counts
as newer than any with one. The choice depends only on the objects, never on the
order they arrived in, so it is the same after a restart. The other object is
left out and reported; everything else is served.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from meshlet.controlplane.sources.base import ObjectKey
from meshlet.controlplane.sources.kube_objects import ServiceSpec, SliceSpec

_Spec = TypeVar("_Spec", ServiceSpec, SliceSpec)
_Order = tuple[bool, float, str, str, str]


@dataclass(frozen=True)
class Claims:
    """The objects to serve, and why each other one is left out."""

    services: tuple[ServiceSpec, ...]
    slices: tuple[SliceSpec, ...]
    left_out: Mapping[ObjectKey, str]


def resolve(
    services: Mapping[ObjectKey, ServiceSpec], slices: Mapping[ObjectKey, SliceSpec]
) -> Claims:
    left_out: dict[ObjectKey, str] = {}
    served_services = _unique_names(services, left_out)
    owners: dict[str, tuple[ObjectKey, ServiceSpec]] = {}
    kept: list[ServiceSpec] = []
    for key, svc in served_services:
        taken = next((ip for ip in svc.cluster_ips if ip in owners), None)
        if taken is not None:
            owner_key, owner = owners[taken]
            left_out[key] = (
                f"ClusterIP {taken} is Service {owner.key}'s{_where(owner)}, which "
                f"{_why_first((owner_key, owner), (key, svc))}; this Service is left out"
            )
            continue
        owners.update((ip, (key, svc)) for ip in svc.cluster_ips)
        kept.append(svc)
    kept_slices = tuple(spec for _, spec in _unique_names(slices, left_out))
    return Claims(tuple(kept), kept_slices, left_out)


def _unique_names(
    specs: Mapping[ObjectKey, _Spec], left_out: dict[ObjectKey, str]
) -> list[tuple[ObjectKey, _Spec]]:
    """Oldest first, one per namespace/name: the copies of one object in several files
    are several objects (keys with their file as scope), and only the first is served."""
    first: dict[tuple[str, str], tuple[ObjectKey, _Spec]] = {}
    served: list[tuple[ObjectKey, _Spec]] = []
    for key, spec in sorted(specs.items(), key=lambda item: _order(*item)):
        name = (spec.namespace, spec.name)
        if name in first:
            winner = first[name]
            copy = f"the copy in {winner[1].origin}" if winner[1].origin else "the other copy"
            left_out[key] = (
                f"defined twice: {copy} is served, which "
                f"{_why_first(winner, (key, spec))}; this copy is left out"
            )
            continue
        first[name] = (key, spec)
        served.append((key, spec))
    return served


def _order(key: ObjectKey, spec: ServiceSpec | SliceSpec) -> _Order:
    created = spec.created
    return created is None, created or 0.0, key.namespace, key.name, key.scope


def _why_first(
    winner: tuple[ObjectKey, ServiceSpec | SliceSpec],
    loser: tuple[ObjectKey, ServiceSpec | SliceSpec],
) -> str:
    won, lost = winner[1].created, loser[1].created
    if won is not None and lost is None:
        return "has a creationTimestamp and this one has none"
    if won is not None and lost is not None and won < lost:
        return "is older (metadata.creationTimestamp)"
    if (winner[0].namespace, winner[0].name) != (loser[0].namespace, loser[0].name):
        return "comes first by namespace/name (set creationTimestamps to say which is older)"
    return "comes first by file name (set creationTimestamps to say which is older)"


def _where(spec: ServiceSpec | SliceSpec) -> str:
    return f" (in {spec.origin})" if spec.origin else ""
