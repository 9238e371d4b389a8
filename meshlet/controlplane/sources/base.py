"""The one interface every source feeds: object events, its own problems, and "synced".

A source (the manifest folder, the Kubernetes API) says which Services and
EndpointSlices exist, as the raw objects the API returns or a manifest holds,
and nothing else: parsing, validation and the join into the mesh model belong
to the registry, so both sources share them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class Kind(enum.Enum):
    SERVICE = "Service"
    ENDPOINT_SLICE = "EndpointSlice"


@dataclass(frozen=True, slots=True)
class ObjectKey:
    kind: Kind
    namespace: str
    name: str
    # Which copy: the manifest source names the file, so the same object in two
    # files is two objects (and a reported conflict); the API has one copy ("").
    scope: str = ""

    def __str__(self) -> str:
        return f"{self.kind.value} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ObjectEvent:
    key: ObjectKey
    # The object as the API or a manifest has it; None when it was deleted.
    obj: Mapping[str, object] | None
    # Where it came from, for messages ("web.yaml: document 2"); "" for the API.
    origin: str = ""


class Sink(Protocol):
    """What a source reports to (the registry)."""

    def apply(self, events: Sequence[ObjectEvent]) -> None:
        """Objects added, changed or deleted."""

    def source_problems(self, source: str, problems: Sequence[str]) -> None:
        """The source's own problems now (unreadable files, an unreachable API), replacing
        what it said before; empty when it is healthy."""

    def synced(self) -> None:
        """Everything the source had at its first complete read has been applied."""
