"""`meshlet init`: program the pod's capture table, print it, or remove it; then exit."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from meshlet.capture.nft import NftError, missing, run_script
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
    try:
        run_script(request.nft, script)
    except NftError as exc:
        return _fail(str(exc))
    what = "removed" if request.remove else "installed"
    print(f"meshlet init: table {FAMILY} {TABLE} {what}", file=sys.stderr)
    return 0
