"""Whether the host's firewall drops traffic between pods on the mesh bridge.

Pods talk to each other across a Linux bridge. With br_netfilter loaded and
`net.bridge.bridge-nf-call-iptables=1` (Docker sets both), bridged IPv4 frames
also pass the host's ip/inet forward hooks, and a forward chain with policy
drop (Docker's FORWARD) drops them: the mesh then fails with connect timeouts
that say nothing about why. A bridge-family forward chain with policy drop
drops bridged frames whatever the sysctl says. This finds such chains, so the
demo can say what may be in the way before it starts.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from meshlet.binaries import find_binary

BRIDGE_NF_CALL_IPTABLES = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def dropping_forward_chains(
    chains: Iterable[Mapping[str, Any]], bridge_calls_iptables: bool
) -> list[str]:
    """The forward-hook chains (nft JSON `chain` objects) whose policy drops bridged
    traffic between pods, as `family table chain`."""
    families = {"bridge", "ip", "inet"} if bridge_calls_iptables else {"bridge"}
    return [
        f"{c.get('family')} {c.get('table')} {c.get('name')}"
        for c in chains
        if c.get("hook") == "forward" and c.get("policy") == "drop" and c.get("family") in families
    ]


def legacy_forward_drops(rules: str) -> bool:
    """Whether `iptables-legacy -S FORWARD` output sets the policy to DROP."""
    return any(line.split() == ["-P", "FORWARD", "DROP"] for line in rules.splitlines())


def _bridge_calls_iptables() -> bool:
    try:
        return BRIDGE_NF_CALL_IPTABLES.read_text().strip() == "1"
    except OSError:  # no br_netfilter: bridged frames skip the ip hooks
        return False


def _nft_chains(nft: str) -> list[Mapping[str, Any]]:
    result = subprocess.run([nft, "-j", "list", "chains"], capture_output=True, text=True)
    if result.returncode != 0:
        return []  # cannot be read: nothing to report (nft itself is checked elsewhere)
    try:
        items = json.loads(result.stdout).get("nftables", [])
    except (ValueError, AttributeError):
        return []
    return [item["chain"] for item in items if isinstance(item, dict) and "chain" in item]


def _legacy_forward_rules() -> str:
    legacy = find_binary("iptables-legacy")
    if legacy is None:
        return ""
    result = subprocess.run([legacy, "-S", "FORWARD"], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else ""


def forward_blocked(nft: str) -> str | None:
    """One line saying what may drop traffic between pods; None when nothing would.

    A chain may still accept the mesh's bridges in a rule before its policy, so this
    is a warning to show, not a reason to stop."""
    calls_iptables = _bridge_calls_iptables()
    chains = dropping_forward_chains(_nft_chains(nft), calls_iptables)
    if calls_iptables and legacy_forward_drops(_legacy_forward_rules()):
        chains.append("iptables-legacy filter FORWARD")
    if not chains:
        return None
    through = " (bridged frames pass it: net.bridge.bridge-nf-call-iptables=1)"
    return (
        "the host firewall may drop traffic between pods on the mesh bridge: forward policy "
        f"drop in {', '.join(chains)}{through if calls_iptables else ''}; if requests fail, "
        "accept forwarding between mlb* interfaces there"
        + (", or set that sysctl to 0" if calls_iptables else "")
    )
