"""The manifest source: a YAML file or a folder of them, watched, reported to the registry.

A file that stops parsing (bad YAML or JSON) keeps its last good objects and is
reported with file and document. Objects in it that parse are handed to the
registry as they are, which judges each one on its own (`controlplane.registry`).
Only files that changed are read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

import yaml

from meshlet.controlplane.sources import inotify
from meshlet.controlplane.sources.base import Kind, ObjectEvent, ObjectKey, Sink
from meshlet.controlplane.sources.kube_objects import ManifestError, describe

log = logging.getLogger(__name__)

SOURCE = "manifests"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SUFFIXES = (".yaml", ".yml", ".json")
_KINDS = {
    ("v1", "Service"): Kind.SERVICE,
    ("discovery.k8s.io/v1", "EndpointSlice"): Kind.ENDPOINT_SLICE,
}
# A file whose mtime is this close to when we last read it may have been written
# again within one timestamp tick, unseen by (mtime, size, inode): read it again.
_RACY_NS = 2_000_000_000

Stamp = tuple[int, int, int]  # mtime_ns, size, inode
_UNREAD: Stamp = (-1, -1, -1)  # matches no file: read it next time


@dataclass(frozen=True)
class Parsed:
    """The Services and EndpointSlices in one file, raw, and what is wrong with it."""

    objects: tuple[ObjectEvent, ...] = ()
    errors: tuple[ManifestError, ...] = ()
    # False when the file could not be read to its end (bad YAML, JSON, UTF-8): its
    # objects are then not known, and the last good ones stay.
    complete: bool = True


def parse_manifest(data: bytes, filename: str) -> Parsed:
    """The Services and EndpointSlices in one file's bytes, and what is wrong with it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        error = ManifestError(f"not UTF-8 text: {exc.reason}", filename)
        return Parsed(errors=(error,), complete=False)
    objects: dict[ObjectKey, ObjectEvent] = {}
    errors: list[ManifestError] = []
    number = 0
    try:
        for number, doc in enumerate(_documents(text, filename), start=1):
            for where, obj in _objects(doc, f"{filename}: document {number}"):
                try:
                    key = _key(obj, filename)
                except ManifestError as exc:
                    label = f" ({describe(obj)})" if isinstance(obj, Mapping) else ""
                    errors.append(ManifestError(exc.message, where + label))
                    continue
                if key is None:
                    continue  # Deployments, ConfigMaps, ... may share the folder
                first = objects.get(key)
                if first is not None:
                    message = f"{key} is defined twice (also in {first.origin})"
                    errors.append(ManifestError(message, where))
                    continue
                assert isinstance(obj, Mapping)
                objects[key] = ObjectEvent(key, obj, where)
    except yaml.YAMLError as exc:
        error = ManifestError(_yaml_problem(exc), f"{filename}: document {number + 1}")
        return Parsed(errors=(*errors, error), complete=False)
    except json.JSONDecodeError as exc:
        message = f"invalid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        return Parsed(errors=(ManifestError(message, filename),), complete=False)
    except RecursionError:
        error = ManifestError("nested too deeply to be a Kubernetes object", filename)
        return Parsed(errors=(error,), complete=False)
    return Parsed(tuple(objects.values()), tuple(errors))


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
        yield from yaml.load_all(text, Loader=_Loader)


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


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"invalid YAML: {exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return f"invalid YAML: {exc}"


# --- Files on disk -------------------------------------------------------------


@dataclass(frozen=True)
class _File:
    stamp: Stamp
    read_ns: int  # wall clock just before the last read
    digest: bytes
    # The objects of the last complete read (none if never): what the registry has.
    keys: frozenset[ObjectKey]
    errors: tuple[str, ...]


class ManifestSource:
    """Services and EndpointSlices from PATH, a manifest file or a folder of them."""

    def __init__(self, path: str | os.PathLike[str], sink: Sink) -> None:
        self.path = os.fspath(path)
        self._sink = sink
        self._files: dict[str, _File] = {}
        self._synced = False

    def load(self) -> None:
        """Read what changed since the last load and report it to the sink."""
        try:
            found, _ = _scan(self.path)
        except OSError as exc:
            # PATH gone or unreadable is a problem, not "every service deleted".
            problem = f"{exc.filename or self.path}: cannot read: {exc.strerror or exc}"
            self._sink.source_problems(SOURCE, (problem, *self._errors()))
            return
        events: list[ObjectEvent] = []
        for name in sorted(self._files.keys() - found.keys()):
            events += _deleted(self._files.pop(name).keys)
        for name in sorted(found):
            events += self._refresh(name, found[name])
        self._sink.apply(events)
        self._sink.source_problems(SOURCE, self._errors())
        if not self._synced:
            self._synced = True
            self._sink.synced()

    def _errors(self) -> list[str]:
        return [error for name in sorted(self._files) for error in self._files[name].errors]

    def _refresh(self, name: str, stat: os.stat_result) -> list[ObjectEvent]:
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        old = self._files.get(name)
        if old is not None and old.stamp == stamp and stamp[0] + _RACY_NS < old.read_ns:
            return []
        read_ns = time.time_ns()
        keys = old.keys if old is not None else frozenset()
        try:
            with open(name, "rb") as file:
                data = file.read()
        except FileNotFoundError:  # deleted since the scan
            self._files.pop(name, None)
            return _deleted(keys)
        except OSError as exc:
            problem = f"{name}: cannot read: {exc.strerror or exc}"
            # No stamp: `chmod` back changes only the ctime, and the file must be read then.
            self._files[name] = _File(_UNREAD, read_ns, b"", keys, (problem,))
            return []
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if old is not None and old.digest == digest:
            self._files[name] = replace(old, stamp=stamp, read_ns=read_ns)
            return []
        parsed = parse_manifest(data, name)
        errors = tuple(str(error) for error in parsed.errors)
        if not parsed.complete:
            self._files[name] = _File(stamp, read_ns, digest, keys, errors)
            return []
        new_keys = frozenset(event.key for event in parsed.objects)
        self._files[name] = _File(stamp, read_ns, digest, new_keys, errors)
        # Every object of a changed file goes again; the registry drops what is equal.
        return [*parsed.objects, *_deleted(keys - new_keys)]

    async def watch(
        self,
        on_change: Callable[[], None],
        *,
        quiet: float = 0.02,
        max_delay: float = 0.5,
        use_inotify: bool = True,
        poll_interval: float = 0.5,
        rescan_interval: float = 5.0,
    ) -> None:
        """Call `on_change` (then `load()` is worth calling) after changes under PATH.

        A burst of changes gives one call: `quiet` seconds after the last change,
        at most `max_delay` after the first. inotify wakes us at once; without it
        PATH is polled every `poll_interval`, and with it re-scanned every
        `rescan_interval` in case an event was lost. Runs until cancelled.
        """
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        watcher = _TreeWatcher(self.path) if use_inotify else None
        if watcher is not None and not watcher.open():
            watcher = None
        try:
            if watcher is not None:
                loop.add_reader(watcher.fileno(), watcher.drain_into, wake)
            interval = rescan_interval if watcher is not None else poll_interval
            seen = _fingerprint(self.path)
            while True:
                if not await _wait(wake, interval) and _fingerprint(self.path) == seen:
                    continue
                await _settle(wake, quiet, max_delay)
                if watcher is not None:
                    watcher.sync()
                seen = _fingerprint(self.path)
                try:
                    on_change()
                except Exception:
                    # One bad reload must not end the watch: later edits still count.
                    log.exception("handling a manifest change failed")
        finally:
            if watcher is not None:
                loop.remove_reader(watcher.fileno())
                watcher.close()


def _deleted(keys: frozenset[ObjectKey]) -> list[ObjectEvent]:
    return [ObjectEvent(key, None) for key in sorted(keys, key=str)]


def _scan(root: str) -> tuple[dict[str, os.stat_result], list[str]]:
    """Manifest files (with their stat) and folders under root, hidden ones skipped.

    Symlinks are followed, so a mounted ConfigMap is read through its visible names
    and its `..data` internals are never walked twice.
    """
    stat = os.stat(root)
    if not os.path.isdir(root):
        return {root: stat}, []
    files: dict[str, os.stat_result] = {}
    folders: list[str] = []
    visited: set[tuple[int, int]] = set()
    pending = [(root, stat)]
    while pending:
        folder, folder_stat = pending.pop()
        if (folder_stat.st_dev, folder_stat.st_ino) in visited:  # a symlink loop
            continue
        visited.add((folder_stat.st_dev, folder_stat.st_ino))
        folders.append(folder)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    entry_stat = entry.stat()
                    is_dir = entry.is_dir()
                except FileNotFoundError:  # a dangling symlink or just deleted
                    continue
                if is_dir:
                    pending.append((entry.path, entry_stat))
                elif entry.name.lower().endswith(_SUFFIXES):
                    files[entry.path] = entry_stat
    return files, sorted(folders)


def _fingerprint(root: str) -> dict[str, Stamp] | None:
    try:
        files, _ = _scan(root)
    except OSError:
        return None
    return {name: (st.st_mtime_ns, st.st_size, st.st_ino) for name, st in files.items()}


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def _settle(wake: asyncio.Event, quiet: float, max_delay: float) -> None:
    """Return once no change came for `quiet` seconds, or `max_delay` after the start."""
    deadline = asyncio.get_running_loop().time() + max_delay
    while True:
        wake.clear()
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0 or not await _wait(wake, min(quiet, remaining)):
            wake.clear()
            return


class _TreeWatcher:
    """inotify watches on every folder under PATH (or on a single file's folder)."""

    def __init__(self, root: str) -> None:
        self._root = root
        self._inotify: inotify.Inotify | None = None
        self._watches: dict[str, int] = {}

    def open(self) -> bool:
        try:
            self._inotify = inotify.Inotify()
        except OSError:
            return False
        self.sync()
        return True

    def fileno(self) -> int:
        assert self._inotify is not None
        return self._inotify.fileno()

    def drain_into(self, wake: asyncio.Event) -> None:
        assert self._inotify is not None
        if self._inotify.read_events():
            wake.set()

    def sync(self) -> None:
        """Watch the folders there are now: new subfolders, PATH created or replaced."""
        assert self._inotify is not None
        try:
            _, folders = _scan(self._root)
        except OSError:
            folders = []
        if not folders:
            # A single file, or PATH not there yet: its folder sees it (re)appear.
            folders = [os.path.dirname(os.path.abspath(self._root))]
        for folder in self._watches.keys() - set(folders):
            self._inotify.rm_watch(self._watches.pop(folder))
        for folder in folders:
            # A folder gone already is fine: the next event or re-scan covers it.
            with contextlib.suppress(OSError):
                self._watches[folder] = self._inotify.add_watch(folder)

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
