"""RBAC, asked of the API server with access reviews.

`--pre`: whether the caller may create what the chart installs (`chart_objects`) and
grant what it grants the control plane (SelfSubjectAccessReview). `--cluster`: whether
the control plane's ServiceAccount may do what it needs (SubjectAccessReview).
Needs the `control-plane` extra (kubernetes).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

from meshlet.checks import Result, failed, passed
from meshlet.checks.kube_api import TIMEOUT
from meshlet.controlplane.sources.kubernetes import RBAC_RULES, describe_failure
from meshlet.inject import keeper

CREATE_NAME = "you may create what the chart installs"
GRANT_NAME = "you may grant what the chart grants the control plane"
RBAC_NAME = "the control plane's ServiceAccount may do what it needs"
_MAX_LISTED = 6


@dataclass(frozen=True)
class Access:
    verb: str
    group: str
    resource: str
    namespace: str = ""  # "" cluster-wide
    name: str = ""  # a resourceName, "" for any

    def text(self) -> str:
        what = self.resource if not self.group else f"{self.resource}.{self.group}"
        if self.name:
            what += f"/{self.name}"
        return f"{self.verb} {what}" + (f" in {self.namespace}" if self.namespace else "")

    def attributes(self) -> dict[str, str]:
        found = {"verb": self.verb, "group": self.group, "resource": self.resource}
        if self.namespace:
            found["namespace"] = self.namespace
        if self.name:
            found["name"] = self.name
        return found


@dataclass(frozen=True)
class Answer:
    access: Access
    allowed: bool
    reason: str = ""  # the authorizer's, or why it could not be asked


def chart_objects(namespace: str) -> tuple[Access, ...]:
    """`create` of every kind the chart installs (helm/meshlet/templates), and the namespace."""
    cluster = (
        ("", "namespaces"),
        ("rbac.authorization.k8s.io", "clusterroles"),
        ("rbac.authorization.k8s.io", "clusterrolebindings"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
    )
    namespaced = (
        ("", "serviceaccounts"),
        ("", "configmaps"),
        ("", "services"),
        ("apps", "deployments"),
        ("policy", "poddisruptionbudgets"),
        ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "rolebindings"),
    )
    return (
        *(Access("create", g, r) for g, r in cluster),
        *(Access("create", g, r, namespace) for g, r in namespaced),
    )


def _expand(rules: Iterable[Mapping[str, Any]], namespace: str) -> list[Access]:
    found = []
    for rule in rules:
        for group in rule.get("apiGroups") or [""]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or [""]:
                        found.append(Access(verb, group, resource, namespace, name))
    return found


def control_plane_access(namespace: str, configuration: str) -> tuple[Access, ...]:
    """What the chart's ClusterRoles and Role give the control plane: the source's rules
    cluster-wide, the webhook configuration's, and its Secret's and Lease's in `namespace`."""
    webhook = keeper.rbac_rules(namespace, f"{configuration}-tls", configuration)
    return (
        *_expand(RBAC_RULES, ""),
        *_expand(webhook["cluster"], ""),
        *_expand(webhook["namespaced"], namespace),
    )


def escalation(namespace: str) -> tuple[Access, ...]:
    """What lets one grant more than one holds: `escalate` on roles and `bind`."""
    group = "rbac.authorization.k8s.io"
    return (
        Access("escalate", group, "clusterroles"),
        Access("escalate", group, "roles", namespace),
        Access("bind", group, "clusterroles"),
        Access("bind", group, "roles", namespace),
    )


def service_account_user(namespace: str, account: str) -> tuple[str, list[str]]:
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
    return f"system:serviceaccount:{namespace}:{account}", [*groups, "system:authenticated"]


def ask(
    api: k8s.ApiClient, accesses: Sequence[Access], subject: tuple[str, list[str]] | None = None
) -> list[Answer]:
    """One SelfSubjectAccessReview (subject None) or SubjectAccessReview per access."""
    authz: Any = k8s.AuthorizationV1Api(api)
    answers = []
    for access in accesses:
        spec: dict[str, Any] = {"resourceAttributes": access.attributes()}
        try:
            if subject is None:
                body = {"kind": "SelfSubjectAccessReview", "spec": spec}
                response = authz.create_self_subject_access_review(
                    {"apiVersion": "authorization.k8s.io/v1", **body},
                    _preload_content=False,
                    _request_timeout=TIMEOUT,
                )
            else:
                spec |= {"user": subject[0], "groups": subject[1]}
                body = {"kind": "SubjectAccessReview", "spec": spec}
                response = authz.create_subject_access_review(
                    {"apiVersion": "authorization.k8s.io/v1", **body},
                    _preload_content=False,
                    _request_timeout=TIMEOUT,
                )
            status = json.loads(response.data).get("status") or {}
        except Exception as exc:
            answers.append(Answer(access, False, f"could not ask: {describe_failure(exc, '')}"))
            continue
        reason = str(status.get("reason") or status.get("evaluationError") or "")
        answers.append(Answer(access, bool(status.get("allowed")), reason))
    return answers


def _denied(answers: Sequence[Answer]) -> str:
    bad = [a for a in answers if not a.allowed]
    shown = [
        a.access.text() + (f" ({a.reason})" if a.reason.startswith("could not") else "")
        for a in bad[:_MAX_LISTED]
    ]
    more = f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
    return "not allowed: " + ", ".join(shown) + more


def check_can_create(answers: Sequence[Answer]) -> Result:
    if all(a.allowed for a in answers):
        return passed(CREATE_NAME, f"{len(answers)} kinds")
    return failed(
        CREATE_NAME,
        _denied(answers),
        "install as a cluster admin (an account bound to the cluster-admin ClusterRole)",
    )


def check_can_grant(held: Sequence[Answer], escalate: Sequence[Answer]) -> Result:
    """RBAC lets one grant only what one holds, unless allowed to escalate and bind."""
    if all(a.allowed for a in held):
        return passed(GRANT_NAME, f"you hold all {len(held)} of its permissions")
    if escalate and all(a.allowed for a in escalate):
        return passed(GRANT_NAME, "you may escalate and bind roles")
    return failed(
        GRANT_NAME,
        _denied(held),
        "RBAC lets you grant only what you hold: install as a cluster admin",
    )


def check_control_plane_rbac(answers: Sequence[Answer], namespace: str, account: str) -> Result:
    name = f"{RBAC_NAME} ({namespace}/{account})"
    if all(a.allowed for a in answers):
        return passed(name, f"{len(answers)} permissions")
    return failed(
        name,
        _denied(answers),
        "its ClusterRoles, Role and bindings come with the chart: helm upgrade (or reinstall) "
        "it, and check --system-namespace and --service-account name its release",
    )
