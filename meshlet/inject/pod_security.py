"""Pod Security (pure): whether a namespace's enforced level refuses `meshlet-init`.

`meshlet-init` runs as root with NET_ADMIN to program the pod's capture rules; the
`baseline` level refuses NET_ADMIN and `restricted` refuses both, so the Pod Security
admission would refuse an injected pod there (or its ReplicaSet would retry forever,
each pod refused). Such a pod is better left alone with a warning that says why. A
CNI plugin in place of the init container (as Istio's and Linkerd's) is the way to
mesh those namespaces; meshlet does not have one yet.

Only the namespace label is seen: a cluster-wide default level or an exemption in the
API server's PodSecurity configuration is not (Kubernetes' default is `privileged`).
"""

from __future__ import annotations

from collections.abc import Mapping

ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
PRIVILEGED, BASELINE, RESTRICTED = "privileged", "baseline", "restricted"


def enforced_level(labels: Mapping[str, str]) -> str | None:
    """The level the namespace's label enforces, or None without the label. Pod Security
    takes a value that is not a level as `restricted`, and so does this."""
    value = labels.get(ENFORCE_LABEL)
    if value is None:
        return None
    return value if value in (PRIVILEGED, BASELINE, RESTRICTED) else RESTRICTED


def refusal(namespace: str, labels: Mapping[str, str]) -> str:
    """Why a pod of `namespace` must not be injected, or "" when it may be."""
    level = enforced_level(labels)
    if level not in (BASELINE, RESTRICTED):
        return ""
    given = labels[ENFORCE_LABEL]
    shown = f'"{level}"' if given == level else f'"{level}" (its label says {given!r})'
    return (
        f"namespace {namespace} enforces Pod Security {shown}, which refuses meshlet-init"
        f" (root, NET_ADMIN); label it {ENFORCE_LABEL}={PRIVILEGED}, or opt the pod out"
        ' with meshlet.io/inject: "false"'
    )
