"""Running nft: what is missing to do it, and one `nft -f -` transaction (thin I/O)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from meshlet.binaries import find_binary

CAP_NET_ADMIN = 12


class NftError(RuntimeError):
    """nft could not run or refused the script; the message says which and why."""


def has_net_admin(status: Path = Path("/proc/self/status")) -> bool:
    """Whether this process holds CAP_NET_ADMIN in its effective set."""
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return False


def missing(nft: str) -> list[str]:
    """What stands in the way of programming nftables, each said in words; empty when nothing."""
    problems = []
    if find_binary(nft) is None:
        problems.append(
            f"nftables is not installed ({nft} not found; install the nftables package)"
        )
    if not has_net_admin():
        problems.append(
            "CAP_NET_ADMIN is missing (run as root, or give the init container NET_ADMIN)"
        )
    return problems


def run_script(nft: str, script: str, timeout: float = 30.0) -> None:
    """Runs `script` as one nft transaction: all of it takes effect, or none."""
    binary = find_binary(nft)
    if binary is None:
        raise NftError(f"{nft} not found")
    try:
        result = subprocess.run(
            [binary, "-f", "-"], input=script, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NftError(f"{binary} could not run: {exc}") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip() or f"exit code {result.returncode}"
        raise NftError(f"nft refused the ruleset, nothing was changed:\n{detail}")


def table_contents(
    nft: str, family: str, table: str, timeout: float = 30.0
) -> dict[str, int] | None:
    """How many chains and rules table FAMILY TABLE holds; None when there is no such table."""
    binary = find_binary(nft)
    if binary is None:
        raise NftError(f"{nft} not found")
    try:
        result = subprocess.run(
            [binary, "-j", "list", "table", family, table],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NftError(f"{binary} could not run: {exc}") from None
    if result.returncode != 0:
        if "No such file or directory" in result.stderr:
            return None
        detail = (result.stderr or result.stdout).strip() or f"exit code {result.returncode}"
        raise NftError(f"nft could not list table {family} {table}:\n{detail}")
    try:
        objects = json.loads(result.stdout)["nftables"]
    except (ValueError, KeyError, TypeError):
        raise NftError(f"nft listed table {family} {table} in a form not understood") from None
    counts = {"chain": 0, "rule": 0, "set": 0, "map": 0}
    for item in objects:
        for kind in counts:
            if isinstance(item, dict) and kind in item:
                counts[kind] += 1
    return counts
