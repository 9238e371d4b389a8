"""OTLP export in every way meshlet is installed: the dev venv, and a plain
`pip install` of meshlet's wheel into a fresh venv, where xds-protos's old copy of
opentelemetry/proto lands over opentelemetry-proto's files (the images: test_image.py).

The wheel test needs PyPI (pip resolves meshlet's dependencies as a user's would).
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshlet import otlp_protos
from meshlet.otlp_protos import DISTRIBUTION
from tests.otlp_receiver import Receiver, otlp_env, receiving
from tests.procs import free_port, running, wait_until

ROOT = Path(__file__).resolve().parent.parent
EXPORTER = "from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter"
# What a meshlet process logs when it serves opentelemetry.proto from its own copy.
OWN_COPY_LOG = "OTLP uses meshlet's copy"


# --- the pure part -------------------------------------------------------------------


def test_record_digest_is_the_one_a_wheels_record_writes() -> None:
    # Every wheel's RECORD gives an empty __init__.py this digest.
    assert otlp_protos.record_digest(b"") == "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"


def test_overwritten_names_the_files_changed_or_gone() -> None:
    expected = {
        "a.py": otlp_protos.record_digest(b"a"),
        "b.py": otlp_protos.record_digest(b"b"),
        "c.py": otlp_protos.record_digest(b"c"),
    }
    assert otlp_protos.overwritten(expected, {"a.py": b"a", "b.py": b"b", "c.py": b"c"}) == []
    found = {"a.py": b"a", "b.py": b"old b", "c.py": None}
    assert otlp_protos.overwritten(expected, found) == ["b.py", "c.py"]


# --- the dev venv ----------------------------------------------------------------------


def test_the_dev_venv_has_opentelemetry_protos_own_files() -> None:
    # scripts/setup.sh reinstalls opentelemetry-proto after xds-protos.
    assert otlp_protos.clashing() == [], "run: bash scripts/setup.sh (or " + otlp_protos.FIX + ")"
    imported = subprocess.run([sys.executable, "-c", EXPORTER], capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr


def test_meshlets_copy_is_the_installed_opentelemetry_protos() -> None:
    # The copy is what tools/genprotos.py made from this version (test_protos checks it is
    # fresh); here: it holds what the exporter imports.
    version = (otlp_protos.OWN_COPY / "version" / "__init__.py").read_text()
    import opentelemetry.proto.version

    assert f'__version__ = "{opentelemetry.proto.version.__version__}"' in version
    common = (otlp_protos.OWN_COPY / "common" / "v1" / "common_pb2.py").read_bytes()
    assert b"InstrumentationScope" in common


# --- a plain pip install of the wheel ----------------------------------------------------


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with meshlet's wheel installed by pip, nothing done after."""
    where = tmp_path_factory.mktemp("wheel")
    source = where / "src"
    source.mkdir()
    # A copy of what the Dockerfile builds from: no build output in the checkout.
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "meshlet", source / "meshlet", ignore=shutil.ignore_patterns("__pycache__")
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(where), str(source)],
        check=True,
    )
    (wheel,) = where.glob("meshlet-*.whl")
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The OpenTelemetry release this checkout is tested with (meshlet's copy is of it).
    constraints = where / "constraints.txt"
    constraints.write_text(f"opentelemetry-proto=={importlib.metadata.version(DISTRIBUTION)}\n")
    installed = subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "-q",
            "--disable-pip-version-check",
            "-c",
            str(constraints),
            str(wheel),
        ],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    yield venv


def in_venv(venv: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True
    )


def exports_to_a_receiver(venv: Path, tmp_path: Path, receiver: Receiver, port: int) -> str:
    """Run the venv's `meshlet sidecar` (what a plain install is for) with OTLP on until
    the receiver has its metrics; return the process's log."""
    loopback = [free_port() for _ in range(6)]
    argv = [
        str(venv / "bin" / "meshlet"),
        "sidecar",
        # No control plane: a sidecar exports its metrics from its first second.
        f"--xds-address=127.0.0.1:{loopback[0]}",
        f"--dns-address=127.0.0.1:{loopback[1]}",
        f"--admin-address=127.0.0.1:{loopback[2]}",
        f"--outbound-address=127.0.0.1:{loopback[3]}",
        f"--health-address=127.0.0.1:{loopback[4]}",
        f"--metrics-address=127.0.0.1:{loopback[5]}",
        f"--upstream-dns=127.0.0.1:{free_port()}",
        "--log-level=info",
    ]
    receiver.clear()
    log = tmp_path / f"sidecar-{port}.log"
    with running(argv, "meshlet sidecar (wheel venv)", log, env=otlp_env(port)) as process:

        def received() -> set[str]:
            process.check_alive()
            return receiver.names()

        wait_until(lambda names: "meshlet_build_info" in names, 30, "OTLP", observe=received)
        return process.log_text()


def test_a_plain_pip_install_exports_over_otlp(wheel_venv: Path, tmp_path: Path) -> None:
    # pip put xds-protos's old opentelemetry/proto over opentelemetry-proto's: the
    # exporter alone cannot import (the bug), and meshlet sees which files were replaced.
    plain = in_venv(wheel_venv, EXPORTER)
    assert "cannot import name 'InstrumentationScope'" in plain.stderr, plain.stderr
    seen = in_venv(wheel_venv, "from meshlet import otlp_protos; print(otlp_protos.clashing())")
    assert "common_pb2.py" in seen.stdout, seen.stdout + seen.stderr
    with receiving() as (receiver, port):
        log = exports_to_a_receiver(wheel_venv, tmp_path, receiver, port)
    assert OWN_COPY_LOG in log
    assert otlp_protos.FIX in log  # and it says how to repair the install
    assert "OTLP export is off" not in log


def test_after_the_images_repair_it_exports_with_the_installed_files(
    wheel_venv: Path, tmp_path: Path
) -> None:
    # What the Dockerfile does after installing the wheel.
    version = in_venv(
        wheel_venv, "import importlib.metadata as m; print(m.version('opentelemetry-proto'))"
    ).stdout.strip()
    pip = str(wheel_venv / "bin" / "pip")
    subprocess.run(
        [pip, "install", "-q", "--disable-pip-version-check", "--force-reinstall", "--no-deps",
         f"opentelemetry-proto=={version}"],
        check=True,
    )  # fmt: skip
    plain = in_venv(wheel_venv, EXPORTER)
    assert plain.returncode == 0, plain.stderr
    with receiving() as (receiver, port):
        log = exports_to_a_receiver(wheel_venv, tmp_path, receiver, port)
    assert OWN_COPY_LOG not in log
