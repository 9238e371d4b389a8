"""How many problems are listed, so a hostile input cannot flood the log or /debug/problems.

Pure. A file with 100,000 broken documents is reported with its first few
problems and a count of the rest; the whole list (what the log and
`/debug/problems` show) has a bound, and so has each problem's text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# Problems listed per file; the rest of that file's are counted.
PER_FILE = 5
# Problems listed in all (the log, /debug/problems); the rest are counted.
IN_ALL = 100
# Characters of one problem: a message may quote a value as long as the file allows.
MAX_CHARS = 1000


def more_in_file(where: str, count: int) -> str:
    """The line that stands for the problems of one file that are not listed."""
    return f"{where}: {count:,} more problems in this file (the first {PER_FILE} are listed)"


def per_file(located: Iterable[tuple[str, str]]) -> list[str]:
    """(file, problem) pairs -> the first PER_FILE problems of each file and a count of
    the rest, in the order the files first appear. An empty file name (an object of
    the Kubernetes API) is no file: those are listed without a per-file bound."""
    listed: dict[str, list[str]] = {}
    unlisted: dict[str, int] = {}
    for where, problem in located:
        kept = listed.setdefault(where, [])
        if not where or len(kept) < PER_FILE:
            kept.append(problem)
        else:
            unlisted[where] = unlisted.get(where, 0) + 1
    out: list[str] = []
    for where, kept in listed.items():
        out += kept
        if where in unlisted:
            out.append(more_in_file(where, unlisted[where]))
    return out


def bounded(problems: Sequence[str]) -> tuple[str, ...]:
    """At most IN_ALL problems, each at most MAX_CHARS long, and a count of the rest."""
    shown = tuple(_shorten(problem) for problem in problems[:IN_ALL])
    rest = len(problems) - len(shown)
    if rest <= 0:
        return shown
    return (*shown, f"and {rest:,} more lines of problems, not listed ({len(problems):,} in all)")


def _shorten(problem: str) -> str:
    if len(problem) <= MAX_CHARS:
        return problem
    cut = len(problem) - MAX_CHARS
    return f"{problem[:MAX_CHARS]}... ({cut:,} more characters)"
