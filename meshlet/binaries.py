"""Finding the system tools meshlet runs (nft, ip, iptables-legacy)."""

from __future__ import annotations

import os
import shutil

# Where these live on Debian and most distributions, for users whose PATH lacks sbin.
_SBIN = ("/usr/sbin", "/sbin")


def find_binary(name: str) -> str | None:
    """`name` as a path, or looked up on PATH, then in the sbin folders."""
    if os.sep in name:
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))
