"""The demo's warning about a host firewall that drops traffic between pods."""

from __future__ import annotations

import subprocess
from pathlib import Path

from meshlet.devmesh import netns
from meshlet.devmesh.firewall import (
    BRIDGE_NF_CALL_IPTABLES,
    dropping_forward_chains,
    forward_blocked,
    legacy_forward_drops,
)
from tests.netlab import lab_pod

DOCKER_FORWARD = {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward",
                  "policy": "drop"}  # fmt: skip
ACCEPTING = {"family": "inet", "table": "fw", "name": "forward", "hook": "forward",
             "policy": "accept"}  # fmt: skip
INPUT_DROP = {"family": "inet", "table": "fw", "name": "input", "hook": "input", "policy": "drop"}
BRIDGE_DROP = {"family": "bridge", "table": "br", "name": "fwd", "hook": "forward",
               "policy": "drop"}  # fmt: skip
REGULAR = {"family": "ip", "table": "filter", "name": "DOCKER-USER"}  # no hook: not a base chain


def test_an_ip_forward_drop_matters_only_when_bridged_frames_pass_the_ip_hooks() -> None:
    chains = [DOCKER_FORWARD, ACCEPTING, INPUT_DROP, REGULAR]
    assert dropping_forward_chains(chains, bridge_calls_iptables=True) == ["ip filter FORWARD"]
    assert dropping_forward_chains(chains, bridge_calls_iptables=False) == []


def test_a_bridge_forward_drop_always_matters() -> None:
    assert dropping_forward_chains([BRIDGE_DROP], bridge_calls_iptables=False) == ["bridge br fwd"]


def test_legacy_iptables_policy() -> None:
    assert legacy_forward_drops("-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n")
    assert not legacy_forward_drops("-P FORWARD ACCEPT\n-A FORWARD -j DROP\n")


def test_the_warning_names_the_chains_of_the_namespace_it_runs_in() -> None:
    with lab_pod() as (_, pod), netns.entered(pod.namespace):
        assert forward_blocked("nft") is None  # a fresh namespace has no firewall
        # Read in the namespace: the sysctl is per namespace where br_netfilter is loaded.
        calls = Path(BRIDGE_NF_CALL_IPTABLES).exists() and (
            Path(BRIDGE_NF_CALL_IPTABLES).read_text().strip() == "1"
        )
        ruleset = "".join(
            f"table {family} {table} {{\n  chain between {{\n"
            "    type filter hook forward priority 0; policy drop;\n  }\n}\n"
            for family, table in (("inet", "fwtest"), ("bridge", "brtest"))
        )
        subprocess.run(["nft", "-f", "-"], input=ruleset, text=True, check=True)
        warning = forward_blocked("nft")
    assert warning is not None
    assert "bridge brtest between" in warning
    assert ("inet fwtest between" in warning) == calls
    assert ("bridge-nf-call-iptables=1" in warning) == calls
