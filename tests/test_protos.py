"""The committed generated code matches protos/ (regenerate: python tools/genprotos.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "meshlet" / "_proto"


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "genprotos.py"), str(tmp_path)], check=True
    )
    fresh, committed = _files(tmp_path), _files(COMMITTED)
    stale = sorted(n for n in fresh.keys() | committed.keys() if fresh.get(n) != committed.get(n))
    assert not stale, f"meshlet/_proto is stale in {stale}: run python tools/genprotos.py"


def test_name_table_round_trips() -> None:
    from meshlet._proto.meshlet.v1 import nametable_pb2

    table = nametable_pb2.NameTable()
    table.table["web.default.svc.cluster.local"].ips.append("10.96.0.10")
    again = nametable_pb2.NameTable.FromString(table.SerializeToString())
    assert list(again.table["web.default.svc.cluster.local"].ips) == ["10.96.0.10"]
