"""An informer's bookkeeping, as client-go's reflector keeps it (pure: no I/O, no clock).

It remembers each object's resourceVersion as last told to the registry, and turns
what the API said into object events:

- a list (the first, or a relist after 410 Gone) gives only the real differences
  against what was told before: an unchanged object is not sent again, and nothing
  disappears and comes back while a relist runs;
- a watch event gives its change, a bookmark only moves the resourceVersion;
- an ERROR event says Gone (relist) or why the watch failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshlet.controlplane.sources.base import Kind, ObjectEvent, ObjectKey

Raw = Mapping[str, object]


class Gone(Exception):
    """410: the resourceVersion is older than the API can replay; list again."""


class WatchFailed(Exception):
    """The API ended a watch with an ERROR event other than Gone."""


@dataclass(frozen=True)
class Step:
    events: tuple[ObjectEvent, ...]
    resource_version: str


def _meta(obj: Raw) -> Mapping[str, object]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


class ReflectorStore:
    """What one reflector (one kind, one namespace or all) has told the registry."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self._versions: dict[ObjectKey, str] = {}

    def __len__(self) -> int:
        return len(self._versions)

    def _key(self, obj: Raw) -> ObjectKey | None:
        meta = _meta(obj)
        name, namespace = meta.get("name"), meta.get("namespace")
        if not isinstance(name, str) or not name or not isinstance(namespace, str):
            return None  # the API never sends one; nothing could be keyed by it anyway
        return ObjectKey(self.kind, namespace, name)

    def replace(self, items: Iterable[Raw], resource_version: str) -> Step:
        """A complete list: the differences against what was told before."""
        versions: dict[ObjectKey, str] = {}
        events: list[ObjectEvent] = []
        for obj in items:
            key = self._key(obj)
            if key is None:
                continue
            version = str(_meta(obj).get("resourceVersion", ""))
            versions[key] = version
            if self._versions.get(key) != version or not version:
                events.append(ObjectEvent(key, obj))
        events += (ObjectEvent(key, None) for key in self._versions.keys() - versions.keys())
        self._versions = versions
        return Step(tuple(events), resource_version)

    def watch_event(self, event: Raw, resource_version: str) -> Step:
        """One line of a watch; raises Gone or WatchFailed for an ERROR event."""
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, Mapping):
            raise WatchFailed(f"a watch event without an object: {str(event)[:200]}")
        if kind == "ERROR":
            code, message = obj.get("code"), obj.get("message", "")
            if code == 410:
                raise Gone(str(message))
            raise WatchFailed(f"watch error {code}: {message}")
        version = str(_meta(obj).get("resourceVersion") or resource_version)
        if kind == "BOOKMARK":
            return Step((), version)
        key = self._key(obj)
        if key is None:
            return Step((), version)
        if kind == "DELETED":
            if self._versions.pop(key, None) is None:
                return Step((), version)
            return Step((ObjectEvent(key, None),), version)
        if kind in ("ADDED", "MODIFIED"):
            if self._versions.get(key) == version:
                return Step((), version)  # replayed after a resume: already told
            self._versions[key] = version
            return Step((ObjectEvent(key, obj),), version)
        raise WatchFailed(f"unknown watch event type {kind!r}")
