"""OTLP's generated protobuf code, working even where xds-protos replaced it.

Every xds-protos release ships an old copy of `opentelemetry/proto/` (without
`InstrumentationScope`, which the OTLP exporter imports). pip installs xds-protos
after opentelemetry-proto, so in a plain `pip install meshlet` the old files win
and the exporter cannot import. meshlet carries a copy of opentelemetry-proto's
files (`meshlet/_proto/otlp/`, made by tools/genprotos.py) and, only when the
installed ones are not opentelemetry-proto's, serves `opentelemetry.proto` from it.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

DISTRIBUTION = "opentelemetry-proto"
PACKAGE = "opentelemetry.proto"
OWN_COPY = Path(__file__).resolve().parent / "_proto" / "otlp" / "opentelemetry" / "proto"
FIX = f"pip install --force-reinstall --no-deps {DISTRIBUTION}"


def record_digest(data: bytes) -> str:
    """A file's sha256 as a wheel's RECORD writes it (urlsafe base64, no padding)."""
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def overwritten(expected: Mapping[str, str], found: Mapping[str, bytes | None]) -> list[str]:
    """The files (by RECORD path) whose bytes are gone or not the ones installed."""
    return sorted(
        path
        for path, digest in expected.items()
        if (data := found.get(path)) is None or record_digest(data) != digest
    )


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def installed_files() -> tuple[dict[str, str], dict[str, bytes | None]] | None:
    """opentelemetry-proto's Python files: RECORD's digests and what is on disk now.
    None when it is not installed."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    expected: dict[str, str] = {}
    found: dict[str, bytes | None] = {}
    for file in dist.files or ():
        if file.suffix == ".py" and file.hash is not None and file.hash.mode == "sha256":
            expected[str(file)] = file.hash.value
            found[str(file)] = _read(Path(str(file.locate())))
    return expected, found


def clashing() -> list[str]:
    """opentelemetry-proto's files that something else (xds-protos) replaced."""
    files = installed_files()
    return [] if files is None else overwritten(*files)


def _load_own_copy() -> None:
    spec = importlib.util.spec_from_file_location(
        PACKAGE, OWN_COPY / "__init__.py", submodule_search_locations=[str(OWN_COPY)]
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)
    # What an import of a subpackage does: the parent names it too.
    import opentelemetry

    opentelemetry.proto = package  # type: ignore[attr-defined]


def make_importable() -> None:
    """Serve `opentelemetry.proto` from meshlet's copy if the installed one was replaced.
    Call before anything imports it (the OTLP exporter)."""
    replaced = clashing()
    if not replaced:
        return
    if any(name == PACKAGE or name.startswith(PACKAGE + ".") for name in sys.modules):
        # Too late: the replaced modules are loaded (and in protobuf's pool).
        log.warning(
            "%s's files were replaced by another package's and are loaded already: OTLP may"
            " fail; to repair the install: %s",
            DISTRIBUTION,
            FIX,
        )
        return
    _load_own_copy()
    log.info(
        "%s's files were replaced by another package's (%s, ...): OTLP uses meshlet's copy;"
        " to repair the install: %s",
        DISTRIBUTION,
        replaced[0],
        FIX,
    )
