"""A network namespace with meshlet's real capture rules, for tests that run the proxy
in-process: the test's thread enters it, so every socket the test, its backends and
the proxy make lives there, and connections to the service CIDRs are redirected by
real nftables to the proxy's port.

Needs root (namespaces, nftables); without it the tests skip and say so. The
namespace is deleted when the test ends, however it ends.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from meshlet.capture.nft import find_nft
from meshlet.devmesh import netns
from tests.procs import PYTHON

SERVICE_CIDR_V4 = "10.96.0.0/12"
SERVICE_CIDR_V6 = "fd00:96::/108"
_counter = itertools.count()


def skip_unless_netns_and_nftables() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and nftables rules")
    if find_nft("nft") is None:
        pytest.skip("nft is not installed (apt-get install nftables)")
    if subprocess.run(["ip", "-V"], capture_output=True).returncode != 0:
        pytest.skip("iproute2 (ip) is not installed")


@dataclass(frozen=True)
class Lab:
    namespace: str
    outbound_port: int

    def nft_ruleset(self) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace, "nft", "list", "ruleset"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout


@contextlib.contextmanager
def capture_lab(outbound_port: int = 15001) -> Iterator[Lab]:
    """A namespace where TCP to the service CIDRs goes to `outbound_port` on loopback."""
    skip_unless_netns_and_nftables()
    name = f"mltest-{os.getpid()}-{next(_counter)}"
    netns.add(name)
    try:
        # Routes to the service CIDRs, as a pod's default route gives them: without
        # one, connect() fails before the redirect could apply.
        for args in (
            ("link", "add", "svc0", "type", "veth", "peer", "name", "svc1"),
            ("link", "set", "svc0", "up"),
            ("link", "set", "svc1", "up"),
            ("addr", "add", "192.0.2.1/24", "dev", "svc0"),
            ("addr", "add", "fd99::1/64", "dev", "svc0", "nodad"),
            ("route", "add", SERVICE_CIDR_V4, "dev", "svc0"),
            ("route", "add", SERVICE_CIDR_V6, "dev", "svc0"),
        ):
            netns.ip(*args, namespace=name)
        init = [
            PYTHON,
            "-m",
            "meshlet",
            "init",
            f"--outbound-port={outbound_port}",
            f"--service-cidr={SERVICE_CIDR_V4}",
            f"--service-cidr={SERVICE_CIDR_V6}",
            "--dns-server=10.96.0.10",
        ]
        subprocess.run(netns.exec_argv(name, init), check=True, capture_output=True, timeout=60)
        yield Lab(name, outbound_port)
    finally:
        netns.delete(name)


@contextlib.contextmanager
def inside_capture_lab(outbound_port: int = 15001) -> Iterator[Lab]:
    """capture_lab, with this thread inside it for the block."""
    with capture_lab(outbound_port) as lab, netns.entered(lab.namespace):
        yield lab
