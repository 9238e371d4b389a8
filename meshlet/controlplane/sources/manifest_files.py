"""Finding the manifest files under PATH and reading them, safe from what a folder may hold.

Only regular files are read: a FIFO named `x.yaml` would block its reader
forever, a symlink to /dev/zero would never end. Symlinks are followed (a
mounted ConfigMap is all symlinks), so a file is judged by what it leads to:
stat before opening (a device is never opened), open without blocking, check the
open descriptor again (the name may have changed in between), and read at most
one byte more than the limit. A symlinked folder is followed only when it leads
to a folder under PATH (a ConfigMap's links all do): `manifests/usr -> /usr`
would read every `*.yaml` of the system and watch each of its folders. At most
`MAX_FOLDERS` folders are walked. What cannot be found or read is a problem of
that one file or folder, never of the whole folder.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

SUFFIXES = (".yaml", ".yml", ".json")
_CHUNK = 1 << 20
# Folders walked under PATH, each an inotify watch: far more than a tree of
# manifests has, far fewer than the watches a user may hold (8,192 on older kernels).
MAX_FOLDERS = 1000

# A manifest's stat, or why it has none (a symlink loop, say).
Found = os.stat_result | OSError


@dataclass
class Tree:
    """What a scan of PATH found."""

    files: dict[str, Found] = field(default_factory=dict)
    # Every folder walked (sorted), for the inotify watches.
    folders: list[str] = field(default_factory=list)
    # Folders that could not be listed, and why: the files in them are not known now.
    unreadable: dict[str, str] = field(default_factory=dict)
    # Folders past MAX_FOLDERS, not walked: the files in them are not known either.
    unwalked: set[str] = field(default_factory=set)
    too_many: str = ""
    # Symlinks to folders outside PATH, not followed, and why.
    outside: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every folder under PATH was listed: the files found are all there are."""
        return not (self.unreadable or self.unwalked)

    def problems(self) -> tuple[str, ...]:
        found = [self.unreadable[name] for name in sorted(self.unreadable)]
        found += [self.too_many] if self.too_many else []
        return (*found, *(self.outside[name] for name in sorted(self.outside)))

    def hides(self, name: str) -> bool:
        """True when `name` is under a folder that could not be listed or walked."""
        hidden = self.unreadable.keys() | self.unwalked
        if not hidden:
            return False
        folder = os.path.dirname(name)
        while folder not in hidden:
            parent = os.path.dirname(folder)
            if parent == folder:
                return False
            folder = parent
        return True


class Unreadable(Exception):
    """A manifest that is not to be read: not a regular file, or over the size limit."""


def scan(root: str) -> Tree:
    """Manifest files and folders under root (hidden ones skipped), walked in name order;
    raises OSError only when root itself cannot be read.

    Symlinks are followed, folders only to where they stay under root, so a mounted
    ConfigMap is read through its visible names and its `..data` internals are
    never walked twice; a folder reached twice (a symlink loop of folders) is
    walked once.
    """
    root_stat = os.stat(root)
    if not stat.S_ISDIR(root_stat.st_mode):
        return Tree(files={root: root_stat})
    real_root = os.path.realpath(root)
    tree = Tree()
    visited: set[tuple[int, int]] = set()
    pending = [(root, root_stat)]
    while pending:
        folder, folder_stat = pending.pop()
        if (folder_stat.st_dev, folder_stat.st_ino) in visited:
            continue
        if len(visited) >= MAX_FOLDERS:
            tree.unwalked.update([folder, *(name for name, _ in pending)])
            tree.too_many = (
                f"{root}: more than {MAX_FOLDERS:,} folders: only the first {MAX_FOLDERS:,}"
                " (in name order) are read; the files in the others keep their last good"
                " objects"
            )
            break
        visited.add((folder_stat.st_dev, folder_stat.st_ino))
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            if folder == root:
                raise
            tree.unreadable[folder] = f"{folder}: cannot read: {exc.strerror or exc}"
            continue
        tree.folders.append(folder)
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            is_manifest = entry.name.lower().endswith(SUFFIXES)
            try:
                entry_stat = entry.stat()
            except FileNotFoundError:  # a dangling symlink, or just deleted
                continue
            except OSError as exc:  # a symlink loop, ...
                if is_manifest:
                    tree.files[entry.path] = exc
                continue
            if stat.S_ISDIR(entry_stat.st_mode):
                real = os.path.realpath(entry.path) if entry.is_symlink() else real_root
                if os.path.commonpath([real, real_root]) != real_root:
                    tree.outside[entry.path] = (
                        f"{entry.path}: a symlink to {real}, a folder outside {root}: not followed"
                    )
                    continue
                subfolders.append((entry.path, entry_stat))
            elif is_manifest:
                tree.files[entry.path] = entry_stat
        pending += reversed(subfolders)  # the first by name is walked first
    tree.folders.sort()
    return tree


def read_bounded(path: str, seen: os.stat_result, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; `seen` is its stat from
    the scan. Raises Unreadable, or OSError when it cannot be opened or read."""
    _check(seen, limit)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        _check(os.fstat(fd), limit)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, _CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    if left <= 0:  # it grew past the limit since its stat
        raise Unreadable(f"more than {limit:,} bytes{_over(limit)}")
    return b"".join(chunks)


def _check(found: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(found.st_mode):
        kind = _kind(found.st_mode)
        raise Unreadable(f"not a regular file ({kind}): only regular files are read")
    if found.st_size > limit:
        raise Unreadable(f"{found.st_size:,} bytes{_over(limit)}")


def _over(limit: int) -> str:
    return f": over --max-manifest-bytes ({limit:,}), so not read; its last good objects stay"


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    )
    return next((name for test, name in kinds if test(mode)), f"mode {stat.filemode(mode)}")
