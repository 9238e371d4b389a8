"""The registry: every source's objects by kind, namespace and name, joined into one Mesh.

Sources hand in raw objects (`sources.base.ObjectEvent`); the registry parses
them with `kube_objects`, so a manifest and the API are held to the same rules:

- an object that becomes invalid keeps its last good version, and is reported;
- a new invalid object is left out, and is reported;
- one bad object never holds back the others;
- of two objects that conflict (the same Service twice, a ClusterIP claimed twice)
  the older is served and the other left out and reported (`controlplane.claims`);
- every problem belongs to one object or one source, and goes when it is fixed.

`result()` is every Service to serve with every problem there is now, bounded
per file and in all (`controlplane.problems`), and which Services changed since
the last call. Nothing should be served before `is_synced`: every source has
applied its first complete read.

Work follows the change: an object event joins its one Service again (a slice
finds its Service through an index, not a pass over all). Only a change that
touches a conflict (a name held by two copies, a ClusterIP claimed twice)
resolves every claim again (`claims.resolve`), and that is rare.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TypeVar

from meshlet.controlplane import problems
from meshlet.controlplane.claims import resolve
from meshlet.controlplane.sources.base import Kind, ObjectEvent, ObjectKey
from meshlet.controlplane.sources.kube_objects import (
    ManifestError,
    ServiceSpec,
    SliceSpec,
    join_service,
    parse_endpoint_slice,
    parse_service,
)
from meshlet.model import Mesh, Service

_Spec = TypeVar("_Spec", ServiceSpec, SliceSpec)
# namespace, name: a Service (or slice) whatever the copy or file it came from.
_Identity = tuple[str, str]


@dataclass(frozen=True)
class LoadResult:
    """The Services to serve and every problem there is now.

    `errors` is the state of things, not news: a problem that stays is listed on
    every call, so a caller logs when the list changes. `changed` is news: the
    keys of Services added, changed or removed since the registry's last result.
    """

    services: Mapping[str, Service] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    changed: frozenset[str] = field(default=frozenset(), compare=False)

    @cached_property
    def mesh(self) -> Mesh:
        """The whole mesh, sorted by namespace and name."""
        ordered = sorted(self.services.values(), key=lambda s: (s.namespace, s.name))
        return Mesh(tuple(ordered))


def _located(key: ObjectKey, origin: str, message: str) -> str:
    where = f"{origin} ({key})" if origin else str(key)
    return f"{where}: {message}"


class Registry:
    """The objects of every source, their problems, and the Mesh they make."""

    def __init__(self, sources: int = 1, on_change: Callable[[], None] | None = None) -> None:
        # How many sources must report `synced` before the mesh may be served.
        self._unsynced = sources
        self.on_change = on_change
        self._services: dict[ObjectKey, ServiceSpec] = {}
        self._slices: dict[ObjectKey, SliceSpec] = {}
        self._object_problems: dict[ObjectKey, str] = {}
        self._source_problems: dict[str, tuple[str, ...]] = {}
        # Who claims what, to tell a change that touches a conflict from one that cannot.
        self._copies: dict[tuple[Kind, str, str], set[ObjectKey]] = {}
        self._ip_claims: dict[str, set[ObjectKey]] = {}
        # What is served: one Service and slice per identity, and each Service's slices.
        self._served_services: dict[_Identity, ServiceSpec] = {}
        self._served_slices: dict[_Identity, SliceSpec] = {}
        self._slices_of: dict[_Identity, dict[str, SliceSpec]] = {}
        # Objects left out of the mesh for a conflict with an older one, and why.
        self._left_out: Mapping[ObjectKey, str] = {}
        self._contested = False  # a change touched a conflict: resolve every claim
        self._dirty: set[_Identity] = set()  # Services to join again
        self._joined: dict[str, Service] = {}
        self._changed_keys: set[str] = set()  # since the last result
        # Counts every change of objects or problems: a cheap "anything new?".
        self.generation = 0
        self.decoded = 0  # objects parsed, to show a change costs the objects it touched

    @property
    def is_synced(self) -> bool:
        return self._unsynced <= 0

    def counts(self) -> Mapping[Kind, int]:
        return {Kind.SERVICE: len(self._services), Kind.ENDPOINT_SLICE: len(self._slices)}

    # --- the Sink that sources report to -------------------------------------

    def apply(self, events: Sequence[ObjectEvent]) -> None:
        changed = False
        for event in events:
            changed |= self._apply_one(event)
        if changed:
            self._changed()

    def source_problems(self, source: str, problems: Sequence[str]) -> None:
        problems = tuple(problems)
        if self._source_problems.get(source, ()) != problems:
            if problems:
                self._source_problems[source] = problems
            else:
                self._source_problems.pop(source, None)
            self._changed()

    def synced(self) -> None:
        self._unsynced -= 1
        self._changed()

    # --- what the control plane reads ----------------------------------------

    def result(self) -> LoadResult:
        if self._contested:
            self._contested = False
            self._resolve_all()
        for identity in self._dirty:
            key = f"{identity[0]}/{identity[1]}"
            spec = self._served_services.get(identity)
            if spec is None:
                if self._joined.pop(key, None) is not None:
                    self._changed_keys.add(key)
                continue
            service = join_service(spec, self._slices_of.get(identity, {}).values())
            if self._joined.get(key) != service:
                self._joined[key] = service
                self._changed_keys.add(key)
        self._dirty.clear()
        changed, self._changed_keys = frozenset(self._changed_keys), set()
        errors = [problem for source in self._source_problems.values() for problem in source]
        # An object's scope is its file (manifests) or "" (the API): bounded per file.
        located = [(key.scope, problem) for key, problem in self._object_problems.items()]
        located += [
            (key.scope, _located(key, self._origin(key), why))
            for key, why in self._left_out.items()
        ]
        errors += problems.per_file(located)
        # A copy: the registry goes on changing while the result is being served.
        return LoadResult(dict(self._joined), problems.bounded(errors), changed)

    # --- inside ---------------------------------------------------------------

    def _changed(self) -> None:
        self.generation += 1
        if self.on_change is not None:
            self.on_change()

    def _origin(self, key: ObjectKey) -> str:
        spec = self._services.get(key) or self._slices.get(key)
        return spec.origin if spec is not None else ""

    def _apply_one(self, event: ObjectEvent) -> bool:
        if event.key.kind is Kind.SERVICE:
            return self._put(self._services, event, parse_service)
        return self._put(self._slices, event, parse_endpoint_slice)

    def _put(
        self,
        store: dict[ObjectKey, _Spec],
        event: ObjectEvent,
        parse: Callable[[Mapping[str, object]], _Spec],
    ) -> bool:
        key = event.key
        if event.obj is None:
            old = store.get(key)
            if old is not None:
                self._replace(store, key, old, None)
            return self._object_problems.pop(key, None) is not None or old is not None
        self.decoded += 1
        try:
            spec = replace(parse(event.obj), origin=event.origin)
        except ManifestError as exc:
            # The last good version (if any) stays; the problem is the news.
            problem = _located(key, event.origin, exc.message)
            if self._object_problems.get(key) == problem:
                return False
            self._object_problems[key] = problem
            return True
        fixed = self._object_problems.pop(key, None) is not None
        old = store.get(key)
        if old is not None and old == spec and old.origin == spec.origin:
            return fixed
        self._replace(store, key, old, spec)
        return True

    def _replace(
        self, store: dict[ObjectKey, _Spec], key: ObjectKey, old: _Spec | None, new: _Spec | None
    ) -> None:
        """One object's old version out, its new one in, and what is served follows."""
        contested = self._contests(key, old)
        self._claim(key, old, -1)
        if new is None:
            del store[key]
        else:
            store[key] = new
        self._claim(key, new, +1)
        contested = contested or self._contests(key, new)
        if contested:
            # Which copy wins may change for others too: decided in one pass, at result().
            self._contested = True
            return
        # Sole claimant of its name and ClusterIPs, before and after: served as it is.
        identity = (key.namespace, key.name)
        if isinstance(old, ServiceSpec) or isinstance(new, ServiceSpec):
            if isinstance(new, ServiceSpec):
                self._served_services[identity] = new
            else:
                self._served_services.pop(identity, None)
            self._dirty.add(identity)
            return
        self._serve_slice(identity, new if isinstance(new, SliceSpec) else None)

    def _serve_slice(self, identity: _Identity, spec: SliceSpec | None) -> None:
        old = self._served_slices.get(identity)
        if old is not None:
            owner = (old.namespace, old.service_name)
            of_owner = self._slices_of.get(owner, {})
            of_owner.pop(old.name, None)
            if not of_owner:
                self._slices_of.pop(owner, None)
            self._dirty.add(owner)
        if spec is None:
            self._served_slices.pop(identity, None)
            return
        self._served_slices[identity] = spec
        owner = (spec.namespace, spec.service_name)
        self._slices_of.setdefault(owner, {})[spec.name] = spec
        self._dirty.add(owner)

    def _claim(self, key: ObjectKey, spec: ServiceSpec | SliceSpec | None, sign: int) -> None:
        if spec is None:
            return
        _count(self._copies, (key.kind, key.namespace, key.name), key, sign)
        if isinstance(spec, ServiceSpec):
            for ip in spec.cluster_ips:
                _count(self._ip_claims, ip, key, sign)

    def _contests(self, key: ObjectKey, spec: ServiceSpec | SliceSpec | None) -> bool:
        """Whether the object, as `spec`, shares its name or a ClusterIP with another."""
        if spec is None:
            return False
        if len(self._copies.get((key.kind, key.namespace, key.name), ())) > 1:
            return True
        ips = spec.cluster_ips if isinstance(spec, ServiceSpec) else ()
        return any(len(self._ip_claims.get(ip, ())) > 1 for ip in ips)

    def _resolve_all(self) -> None:
        claims = resolve(self._services, self._slices)
        services = {(s.namespace, s.name): s for s in claims.services}
        for identity in services.keys() | self._served_services.keys():
            if services.get(identity) is not self._served_services.get(identity):
                self._dirty.add(identity)
        self._served_services = services
        slices = {(s.namespace, s.name): s for s in claims.slices}
        for identity in slices.keys() | self._served_slices.keys():
            spec = slices.get(identity)
            if spec is not self._served_slices.get(identity):
                self._serve_slice(identity, spec)
        self._left_out = claims.left_out


_Claimed = TypeVar("_Claimed")


def _count(
    index: dict[_Claimed, set[ObjectKey]], what: _Claimed, key: ObjectKey, sign: int
) -> None:
    holders = index.setdefault(what, set())
    if sign > 0:
        holders.add(key)
    else:
        holders.discard(key)
        if not holders:
            del index[what]
