"""Snapshots of every resource, each serialized once, and the seam streams watch.

A snapshot is immutable. Publishing one swaps it whole and tells every watcher;
the streams then work out, per client, what to send.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from meshlet.xds import types, wire
from meshlet.xds.translate import Generated


@dataclass(frozen=True, slots=True)
class Resource:
    name: str
    version: str  # a hash of the content: equal bytes, equal version
    any_bytes: bytes
    on_demand: bool
    # The resource as it stands inside a SotW and a delta response, ready to join.
    sotw_field: bytes
    delta_field: bytes

    @classmethod
    def make(cls, type_url: str, name: str, body: bytes, on_demand: bool = False) -> Resource:
        version = _digest(body)
        any_bytes = wire.encode_any(type_url, body)
        return cls(
            name,
            version,
            any_bytes,
            on_demand,
            wire.sotw_resource_field(any_bytes),
            wire.delta_resource_field(name, version, any_bytes),
        )


def _digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part)
    return h.hexdigest()


@dataclass(frozen=True)
class Snapshot:
    generation: int
    resources: Mapping[str, Mapping[str, Resource]]
    # One version per type: a hash of its resources' names and versions.
    type_versions: Mapping[str, str]
    # Names added, changed or removed since generation - 1, per type.
    changed: Mapping[str, frozenset[str]]
    # When the source change that led here was seen (monotonic seconds).
    built_at: float

    def of_type(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, {})

    def counts(self) -> dict[str, int]:
        return {t: len(r) for t, r in self.resources.items()}


def _check_consistent(resources: Mapping[str, Mapping[str, Resource]]) -> None:
    # Every load assignment belongs to a cluster; anything else is a translate bug
    # that must never reach a client.
    orphans = set(resources[types.ENDPOINT]) - set(resources[types.CLUSTER])
    if orphans:
        raise ValueError(f"load assignments without a cluster: {sorted(orphans)}")


def build_snapshot(
    generated: Iterable[Generated], previous: Snapshot | None, built_at: float
) -> Snapshot:
    resources: dict[str, dict[str, Resource]] = {t: {} for t in types.SERVED}
    for item in generated:
        body = item.message.SerializeToString(deterministic=True)
        old = previous.of_type(item.type_url).get(item.name) if previous else None
        # Interned: every stream's bookkeeping then shares this one string per name.
        name = sys.intern(item.name)
        fresh = Resource.make(item.type_url, name, body, item.on_demand)
        # Keep the object we already hold when nothing changed: streams compare by identity.
        resource = old if old is not None and old == fresh else fresh
        resources.setdefault(item.type_url, {})[name] = resource
    _check_consistent(resources)
    changed: dict[str, frozenset[str]] = {}
    type_versions: dict[str, str] = {}
    for type_url, by_name in resources.items():
        type_versions[type_url] = _digest(
            *(f"{n}={r.version};".encode() for n, r in sorted(by_name.items()))
        )
        before = previous.of_type(type_url) if previous else {}
        changed[type_url] = frozenset(
            n for n in by_name.keys() | before.keys() if by_name.get(n) is not before.get(n)
        )
    return Snapshot(
        generation=(previous.generation + 1) if previous else 1,
        resources=resources,
        type_versions=type_versions,
        changed=changed,
        built_at=built_at,
    )


class SnapshotCache:
    """Holds the latest snapshot and tells watchers when it changes."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._watchers: set[Callable[[], None]] = set()

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def publish(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        for notify in list(self._watchers):
            notify()

    def watch(self, notify: Callable[[], None]) -> Callable[[], None]:
        self._watchers.add(notify)
        return lambda: self._watchers.discard(notify)
