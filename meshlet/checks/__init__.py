"""`meshlet check`'s checks: each a small pure function from what was probed to a Result.

The probing (running nft, asking the API server, ...) is in thin adapters beside
them; this module holds the result and how a list of them is shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PASS = "\u221a"  # √, as linkerd check marks a pass
FAIL = "\u00d7"  # the multiplication sign, for a failure


@dataclass(frozen=True)
class Result:
    name: str  # what holds when it passes: "CAP_NET_ADMIN is held"
    ok: bool
    detail: str = ""  # what was seen: why it failed, or what it found
    hint: str = ""  # for a failure: what to do about it


def passed(name: str, detail: str = "") -> Result:
    return Result(name, True, detail)


def failed(name: str, detail: str, hint: str = "") -> Result:
    return Result(name, False, detail, hint)


@dataclass(frozen=True)
class Section:
    title: str
    results: tuple[Result, ...]


def render_result(result: Result) -> list[str]:
    """PASS name (detail), or FAIL name: why, with the hint on the line below."""
    if result.ok:
        return [f"{PASS} {result.name}" + (f" ({result.detail})" if result.detail else "")]
    lines = [f"{FAIL} {result.name}: {result.detail or 'failed'}"]
    if result.hint:
        lines.append(f"    hint: {result.hint}")
    return lines


def summary(results: Sequence[Result]) -> str:
    bad = sum(not r.ok for r in results)
    if not bad:
        return f"Status check results are {PASS}: all {len(results)} checks passed"
    return f"Status check results are {FAIL}: {bad} of {len(results)} checks failed"


def render(sections: Sequence[Section]) -> str:
    lines: list[str] = []
    for section in sections:
        lines += [section.title, "-" * len(section.title)]
        for result in section.results:
            lines += render_result(result)
        lines.append("")
    lines.append(summary([r for s in sections for r in s.results]))
    return "\n".join(lines) + "\n"


def exit_code(sections: Sequence[Section]) -> int:
    return 0 if all(r.ok for s in sections for r in s.results) else 1
