"""The Dockerfile's two images, built with buildah (as the README shows) and run
inside their own root filesystems: the sidecar's (`meshlet sidecar`, `meshlet
init`) and the control plane's, both as uid 1337, with no pip or compiler in them.

Needs root, buildah, podman and debootstrap (scripts/test.sh installs them);
elsewhere it skips and says which is missing.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlet import __version__
from tests import images
from tests.otlp_receiver import otlp_env, receiving

pytestmark = [
    pytest.mark.timeout(1800),  # a cold build: debootstrap, apt and pip in two targets
    pytest.mark.skipif(images.missing() is not None, reason=str(images.missing())),
]

ROOT = Path(__file__).resolve().parent.parent
SIDECAR = f"ghcr.io/meshlet/meshlet:{__version__}"
CONTROL_PLANE = f"ghcr.io/meshlet/meshlet-control-plane:{__version__}"
# The sidecar image may add this much to its base (the budget).
SIDECAR_BUDGET = 150 * 1024 * 1024
OTLP_EXPORTER = (
    "from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter"
)
# One export of a meshlet process's metrics, as its reader would every interval.
ONE_EXPORT = (
    "from meshlet.telemetry import Telemetry; t = Telemetry('meshlet-image');"
    " assert t.provider.force_flush(20_000); t.shutdown()"
)


# The README's commands, run as shown plus what this machine needs (images.build_flags).
README_BUILDS = {
    "sidecar": "buildah bud --layers --target sidecar --build-arg VERSION=0.1.0"
    " -t ghcr.io/meshlet/meshlet:0.1.0 .",
    "control-plane": "buildah bud --layers --target control-plane --build-arg VERSION=0.1.0"
    " -t ghcr.io/meshlet/meshlet-control-plane:0.1.0 .",
}


@pytest.fixture(scope="module")
def built() -> Iterator[dict[str, str]]:
    base = images.ensure_base()
    tags = {"sidecar": SIDECAR, "control-plane": CONTROL_PLANE}
    try:
        for target, command in README_BUILDS.items():
            argv = shlex.split(command)
            assert argv[0] == "buildah" and argv[-1] == "." and tags[target] in argv
            images.buildah(*argv[1:-1], *images.build_flags(), "-f", str(images.DOCKERFILE),
                           str(ROOT))  # fmt: skip
        yield {**tags, "base": base}
    finally:
        images.remove(*tags.values())


def config(image: str) -> dict[str, Any]:
    found: dict[str, Any] = images.inspect(image)["OCIv1"]["config"]  # type: ignore[index]
    return found


@pytest.mark.parametrize("target", ["sidecar", "control-plane"])
def test_it_runs_meshlet_as_uid_1337(built: dict[str, str], target: str) -> None:
    image = built[target]
    version = images.run_in(image, "meshlet", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"meshlet {__version__}"
    assert images.run_in(image, "id", "-u").stdout.strip() == "1337"
    assert config(image)["User"] == "1337:1337"
    labels = config(image)["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.base.name"] == built["base"]


def test_meshlet_init_dry_run_prints_what_it_prints_here(built: dict[str, str]) -> None:
    argv = ["meshlet", "init", "--dry-run", "--dns-server", "10.96.0.10"]
    inside = images.run_in(built["sidecar"], *argv)
    assert inside.returncode == 0, inside.stderr
    here = subprocess.run(
        [sys.executable, "-m", "meshlet", *argv[1:]], capture_output=True, text=True, check=True
    )
    assert inside.stdout == here.stdout
    # What `meshlet init` runs for real: nft, and ip for the pod's routes.
    nft = images.run_in(built["sidecar"], "nft", "--version")
    assert nft.returncode == 0 and nft.stdout.startswith("nftables"), nft.stderr
    assert images.run_in(built["sidecar"], "ip", "-V").returncode == 0


@pytest.mark.parametrize("target", ["sidecar", "control-plane"])
def test_no_pip_compiler_or_cache_is_left(built: dict[str, str], target: str) -> None:
    image = built[target]
    tools = images.run_in(
        image, "sh", "-c", "for t in pip pip3 gcc cc g++ make apt-get; do command -v $t; done"
    )
    assert tools.stdout.split() == ["/usr/bin/apt-get"], tools.stdout
    for module in ("pip", "setuptools"):
        found = images.run_in(image, "python3", "-c", f"import {module}")
        assert f"No module named '{module}'" in found.stderr
    leftovers = images.run_in(
        image, "sh", "-c", "find /var/lib/apt/lists /var/cache/apt /root/.cache -mindepth 1"
    )
    assert leftovers.stdout.split() == [], leftovers.stdout


def test_the_kubernetes_client_is_only_in_the_control_planes(built: dict[str, str]) -> None:
    refused = images.run_in(built["sidecar"], "meshlet", "control-plane", "--manifests", "/tmp")
    assert refused.returncode == 2
    assert "pip install 'meshlet[control-plane]'" in refused.stderr
    has = images.run_in(built["control-plane"], "python3", "-c", "import kubernetes, cryptography")
    assert has.returncode == 0, has.stderr
    # And the sidecar's own commands never need it: what each imports when it runs.
    for command in ("sidecar", "init", "inject", "wait"):
        shown = images.run_in(built["sidecar"], "meshlet", command, "--help")
        assert shown.returncode == 0, shown.stderr
    modules = ["meshlet.sidecar.app", "meshlet.capture.app", "meshlet.inject.command"]
    modules += ["meshlet.commands.wait", "meshlet.resolv"]
    imported = images.run_in(built["sidecar"], "python3", "-c", f"import {', '.join(modules)}")
    assert imported.returncode == 0, imported.stderr


def test_the_sidecar_image_adds_under_its_budget(built: dict[str, str]) -> None:
    base = images.size(built["base"])
    added = {target: images.size(built[target]) - base for target in ("sidecar", "control-plane")}
    mib = {target: round(n / 2**20, 1) for target, n in added.items()}
    print(f"image layers over the base ({base / 2**20:.0f} MiB): {mib} MiB")
    assert added["sidecar"] < SIDECAR_BUDGET, mib


@pytest.mark.parametrize("target", ["sidecar", "control-plane"])
def test_otlp_exports_from_the_image(built: dict[str, str], target: str) -> None:
    # xds-protos's old opentelemetry/proto is installed over opentelemetry-proto's; the
    # Dockerfile puts opentelemetry-proto's files back, so the exporter imports as is.
    image = built[target]
    imported = images.run_in(image, "python3", "-c", OTLP_EXPORTER)
    assert imported.returncode == 0, imported.stderr
    own = images.run_in(
        image, "python3", "-c", "import meshlet.otlp_protos as o; print(o.clashing())"
    )
    assert own.stdout.strip() == "[]", own.stdout + own.stderr
    # And meshlet's metrics reach a real OTLP receiver (the build runs on the host's network).
    with receiving() as (receiver, port):
        variables = [f"{name}={value}" for name, value in otlp_env(port).items()]
        exported = images.run_in(image, "env", *variables, "python3", "-c", ONE_EXPORT)
        assert exported.returncode == 0, exported.stderr
        assert "meshlet_build_info" in receiver.names()
