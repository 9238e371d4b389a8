"""The manifest source: a YAML file or a folder of them, turned into a Mesh, and watched.

Each file is all-or-nothing: when it stops parsing, or holds an invalid object,
its last good objects stay in use and the problem is reported with file and
document. When the objects together conflict, the last good Mesh stays.
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
from meshlet.controlplane.sources.kube_objects import (
    ManifestError,
    ServiceSpec,
    SliceSpec,
    build_mesh,
    describe,
    parse_endpoint_slice,
    parse_service,
)
from meshlet.model import Mesh

log = logging.getLogger(__name__)

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SUFFIXES = (".yaml", ".yml", ".json")
# A file whose mtime is this close to when we last read it may have been written
# again within one timestamp tick, unseen by (mtime, size, inode): read it again.
_RACY_NS = 2_000_000_000

Stamp = tuple[int, int, int]  # mtime_ns, size, inode


@dataclass(frozen=True)
class LoadResult:
    """The Mesh to serve and every problem currently in the manifests.

    `errors` is the state of things, not news: a file that stays broken is listed
    on every load, so a caller logs when the list changes.
    """

    mesh: Mesh
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Parsed:
    services: tuple[ServiceSpec, ...] = ()
    slices: tuple[SliceSpec, ...] = ()
    errors: tuple[ManifestError, ...] = ()


def parse_manifest(data: bytes, filename: str) -> Parsed:
    """The Services and EndpointSlices in one file's bytes, and what is wrong with it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Parsed(errors=(ManifestError(f"not UTF-8 text: {exc.reason}", filename),))
    services: list[ServiceSpec] = []
    slices: list[SliceSpec] = []
    errors: list[ManifestError] = []
    number = 0
    try:
        for number, doc in enumerate(_documents(text, filename), start=1):
            for where, obj in _objects(doc, f"{filename}: document {number}"):
                try:
                    _parse_object(obj, where, services, slices)
                except ManifestError as exc:
                    label = f" ({describe(obj)})" if isinstance(obj, Mapping) else ""
                    errors.append(ManifestError(exc.message, where + label))
    except yaml.YAMLError as exc:
        errors.append(ManifestError(_yaml_problem(exc), f"{filename}: document {number + 1}"))
    except json.JSONDecodeError as exc:
        message = f"invalid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        errors.append(ManifestError(message, filename))
    except RecursionError:
        errors.append(ManifestError("nested too deeply to be a Kubernetes object", filename))
    return Parsed(tuple(services), tuple(slices), tuple(errors))


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


def _parse_object(
    obj: object, where: str, services: list[ServiceSpec], slices: list[SliceSpec]
) -> None:
    if not isinstance(obj, Mapping):
        raise ManifestError(f"expected a Kubernetes object (a mapping), got {_type_name(obj)}")
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not api_version or not kind:
        raise ManifestError("apiVersion and kind are required")
    if (api_version, kind) == ("v1", "Service"):
        services.append(replace(parse_service(obj), origin=where))
    elif (api_version, kind) == ("discovery.k8s.io/v1", "EndpointSlice"):
        slices.append(replace(parse_endpoint_slice(obj), origin=where))
    # Anything else (Deployments, ConfigMaps, ...) may share the folder.


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
    good: Parsed  # the last objects that parsed without error (empty if never)
    errors: tuple[str, ...]


class ManifestSource:
    """Services and EndpointSlices from PATH, a manifest file or a folder of them."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._files: dict[str, _File] = {}
        self._mesh = Mesh()

    def load(self) -> LoadResult:
        """Re-read what changed since the last load and build the Mesh."""
        try:
            found, _ = _scan(self.path)
        except OSError as exc:
            # PATH gone or unreadable is a problem, not "every service deleted".
            problem = f"{exc.filename or self.path}: cannot read: {exc.strerror or exc}"
            return LoadResult(self._mesh, (problem, *self._errors()))
        for name in self._files.keys() - found.keys():
            del self._files[name]
        for name in sorted(found):
            self._refresh(name, found[name])

        errors = self._errors()
        files = [self._files[name].good for name in sorted(self._files)]
        try:
            self._mesh = build_mesh(
                [svc for parsed in files for svc in parsed.services],
                [slice_ for parsed in files for slice_ in parsed.slices],
            )
        except ManifestError as exc:
            errors.append(str(exc))
        return LoadResult(self._mesh, tuple(errors))

    def _errors(self) -> list[str]:
        return [error for name in sorted(self._files) for error in self._files[name].errors]

    def _refresh(self, name: str, stat: os.stat_result) -> None:
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        old = self._files.get(name)
        if old is not None and old.stamp == stamp and stamp[0] + _RACY_NS < old.read_ns:
            return
        read_ns = time.time_ns()
        good = old.good if old is not None else Parsed()
        try:
            with open(name, "rb") as file:
                data = file.read()
        except FileNotFoundError:  # deleted since the scan
            self._files.pop(name, None)
            return
        except OSError as exc:
            problem = f"{name}: cannot read: {exc.strerror or exc}"
            self._files[name] = _File(stamp, read_ns, b"", good, (problem,))
            return
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if old is not None and old.digest == digest:
            self._files[name] = replace(old, stamp=stamp, read_ns=read_ns)
            return
        parsed = parse_manifest(data, name)
        if parsed.errors:
            errors = tuple(str(error) for error in parsed.errors)
            self._files[name] = _File(stamp, read_ns, digest, good, errors)
        else:
            self._files[name] = _File(stamp, read_ns, digest, parsed, ())

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
