"""Injection as tables of golden files: manifests in, injected manifests out.

Each `tests/data/inject/<case>.yaml` has a `<case>.golden.yaml` beside it, made
with `settings.yaml` there. The same golden files judge `meshlet inject` (the
command, as a process) and the webhook's AdmissionReview answers (the JSONPatch
applied by the `jsonpatch` library, not by meshlet), so both paths inject alike.
MESHLET_UPDATE_GOLDEN=1 rewrites them (then read the diff).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from meshlet.inject import pod_security
from meshlet.inject.command import inject_text
from meshlet.inject.namespaces import CACHE_SECONDS, NamespaceLabels
from meshlet.inject.pod import STATUS, InjectionError, inject_pod
from meshlet.inject.review import review
from meshlet.inject.settings import InjectorSettings, SettingsError, load_settings, settings_from
from meshlet.inject.webhook import InjectionWebhook, SettingsFile
from meshlet.inject.workloads import TEMPLATES, namespace_labels

DATA = Path(__file__).parent / "data" / "inject"
SETTINGS_FILE = DATA / "settings.yaml"
CASES = sorted(p.stem for p in DATA.glob("*.yaml") if not p.stem.endswith((".golden", "settings")))
ROOT = Path(__file__).resolve().parent.parent


def settings() -> InjectorSettings:
    return load_settings(SETTINGS_FILE)


def golden(case: str) -> str:
    return (DATA / f"{case}.golden.yaml").read_text()


@pytest.mark.parametrize("case", CASES)
def test_meshlet_inject_matches_the_golden_file(case: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshlet",
            "inject",
            "--settings",
            str(SETTINGS_FILE),
            "-f",
            str(DATA / f"{case}.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    if os.environ.get("MESHLET_UPDATE_GOLDEN"):
        (DATA / f"{case}.golden.yaml").write_text(result.stdout)
    assert result.stdout == golden(case)


def pod_templates(doc: Any) -> list[tuple[str, dict[str, Any]]]:
    """(namespace, pod) of every pod or pod template in a document."""
    if not isinstance(doc, dict):
        return []
    if doc.get("kind") == "List":
        return [t for item in doc["items"] for t in pod_templates(item)]
    path = TEMPLATES.get(doc.get("kind", ""))
    if path is None:
        return []
    template: Any = doc
    for key in path:
        template = template[key]
    return [(doc["metadata"].get("namespace", "default"), template)]


def admission_review(namespace: str, pod: dict[str, Any], uid: str = "u-1") -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace,
                "operation": "CREATE",
                "object": pod,
            },
        }
    ).encode()


def through_the_webhook(
    namespace: str, pod: dict[str, Any], labels: dict[str, Mapping[str, str]]
) -> dict[str, Any]:
    # The webhook reads the namespace's labels from the API: here, from the case's file.
    answer = review(admission_review(namespace, pod), settings(), labels.get(namespace))
    response = answer["response"]
    assert response["uid"] == "u-1" and response["allowed"], response
    if "patch" not in response:
        return pod
    assert response["patchType"] == "JSONPatch"
    patch = jsonpatch.JsonPatch(json.loads(base64.b64decode(response["patch"])))
    patched: dict[str, Any] = patch.apply(copy.deepcopy(pod))
    return patched


@pytest.mark.parametrize("case", CASES)
def test_the_webhook_matches_the_golden_file(case: str) -> None:
    inputs = list(yaml.safe_load_all((DATA / f"{case}.yaml").read_text()))
    outputs = list(yaml.safe_load_all(golden(case)))
    pairs = [
        (before, after)
        for doc_in, doc_out in zip(inputs, outputs, strict=True)
        for before, after in zip(pod_templates(doc_in), pod_templates(doc_out), strict=True)
    ]
    assert pairs, f"{case} has no pods"
    labels = namespace_labels(inputs)
    for (namespace, before), (_, after) in pairs:
        assert through_the_webhook(namespace, before, labels) == after


@pytest.mark.parametrize("case", CASES)
def test_injecting_twice_changes_nothing(case: str) -> None:
    once = golden(case)
    twice, _ = inject_text(once, f"{case}.golden.yaml", settings())
    assert twice == once
    docs = list(yaml.safe_load_all(once))
    labels = namespace_labels(docs)
    for namespace, pod in (t for doc in docs for t in pod_templates(doc)):
        answer = review(admission_review(namespace, pod), settings(), labels.get(namespace))
        answer = answer["response"]
        assert answer["allowed"] and "patch" not in answer


def test_what_each_golden_shows() -> None:
    """The golden files are read by eye; this pins the points they exist for."""
    pod = yaml.safe_load(golden("pod"))
    init = [c["name"] for c in pod["spec"]["initContainers"]]
    assert init == ["meshlet-init", "meshlet-proxy"]
    proxy = pod["spec"]["initContainers"][1]
    assert proxy["restartPolicy"] == "Always"
    # Held by the hook, not a startup probe (a probe period and a second kubelet sync more).
    assert proxy["lifecycle"]["postStart"]["exec"]["command"][:2] == ["meshlet", "wait"]
    assert "startupProbe" not in proxy
    assert proxy["securityContext"]["runAsUser"] == 1337
    assert pod["spec"]["initContainers"][0]["securityContext"]["capabilities"] == {
        "add": ["NET_ADMIN"],
        "drop": ["ALL"],
    }
    assert [c["name"] for c in pod["spec"]["containers"]] == ["web"]
    classic = yaml.safe_load(golden("pod-classic"))
    assert [c["name"] for c in classic["spec"]["initContainers"]] == ["migrate", "meshlet-init"]
    assert [c["name"] for c in classic["spec"]["containers"]] == ["meshlet-proxy", "app"]
    first = classic["spec"]["containers"][0]
    assert first["lifecycle"]["postStart"]["exec"]["command"][:2] == ["meshlet", "wait"]
    assert {"name": "MESHLET_DRAIN_ACCEPT", "value": "true"} in first["env"]
    assert {"name": "MESHLET_QUIT_ENDPOINT", "value": "true"} in first["env"]
    assert not any(e["name"] == "MESHLET_QUIT_ENDPOINT" for e in proxy["env"])
    tuned = yaml.safe_load(golden("controls"))
    init_args = tuned["spec"]["initContainers"][0]["args"]
    assert "--exclude-port=5432" in init_args and "--exclude-cidr=fd00:1::/64" in init_args
    assert tuned["spec"]["initContainers"][1]["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "300Mi", "cpu": "1"},
    }
    assert tuned["metadata"]["annotations"]["prometheus.io/port"] == "9102"  # the pod's own
    left = list(yaml.safe_load_all(golden("left-alone")))
    assert left == list(yaml.safe_load_all((DATA / "left-alone.yaml").read_text()))
    sneaky = yaml.safe_load(golden("runs-as-proxy"))
    assert "initContainers" not in sneaky["spec"]
    assert "uid 1337" in sneaky["metadata"]["annotations"]["meshlet.io/inject-skipped"]


def test_a_skipped_pod_is_allowed_with_a_warning() -> None:
    ((namespace, pod),) = pod_templates(yaml.safe_load((DATA / "runs-as-proxy.yaml").read_text()))
    response = review(admission_review(namespace, pod), settings())["response"]
    assert response["allowed"]
    assert response["warnings"] == [
        "meshlet: container app runs as uid 1337, the proxy's: its traffic would bypass"
        " capture, so the pod is not injected"
    ]


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({"meshlet.io/sidecar-mode": "sidecarless"}, "'sidecarless' is not one of native, classic"),
        ({"meshlet.io/exclude-outbound-ports": "80,http"}, "'http' is not a port number"),
        ({"meshlet.io/exclude-outbound-cidrs": "10.0.0.1/8"}, "is not a CIDR"),
        ({"meshlet.io/proxy-memory": "lots"}, "'lots' is not a quantity"),
    ],
)
def test_a_bad_annotation_refuses_the_pod_with_the_reason(
    annotations: dict[str, str], message: str
) -> None:
    pod = {"metadata": {"name": "p", "annotations": annotations}, "spec": {"containers": []}}
    with pytest.raises(InjectionError, match=message):
        inject_pod(pod, "shop", settings())
    response = review(admission_review("shop", pod), settings())["response"]
    assert not response["allowed"]
    assert response["status"]["code"] == 400
    assert message in response["status"]["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe not json", "not JSON"),
        (b"[]", "not an AdmissionReview"),
        (
            b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1"}',
            "only admission.k8s.io/v1",
        ),
        (
            b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {}}',
            "without request.uid",
        ),
    ],
)
def test_a_request_that_does_not_decode_gets_an_admission_review_error(
    body: bytes, message: str
) -> None:
    answer = review(body, settings())
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"]["allowed"] is False
    assert message in answer["response"]["status"]["message"]


def test_not_a_pod_create_is_allowed_untouched() -> None:
    request = json.loads(admission_review("shop", {"metadata": {}, "spec": {}}))
    request["request"]["operation"] = "UPDATE"
    response = review(json.dumps(request).encode(), settings())["response"]
    assert response == {"uid": "u-1", "allowed": True}


def test_meshlet_inject_reports_a_bad_document_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        (DATA / "pod.yaml").read_text()
        + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: x, annotations: "
        "{meshlet.io/sidecar-mode: nope}}\nspec: {containers: []}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "meshlet", "inject", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert (
        f"{path}: document 2 (Pod default/x): annotation meshlet.io/sidecar-mode" in result.stderr
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"imge": "x"}, "unknown key 'imge'"),
        ({"mode": "sidecarless"}, "settings.mode: 'sidecarless' is not one of"),
        ({"serviceCIDRs": []}, "serviceCIDRs is empty"),
        ({"proxy": {"uid": 0}}, "settings.proxy.uid: expected a non-root uid"),
        ({"controlPlane": "not a host:port"}, "settings.controlPlane"),
    ],
)
def test_bad_settings_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        settings_from(data)


def test_status_records_what_was_injected() -> None:
    pod = yaml.safe_load(golden("pod"))
    assert json.loads(pod["metadata"]["annotations"][STATUS]) == {
        "image": "registry.example/meshlet:test",
        "mode": "native",
        "initContainers": ["meshlet-init", "meshlet-proxy"],
        "containers": [],
    }


def test_the_sidecar_gets_an_empty_dir_for_its_config_beside_the_pods_own_volumes() -> None:
    own = {"name": "data", "emptyDir": {}}
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [], "volumes": [own]}}
    out = inject_pod(pod, "shop", settings()).pod
    assert out["spec"]["volumes"] == [
        own,
        {"name": "meshlet-state", "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    proxy = next(c for c in out["spec"]["initContainers"] if c["name"] == "meshlet-proxy")
    assert proxy["volumeMounts"] == [{"name": "meshlet-state", "mountPath": "/var/lib/meshlet"}]
    assert {"name": "MESHLET_STATE_DIR", "value": "/var/lib/meshlet"} in proxy["env"]
    taken = {
        "metadata": {"name": "p"},
        "spec": {"containers": [], "volumes": [{"name": "meshlet-state", "emptyDir": {}}]},
    }
    with pytest.raises(InjectionError, match="already has a volume named meshlet-state"):
        inject_pod(taken, "shop", settings())


# --- Pod Security ------------------------------------------------------------------------

ENFORCE = "pod-security.kubernetes.io/enforce"
REFUSED_BASELINE = (
    'meshlet: not injected: namespace pay enforces Pod Security "baseline", which refuses'
    " meshlet-init (root, NET_ADMIN); label it pod-security.kubernetes.io/enforce=privileged,"
    ' or opt the pod out with meshlet.io/inject: "false"'
)


@pytest.mark.parametrize(
    ("labels", "level"),
    [
        ({}, None),
        ({"pod-security.kubernetes.io/warn": "restricted"}, None),  # warns, refuses nothing
        ({ENFORCE: "privileged"}, "privileged"),
        ({ENFORCE: "baseline"}, "baseline"),
        ({ENFORCE: "restricted"}, "restricted"),
        ({ENFORCE: "Baseline"}, "restricted"),  # not a level: Pod Security takes restricted
    ],
)
def test_the_enforced_level_is_read_as_pod_security_reads_it(
    labels: dict[str, str], level: str | None
) -> None:
    assert pod_security.enforced_level(labels) == level
    assert bool(pod_security.refusal("pay", labels)) == (level in ("baseline", "restricted"))


def test_a_value_that_is_not_a_level_is_named_in_the_reason() -> None:
    reason = pod_security.refusal("pay", {ENFORCE: "strict"})
    assert reason.startswith(
        "namespace pay enforces Pod Security \"restricted\" (its label says 'strict')"
    )


def test_a_pod_of_a_baseline_namespace_is_allowed_unchanged_with_the_reason() -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "app"}]}}
    response = review(admission_review("pay", pod), settings(), {ENFORCE: "baseline"})["response"]
    assert response["allowed"] and response["warnings"] == [REFUSED_BASELINE]
    # Only the reason, in an annotation: a Deployment's user never sees the warning
    # (the ReplicaSet controller gets it), but sees the pod's annotation.
    patch = json.loads(base64.b64decode(response["patch"]))
    reason = REFUSED_BASELINE.removeprefix("meshlet: not injected: ")
    assert patch == [{"op": "add", "path": "/metadata/annotations",
                      "value": {"meshlet.io/inject-skipped": reason}}]  # fmt: skip
    # A bad annotation does not matter there: nothing would be injected.
    pod["metadata"]["annotations"] = {"meshlet.io/sidecar-mode": "nope"}
    response = review(admission_review("pay", pod), settings(), {ENFORCE: "restricted"})
    assert response["response"]["allowed"] and response["response"]["warnings"]
    # Privileged, or no label: injected as before.
    for labels in ({ENFORCE: "privileged"}, {}):
        del pod["metadata"]["annotations"]
        assert "patch" in review(admission_review("pay", pod), settings(), labels)["response"]
        pod["metadata"]["annotations"] = {}


def test_meshlet_inject_says_why_on_stderr_when_its_input_has_the_namespace() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meshlet", "inject", "-f", str(DATA / "pod-security.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert (
        'Deployment payments/api: not injected: namespace payments enforces Pod Security "baseline"'
        in lines[0]
    )
    assert (
        'Pod vault/keeper: not injected: namespace vault enforces Pod Security "restricted"'
        in lines[1]
    )
    assert lines[2] == "Pod tools/debug: injected"


async def test_namespace_labels_are_read_once_per_cache_window() -> None:
    reads: list[str] = []
    now = [100.0]

    def read(name: str) -> dict[str, str]:
        reads.append(name)
        if name == "gone-wrong":
            raise OSError(111, "Connection refused")
        return {ENFORCE: "baseline"}

    found = NamespaceLabels(read, "https://api:6443", clock=lambda: now[0])
    # A scale-up: many pods of one namespace at once share one read.
    answers = await asyncio.gather(*(found.get("pay") for _ in range(20)))
    assert reads == ["pay"] and all(a.labels == {ENFORCE: "baseline"} for a in answers)
    now[0] += CACHE_SECONDS - 0.1
    await found.get("pay")
    assert reads == ["pay"]
    now[0] += 0.2
    await found.get("pay")
    assert reads == ["pay", "pay"]
    failed = await found.get("gone-wrong")
    assert failed.labels is None
    assert failed.problem == "cannot reach https://api:6443: Connection refused"
    # A namespace read before and unreadable now keeps the labels last read: an API
    # server that went away must not get a baseline namespace's pods injected.
    broken = [False]

    def flaky(name: str) -> dict[str, str]:
        if broken[0]:
            raise OSError(111, "Connection refused")
        return {ENFORCE: "baseline"}

    kept = NamespaceLabels(flaky, "https://api:6443", clock=lambda: now[0])
    assert (await kept.get("pay")).labels == {ENFORCE: "baseline"}
    broken[0], now[0] = True, now[0] + CACHE_SECONDS + 1
    again = await kept.get("pay")
    assert again.labels == {ENFORCE: "baseline"} and "Connection refused" in again.problem


async def test_the_webhook_warns_when_it_cannot_read_the_namespace() -> None:
    def read(name: str) -> dict[str, str]:
        raise OSError(111, "Connection refused")

    webhook = InjectionWebhook(SettingsFile(None, lambda _: None), NamespaceLabels(read, "api"))
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "app"}]}}
    response = (await webhook.answer(admission_review("pay", pod)))["response"]
    assert response["allowed"] and "patch" in response  # injected, as before the check
    assert response["warnings"] == [
        "meshlet: could not read namespace pay (cannot reach api: Connection refused): its Pod"
        " Security level was not checked"
    ]
