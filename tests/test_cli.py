"""The command line: flags, their MESHLET_* variables, and refusing bad input at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshlet.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def run_meshlet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshlet", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_flags_default_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHLET_XDS_ADDRESS", "[::1]:16010")
    monkeypatch.setenv("MESHLET_CLUSTER_DOMAIN", "Example.Org.")
    args = build_parser().parse_args(["control-plane", "--manifests", "x"])
    assert args.xds_address == ("::1", 16010)
    assert args.cluster_domain == "example.org"
    # A flag on the command line wins over the environment.
    args = build_parser().parse_args(
        ["control-plane", "--manifests", "x", "--xds-address", "127.0.0.1:1"]
    )
    assert args.xds_address == ("127.0.0.1", 1)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--xds-address", "nonsense"], {}, "'nonsense' is not HOST:PORT"),
        (
            ["--admin-address", "127.0.0.1:99999"],
            {},
            "port 99999 in '127.0.0.1:99999' is out of range",
        ),
        ([], {"MESHLET_OUTBOUND_PORT": "0"}, "'0' is not a port number 1-65535"),
        (["--cluster-domain", "a..b"], {}, "'a..b' is not a DNS domain"),
        ([], {"MESHLET_LOG_LEVEL": "verbose"}, "MESHLET_LOG_LEVEL='verbose': choose from"),
        (["--max-manifest-bytes", "4MB"], {}, "'4MB' is not a size in bytes"),
        ([], {"MESHLET_MAX_MANIFEST_BYTES": "0"}, "'0' is not a size in bytes"),
    ],
)
def test_bad_flags_exit_2_with_a_clear_message(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = run_meshlet("control-plane", "--manifests", "examples/manifests", *args, env=env)
    assert result.returncode == 2
    assert message in result.stderr


def test_max_manifest_bytes_in_bytes_or_binary_units(monkeypatch: pytest.MonkeyPatch) -> None:
    def parsed(*flags: str) -> int:
        args = build_parser().parse_args(["control-plane", "--manifests", "x", *flags])
        return int(args.max_manifest_bytes)

    assert parsed() == 4 * 1024 * 1024
    assert parsed("--max-manifest-bytes", "512Ki") == 512 * 1024
    assert parsed("--max-manifest-bytes=1Gi") == 1024**3
    monkeypatch.setenv("MESHLET_MAX_MANIFEST_BYTES", "1000")
    assert parsed() == 1000


def test_busy_xds_port_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_meshlet(
            "control-plane",
            "--manifests",
            "examples/manifests",
            "--xds-address",
            f"127.0.0.1:{port}",
            "--admin-address",
            "127.0.0.1:0",
        )
    assert result.returncode == 1
    assert f"cannot listen for xDS on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_source_at_all_says_what_to_give(tmp_path: Path) -> None:
    # No --manifests, no kubeconfig anywhere, not in a pod.
    env = {
        k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")
    }
    result = subprocess.run(
        [sys.executable, "-m", "meshlet", "control-plane"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**env, "HOME": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "no Kubernetes configuration: give --kubeconfig PATH" in result.stderr
    assert "--manifests PATH" in result.stderr


def test_a_broken_kubeconfig_is_refused_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    result = run_meshlet("control-plane", f"--kubeconfig={path}")
    assert result.returncode == 2
    assert f"--kubeconfig {path}: " in result.stderr
    assert "Traceback" not in result.stderr


def test_manifests_and_kubernetes_flags_together_are_refused(tmp_path: Path) -> None:
    result = run_meshlet("control-plane", f"--manifests={tmp_path}", "--watch-namespace=shop")
    assert result.returncode == 2
    assert "give one or the other" in result.stderr


def test_bad_watch_namespace_is_refused() -> None:
    result = run_meshlet("control-plane", "--watch-namespace=Shop_1")
    assert result.returncode == 2
    assert "'Shop_1' is not a namespace name" in result.stderr


def test_manifests_path_that_does_not_exist(tmp_path: Path) -> None:
    result = run_meshlet(
        "control-plane",
        "--manifests",
        str(tmp_path / "nope"),
        "--xds-address",
        "127.0.0.1:0",
        "--admin-address",
        "127.0.0.1:0",
    )
    assert result.returncode == 2
    assert "nope" in result.stderr
