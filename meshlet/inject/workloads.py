"""`meshlet inject` (pure core): every pod template in a stream of objects, injected.

Pods and the pod templates of Deployments, StatefulSets, DaemonSets, ReplicaSets,
Jobs and CronJobs are injected; every other object passes through unchanged (a
`List` is walked item by item). Like `linkerd inject` and `istioctl kube-inject`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshlet.inject.pod import InjectionError, Outcome, inject_pod
from meshlet.inject.settings import InjectorSettings

# kind -> the path of its pod template (empty: the object is the pod).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


@dataclass
class Report:
    """What happened to each object: `kind namespace/name: injected` or why not."""

    lines: list[str] = field(default_factory=list)


def namespace_labels(objs: list[object]) -> dict[str, Mapping[str, str]]:
    """The labels of the Namespaces among the objects (and in their Lists), by name: what
    an offline `meshlet inject` knows of Pod Security."""
    found: dict[str, Mapping[str, str]] = {}
    for obj in objs:
        if not isinstance(obj, Mapping):
            continue
        items = obj.get("items")
        if isinstance(items, list):
            found.update(namespace_labels(items))
        meta = obj.get("metadata")
        if obj.get("kind") == "Namespace" and isinstance(meta, Mapping):
            labels = meta.get("labels")
            if isinstance(meta.get("name"), str) and isinstance(labels, Mapping):
                found[meta["name"]] = {str(k): str(v) for k, v in labels.items()}
    return found


def inject_object(
    obj: object,
    settings: InjectorSettings,
    where: str,
    report: Report,
    namespaces: Mapping[str, Mapping[str, str]] | None = None,
) -> object:
    """The object with its pod template injected (a copy), or the object itself.
    `namespaces`: the labels of the namespaces known (namespace_labels)."""
    if not isinstance(obj, Mapping):
        return obj
    kind = obj.get("kind")
    if kind == "List" or (isinstance(kind, str) and kind.endswith("List") and "items" in obj):
        items = obj.get("items")
        if not isinstance(items, list):
            return obj
        out = dict(obj)
        out["items"] = [
            inject_object(item, settings, f"{where}, items[{i}]", report, namespaces)
            for i, item in enumerate(items)
        ]
        return out
    path = TEMPLATES.get(kind) if isinstance(kind, str) else None
    if path is None:
        return obj
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    namespace = str((meta or {}).get("namespace") or "default")
    name = f"{kind} {namespace}/{(meta or {}).get('name', '?')}"
    template = _at(obj, path)
    if not isinstance(template, Mapping):
        raise InjectionError(f"{where} ({name}): no pod template at {'.'.join(path)}")
    try:
        outcome = inject_pod(template, namespace, settings, (namespaces or {}).get(namespace))
    except InjectionError as exc:
        raise InjectionError(f"{where} ({name}): {exc}") from None
    report.lines.append(_line(name, outcome))
    if not outcome.changed:
        return obj
    if not path:
        return outcome.pod
    out = copy.deepcopy(dict(obj))
    parent = _at(out, path[:-1])
    parent[path[-1]] = outcome.pod
    return out


def _at(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _line(name: str, outcome: Outcome) -> str:
    return f"{name}: {'injected' if outcome.injected else 'not injected: ' + outcome.reason}"
