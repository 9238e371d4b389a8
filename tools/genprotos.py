"""Regenerate meshlet/_proto from protos/: python tools/genprotos.py [OUT_DIR]."""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    code = protoc.main(
        ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out_dir}", f"--pyi_out={out_dir}", *sources]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    # Every generated folder must be a package so `meshlet._proto.meshlet.v1` imports.
    for folder in [out_dir, *(p for p in out_dir.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "meshlet" / "_proto")
