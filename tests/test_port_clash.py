"""A listening address already taken: the process stops at start with one line naming the
address and what it is for, and exit code 1, for every address of both processes.

Each test holds the port with a real socket of its own (TCP listening, or UDP bound) and
gives every other address port 0, so nothing else on the host can clash with it.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s import pki
from tests.test_cli import run_meshlet

TAKEN = "address already in use"


@contextlib.contextmanager
def taken_port(kind: int) -> Iterator[int]:
    """A port on 127.0.0.1 held for the block: listening (TCP) or bound (UDP)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            sock.listen()
        yield int(sock.getsockname()[1])


def assert_one_line(stderr: str, line: str) -> None:
    assert line in stderr.splitlines(), stderr
    assert "Traceback" not in stderr, stderr


SIDECAR_FREE = {
    "--outbound-address": "127.0.0.1:0",
    "--dns-address": "127.0.0.1:0",
    "--admin-address": "127.0.0.1:0",
}


@pytest.mark.parametrize(
    ("flag", "kind", "role"),
    [
        ("--outbound-address", socket.SOCK_STREAM, "the outbound proxy"),
        ("--dns-address", socket.SOCK_DGRAM, "DNS over UDP"),
        ("--dns-address", socket.SOCK_STREAM, "DNS over TCP"),
        ("--admin-address", socket.SOCK_STREAM, "admin"),
        ("--health-address", socket.SOCK_STREAM, "health probes"),
        ("--metrics-address", socket.SOCK_STREAM, "metrics"),
    ],
)
def test_sidecar_names_the_address_that_is_taken(flag: str, kind: int, role: str) -> None:
    with taken_port(kind) as port:
        addresses = {**SIDECAR_FREE, flag: f"127.0.0.1:{port}"}
        result = run_meshlet(
            "sidecar",
            # Never reached: the sidecar stops before it dials.
            "--xds-address=127.0.0.1:1",
            "--upstream-dns=127.0.0.1:1",
            *(f"{name}={value}" for name, value in addresses.items()),
        )
    assert result.returncode == 1, result.stderr
    assert_one_line(
        result.stderr, f"meshlet sidecar: cannot listen for {role} on 127.0.0.1:{port}: {TAKEN}"
    )


def control_plane(*args: str) -> list[str]:
    return [
        "control-plane",
        "--manifests=examples/manifests",
        "--xds-address=127.0.0.1:0",
        "--admin-address=127.0.0.1:0",
        *args,
    ]


def test_control_plane_names_its_xds_address_when_taken() -> None:
    with taken_port(socket.SOCK_STREAM) as port:
        result = run_meshlet(*control_plane(f"--xds-address=127.0.0.1:{port}"))
    assert result.returncode == 1, result.stderr
    assert_one_line(
        result.stderr, f"meshlet control-plane: cannot listen for xDS on 127.0.0.1:{port}: {TAKEN}"
    )


def test_control_plane_names_its_admin_address_when_taken() -> None:
    with taken_port(socket.SOCK_STREAM) as port:
        result = run_meshlet(*control_plane(f"--admin-address=127.0.0.1:{port}"))
    assert result.returncode == 1, result.stderr
    assert_one_line(
        result.stderr,
        f"meshlet control-plane: cannot listen for admin on 127.0.0.1:{port}: {TAKEN}",
    )


def test_control_plane_names_its_webhook_address_when_taken(tmp_path: Path) -> None:
    served = pki.CertificateAuthority(tmp_path).issue(
        "webhook", "meshlet", server=True, hosts=("127.0.0.1",)
    )
    with taken_port(socket.SOCK_STREAM) as port:
        result = run_meshlet(
            *control_plane(
                f"--webhook-address=127.0.0.1:{port}",
                f"--webhook-cert-file={served.cert}",
                f"--webhook-key-file={served.key}",
            )
        )
    assert result.returncode == 1, result.stderr
    assert_one_line(
        result.stderr,
        f"meshlet control-plane: cannot listen for the injection webhook on 127.0.0.1:{port}: "
        f"{TAKEN}",
    )
