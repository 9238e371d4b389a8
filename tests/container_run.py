"""A container of a pod spec turned into what the kubelet would run: its argv and its env.

The downward API's fields come from `fields` (what the pod would have: its name,
namespace, node, labels); `$(VAR)` in env values, commands and args expands as the
kubelet expands it (`$$` is a literal `$`; an unknown variable stays as written).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
# The image's meshlet is this checkout's, installed into the venv that runs the tests.
MESHLET = str(Path(sys.executable).parent / "meshlet")


def expand(text: str, env: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _REFERENCE.sub(one, text)


def container_env(container: Mapping[str, Any], fields: Mapping[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = expand(str(var["value"]), env)
        elif "valueFrom" in var:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            env[var["name"]] = fields.get(path, "")
        else:
            env[var["name"]] = ""
    return env


def container_argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """The argv of a container (command, args) or of an exec hook (command)."""
    command: Sequence[str] = container["command"]
    argv = [expand(part, env) for part in [*command, *container.get("args", [])]]
    return [MESHLET if argv[0] == "meshlet" else argv[0], *argv[1:]]


def pod_fields(pod: Mapping[str, Any], node: str, namespace: str) -> dict[str, str]:
    """The downward API's view of a bound pod."""
    meta = pod["metadata"]
    fields = {
        "metadata.name": meta["name"],
        "metadata.namespace": namespace,
        "spec.nodeName": node,
    }
    for key, value in (meta.get("labels") or {}).items():
        fields[f"metadata.labels['{key}']"] = value
    return fields


def find(containers: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any]:
    return next(c for c in containers if c["name"] == name)


def with_empty_dirs(
    pod: Mapping[str, Any], container: Mapping[str, Any], env: Mapping[str, str], root: Path
) -> dict[str, str]:
    """`env` with every emptyDir the container mounts made a directory under `root`,
    owned by the container's user. Without a mount namespace here, the directory stands
    at its own path: env values that name the mount path are pointed at it."""
    empty = {v["name"] for v in pod["spec"].get("volumes") or [] if "emptyDir" in v}
    context = container.get("securityContext") or {}
    moved = {}
    for mount in container.get("volumeMounts") or []:
        if mount["name"] in empty:
            directory = root / mount["name"]
            directory.mkdir(parents=True, exist_ok=True)
            os.chown(directory, context.get("runAsUser", 0), context.get("runAsGroup", 0))
            moved[mount["mountPath"]] = str(directory)
    return {name: moved.get(value, value) for name, value in env.items()}
