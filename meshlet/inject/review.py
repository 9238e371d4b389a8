"""AdmissionReview v1 in, AdmissionReview v1 out (pure): the webhook's whole decision.

A pod CREATE is injected and answered with a JSONPatch. What is not a pod, not a
CREATE, or not to be injected is allowed unchanged (with a warning when the pod was
meant to be: its namespace's Pod Security level would refuse it, say). The webhook
decodes first, reads the namespace's labels, then decides. A pod whose annotations cannot
be honoured is refused with the reason (kubectl and the ReplicaSet's events show
it). A request that does not decode is answered with an AdmissionReview error
(allowed false, code 400), never an exception.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshlet.inject.patch import json_patch
from meshlet.inject.pod import InjectionError, inject_pod
from meshlet.inject.settings import InjectorSettings

API_VERSION = "admission.k8s.io/v1"


def _answer(uid: str, allowed: bool, **fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": allowed, **fields},
    }


def _error(uid: str, message: str, code: int = 400) -> dict[str, Any]:
    return _answer(uid, False, status={"code": code, "message": message})


@dataclass(frozen=True)
class PodCreate:
    """A decoded request to create a pod: what the decision needs."""

    uid: str
    namespace: str
    pod: Mapping[str, Any]


def decode(body: bytes) -> PodCreate | dict[str, Any]:
    """The pod CREATE a request asks about, or the whole answer when there is nothing to
    decide (not a pod CREATE: allowed unchanged; a request that does not decode: an error)."""
    try:
        request_review = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return _error("", f"not an AdmissionReview: the body is not JSON ({exc})")
    if not isinstance(request_review, Mapping) or request_review.get("kind") != "AdmissionReview":
        return _error("", "not an AdmissionReview")
    if request_review.get("apiVersion") != API_VERSION:
        return _error("", f"only {API_VERSION} AdmissionReviews are served")
    request = request_review.get("request")
    if not isinstance(request, Mapping) or not isinstance(request.get("uid"), str):
        return _error("", "an AdmissionReview without request.uid")
    uid = request["uid"]
    kind = request.get("kind")
    kind = kind if isinstance(kind, Mapping) else {}
    pod = request.get("object")
    is_pod = (kind.get("group"), kind.get("kind")) == ("", "Pod")
    if not is_pod or request.get("operation") != "CREATE":
        return _answer(uid, True)
    if not isinstance(pod, Mapping):
        return _error(uid, "request.object is not a pod")
    meta = pod.get("metadata")
    namespace = request.get("namespace") or (
        meta.get("namespace") if isinstance(meta, Mapping) else ""
    )
    if not isinstance(namespace, str) or not namespace:
        return _error(uid, "the request names no namespace")
    return PodCreate(uid, namespace, pod)


def decide(
    request: PodCreate,
    settings: InjectorSettings,
    namespace_labels: Mapping[str, str] | None = None,
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """The answer to a pod CREATE, given its namespace's labels when they are known;
    `warnings` (the webhook's own, e.g. why the labels are not known) go with it."""
    try:
        outcome = inject_pod(request.pod, request.namespace, settings, namespace_labels)
    except InjectionError as exc:
        return _error(request.uid, f"meshlet: cannot inject this pod: {exc}")
    extra: dict[str, Any] = {}
    found = [*warnings, *outcome.warnings]
    if found:
        extra["warnings"] = [f"meshlet: {w}" for w in found]
    if not outcome.changed:
        return _answer(request.uid, True, **extra)
    patch = json.dumps(json_patch(request.pod, outcome.pod), separators=(",", ":")).encode()
    return _answer(
        request.uid,
        True,
        patchType="JSONPatch",
        patch=base64.b64encode(patch).decode(),
        **extra,
    )


def review(
    body: bytes, settings: InjectorSettings, namespace_labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """decode, then decide."""
    request = decode(body)
    return request if isinstance(request, dict) else decide(request, settings, namespace_labels)
