"""The images the real node runs, built here (no registry can be pulled from) and put
into its containerd's store.

- pause and CoreDNS: the Go binaries of tests/k8s/build.py in scratch images;
- meshlet's two targets: the Dockerfile, built with buildah as the README shows;
- the test apps: the Dockerfile's base with Python and curl, and tests/k8s/apps/app.py,
  run as uid 1000, never the sidecar's uid, so capture sees them as an app.

Each image goes to containerd as a docker-archive (it carries the full name) through
`ctr images import`, in the `k8s.io` namespace the kubelet's CRI uses.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from meshlet import __version__
from tests import images

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PAUSE = "localhost/meshlet-test/pause:1"
COREDNS = "localhost/meshlet-test/coredns:1"
APP = "localhost/meshlet-test/app:1"
SIDECAR = f"ghcr.io/meshlet/meshlet:{__version__}"
CONTROL_PLANE = f"ghcr.io/meshlet/meshlet-control-plane:{__version__}"
APP_UID = 1000


def _scratch(name: str, binary: Path) -> None:
    container = images.buildah("from", "scratch").stdout.strip().splitlines()[-1]
    try:
        images.buildah("copy", "--chmod", "0755", container, str(binary), f"/{binary.name}")
        images.buildah("config", "--entrypoint", f'["/{binary.name}"]', "--cmd", "", container)
        images.buildah("commit", "-q", container, name)
    finally:
        images.buildah("rm", container, check=False)


def build_meshlet() -> dict[str, str]:
    """The Dockerfile's two targets (cached layers make a second build quick)."""
    images.ensure_base()
    tags = {"sidecar": SIDECAR, "control-plane": CONTROL_PLANE}
    for target, tag in tags.items():
        images.buildah(
            "bud", "--layers", "--target", target, "--build-arg", f"VERSION={__version__}",
            "-t", tag, *images.build_flags(), "-f", str(images.DOCKERFILE), str(ROOT),
        )  # fmt: skip
    return tags


def build_app() -> str:
    """The test apps' image: the base with Python and curl (the docs' Job pattern
    calls curl), and the app script last, so a changed script rebuilds one layer."""
    base = images.ensure_base()
    with tempfile.TemporaryDirectory() as tmp:
        context = Path(tmp)
        (context / "app.py").write_bytes((HERE / "apps" / "app.py").read_bytes())
        (context / "Containerfile").write_text(
            f"FROM {base}\n"
            "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq"
            " --no-install-recommends python3 curl >/dev/null && rm -rf /var/lib/apt/lists/*\n"
            "COPY app.py /app/app.py\n"
            f"USER {APP_UID}:{APP_UID}\n"
            'ENTRYPOINT ["python3", "/app/app.py"]\n'
        )
        images.buildah("bud", "--layers", *images.build_flags(), "-t", APP, str(context))
    return APP


def build_all(binaries: Mapping[str, Path]) -> list[str]:
    _scratch(PAUSE, binaries["pause"])
    _scratch(COREDNS, binaries["coredns"])
    build_meshlet()
    build_app()
    return [PAUSE, COREDNS, SIDECAR, CONTROL_PLANE, APP]


def load(names: list[str], ctr: list[str], folder: Path) -> None:
    """Put the images into the node's containerd, under their own names."""
    for name in names:
        archive = folder / (name.replace("/", "_").replace(":", "_") + ".tar")
        images.buildah("push", "-q", name, f"docker-archive:{archive}:{name}")
        try:
            subprocess.run(
                [*ctr, "-n", "k8s.io", "images", "import", str(archive)],
                check=True,
                capture_output=True,
                timeout=300,
            )
        finally:
            archive.unlink(missing_ok=True)


def remove(names: list[str]) -> None:
    """The images from the build store (the base and cached layers stay)."""
    images.remove(*names)
