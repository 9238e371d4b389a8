"""Build the test cluster's binaries from their Go modules, cached outside the clone.

Each folder here is a small Go module of the project's own: `kube` (kube-apiserver,
kube-controller-manager, kubectl and kube-proxy from k8s.io/kubernetes, in one
`go build`), `etcd`, `coredns` (only the plugins the tests use), `helm` and `tilt`
(which only pins a Tilt release: that is built in a copy of its own module); for the
real node (layer `pods`), `node` (kubelet and kube-scheduler from the same
k8s.io/kubernetes), `containerd`, `pause` (the sandbox's program, the project's own)
and `prometheus` (with promtool). A
module's binaries are cached under a key of its go.mod, go.sum, Go sources, build
flags and Go version, so a second run builds nothing.

    python tests/k8s/build.py           # build what is missing, print where it is
    python tests/k8s/build.py --layer kube   # only what the control-plane tests need
    python tests/k8s/build.py --check   # exit 1 if anything would be built

Tests find the binaries with `binaries()`; they never build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _kube_ldflags(version: str) -> list[str]:
    # What Kubernetes' hack/lib/version.sh stamps: Helm and kubectl read it back.
    major, minor = version.removeprefix("v").split(".")[:2]
    values = {"gitVersion": version, "gitMajor": major, "gitMinor": minor}
    return [
        f"-X k8s.io/{package}/version.{key}={value}"
        for package in ("client-go/pkg", "component-base")
        for key, value in values.items()
    ]


def _tilt_ldflags(version: str) -> list[str]:
    # What Tilt's goreleaser stamps; `tilt version` prints it.
    return [f"-X main.version={version.removeprefix('v')}"]


def _helm_ldflags(version: str) -> list[str]:
    # An empty metadata: a release build, as Helm's Makefile makes for a tag.
    return [
        f"-X helm.sh/helm/v4/internal/version.version={version}",
        "-X helm.sh/helm/v4/internal/version.metadata=",
    ]


@dataclass(frozen=True)
class Module:
    folder: str
    # The module whose version names the build, as required in go.mod.
    upstream: str
    commands: tuple[str, ...]
    # `tool`: the go.mod's tool directives; `.`: the folder's own main package;
    # `./cmd/...`: that package of the upstream module, built in its own module.
    target: str = "tool"
    cgo: bool = False
    tags: tuple[str, ...] = ()
    # The test layer that needs it (tests/layers): `kube` for the control plane on
    # loopback, `pods` for the real node; a run builds only what its layers need.
    layer: str = "kube"

    @property
    def path(self) -> Path:
        return HERE / self.folder

    def version(self) -> str:
        if not self.upstream:
            return "local"  # a program of the project's own
        text = (self.path / "go.mod").read_text()
        found = re.search(rf"^\s*(?:require\s+)?{re.escape(self.upstream)}\s+(v\S+)", text, re.M)
        if found is None:
            raise SystemExit(f"{self.path}/go.mod does not require {self.upstream}")
        return found.group(1)

    def ldflags(self) -> list[str]:
        extra = {
            "kube": _kube_ldflags,
            "node": _kube_ldflags,
            "helm": _helm_ldflags,
            "tilt": _tilt_ldflags,
        }.get(self.folder)
        return ["-s", "-w", *(extra(self.version()) if extra else [])]


MODULES = (
    Module(
        "kube",
        "k8s.io/kubernetes",
        ("kube-apiserver", "kube-controller-manager", "kubectl", "kube-proxy"),
    ),
    Module("etcd", "go.etcd.io/etcd/server/v3", ("etcd",), target="."),
    Module("coredns", "github.com/coredns/coredns", ("coredns",), target="."),
    Module("helm", "helm.sh/helm/v4", ("helm",)),
    # Tilt parses Tiltfiles' languages with tree-sitter, which is C: cgo.
    Module("tilt", "github.com/tilt-dev/tilt", ("tilt",), target="./cmd/tilt", cgo=True),
    # The real node: kubelet and kube-scheduler from the same k8s.io/kubernetes,
    # containerd 2 (pure Go: no snapshotter that needs cgo), and the sandbox's pause.
    Module("node", "k8s.io/kubernetes", ("kubelet", "kube-scheduler"), layer="pods"),
    Module(
        "containerd",
        "github.com/containerd/containerd/v2",
        ("containerd", "containerd-shim-runc-v2", "ctr"),
        tags=("no_btrfs", "no_devmapper", "no_zfs"),
        layer="pods",
    ),
    Module("pause", "", ("pause",), target=".", layer="pods"),
    # Scrapes the real pods by Kubernetes discovery: no other discovery built in.
    Module(
        "prometheus",
        "github.com/prometheus/prometheus",
        ("prometheus", "promtool"),
        tags=("remove_all_sd", "enable_kubernetes_sd"),
        layer="pods",
    ),
)
LAYERS = tuple(dict.fromkeys(module.layer for module in MODULES))


def user_cache(env: str, name: str) -> Path:
    """$env if set, else meshlet's folder `name` in the user's cache (outside the clone)."""
    chosen = os.environ.get(env)
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "meshlet" / name


def cache_root() -> Path:
    return user_cache("MESHLET_K8S_CACHE", "k8s")


def go_binary() -> str | None:
    return shutil.which("go") or next(
        (p for p in ("/usr/local/go/bin/go",) if os.access(p, os.X_OK)), None
    )


def _go_version(go: str) -> str:
    return subprocess.run(
        [go, "env", "GOVERSION"], check=True, capture_output=True, text=True, env=_go_env()
    ).stdout.strip()


def _go_env(cgo: bool = False) -> dict[str, str]:
    # The machine's Go, never one fetched because a go.mod asks for it.
    toolchain = os.environ.get("GOTOOLCHAIN", "local")
    return {**os.environ, "GOTOOLCHAIN": toolchain, "CGO_ENABLED": "1" if cgo else "0"}


def _upstream_copy(module: Module, go: str, into: Path) -> Path:
    """A writable copy of the pinned upstream module (checked against go.sum), to build
    in: its own go.mod, replace directives and all, then applies."""
    found = subprocess.run(
        [go, "mod", "download", "-json", f"{module.upstream}@{module.version()}"],
        check=True,
        capture_output=True,
        text=True,
        cwd=module.path,
        env={**_go_env(), "GOFLAGS": "-mod=readonly"},
    )
    source = into / "src"
    shutil.copytree(json.loads(found.stdout)["Dir"], source, symlinks=True)
    for path in (source, *source.rglob("*")):
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)
    # Its vendor/ holds only modules.txt, and node_modules/ is the web UI's: neither builds.
    for folder in ("vendor", "node_modules"):
        shutil.rmtree(source / folder, ignore_errors=True)
    # The web UI is embedded from pkg/assets/build, which a release fills with the
    # compiled front end (npm); a placeholder page stands in for it here.
    (source / "pkg/assets/build/index.html").write_text(
        "<!doctype html><title>Tilt</title><p>Tilt's web UI is not built into this binary; "
        "use the terminal UI or `tilt get`.\n"
    )
    return source


def cache_dir(module: Module, go_version: str) -> Path:
    digest = hashlib.sha256()
    for name in sorted(
        p.name for p in module.path.iterdir() if p.suffix in (".mod", ".sum", ".go")
    ):
        digest.update(name.encode() + b"\0" + (module.path / name).read_bytes() + b"\0")
    digest.update(" ".join([go_version, module.target, *module.tags, *module.ldflags()]).encode())
    return cache_root() / f"{module.folder}-{module.version()}-{digest.hexdigest()[:16]}"


def _complete(folder: Path, module: Module) -> bool:
    return all(os.access(folder / command, os.X_OK) for command in module.commands)


def build(module: Module, go: str, go_version: str) -> Path:
    """The folder holding the module's binaries, built now unless cached."""
    target = cache_dir(module, go_version)
    if _complete(target, module):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"== go build {module.folder} ({module.upstream} {module.version()})", flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{module.folder}-") as tmp:
        out = Path(tmp) / "bin"
        argv = [go, "build", "-trimpath", "-ldflags", " ".join(module.ldflags())]
        if module.tags:
            argv += ["-tags", ",".join(module.tags)]
        argv += ["-o"]
        argv += [f"{out}/" if module.target == "tool" else f"{out}/{module.commands[0]}"]
        where = module.path
        if module.target.startswith("./cmd/"):
            where = _upstream_copy(module, go, Path(tmp))
            argv.append("-mod=mod")
        subprocess.run([*argv, module.target], check=True, cwd=where, env=_go_env(module.cgo))
        if not _complete(out, module):
            raise SystemExit(f"go build {module.folder} did not make {', '.join(module.commands)}")
        shutil.rmtree(target, ignore_errors=True)
        os.rename(out, target)  # whole or not at all: a killed build leaves no half folder
    print(f"   {module.folder}: {time.monotonic() - started:.0f} s -> {target}", flush=True)
    return target


def selected(layers: Sequence[str] | None) -> list[Module]:
    return [module for module in MODULES if layers is None or module.layer in layers]


def binaries(layers: Sequence[str] = ("kube",)) -> dict[str, Path] | str:
    """The paths of the commands of `layers`' modules, or why they are not there (for a
    test's skip reason)."""
    go = go_binary()
    if go is None:
        return "Go is not installed (/usr/local/go/bin/go): the test cluster cannot be built"
    go_version = _go_version(go)
    found: dict[str, Path] = {}
    for module in selected(layers):
        folder = cache_dir(module, go_version)
        if not _complete(folder, module):
            return (
                f"the test cluster's {module.folder} binaries are not built: run {__file__}"
                f" --layer {module.layer}"
            )
        found.update({command: folder / command for command in module.commands})
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if anything is not built")
    parser.add_argument(
        "--layer",
        action="append",
        choices=LAYERS,
        help="build only the modules this test layer needs (repeatable; default: all)",
    )
    args = parser.parse_args()
    go = go_binary()
    if go is None:
        print("go not found on PATH or in /usr/local/go/bin", file=sys.stderr)
        return 1
    go_version = _go_version(go)
    started = time.monotonic()
    for module in selected(args.layer):
        if args.check:
            if not _complete(cache_dir(module, go_version), module):
                print(f"{module.folder}: not built", file=sys.stderr)
                return 1
            continue
        build(module, go, go_version)
    print(f"== test cluster binaries ready in {time.monotonic() - started:.0f} s ({cache_root()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
