"""Which streams want which resources, so a snapshot wakes only the streams it concerns.

A stream tells the index what it subscribes to as its subscriptions change, in
steps (`Interest`): a wildcard on or off, names added and removed. Publishing a
snapshot looks up the names it changed, per type: the work follows the change,
not the number of streams. A stream left asleep misses nothing: when a change
concerns it, it looks at what changed since it last caught up
(`Snapshot.changed_since`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

Watcher = Callable[[], None]


@dataclass(frozen=True)
class Interest:
    """One step of a stream's subscription to one type."""

    type_url: str
    wildcard: bool | None  # turned on or off; None: unchanged
    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()


class Interests:
    def __init__(self) -> None:
        self._wildcard: dict[str, set[Watcher]] = {}
        self._named: dict[str, dict[str, set[Watcher]]] = {}

    def apply(self, watcher: Watcher, steps: Iterable[Interest]) -> None:
        for step in steps:
            if step.wildcard is not None:
                holders = self._wildcard.setdefault(step.type_url, set())
                if step.wildcard:
                    holders.add(watcher)
                else:
                    holders.discard(watcher)
            named = self._named.setdefault(step.type_url, {})
            for name in step.added:
                named.setdefault(name, set()).add(watcher)
            for name in step.removed:
                self._drop(named, name, watcher)

    def forget(self, watcher: Watcher, subscribed: Mapping[str, Iterable[str]]) -> None:
        """The stream is gone: `subscribed` is every name it held, per type."""
        for type_url, names in subscribed.items():
            self._wildcard.get(type_url, set()).discard(watcher)
            named = self._named.get(type_url, {})
            for name in names:
                self._drop(named, name, watcher)

    def concerned(self, changed: Mapping[str, Iterable[str]]) -> set[Watcher]:
        """The streams that subscribe to any of the changed names."""
        woken: set[Watcher] = set()
        for type_url, names in changed.items():
            named = self._named.get(type_url, {})
            any_name = False
            for name in names:
                any_name = True
                woken |= named.get(name, set())
            if any_name:
                woken |= self._wildcard.get(type_url, set())
        return woken

    @staticmethod
    def _drop(named: dict[str, set[Watcher]], name: str, watcher: Watcher) -> None:
        holders = named.get(name)
        if holders is not None:
            holders.discard(watcher)
            if not holders:
                del named[name]
