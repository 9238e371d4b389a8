"""The Tiltfile, with the real Tilt built from its Go module (tests/k8s/build.py).

The cluster mode needs a container runtime and a local cluster, which this machine
lacks: it is shown by evaluation (`tilt alpha tiltfile-result`), which builds and
deploys nothing and never calls the cluster (its kubeconfig names a local cluster's
context on an address nothing listens on). The local mode runs for real:
`tilt ci -- --local` brings the control plane and the demo to green and exits.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s import build
from tests.netlab import skip_unless_netns_and_nftables
from tests.procs import free_port

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent
SITE = "/opt/meshlet/lib/python3.11/site-packages/meshlet"


def binaries() -> dict[str, Path]:
    found = build.binaries()
    if isinstance(found, str):
        pytest.skip(found)
    return found


def local_cluster_kubeconfig(folder: Path, context: str) -> Path:
    path = folder / "kubeconfig"
    cluster = {"server": "https://127.0.0.1:9"}  # discard: evaluation never connects
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": context, "cluster": cluster}],
                "users": [{"name": context, "user": {"token": "unused"}}],
                "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
                "current-context": context,
            }
        )
    )
    return path


def tilt(
    tmp_path: Path,
    *args: str,
    context: str = "kind-meshlet",
    timeout: float = 120,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    found = binaries()
    env = {
        # Tilt's state (~/.tilt-dev) of the test's own; helm from the test cluster's build.
        "HOME": str(tmp_path),
        "PATH": f"{found['helm'].parent}:/usr/local/bin:/usr/bin:/bin",
        "KUBECONFIG": str(local_cluster_kubeconfig(tmp_path, context)),
        **(env or {}),
    }
    # A session of its own: on a timeout, the whole group goes (tilt ci's control plane
    # and the demo with it), not tilt alone.
    with subprocess.Popen(
        [str(found["tilt"]), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=cwd, env=env, start_new_session=True,
    ) as process:  # fmt: skip
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                out, err = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:  # the group outlived its grace: it goes now
                os.killpg(process.pid, signal.SIGKILL)
                out, err = process.communicate()
            raise AssertionError(
                f"tilt {' '.join(args)} timed out:\n{out[-3000:]}{err[-3000:]}"
            ) from None
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def evaluate(tmp_path: Path, *args: str) -> dict[str, Any]:
    result = tilt(tmp_path, "alpha", "tiltfile-result", *args)
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def manifests(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["Name"]: m for m in result["Manifests"]}


def yaml_objects(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in yaml.safe_load_all(manifest["DeployTarget"]["yaml"]) if o]


def test_on_a_local_cluster_it_builds_both_images_and_deploys_the_chart_and_the_demo(
    tmp_path: Path,
) -> None:
    found = manifests(evaluate(tmp_path))
    assert {name: m["Labels"] for name, m in found.items()} == {
        "meshlet": {"control-plane": "control-plane"},
        "namespaces": {"setup": "setup"},
        "web": {"demo": "demo"},
        "api": {"demo": "demo"},
        "client": {"demo": "demo"},
    }
    control, sidecar = found["meshlet"]["ImageTargets"]
    # The control plane: its dev target, live update syncing the code, then a restart.
    assert control["selector"] == "ghcr.io/meshlet/meshlet-control-plane"
    assert control["BuildDetails"]["target"] == "control-plane-dev"
    spec = control["LiveUpdateSpec"]
    assert spec["syncs"] == [{"localPath": "meshlet", "containerPath": SITE}]
    assert spec["execs"][0]["args"] == ["sh", "-c", "kill -HUP 1"]
    assert spec["stopPaths"] == ["pyproject.toml"]  # a dependency change rebuilds
    # The sidecar: rewritten where the chart hands it to the injector, and built from
    # deps that leave meshlet/ out, so a .py change is the control plane's live update
    # alone (an image target without one would take the resource to a full build).
    assert sidecar["selector"] == "ghcr.io/meshlet/meshlet"
    assert sidecar["matchInEnvVars"] is True
    details = sidecar["BuildDetails"]
    assert "--target sidecar" in details["args"][-1]
    assert sorted(Path(d).name for d in details["Deps"]) == ["Dockerfile", "pyproject.toml"]
    chart = yaml_objects(found["meshlet"])
    (deployment,) = [o for o in chart if o["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {
        "name": "MESHLET_INJECTOR_IMAGE",
        "value": "ghcr.io/meshlet/meshlet:0.1.0",
    } in container["env"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is False  # values-dev.yaml
    kinds = sorted(o["kind"] for o in chart)
    assert "MutatingWebhookConfiguration" in kinds and "ClusterRole" in kinds
    forwards = found["meshlet"]["DeployTarget"]["portForwardTemplateSpec"]["forwards"]
    assert [(f["localPort"], f["containerPort"]) for f in forwards] == [(15014, 15014)]
    # The demo in an injected namespace.
    names = {o["metadata"]["name"]: o for o in yaml_objects(found["namespaces"])}
    assert sorted(names) == ["meshlet-demo", "meshlet-system"]
    demo = names["meshlet-demo"]
    assert demo["metadata"]["labels"]["meshlet.io/inject"] == "enabled"
    for name in ("web", "api", "client"):
        for obj in yaml_objects(found[name]):
            assert obj["metadata"]["namespace"] == "meshlet-demo"


def test_on_a_containerd_node_it_builds_with_buildah_and_loads_into_containerd(
    tmp_path: Path,
) -> None:
    # The context names the way to build: no Docker, buildah and `ctr images import`
    # (tests/test_pods_tilt.py runs it for real on the tests' node).
    result = tilt(tmp_path, "alpha", "tiltfile-result", context="meshlet-containerd")
    assert result.returncode == 0, result.stderr
    found = manifests(json.loads(result.stdout))
    control, sidecar = found["meshlet"]["ImageTargets"]
    for target, name in ((control, "control-plane-dev"), (sidecar, "sidecar")):
        details = target["BuildDetails"]
        assert details["args"][-1] == f"scripts/buildah-load.sh {name} $EXPECTED_REF"
        assert details["outputMode"] == "remote"  # skips_local_docker: never asks Docker
    spec = control["LiveUpdateSpec"]  # the same live update as with Docker
    assert spec["syncs"] == [{"localPath": "meshlet", "containerPath": SITE}]
    assert spec["execs"][0]["args"] == ["sh", "-c", "kill -HUP 1"]
    assert sidecar["matchInEnvVars"] is True
    deps = sorted(Path(d).name for d in sidecar["BuildDetails"]["Deps"])
    assert deps == ["Dockerfile", "buildah-load.sh", "pyproject.toml"]  # no meshlet/
    # The demo runs the sidecar image, so Tilt puts the one it built there too.
    for name in ("web", "api", "client"):
        assert [t["selector"] for t in found[name]["ImageTargets"]] == [sidecar["selector"]]


@pytest.mark.parametrize("context", ["prod-eu-1", "kind-other"])
def test_it_refuses_a_context_that_is_not_a_local_cluster(tmp_path: Path, context: str) -> None:
    # kind-other: Tilt itself lets any kind-* context through; the Tiltfile does not.
    result = tilt(tmp_path, "alpha", "tiltfile-result", context=context)
    assert result.returncode != 0
    assert f'context "{context}" is not one of' in result.stdout + result.stderr


def test_without_a_cluster_it_runs_the_control_plane_and_the_demo_locally(
    tmp_path: Path,
) -> None:
    found = manifests(evaluate(tmp_path, "--", "--local"))
    assert sorted(found) == ["control-plane", "demo", "venv"]
    # .venv is made (or brought up to date) before anything runs from it.
    setup = found["venv"]["DeployTarget"]["UpdateCmdSpec"]["args"]
    assert setup == ["bash", "-euo", "pipefail", "-c", ". scripts/setup.sh; meshlet_setup_demo"]
    assert found["control-plane"]["ResourceDependencies"] == ["venv"]
    assert found["demo"]["ResourceDependencies"] == ["control-plane"]
    serve = found["control-plane"]["DeployTarget"]
    assert serve["ServeCmd"]["Argv"][:4] == [
        ".venv/bin/meshlet", "control-plane", "--manifests", "examples/demo",
    ]  # fmt: skip
    assert {Path(d).name for d in serve["Deps"]} >= {"meshlet", "demo"}  # restarts on change
    demo = found["demo"]["DeployTarget"]
    assert demo["UpdateCmdSpec"]["args"][:2] == [".venv/bin/meshlet", "demo"]
    assert not found["control-plane"]["ImageTargets"]


def test_tilt_ci_local_runs_to_green(tmp_path: Path) -> None:
    skip_unless_netns_and_nftables()  # the demo's pods are network namespaces
    # The README's command; Tilt's own web port and the control plane's free ones here.
    argv = shlex.split("tilt ci -- --local")[1:]
    argv[1:1] = ["--port=0", "--timeout=3m"]
    argv += [f"--xds-port={free_port()}", f"--admin-port={free_port()}"]
    result = tilt(tmp_path, *argv, timeout=240)
    out = result.stdout + result.stderr
    kept = re.search(r"stay in (\S+)", out)
    if kept:  # the demo's logs, kept for a user: not for a test run
        shutil.rmtree(kept.group(1), ignore_errors=True)
    assert result.returncode == 0, out[-4000:]
    assert "SUCCESS. All workloads are healthy." in out
    assert re.search(r"total: \d+ requests, 0 failed", out), out[-4000:]


def fresh_clone(folder: Path) -> Path:
    """What a clone holds that the local mode uses, and no .venv."""
    folder.mkdir()
    for part in ("Tiltfile", "pyproject.toml", "README.md", "scripts", "meshlet", "examples"):
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, folder / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, folder / part)
    return folder


def test_tilt_ci_local_in_a_fresh_clone_makes_the_venv_before_running_from_it(
    tmp_path: Path,
) -> None:
    binaries()  # skips before copying anything when Tilt is not built
    clone = fresh_clone(tmp_path / "clone")
    # No package index here (a refused port): the venv is made, its install fails, and
    # nothing is run from a .venv that is not there.
    offline = {
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_RETRIES": "0",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    argv = ["ci", "--port=0", "--timeout=3m", "--", "--local"]
    argv += [f"--xds-port={free_port()}", f"--admin-port={free_port()}"]
    result = tilt(tmp_path, *argv, timeout=240, cwd=clone, env=offline)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-4000:]
    assert "fork/exec .venv/bin/meshlet" not in out
    assert "== creating .venv" in out and "== pip install -e .[control-plane]" in out
    assert (clone / ".venv" / "bin" / "python").exists()
    assert not (clone / ".venv" / "bin" / "meshlet").exists()
    # A failed install is not taken for a done one: the next run tries it again.
    assert not (clone / ".venv" / ".meshlet-installed").exists()
