"""Builds the Dockerfile's images with buildah, in a container store of the tests'
own (under the cache, never the host's), from a local base image made by
debootstrap and tagged with the Dockerfile's real base name, so the same
Dockerfile builds unchanged where a registry is reachable.

Package traffic here may pass a TLS-inspecting proxy that only the host trusts:
the build borrows the host's CA bundle for pip (the Dockerfile's PIP_CERT).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.k8s.build import user_cache

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
SUITE = "bookworm"


def base_image() -> str:
    found = re.search(r"^ARG BASE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert found, "the Dockerfile names its base in ARG BASE"
    return found.group(1)


def store() -> Path:
    return user_cache("MESHLET_IMAGE_STORE", "containers")


def missing() -> str | None:
    """Why images cannot be built here, or None."""
    if os.geteuid() != 0:
        return "building images needs root (buildah's chroot isolation and debootstrap)"
    for tool in ("buildah", "podman", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {tool})"
    return None


def _store_flags() -> list[str]:
    return ["--root", str(store() / "storage"), "--runroot", str(store() / "run")]


def buildah(
    *args: str, check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["buildah", *_store_flags(), *args], capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"buildah {' '.join(args)} exited {result.returncode}:\n{result.stdout[-4000:]}\n"
            f"{result.stderr[-4000:]}"
        )
    return result


def ensure_base() -> str:
    """The base image in the store: made once (debootstrap, then imported under the
    base's fully qualified name, so buildah never looks for it in a registry)."""
    name = base_image()
    if buildah("inspect", "--type", "image", name, check=False).returncode == 0:
        return name
    store().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store(), prefix=".rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                SUITE,
                str(rootfs),
                "http://deb.debian.org/debian",
            ],
            check=True,
            capture_output=True,
            timeout=900,
        )
        with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
            subprocess.run(
                ["podman", *_store_flags(), "import", "-", name],
                stdin=tar.stdout,
                check=True,
                capture_output=True,
                timeout=600,
            )
        assert tar.returncode == 0
    return name


def build_flags() -> list[str]:
    """What a build needs here beyond what a laptop's needs."""
    flags = ["--pull=never", "--isolation", "chroot"]
    if HOST_CA.exists():
        flags += [
            "-v",
            f"{HOST_CA}:/run/host-ca.crt:ro",
            "--build-arg",
            "PIP_CERT=/run/host-ca.crt",
        ]
    return flags


def run_in(image: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """`argv` run inside the image's root filesystem, as its configured user."""
    container = buildah("from", "--pull=never", image).stdout.strip().splitlines()[-1]
    try:
        return buildah("run", "--isolation", "chroot", container, "--", *argv, check=False)
    finally:
        buildah("rm", container, check=False)


def inspect(image: str) -> dict[str, object]:
    found: dict[str, object] = json.loads(buildah("inspect", "--type", "image", image).stdout)
    return found


def size(image: str) -> int:
    result = subprocess.run(
        ["podman", *_store_flags(), "image", "inspect", "--format", "{{.Size}}", image],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(result.stdout.strip())


def remove(*images: str) -> None:
    """The images and the layers only they used (dangling build stages); the base stays."""
    for image in images:
        buildah("rmi", "-f", image, check=False)
    buildah("rmi", "--prune", check=False)
