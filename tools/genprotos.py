"""Regenerate meshlet/_proto from protos/: python tools/genprotos.py [OUT_DIR].

Also copies opentelemetry-proto's generated code into meshlet/_proto/otlp/ (see
meshlet/otlp_protos.py: the install's own copy may have been replaced by xds-protos's).
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
sys.path.insert(0, str(ROOT))

from meshlet import otlp_protos  # noqa: E402


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    code = protoc.main(
        ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out_dir}", f"--pyi_out={out_dir}", *sources]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    copy_otlp(out_dir / "otlp")
    # Every generated folder must be a package so `meshlet._proto.meshlet.v1` imports.
    for folder in [out_dir, *(p for p in out_dir.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()


def copy_otlp(out_dir: Path) -> None:
    """opentelemetry-proto's Python files, exactly as its wheel installed them."""
    files = otlp_protos.installed_files()
    if files is None:
        raise SystemExit(f"{otlp_protos.DISTRIBUTION} is not installed")
    replaced = otlp_protos.overwritten(*files)
    if replaced:
        raise SystemExit(f"{replaced[0]} is not {otlp_protos.DISTRIBUTION}'s: {otlp_protos.FIX}")
    version = importlib.metadata.version(otlp_protos.DISTRIBUTION)
    print(f"copying {otlp_protos.DISTRIBUTION} {version}")
    expected, found = files
    for path in expected:
        target = out_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(found[path] or b"")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "meshlet" / "_proto")
