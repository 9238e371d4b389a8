"""Sidecar start-up choices: where unknown names go."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from meshlet.sidecar.app import SidecarConfig, upstreams_of


def test_upstreams_come_from_resolv_conf_without_the_sidecar_itself(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    # In a captured pod the nameserver may be this very sidecar: never forward to it.
    resolv.write_text("nameserver 127.0.0.1:15053\nnameserver 10.96.0.10\nsearch default.svc\n")
    config = SidecarConfig(xds_address=("127.0.0.1", 15010), node_id="n", resolv_conf=str(resolv))
    assert upstreams_of(config) == (("10.96.0.10", 53),)
    flags = SidecarConfig(
        xds_address=("127.0.0.1", 15010),
        node_id="n",
        upstream_dns=(("10.0.0.2", 5353),),
        resolv_conf=str(resolv),
    )
    assert upstreams_of(flags) == (("10.0.0.2", 5353),)


def test_no_upstream_is_a_clear_error(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1:15053\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshlet",
            "sidecar",
            "--xds-address",
            "127.0.0.1:1",
            f"--resolv-conf={resolv}",
            "--admin-address=127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no upstream DNS" in result.stderr
