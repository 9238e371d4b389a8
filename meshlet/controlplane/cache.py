"""Snapshots of every resource, each serialized once, and the seam streams watch.

A snapshot is immutable. Publishing one swaps it whole and tells every watcher;
the streams then work out, per client, what to send.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from meshlet.controlplane.interests import Interests
from meshlet.xds import types, wire


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


# How many generations of change a Snapshot remembers: a stream that skipped fewer
# (it was not woken for changes it has no interest in, or was slow to write) looks
# only at what changed since; one further behind compares everything it holds.
HISTORY = 64

Changes = Mapping[str, frozenset[str]]


@dataclass(frozen=True)
class Snapshot:
    generation: int
    resources: Mapping[str, Mapping[str, Resource]]
    # One version per type: a combination of its resources' names and versions.
    type_versions: Mapping[str, str]
    # Names added, changed or removed since generation - 1, per type.
    changed: Changes
    # When the source change that led here was seen (monotonic seconds).
    built_at: float
    # The `changed` of the generations before this one, oldest first.
    history: tuple[Changes, ...] = ()

    def of_type(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, {})

    def counts(self) -> dict[str, int]:
        return {t: len(r) for t, r in self.resources.items()}

    def changed_since(self, generation: int, type_url: str) -> frozenset[str] | None:
        """Names of `type_url` changed after `generation`, or None when that is too
        long ago to say (then every name must be looked at)."""
        behind = self.generation - generation
        if behind <= 0:
            return frozenset()
        if behind > len(self.history) + 1:
            return None
        if behind == 1:
            return self.changed.get(type_url, frozenset())
        steps = (*self.history[len(self.history) - behind + 1 :], self.changed)
        return frozenset().union(*(step.get(type_url, frozenset()) for step in steps))


def type_version(hashes: int) -> str:
    return f"{hashes:016x}"


def resource_hash(name: str, version: str) -> int:
    """A resource's share of its type's version: XORed in when it comes, out when it
    goes, so a type's version follows one change without a pass over the type."""
    return int.from_bytes(
        hashlib.blake2b(f"{name}={version}".encode(), digest_size=8).digest(), "big"
    )


def check_consistent(resources: Mapping[str, Mapping[str, Resource]]) -> None:
    # Every load assignment belongs to a cluster; anything else is a translate bug
    # that must never reach a client.
    orphans = set(resources.get(types.ENDPOINT, {})) - set(resources.get(types.CLUSTER, {}))
    if orphans:
        raise ValueError(f"load assignments without a cluster: {sorted(orphans)}")


def next_snapshot(
    previous: Snapshot | None,
    resources: Mapping[str, Mapping[str, Resource]],
    type_versions: Mapping[str, str],
    changed: Changes,
    built_at: float,
) -> Snapshot:
    return Snapshot(
        generation=(previous.generation + 1) if previous else 1,
        resources=resources,
        type_versions=type_versions,
        changed=changed,
        built_at=built_at,
        history=_history(previous),
    )


def _history(previous: Snapshot | None) -> tuple[Changes, ...]:
    if previous is None:
        return ()
    return (*previous.history[-(HISTORY - 1) :], previous.changed)


class SnapshotCache:
    """Holds the latest snapshot and wakes the streams each one concerns."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self.interests = Interests()

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def publish(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        for notify in self.interests.concerned(snapshot.changed):
            notify()
