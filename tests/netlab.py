"""A pod with meshlet's real capture rules, for tests that run the proxy in-process:
the test's thread enters its network namespace, so every socket the test, its
backends and the proxy make lives there, and connections to the service CIDRs
are redirected by real nftables to the proxy's port.

Needs root (namespaces, nftables); without it the tests skip and say so. The pod
is a meshlet.devmesh pod: removed when the test ends, however it ends, and
cleared by the next run if the test process was killed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

from meshlet.binaries import find_binary
from meshlet.devmesh import netns
from meshlet.devmesh.mesh import DevMesh, Pod
from tests.procs import PYTHON

SERVICE_CIDR_V4 = "10.96.0.0/12"
SERVICE_CIDR_V6 = "fd00:96::/108"


def skip_unless_netns_and_nftables() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and nftables rules")
    if find_binary("nft") is None:
        pytest.skip("nft is not installed (apt-get install nftables)")
    if subprocess.run(["ip", "-V"], capture_output=True).returncode != 0:
        pytest.skip("iproute2 (ip) is not installed")


@dataclass(frozen=True)
class Lab:
    namespace: str
    # An address on the lab's link that nobody answers: a connect there goes nowhere.
    silent_address: str


@contextlib.contextmanager
def lab_pod() -> Iterator[tuple[DevMesh, Pod]]:
    """One pod of a DevMesh (so a killed test run's leftovers are cleared by the next),
    with IPv6 routes to the service CIDR too."""
    skip_unless_netns_and_nftables()
    with DevMesh() as mesh:
        pod = mesh.add_pod("lab")
        for args in (
            ("-6", "addr", "add", "fd99::1/64", "dev", "eth0", "nodad"),
            ("-6", "route", "add", SERVICE_CIDR_V6, "dev", "eth0"),
        ):
            netns.ip(*args, namespace=pod.namespace)
        yield mesh, pod


@contextlib.contextmanager
def capture_lab(extra: Sequence[str] = ()) -> Iterator[Lab]:
    """A pod where TCP to the service CIDRs goes to port 15001 on loopback, DNS to
    10.96.0.10 and fd00:96::a to port 15053 (`extra`: more `meshlet init` flags)."""
    with lab_pod() as (mesh, pod):
        init = [
            PYTHON,
            "-m",
            "meshlet",
            "init",
            f"--service-cidr={SERVICE_CIDR_V4}",
            f"--service-cidr={SERVICE_CIDR_V6}",
            "--dns-server=10.96.0.10",
            "--dns-server=fd00:96::a",
            *extra,
        ]
        result = pod.run(init)
        assert result.returncode == 0, result.stderr
        assert mesh.subnet is not None
        silent = str(mesh.subnet.network_address + 250)
        yield Lab(pod.namespace, silent)


@contextlib.contextmanager
def inside_capture_lab(extra: Sequence[str] = ()) -> Iterator[Lab]:
    """capture_lab, with this thread inside it for the block."""
    with capture_lab(extra) as lab, netns.entered(lab.namespace):
        yield lab
