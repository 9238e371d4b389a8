"""`meshlet init`: program the pod's capture table, print it, or remove it; then exit."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from meshlet.capture.nft import NftError, missing, run_script, table_contents
from meshlet.capture.ruleset import FAMILY, TABLE, CaptureConfig, apply_script, remove_script


@dataclass(frozen=True)
class InitRequest:
    config: CaptureConfig
    dry_run: bool = False
    remove: bool = False
    nft: str = "nft"


def _fail(message: str) -> int:
    print(f"meshlet init: {message}", file=sys.stderr)
    return 1


def run(request: InitRequest) -> int:
    script = remove_script() if request.remove else apply_script(request.config)
    if request.dry_run:
        sys.stdout.write(script)
        return 0
    problems = missing(request.nft)
    if problems:
        return _fail("cannot program nftables, nothing was changed: " + "; ".join(problems))
    if request.remove:
        return _remove(request.nft, script)
    try:
        run_script(request.nft, script)
    except NftError as exc:
        return _fail(str(exc))
    print(f"meshlet init: table {FAMILY} {TABLE} installed", file=sys.stderr)
    return 0


def _remove(nft: str, script: str) -> int:
    """Deletes meshlet's table, saying what it held, or that there was none."""
    try:
        found = table_contents(nft, FAMILY, TABLE)
        if found is None:
            print(
                "meshlet init: no meshlet rules to remove in this network namespace "
                f"(no table {FAMILY} {TABLE})",
                file=sys.stderr,
            )
            return 0
        run_script(nft, script)  # deletes the table also if it is gone by now
    except NftError as exc:
        return _fail(str(exc))
    held = ", ".join(_count(n, kind) for kind, n in found.items() if n or kind in ("chain", "rule"))
    print(f"meshlet init: removed table {FAMILY} {TABLE} ({held})", file=sys.stderr)
    return 0


def _count(n: int, kind: str) -> str:
    return f"{n} {kind}" if n == 1 else f"{n} {kind}s"
