"""Go programs of the benchmarks, built from a folder of bench/ with `go build`.

Each folder is a small Go module of the project's own (modules from the module
proxy, checked against its go.sum); the binary is cached under a hash of the
folder's go.mod, go.sum and Go sources and of the Go version, so a second run
builds nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))


def sources(folder: str) -> list[str]:
    return sorted(
        name for name in os.listdir(folder) if name in ("go.mod", "go.sum") or name.endswith(".go")
    )


def build(folder: str, name: str, package: str = ".") -> str:
    """The binary `name` of `package` (the folder's own main, or a package of a module
    its go.mod requires), built in bench/`folder` if not cached yet."""
    path = os.path.join(BENCH, folder)
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not os.access(go, os.X_OK):
        raise RuntimeError("Go is not installed (/usr/local/go/bin/go)")
    # The machine's Go unless GOTOOLCHAIN says otherwise; cgo off, as a static binary.
    env = {**os.environ, "GOTOOLCHAIN": os.environ.get("GOTOOLCHAIN", "local"), "CGO_ENABLED": "0"}
    env["GOFLAGS"] = "-mod=readonly"
    version = subprocess.run(
        [go, "env", "GOVERSION"], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()
    digest = hashlib.sha256(f"{version}\0{package}\0".encode())
    for source in sources(path):
        with open(os.path.join(path, source), "rb") as f:
            digest.update(source.encode() + b"\0" + f.read() + b"\0")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    cache = os.path.join(base, "meshlet", "bench")
    binary = os.path.join(cache, f"{name}-{digest.hexdigest()[:16]}")
    if os.access(binary, os.X_OK):
        return binary
    os.makedirs(cache, exist_ok=True)
    print(f"building {path} with {version} ...", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        out = os.path.join(tmp, name)
        built = subprocess.run(
            [go, "build", "-trimpath", "-ldflags", "-s -w", "-o", out, package],
            cwd=path,
            env=env,
            capture_output=True,
            text=True,
        )
        if built.returncode != 0:
            raise RuntimeError(f"go build in {path} failed:\n{built.stderr[-3000:]}")
        os.rename(out, binary)  # whole or not at all
    print(f"built in {time.monotonic() - started:.0f} s: {binary}", flush=True)
    return binary
