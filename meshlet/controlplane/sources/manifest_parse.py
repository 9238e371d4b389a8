"""One manifest file's bytes -> the Services and EndpointSlices in it, raw, and its problems.

Pure, so it runs wherever suits: in the reading thread for small files, in a
child process for big ones (`parse_worker`). YAML (multi-document, with what
its aliases stand for bounded: `manifest_yaml`) or JSON; a `List` (kubectl get
-o yaml) is unwrapped; kinds the mesh does not read are skipped. Only the first
few problems of a file are kept, and the rest counted: a file of 100,000 broken
documents is 5 problems and a number.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import yaml

from meshlet.controlplane import problems
from meshlet.controlplane.sources.base import Kind, ObjectEvent, ObjectKey
from meshlet.controlplane.sources.kube_objects import ManifestError, describe
from meshlet.controlplane.sources.manifest_yaml import AliasError, documents

_KINDS = {
    ("v1", "Service"): Kind.SERVICE,
    ("discovery.k8s.io/v1", "EndpointSlice"): Kind.ENDPOINT_SLICE,
}


@dataclass(frozen=True)
class Parsed:
    """The Services and EndpointSlices in one file, raw, and what is wrong with it."""

    objects: tuple[ObjectEvent, ...] = ()
    # The first `problems.PER_FILE` problems (and the one that stopped the reading).
    errors: tuple[ManifestError, ...] = ()
    # How many more problems there were.
    unlisted: int = 0
    # False when the file could not be read to its end (bad YAML, JSON, UTF-8): its
    # objects are then not known, and the last good ones stay.
    complete: bool = True


def parse_manifest(data: bytes, filename: str) -> Parsed:
    """The Services and EndpointSlices in one file's bytes, and what is wrong with it.

    Never raises: whatever stops the reading (a value PyYAML cannot build, as the
    date 2024-02-30, included) is a problem of this file, which is then incomplete.
    """
    try:
        return _parse(data, filename)
    except Exception as exc:  # a failure nothing below foresaw: still only this file's
        why = "out of memory" if isinstance(exc, MemoryError) else f"{type(exc).__name__}: {exc}"
        return Parsed(errors=(ManifestError(f"not parsed: {why}", filename),), complete=False)


def _parse(data: bytes, filename: str) -> Parsed:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        error = ManifestError(f"not UTF-8 text: {exc.reason}", filename)
        return Parsed(errors=(error,), complete=False)
    objects: dict[ObjectKey, ObjectEvent] = {}
    errors = _Problems()
    number = 0
    try:
        for number, doc in enumerate(_documents(text, filename), start=1):
            for where, obj in _objects(doc, f"{filename}: document {number}"):
                try:
                    key = _key(obj, filename)
                except ManifestError as exc:
                    label = f" ({describe(obj)})" if isinstance(obj, Mapping) else ""
                    errors.add(ManifestError(exc.message, where + label))
                    continue
                if key is None:
                    continue  # Deployments, ConfigMaps, ... may share the folder
                first = objects.get(key)
                if first is not None:
                    message = f"{key} is defined twice (also in {first.origin})"
                    errors.add(ManifestError(message, where))
                    continue
                assert isinstance(obj, Mapping)
                objects[key] = ObjectEvent(key, obj, where)
    except json.JSONDecodeError as exc:
        message = f"invalid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        return Parsed(errors=(ManifestError(message, filename),), complete=False)
    except AliasError as exc:
        error = ManifestError(str(exc), f"{filename}: document {number + 1}")
        return Parsed(errors=(*errors.listed, error), unlisted=errors.unlisted, complete=False)
    except (yaml.YAMLError, ValueError) as exc:
        # ValueError (JSON's own is caught above): a scalar PyYAML cannot build, as
        # 2024-02-30 or !!float "x", in any document (a ConfigMap's too).
        error = ManifestError(_yaml_problem(exc), f"{filename}: document {number + 1}")
        return Parsed(errors=(*errors.listed, error), unlisted=errors.unlisted, complete=False)
    except RecursionError:
        error = ManifestError("nested too deeply to be a Kubernetes object", filename)
        return Parsed(errors=(error,), complete=False)
    return Parsed(tuple(objects.values()), tuple(errors.listed), errors.unlisted)


class _Problems:
    """The first few problems of a file, and a count of the others."""

    def __init__(self) -> None:
        self.listed: list[ManifestError] = []
        self.unlisted = 0

    def add(self, error: ManifestError) -> None:
        if len(self.listed) < problems.PER_FILE:
            self.listed.append(error)
        else:
            self.unlisted += 1


def _key(obj: object, scope: str) -> ObjectKey | None:
    """Who the object is, or None for kinds the mesh does not read."""
    if not isinstance(obj, Mapping):
        raise ManifestError(f"expected a Kubernetes object (a mapping), got {_type_name(obj)}")
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not api_version or not kind:
        raise ManifestError("apiVersion and kind are required")
    found = _KINDS.get((api_version, kind)) if isinstance(api_version, str) else None
    if found is None:
        return None
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        raise ManifestError("metadata must be a mapping with a name")
    name, namespace = meta.get("name"), meta.get("namespace") or "default"
    if not isinstance(name, str) or not name:
        raise ManifestError("metadata.name is missing")
    if not isinstance(namespace, str):
        raise ManifestError("metadata.namespace must be a string")
    return ObjectKey(found, namespace, name, scope)


def _documents(text: str, filename: str) -> Iterator[object]:
    if filename.lower().endswith(".json"):
        yield json.loads(text)
    else:
        yield from documents(text)


def _objects(doc: object, where: str) -> Iterator[tuple[str, object]]:
    """The objects of one document, a `List` (kubectl get -o yaml) unwrapped."""
    if isinstance(doc, Mapping):
        kind, items = doc.get("kind"), doc.get("items")
        if isinstance(kind, str) and kind.endswith("List") and isinstance(items, list):
            for i, item in enumerate(items):
                if isinstance(item, Mapping) and "kind" not in item and kind != "List":
                    # API lists (ServiceList, ...) leave kind and apiVersion off their items.
                    api_version = doc.get("apiVersion")
                    item = {"apiVersion": api_version, "kind": kind.removesuffix("List"), **item}
                yield f"{where}, items[{i}]", item
            return
    if doc is not None:  # None: an empty document, e.g. after a trailing `---`
        yield where, doc


def _type_name(value: object) -> str:
    names = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return names.get(type(value), type(value).__name__)


def _yaml_problem(exc: yaml.YAMLError | ValueError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"invalid YAML: {exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(exc, ValueError):
        return f"invalid YAML: a value that cannot be read ({exc})"
    return f"invalid YAML: {exc}"
