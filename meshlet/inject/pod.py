"""The pod mutation (pure): a pod (or pod template) in, the injected pod out.

Adds `meshlet-init` (runs `meshlet init`: the pod's capture rules; NET_ADMIN and
nothing else) and `meshlet-proxy` (runs `meshlet sidecar` as the proxy uid) as a
native sidecar (an init container with `restartPolicy: Always`: up before the
app's containers, down after them), or in classic mode as the first container;
either way a postStart `meshlet wait` holds the app until it is ready. The sidecar learns
its pod, namespace, node and zone from the downward API; everything else comes
from the settings and the pod's annotations. `meshlet.io/status` records what was
injected, so injecting an injected pod changes nothing.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshlet import defaults
from meshlet.inject import pod_security
from meshlet.inject.settings import (
    CLASSIC,
    NATIVE,
    InjectorSettings,
    SettingsError,
    cidr,
    ports,
    quantity,
)

INJECT_LABEL = "meshlet.io/inject"  # "enabled" on a namespace; "false" on a pod opts out
STATUS = "meshlet.io/status"
SKIPPED = "meshlet.io/inject-skipped"
MODE = "meshlet.io/sidecar-mode"
EXCLUDE_PORTS = "meshlet.io/exclude-outbound-ports"
EXCLUDE_CIDRS = "meshlet.io/exclude-outbound-cidrs"
PROXY_RESOURCES = {
    "meshlet.io/proxy-cpu": ("requests", "cpu"),
    "meshlet.io/proxy-memory": ("requests", "memory"),
    "meshlet.io/proxy-cpu-limit": ("limits", "cpu"),
    "meshlet.io/proxy-memory-limit": ("limits", "memory"),
}
INIT_NAME, PROXY_NAME = "meshlet-init", "meshlet-proxy"
# Never injected: Kubernetes' own, and the control plane's (it is what sidecars dial).
NEVER_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
ZONE_LABEL = "topology.kubernetes.io/zone"
READY_PATH = "/healthz/ready"
# How long the app is held for a sidecar with no config yet (no control plane, no saved
# state); then the kubelet restarts the sidecar and the hook waits again. Short, because
# the kubelet does not end a pod whose postStart hook is still running, not even when it
# is deleted (kubernetes/kubernetes#116032): this bounds how long a delete can wait.
START_TIMEOUT_S = 60
METRICS_PATH = "/stats/prometheus"
# The sidecar's saved config: an emptyDir lives as long as the pod, so a restarted
# sidecar container serves from it while the control plane is away.
STATE_VOLUME = "meshlet-state"


class InjectionError(ValueError):
    """The pod asks for something that cannot be injected (a bad annotation, say)."""


@dataclass(frozen=True)
class Outcome:
    pod: Mapping[str, Any]  # the input itself when nothing changed
    injected: bool
    reason: str = ""  # why not injected
    warnings: tuple[str, ...] = ()
    changed: bool = False


def _skipped(
    pod: Mapping[str, Any], annotations: Mapping[str, Any], reason: str, warning: str = ""
) -> Outcome:
    """Left uninjected, with a warning and the reason in its SKIPPED annotation."""
    warnings = (warning or reason,)
    if annotations.get(SKIPPED) == reason:
        return Outcome(pod, False, reason, warnings)
    out = copy.deepcopy(dict(pod))
    out.setdefault("metadata", {}).setdefault("annotations", {})[SKIPPED] = reason
    return Outcome(out, False, reason, warnings, changed=True)


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = pod.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def inject_pod(
    pod: Mapping[str, Any],
    namespace: str,
    settings: InjectorSettings,
    namespace_labels: Mapping[str, str] | None = None,
) -> Outcome:
    """Inject one pod (or pod template) of `namespace`; raises InjectionError for a pod
    whose annotations cannot be honoured. `namespace_labels`, when known, can say that
    Pod Security would refuse the injected pod: it is left alone, with a warning."""
    meta, spec = _meta(pod), pod.get("spec")
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    if not isinstance(spec, Mapping):
        raise InjectionError("the pod has no spec")
    if STATUS in annotations:
        return Outcome(pod, False, "already injected")
    if labels.get(INJECT_LABEL) == "false":
        return Outcome(pod, False, f'opted out (label {INJECT_LABEL}: "false")')
    if namespace in NEVER_NAMESPACES or namespace == settings.system_namespace:
        return Outcome(pod, False, f"namespace {namespace} is never injected")
    if spec.get("hostNetwork"):
        return Outcome(pod, False, "hostNetwork pods share the node's network: not injected")
    if (spec.get("os") or {}).get("name") == "windows":
        return Outcome(pod, False, "Windows pods have no nftables: not injected")
    refused = pod_security.refusal(namespace, namespace_labels or {})
    if refused:
        # Annotated too: a warning reaches only whoever created the pod, which for a
        # Deployment's pods is the ReplicaSet controller, not the user.
        return _skipped(pod, annotations, refused, f"not injected: {refused}")
    mode = _mode(annotations, settings)
    names = {
        c.get("name") for c in _containers(spec, "containers") + _containers(spec, "initContainers")
    }
    for name in (INIT_NAME, PROXY_NAME):
        if name in names:
            raise InjectionError(f"the pod already has a container named {name}")
    volumes = spec.get("volumes") or []
    if any(isinstance(v, Mapping) and v.get("name") == STATE_VOLUME for v in volumes):
        raise InjectionError(f"the pod already has a volume named {STATE_VOLUME}")
    runs_as_proxy = _runs_as_proxy(spec, settings.proxy_uid, with_init=mode == NATIVE)
    if runs_as_proxy:
        reason = (
            f"container {runs_as_proxy} runs as uid {settings.proxy_uid}, the proxy's: its"
            " traffic would bypass capture, so the pod is not injected"
        )
        return _skipped(pod, annotations, reason)

    init = _init_container(settings, annotations)
    proxy = _proxy_container(settings, annotations, mode)
    out = copy.deepcopy(dict(pod))
    out_spec = out["spec"]
    if mode == NATIVE:
        out_spec["initContainers"] = [init, proxy, *_containers(spec, "initContainers")]
    else:
        # No sidecar runs during a classic pod's init containers: capture goes in last,
        # so the app's own init containers keep the network they had.
        out_spec["initContainers"] = [*_containers(spec, "initContainers"), init]
        out_spec["containers"] = [proxy, *_containers(spec, "containers")]
    out_spec["volumes"] = [
        *(out_spec.get("volumes") or []),
        {"name": STATE_VOLUME, "emptyDir": {"sizeLimit": defaults.STATE_DIR_SIZE_LIMIT}},
    ]
    out_meta = out.setdefault("metadata", {})
    out_annotations = out_meta.setdefault("annotations", {})
    out_annotations[STATUS] = json.dumps(
        {
            "image": settings.image,
            "mode": mode,
            "initContainers": [INIT_NAME, *([PROXY_NAME] if mode == NATIVE else [])],
            "containers": [PROXY_NAME] if mode == CLASSIC else [],
        },
        separators=(",", ":"),
    )
    # Scrape the sidecar, unless the pod says how it wants to be scraped itself.
    if "prometheus.io/scrape" not in out_annotations:
        out_annotations.update(
            {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(defaults.METRICS_PORT),
                "prometheus.io/path": METRICS_PATH,
            }
        )
    return Outcome(out, True, changed=True)


def _containers(spec: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    found = spec.get(key) or []
    return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []


def _mode(annotations: Mapping[str, Any], settings: InjectorSettings) -> str:
    mode = annotations.get(MODE, settings.mode)
    if mode not in (NATIVE, CLASSIC):
        raise InjectionError(f"annotation {MODE}: {mode!r} is not one of {NATIVE}, {CLASSIC}")
    return str(mode)


def _runs_as_proxy(spec: Mapping[str, Any], uid: int, with_init: bool) -> str:
    """The name of an app container that would run, captured, as the proxy's uid, or ''.
    (A classic pod's init containers run before capture: they do not count.)"""
    pod_context = spec.get("securityContext") or {}
    pod_uid = pod_context.get("runAsUser") if isinstance(pod_context, Mapping) else None
    captured = _containers(spec, "containers")
    if with_init:
        captured = _containers(spec, "initContainers") + captured
    for container in captured:
        context = container.get("securityContext") or {}
        own = context.get("runAsUser") if isinstance(context, Mapping) else None
        if (own if own is not None else pod_uid) == uid:
            return str(container.get("name", "?"))
    return ""


def _annotation_list(annotations: Mapping[str, Any], key: str) -> list[str]:
    value = annotations.get(key, "")
    if not isinstance(value, str):
        raise InjectionError(f"annotation {key}: expected a comma-separated string")
    return [item.strip() for item in value.split(",") if item.strip()]


def _init_container(settings: InjectorSettings, annotations: Mapping[str, Any]) -> dict[str, Any]:
    try:
        exclude_ports = [
            *settings.exclude_ports,
            *ports(annotations.get(EXCLUDE_PORTS, ""), f"annotation {EXCLUDE_PORTS}"),
        ]
        exclude_cidrs = [
            *settings.exclude_cidrs,
            *(
                cidr(c, f"annotation {EXCLUDE_CIDRS}")
                for c in _annotation_list(annotations, EXCLUDE_CIDRS)
            ),
        ]
    except SettingsError as exc:
        raise InjectionError(str(exc)) from None
    args = ["init", f"--proxy-uid={settings.proxy_uid}"]
    args += [f"--service-cidr={c}" for c in settings.service_cidrs]
    args += [f"--dns-server={a}" for a in settings.cluster_dns]
    args += [f"--exclude-port={p}" for p in dict.fromkeys(exclude_ports)]
    args += [f"--exclude-cidr={c}" for c in dict.fromkeys(exclude_cidrs)]
    return {
        "name": INIT_NAME,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["meshlet"],
        # Without --dns-server, DNS capture reads the pod's own /etc/resolv.conf: the
        # nameservers its dnsPolicy gave it.
        "args": args,
        "resources": _copy(settings.init_resources),
        "securityContext": {
            # nft needs root and CAP_NET_ADMIN in the pod's network namespace; nothing else.
            "runAsUser": 0,
            "runAsNonRoot": False,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
        },
    }


def _proxy_container(
    settings: InjectorSettings, annotations: Mapping[str, Any], mode: str
) -> dict[str, Any]:
    resources = _copy(settings.proxy_resources)
    for key, (kind, name) in PROXY_RESOURCES.items():
        if key in annotations:
            try:
                resources.setdefault(kind, {})[name] = quantity(
                    annotations[key], f"annotation {key}"
                )
            except SettingsError as exc:
                raise InjectionError(str(exc)) from None

    def probe(**timing: int) -> dict[str, Any]:
        return {"httpGet": {"path": READY_PATH, "port": defaults.HEALTH_PORT}, **timing}

    container: dict[str, Any] = {
        "name": PROXY_NAME,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["meshlet"],
        "args": ["sidecar"],
        "env": _proxy_env(settings, mode),
        "ports": [
            {"name": "meshlet-health", "containerPort": defaults.HEALTH_PORT, "protocol": "TCP"},
            {"name": "meshlet-metrics", "containerPort": defaults.METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": resources,
        "volumeMounts": [{"name": STATE_VOLUME, "mountPath": defaults.STATE_DIR}],
        "securityContext": {
            "runAsUser": settings.proxy_uid,
            "runAsGroup": settings.proxy_uid,
            "runAsNonRoot": True,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # Up means serving config: the app starts only then. The kubelet starts the next
        # container when the hook returns, on its next pod sync. A startup probe would
        # cost a probe period and a second sync on top (docs/kubernetes.md, "Start").
        "lifecycle": {
            "postStart": {"exec": {"command": ["meshlet", "wait", f"--timeout={START_TIMEOUT_S}"]}}
        },
        "readinessProbe": probe(periodSeconds=5, failureThreshold=3),
    }
    if mode == NATIVE:
        container["restartPolicy"] = "Always"
    return container


def _proxy_env(settings: InjectorSettings, mode: str) -> list[dict[str, Any]]:
    def field(path: str) -> dict[str, Any]:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", **field("metadata.name")},
        {"name": "POD_NAMESPACE", **field("metadata.namespace")},
        {"name": "NODE_NAME", **field("spec.nodeName")},
        # PodTopologyLabels admission copies the node's zone label onto the pod when it is
        # bound, so the kubelet has it by the time the sidecar starts.
        {"name": "MESHLET_ZONE", **field(f"metadata.labels['{ZONE_LABEL}']")},
        {"name": "MESHLET_XDS_ADDRESS", "value": settings.control_plane},
        {"name": "MESHLET_NODE_ID", "value": "$(POD_NAME).$(POD_NAMESPACE)"},
        {"name": "MESHLET_NAMESPACE", "value": "$(POD_NAMESPACE)"},
        {"name": "MESHLET_CLUSTER_DOMAIN", "value": settings.cluster_domain},
        {"name": "MESHLET_HEALTH_ADDRESS", "value": f"0.0.0.0:{defaults.HEALTH_PORT}"},
        {"name": "MESHLET_METRICS_ADDRESS", "value": f"0.0.0.0:{defaults.METRICS_PORT}"},
        {"name": "MESHLET_DRAIN_SECONDS", "value": f"{settings.drain_seconds:g}"},
        {"name": "MESHLET_STATE_DIR", "value": defaults.STATE_DIR},
        {"name": "MESHLET_LOG_LEVEL", "value": settings.log_level},
    ]
    if mode == CLASSIC:
        # The app shuts down beside the sidecar: keep serving it for the drain window;
        # and a Job's main container must be able to end it (a native one needs neither).
        env.append({"name": "MESHLET_DRAIN_ACCEPT", "value": "true"})
        env.append({"name": "MESHLET_QUIT_ENDPOINT", "value": "true"})
    return env


def _copy(resources: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    return {kind: dict(amounts) for kind, amounts in resources.items()}
