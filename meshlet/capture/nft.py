"""Running nft: what is missing to do it, and one `nft -f -` transaction (thin I/O)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from meshlet.binaries import find_binary

CAP_NET_ADMIN = 12


class NftError(RuntimeError):
    """nft could not run or refused the script; the message says which and why."""


def effective_capabilities(status: Path = Path("/proc/self/status")) -> int | None:
    """This process's effective capability set, as /proc shows it; None if unreadable."""
    try:
        text = status.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            try:
                return int(line.split()[1], 16)
            except (IndexError, ValueError):
                return None
    return None


def has_net_admin(status: Path = Path("/proc/self/status")) -> bool:
    """Whether this process holds CAP_NET_ADMIN in its effective set."""
    capabilities = effective_capabilities(status)
    return capabilities is not None and bool(capabilities >> CAP_NET_ADMIN & 1)


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
    result = _run(nft, ["-f", "-"], timeout, script)
    if result.returncode != 0:
        raise NftError(f"nft refused the ruleset, nothing was changed:\n{_said(result)}")


def table_contents(
    nft: str, family: str, table: str, timeout: float = 30.0
) -> dict[str, int] | None:
    """How many chains and rules table FAMILY TABLE holds; None when there is no such table."""
    listed = _run(nft, ["list", "tables", family], timeout)
    if listed.returncode != 0:
        raise NftError(f"nft could not list the {family} tables:\n{_said(listed)}")
    if f"table {family} {table}" not in listed.stdout.splitlines():
        return None
    result = _run(nft, ["-j", "list", "table", family, table], timeout)
    if result.returncode != 0:
        raise NftError(f"nft could not list table {family} {table}:\n{_said(result)}")
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


def _run(
    nft: str, args: list[str], timeout: float, script: str | None = None
) -> subprocess.CompletedProcess[str]:
    binary = find_binary(nft)
    if binary is None:
        raise NftError(f"{nft} not found")
    try:
        return subprocess.run(
            [binary, *args], input=script, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NftError(f"{binary} could not run: {exc}") from None


def _said(result: subprocess.CompletedProcess[str]) -> str:
    return (result.stderr or result.stdout).strip() or f"exit code {result.returncode}"
