"""Services -> snapshots, a service at a time: a change costs what its services cost.

The builder keeps what it made of each service: its resources and its share of
the NameTable. Told which services changed, it translates and serializes those
alone and makes the next Snapshot from the last one. Every other resource is
the same object, with its bytes and version untouched; a type's map is copied
only when something of that type changed; a type's version follows each
changed resource (`cache.resource_hash`) without a pass over the type.

There is one NameTable per namespace: when a service's names change, its
namespace's table is joined again from the bytes of that namespace's services,
which copies bytes and serializes nothing else; a namespace without services
has no table.
"""

from __future__ import annotations

import bisect
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshlet import defaults
from meshlet.controlplane.cache import (
    Resource,
    Snapshot,
    check_consistent,
    next_snapshot,
    resource_hash,
    type_version,
)
from meshlet.controlplane.change_log import Change
from meshlet.model import Service
from meshlet.xds import types
from meshlet.xds.nametable import service_entries
from meshlet.xds.translate import Generated, fixed_resources, service_resources


@dataclass
class BuildReport:
    """What the last build did: the services translated again and the resources
    serialized, by type (counted, so tests can show a change costs its size)."""

    services: tuple[str, ...] = ()
    serialized: dict[str, list[str]] = field(default_factory=dict)
    # Each changed service as it was and as it is (None: not there), for the log.
    changes: dict[str, Change] = field(default_factory=dict)

    def count(self) -> int:
        return sum(len(names) for names in self.serialized.values())


@dataclass(frozen=True)
class _Built:
    """One service as the current snapshot holds it."""

    service: Service
    resources: tuple[tuple[str, Resource], ...]  # (type URL, resource)
    names: bytes  # its NameTable entries


class SnapshotBuilder:
    def __init__(self, domain: str, outbound_port: int = defaults.OUTBOUND_PORT) -> None:
        self._domain = domain
        self._outbound_port = outbound_port
        self._built: dict[str, _Built] = {}
        self._names: dict[str, dict[str, bytes]] = {}  # namespace -> name -> NameTable bytes
        # Per namespace, its services' names in NameTable order, kept sorted as they come and go.
        self._order: dict[str, list[str]] = {}
        self._hashes: dict[str, int] = {t: 0 for t in types.SERVED}
        self._snapshot: Snapshot | None = None
        self.report = BuildReport()

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def build(
        self, services: Mapping[str, Service], changed: Iterable[str] | None, built_at: float
    ) -> Snapshot | None:
        """The next snapshot, or None when nothing it serves changed.

        `services` is every service by key; `changed` the keys that may have changed
        since the last build, or None to look at every one (the first build, or
        after a build failed). Nothing is kept of a build that raises."""
        previous = self._snapshot
        if changed is None:
            changed = services.keys() | self._built.keys()
        report = BuildReport()
        fresh: dict[str, _Built | None] = {}
        for key in changed:
            service, old = services.get(key), self._built.get(key)
            if service is None:
                if old is not None:
                    fresh[key] = None
                    report.changes[key] = (old.service, None)
            elif old is None or old.service is not service:
                fresh[key] = self._translate(service, old, report)
                report.changes[key] = (old.service if old else None, service)
        fixed = self._fixed(report) if previous is None else []
        if previous is not None and not fresh:
            return None
        edit = _Edit(previous, self._hashes)
        # What a service still has, as the same object, is left alone. Every old
        # resource goes before any new one comes: a ClusterIP can move from one
        # changed service to another in one build.
        moves = [_diff(self._built.get(key), built) for key, built in fresh.items()]
        for gone, _ in moves:
            for type_url, resource in gone:
                edit.drop(type_url, resource)
        for _, came in moves:
            for type_url, resource in came:
                edit.put(type_url, resource)
        for type_url, resource in fixed:
            edit.put(type_url, resource)
        renamed = {
            key.partition("/")[0]
            for key, built in fresh.items()
            if _names_of(built) != _names_of(self._built.get(key))
        }
        if previous is None:
            check_consistent(edit.resources())
        # Nothing raises from here on: a failed build leaves the builder as it was.
        for key, built in fresh.items():
            namespace, _, name = key.partition("/")
            order = self._order.setdefault(namespace, [])
            names = self._names.setdefault(namespace, {})
            if built is None:
                del self._built[key], names[name]
                order.pop(bisect.bisect_left(order, name))
            else:
                if key not in self._built:
                    bisect.insort(order, name)
                self._built[key] = built
                names[name] = built.names
        for namespace in sorted(renamed):
            held = edit.held(types.NAME_TABLE, namespace)
            if not self._order.get(namespace):
                self._order.pop(namespace, None)
                self._names.pop(namespace, None)
                if held is not None:
                    edit.drop(types.NAME_TABLE, held)
                continue
            table = self._name_table(namespace)
            report.serialized.setdefault(types.NAME_TABLE, []).append(table.name)
            edit.put(types.NAME_TABLE, table)
        self._hashes = edit.hashes
        report.services = tuple(sorted(fresh))
        self.report = report
        self._snapshot = edit.snapshot(built_at)
        return self._snapshot

    def _translate(self, service: Service, old: _Built | None, report: BuildReport) -> _Built:
        generated = service_resources(service, self._domain)
        held = {(t, r.name): r for t, r in old.resources} if old else {}
        resources = []
        for item in generated:
            resource = self._resource(item, report)
            same = held.get((item.type_url, resource.name))
            # The object already held when nothing changed: streams compare by identity.
            resources.append((item.type_url, same if same == resource else resource))
        return _Built(service, tuple(resources), service_entries(service, self._domain))

    def _fixed(self, report: BuildReport) -> list[tuple[str, Resource]]:
        return [
            (item.type_url, self._resource(item, report))
            for item in fixed_resources(self._outbound_port)
        ]

    @staticmethod
    def _resource(item: Generated, report: BuildReport) -> Resource:
        report.serialized.setdefault(item.type_url, []).append(item.name)
        body = item.message.SerializeToString(deterministic=True)
        return Resource.make(item.type_url, sys.intern(item.name), body, item.on_demand)

    def _name_table(self, namespace: str) -> Resource:
        names = self._names[namespace]
        body = b"".join([names[name] for name in self._order[namespace]])
        return Resource.make(types.NAME_TABLE, sys.intern(namespace), body)


def _names_of(built: _Built | None) -> bytes:
    return built.names if built is not None else b""


_Resources = list[tuple[str, Resource]]


def _diff(old: _Built | None, new: _Built | None) -> tuple[_Resources, _Resources]:
    """A service's resources that went or changed, and those that came or changed."""
    before = {(t, r.name): r for t, r in old.resources} if old else {}
    after = {(t, r.name): r for t, r in new.resources} if new else {}
    gone = [(t, r) for (t, n), r in before.items() if after.get((t, n)) is not r]
    came = [(t, r) for (t, n), r in after.items() if before.get((t, n)) is not r]
    return gone, came


class _Edit:
    """The next snapshot's resources, made from the last one's: a type's map is copied
    the first time something of that type changes, and only then."""

    def __init__(self, previous: Snapshot | None, hashes: Mapping[str, int]) -> None:
        self._previous = previous
        self._held = {t: previous.of_type(t) for t in types.SERVED} if previous else {}
        self._writable: dict[str, dict[str, Resource]] = {}
        self._changed: dict[str, set[str]] = {t: set() for t in types.SERVED}
        self.hashes = dict(hashes)

    def _of_type(self, type_url: str) -> dict[str, Resource]:
        by_name = self._writable.get(type_url)
        if by_name is None:
            by_name = self._writable[type_url] = dict(self._held.get(type_url, {}))
        return by_name

    def held(self, type_url: str, name: str) -> Resource | None:
        return self._of_type(type_url).get(name)

    def drop(self, type_url: str, resource: Resource) -> None:
        by_name = self._of_type(type_url)
        if by_name.get(resource.name) is resource:
            del by_name[resource.name]
            self.hashes[type_url] ^= resource_hash(resource.name, resource.version)
            self._changed[type_url].add(resource.name)

    def put(self, type_url: str, resource: Resource) -> None:
        by_name = self._of_type(type_url)
        current = by_name.get(resource.name)
        if current is resource:
            return
        if current is not None:
            self.hashes[type_url] ^= resource_hash(current.name, current.version)
        by_name[resource.name] = resource
        self.hashes[type_url] ^= resource_hash(resource.name, resource.version)
        self._changed[type_url].add(resource.name)

    def resources(self) -> dict[str, Mapping[str, Resource]]:
        return {t: self._writable.get(t, self._held.get(t, {})) for t in types.SERVED}

    def snapshot(self, built_at: float) -> Snapshot:
        return next_snapshot(
            self._previous,
            self.resources(),
            {t: type_version(h) for t, h in self.hashes.items()},
            {t: frozenset(names) for t, names in self._changed.items()},
            built_at,
        )
