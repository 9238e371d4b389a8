"""The manifest source: a YAML file or a folder of them, watched, reported to the registry.

A file that stops parsing (bad YAML or JSON), cannot be read, is no regular
file or is over the size limit keeps its last good objects and is reported with
file (and document). Before the first pass in which every file was read whole
there are no last good objects, so the source is not `synced` until then and
nothing is served. Objects in a file that parse are handed to the registry as
they are, which judges each one on its own (`controlplane.registry`). Only files
that changed are read again. Scanning PATH (for `reload` and for `watch`),
reading and parsing happen in one thread of the source's, big files parsed in a
child process (`parse_worker`); the registry decodes the objects on the loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from meshlet import defaults
from meshlet.controlplane import problems
from meshlet.controlplane.sources.base import ObjectEvent, ObjectKey, Sink
from meshlet.controlplane.sources.manifest_files import (
    Found,
    Tree,
    Unreadable,
    read_bounded,
    scan,
)
from meshlet.controlplane.sources.manifest_parse import Parsed, parse_manifest
from meshlet.controlplane.sources.manifest_watch import (
    Fingerprint,
    TreeWatcher,
    fingerprint,
    settle,
    wait,
)
from meshlet.controlplane.sources.parse_worker import ParserProcess

log = logging.getLogger(__name__)

SOURCE = "manifests"
# A file whose mtime is this close to when we last read it may have been written
# again within one timestamp tick, unseen by (mtime, size, inode): read it again.
_RACY_NS = 2_000_000_000
# Files up to this size are parsed in the reading thread: quicker than starting a
# child process, and too little work to hold the event loop back for long.
IN_PROCESS_BYTES = 64 * 1024

Stamp = tuple[int, int, int]  # mtime_ns, size, inode
_UNREAD: Stamp = (-1, -1, -1)  # matches no file: read it next time


@dataclass(frozen=True)
class _File:
    stamp: Stamp
    read_ns: int  # wall clock just before the last read
    digest: bytes
    # The objects of the last complete read (none if never): what the registry has.
    keys: frozenset[ObjectKey]
    errors: tuple[str, ...]
    # The last read did not give the file's objects (unreadable, over the limit, bad
    # YAML): until a first pass without any such file, nothing may be served.
    failed: bool = False


@dataclass
class _Pass:
    """What one pass over PATH found: the events to tell the sink, and the file table
    that holds once they are told (never before: a pass is applied whole or not at all)."""

    files: dict[str, _File] = field(default_factory=dict)
    folder_errors: tuple[str, ...] = ()
    events: list[ObjectEvent] = field(default_factory=list)
    # PATH itself could not be read: nothing else is known.
    failed: str = ""
    # A folder under PATH could not be listed (or was past the limit), or the pass
    # stopped before every file was read (the control plane is stopping).
    cut_short: bool = False
    # What the scan of this pass found, for the watch to compare with.
    seen: Fingerprint = None

    def whole(self) -> bool:
        """Every file under PATH was read and parsed to its end: what is there is known."""
        failed = any(entry.failed for entry in self.files.values())
        return not (self.failed or self.cut_short or failed)


class ManifestSource:
    """Services and EndpointSlices from PATH, a manifest file or a folder of them."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        sink: Sink,
        max_bytes: int = defaults.MAX_MANIFEST_BYTES,
    ) -> None:
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self._sink = sink
        # The files as the sink knows them: changed only with the events that say so.
        self._files: dict[str, _File] = {}
        self._folder_errors: tuple[str, ...] = ()
        self._synced = False
        # The parser of the pass running now, to stop it. Passes never overlap: `reload`
        # and `watch` run theirs on one thread, and `load` is for when nothing else runs.
        self._parser: ParserProcess | None = None
        # The thread that scans and reads PATH for `reload` and `watch`, one job at a time.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manifests")
        # What the last pass that read PATH saw, for `watch`, once one has.
        self._read_once = False
        self._pass_seen: Fingerprint = None

    def load(self) -> None:
        """Read what changed since the last load and report it to the sink (blocking)."""
        self._report(self._read())

    async def reload(self) -> None:
        """`load()` with the scan, reading and parsing in a thread, so the loop goes on
        serving."""
        loop = asyncio.get_running_loop()
        self._report(await loop.run_in_executor(self._thread, self._read))

    def stop(self) -> None:
        """End a parse in progress: the control plane is stopping."""
        parser = self._parser
        if parser is not None:
            parser.kill()

    def _report(self, found: _Pass) -> None:
        self._read_once, self._pass_seen = True, found.seen
        if found.failed:
            # PATH gone or unreadable is a problem, not "every service deleted".
            self._sink.source_problems(SOURCE, (found.failed, *self._errors()))
            return
        self._sink.apply(found.events)
        # Only now: had the events not reached the sink, the next pass finds the same
        # changes again, as the stamps and digests it compares with are the old ones.
        self._files, self._folder_errors = found.files, found.folder_errors
        self._sink.source_problems(SOURCE, self._errors())
        # Not before every file is known: a file that cannot be read has no last good
        # objects yet, and serving the rest would tell every client they are gone.
        if not self._synced and found.whole():
            self._synced = True
            self._sink.synced()

    def _errors(self) -> list[str]:
        errors = list(self._folder_errors)
        return errors + [e for name in sorted(self._files) for e in self._files[name].errors]

    def _read(self) -> _Pass:
        with ParserProcess() as parser:
            self._parser = parser
            try:
                return self._read_with(parser)
            finally:
                self._parser = None

    def _read_with(self, parser: ParserProcess) -> _Pass:
        try:
            tree = scan(self.path)
        except OSError as exc:
            return _Pass(failed=f"{exc.filename or self.path}: cannot read: {exc.strerror or exc}")
        found = _Pass(files=dict(self._files), seen=fingerprint(tree))
        found.folder_errors = tree.problems()
        found.cut_short = not tree.complete
        for name in sorted(found.files.keys() - tree.files.keys()):
            if not tree.hides(name):  # in a folder that cannot be listed now: not known
                found.events += _deleted(found.files.pop(name).keys)
        for name in sorted(tree.files):
            if parser.killed:
                found.cut_short = True
                break
            old = found.files.get(name)
            try:
                new, events = self._refresh(name, tree.files[name], old, parser)
            except Exception as exc:  # starting the parser failed (EMFILE), ...: this file's
                log.debug("reading %s failed", name, exc_info=True)
                new, events = _unread(name, old, _reason(exc)), []
            if new is None:
                found.files.pop(name, None)
            else:
                found.files[name] = new
            found.events += events
        return found

    def _refresh(
        self, name: str, entry: Found, old: _File | None, parser: ParserProcess
    ) -> tuple[_File | None, list[ObjectEvent]]:
        """The file's new entry (None: it is gone) and the events its change makes."""
        keys = old.keys if old is not None else frozenset()
        read_ns = time.time_ns()
        if isinstance(entry, OSError):  # a symlink loop, ...
            return _unread(name, old, _reason(entry)), []
        stamp = (entry.st_mtime_ns, entry.st_size, entry.st_ino)
        if old is not None and old.stamp == stamp and stamp[0] + _RACY_NS < old.read_ns:
            return old, []
        try:
            data = read_bounded(name, entry, self.max_bytes)
        except FileNotFoundError:  # deleted since the scan
            return None, _deleted(keys)
        except Unreadable as exc:
            return _File(stamp, read_ns, b"", keys, (f"{name}: {exc}",), failed=True), []
        except OSError as exc:
            # No stamp: `chmod` back changes only the ctime, and the file must be read then.
            return _unread(name, old, _reason(exc)), []
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if old is not None and old.digest == digest:
            return replace(old, stamp=stamp, read_ns=read_ns), []
        small = len(data) <= IN_PROCESS_BYTES
        parsed = parse_manifest(data, name) if small else parser.parse(data, name)
        errors = _listed(parsed, name)
        if not parsed.complete:
            return _File(stamp, read_ns, digest, keys, errors, failed=True), []
        new_keys = frozenset(event.key for event in parsed.objects)
        # Every object of a changed file goes again; the registry drops what is equal.
        events = [*parsed.objects, *_deleted(keys - new_keys)]
        return _File(stamp, read_ns, digest, new_keys, errors), events

    async def watch(
        self,
        on_change: Callable[[], Awaitable[None] | None],
        *,
        quiet: float = 0.02,
        max_delay: float = 0.5,
        use_inotify: bool = True,
        poll_interval: float = 0.5,
        rescan_interval: float = 5.0,
    ) -> None:
        """Call `on_change` (then `reload()` is worth calling) after changes under PATH;
        when it returns an awaitable, that is awaited before the watch goes on.

        A burst of changes gives one call: `quiet` seconds after the last change,
        at most `max_delay` after the first. inotify wakes us at once; without it
        PATH is polled every `poll_interval`, and with it re-scanned every
        `rescan_interval` in case an event was lost. Changes are changes since the
        last pass read PATH (since the watch began, if none did). A file that could
        not be read (EIO, EMFILE: what may pass by itself) counts as changed every
        `rescan_interval`, so it is tried again. The scans run in the reading
        thread. Runs until cancelled.
        """
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        watcher = TreeWatcher(self.path) if use_inotify else None
        if watcher is not None and not watcher.open():
            watcher = None
        try:
            if watcher is not None:
                loop.add_reader(watcher.fileno(), watcher.drain_into, wake)
            interval = rescan_interval if watcher is not None else poll_interval
            now = await self._survey(watcher)
            seen = self._pass_seen if self._read_once else now
            retry_at = loop.time() + rescan_interval
            while True:
                # Nothing new yet: wait for inotify, or look again after `interval`.
                if now == seen and not await wait(wake, interval):
                    now = await self._survey(None)
                    retry = loop.time() >= retry_at and self._any_unread()
                    if now == seen and not retry:
                        continue
                await settle(wake, quiet, max_delay)
                seen = await self._survey(watcher)
                try:
                    done = on_change()
                    if inspect.isawaitable(done):
                        await done
                except Exception:
                    # One bad reload must not end the watch: later edits still count.
                    log.exception("handling a manifest change failed")
                now = seen
                retry_at = loop.time() + rescan_interval
        finally:
            if watcher is not None:
                loop.remove_reader(watcher.fileno())
                watcher.close()

    async def _survey(self, watcher: TreeWatcher | None) -> Fingerprint:
        """PATH's fingerprint, scanned in the reading thread; with `watcher`, every
        folder found is watched first (and scanned again if one was new)."""
        loop = asyncio.get_running_loop()
        # A few rounds at most: folders made as fast as they are scanned are the
        # re-scan's to find.
        for _ in range(3):
            tree = await loop.run_in_executor(self._thread, self._scan_quietly)
            if watcher is None or not watcher.sync(tree.folders if tree is not None else []):
                break
        return fingerprint(tree)

    def _any_unread(self) -> bool:
        return any(entry.stamp == _UNREAD for entry in self._files.values())

    def _scan_quietly(self) -> Tree | None:
        try:
            return scan(self.path)
        except OSError:
            return None


def _unread(name: str, old: _File | None, why: str) -> _File:
    """A file that could not be read now: its last good objects stay, and it is read
    again on the next pass whatever its stamp says."""
    keys = old.keys if old is not None else frozenset()
    return _File(_UNREAD, time.time_ns(), b"", keys, (f"{name}: cannot read: {why}",), True)


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


def _deleted(keys: frozenset[ObjectKey]) -> list[ObjectEvent]:
    return [ObjectEvent(key, None) for key in sorted(keys, key=str)]


def _listed(parsed: Parsed, name: str) -> tuple[str, ...]:
    errors = tuple(str(error) for error in parsed.errors)
    if parsed.unlisted:
        errors += (problems.more_in_file(name, parsed.unlisted),)
    return errors
