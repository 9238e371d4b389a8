"""What every command's flag handling shares."""

from __future__ import annotations

import sys

from meshlet.flags import env_name


def missing(command: str, flag: str) -> int:
    # Not argparse's `required`: the flag may come from its MESHLET_* variable.
    name = flag.split()[0]
    print(f"meshlet {command}: {flag} is required (or {env_name(name)})", file=sys.stderr)
    return 2
