"""The JSONPatch (RFC 6902) that turns the pod the API server sent into the injected one.

Whole fields are added or replaced (annotations, the container and volume lists): what the
injector changes, and nothing else, so what another webhook did elsewhere stays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# What inject_pod may change, as (parent path, key).
_FIELDS = (
    (("metadata",), "annotations"),
    (("spec",), "initContainers"),
    (("spec",), "containers"),
    (("spec",), "volumes"),
)


def _get(obj: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    found: Any = obj
    for key in path:
        found = found.get(key) if isinstance(found, Mapping) else None
    return found


def _pointer(path: tuple[str, ...]) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in path)


def json_patch(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    for parent, key in _FIELDS:
        old_parent, new_parent = _get(before, parent), _get(after, parent)
        new = new_parent.get(key) if isinstance(new_parent, Mapping) else None
        if new is None:
            continue
        if not isinstance(old_parent, Mapping):
            ops.append({"op": "add", "path": _pointer(parent), "value": {key: new}})
            continue
        if key not in old_parent:
            ops.append({"op": "add", "path": _pointer((*parent, key)), "value": new})
        elif old_parent[key] != new:
            ops.append({"op": "replace", "path": _pointer((*parent, key)), "value": new})
    return ops
