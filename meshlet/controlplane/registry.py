"""The registry: every source's objects by kind, namespace and name, joined into one Mesh.

Sources hand in raw objects (`sources.base.ObjectEvent`); the registry parses
them with `kube_objects`, so a manifest and the API are held to the same rules:

- an object that becomes invalid keeps its last good version, and is reported;
- a new invalid object is left out, and is reported;
- one bad object never holds back the others;
- of two objects that conflict (the same Service twice, a ClusterIP claimed twice)
  the older is served and the other left out and reported (`controlplane.claims`);
- every problem belongs to one object or one source, and goes when it is fixed.

`result()` is the Mesh to serve with every problem there is now, bounded per file
and in all (`controlplane.problems`). Nothing should be served before `is_synced`:
every source has applied its first complete read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from meshlet.controlplane import problems
from meshlet.controlplane.claims import resolve
from meshlet.controlplane.sources.base import Kind, ObjectEvent, ObjectKey
from meshlet.controlplane.sources.kube_objects import (
    ManifestError,
    ServiceSpec,
    SliceSpec,
    build_mesh,
    parse_endpoint_slice,
    parse_service,
)
from meshlet.model import Mesh

_Spec = TypeVar("_Spec", ServiceSpec, SliceSpec)


@dataclass(frozen=True)
class LoadResult:
    """The Mesh to serve and every problem there is now.

    `errors` is the state of things, not news: a problem that stays is listed on
    every call, so a caller logs when the list changes.
    """

    mesh: Mesh
    errors: tuple[str, ...] = ()


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
        self._mesh = Mesh()
        # Objects left out of the Mesh for a conflict with an older one, and why.
        self._left_out: Mapping[ObjectKey, str] = {}
        self._stale = False  # objects changed since the Mesh was built
        # Counts every change of objects or problems: a cheap "anything new?".
        self.generation = 0

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
        if self._stale:
            self._stale = False
            claims = resolve(self._services, self._slices)
            self._mesh = build_mesh(claims.services, claims.slices)
            self._left_out = claims.left_out
        errors = [problem for source in self._source_problems.values() for problem in source]
        # An object's scope is its file (manifests) or "" (the API): bounded per file.
        located = [(key.scope, problem) for key, problem in self._object_problems.items()]
        located += [
            (key.scope, _located(key, self._origin(key), why))
            for key, why in self._left_out.items()
        ]
        errors += problems.per_file(located)
        return LoadResult(self._mesh, problems.bounded(errors))

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
            removed = store.pop(key, None) is not None
            self._stale |= removed
            return self._object_problems.pop(key, None) is not None or removed
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
        store[key] = spec
        self._stale = True
        return True
