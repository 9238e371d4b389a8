"""Noticing that something under the manifest PATH changed: inotify watches on the
folders a scan found, and the scan's fingerprint to compare with the last one.

The scans themselves run in the source's reading thread (`ManifestSource.watch`);
what is here only compares and waits, on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from meshlet.controlplane.sources import inotify
from meshlet.controlplane.sources.manifest_files import Tree

# What a scan says of PATH: each file's mtime, size, inode and ctime (a `chmod`
# changes only the last), and the folders that cannot be listed; None when PATH
# itself cannot be read.
Fingerprint = tuple[dict[str, tuple[int, ...]], frozenset[str]] | None


def fingerprint(tree: Tree | None) -> Fingerprint:
    if tree is None:
        return None
    stamps: dict[str, tuple[int, ...]] = {
        name: ()
        if isinstance(found, OSError)
        else (found.st_mtime_ns, found.st_size, found.st_ino, found.st_ctime_ns)
        for name, found in tree.files.items()
    }
    return stamps, frozenset(tree.unreadable)


async def wait(event: asyncio.Event, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def settle(wake: asyncio.Event, quiet: float, max_delay: float) -> None:
    """Return once no change came for `quiet` seconds, or `max_delay` after the start."""
    deadline = asyncio.get_running_loop().time() + max_delay
    while True:
        wake.clear()
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0 or not await wait(wake, min(quiet, remaining)):
            wake.clear()
            return


class TreeWatcher:
    """inotify watches on the folders of PATH (or on a single file's folder)."""

    def __init__(self, root: str) -> None:
        self._root = root
        self._inotify: inotify.Inotify | None = None
        self._watches: dict[str, int] = {}

    def open(self) -> bool:
        try:
            self._inotify = inotify.Inotify()
        except OSError:
            return False
        return True

    def fileno(self) -> int:
        assert self._inotify is not None
        return self._inotify.fileno()

    def drain_into(self, wake: asyncio.Event) -> None:
        assert self._inotify is not None
        if self._inotify.drain():
            wake.set()

    def sync(self, folders: list[str]) -> bool:
        """Watch these folders, the ones a scan walked, and no others; True when one is
        new (what changed in it before its watch was not seen)."""
        assert self._inotify is not None
        if not folders:
            # A single file, or PATH not there yet: its folder sees it (re)appear.
            folders = [os.path.dirname(os.path.abspath(self._root))]
        for folder in self._watches.keys() - set(folders):
            self._inotify.rm_watch(self._watches.pop(folder))
        new = False
        for folder in folders:
            # A folder gone already is fine: the next event or re-scan covers it.
            with contextlib.suppress(OSError):
                wd = self._inotify.add_watch(folder)
                new |= self._watches.get(folder) != wd
                self._watches[folder] = wd
        return new

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
