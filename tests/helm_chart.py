"""The chart in helm/meshlet, rendered and installed with the real `helm` built for
the test cluster (tests/k8s/build.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s import build

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "meshlet"


def helm_binary() -> Path:
    found = build.binaries()
    if isinstance(found, str):
        pytest.skip(found)
    return found["helm"]


def helm(
    *args: str,
    kubeconfig: Path | None = None,
    check: bool = True,
    home: Path | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    env: dict[str, str] = {"PATH": "/usr/bin:/bin"}
    if home is not None:
        # Helm's cache, config and data of the test's own, never the user's.
        env.update(
            HOME=str(home),  # the API client's discovery cache (~/.kube/cache)
            HELM_CACHE_HOME=str(home / "cache"),
            HELM_CONFIG_HOME=str(home / "config"),
            HELM_DATA_HOME=str(home / "data"),
        )
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    result = subprocess.run(
        [str(helm_binary()), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def values_file(values: Mapping[str, Any], folder: Path, name: str = "values.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(dict(values)))
    return path


def render(
    values: Mapping[str, Any],
    tmp_path: Path,
    release: str = "meshlet",
    namespace: str = "meshlet-system",
) -> str:
    return helm(
        "template", release, str(CHART), "--namespace", namespace,
        "-f", str(values_file(values, tmp_path)),
    ).stdout  # fmt: skip


def objects(manifest: str) -> list[dict[str, Any]]:
    return [o for o in yaml.safe_load_all(manifest) if o]


def find(found: Sequence[Mapping[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in found if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(matches) == 1, f"{len(matches)} {kind} {name or ''} in the chart"
    return dict(matches[0])


def control_plane_container(found: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = find(found, "Deployment")["spec"]["template"]["spec"]["containers"][
        0
    ]
    return container


def settings_text(found: Sequence[Mapping[str, Any]]) -> str:
    text: str = find(found, "ConfigMap")["data"]["settings.yaml"]
    return text


def env_of(container: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
