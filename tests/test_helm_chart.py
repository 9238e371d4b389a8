"""The chart, rendered by the real `helm`: lint, golden files for a table of values,
the schema refusing wrong values with a clear message, and the rendered objects
agreeing with the code that runs them (its RBAC with what the control plane asks
for, its args with meshlet's own parser, its settings file with the injector's).

MESHLET_UPDATE_GOLDEN=1 rewrites tests/data/helm/*.yaml (then read the diff).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshlet import __version__
from meshlet.cli import build_parser
from meshlet.controlplane.sources.kubernetes import RBAC_RULES
from meshlet.inject import keeper
from meshlet.inject.settings import NATIVE, settings_from
from tests.helm_chart import (
    CHART,
    control_plane_container,
    env_of,
    find,
    helm,
    objects,
    render,
    settings_text,
    values_file,
)

DATA = Path(__file__).resolve().parent / "data" / "helm"

CASES: dict[str, dict[str, Any]] = {
    "default": {},
    "replicas-2": {"controlPlane": {"replicas": 2}},
    "outside-the-cluster": {"webhook": {"url": "https://10.240.0.1:15017/inject"}},
    "webhook-off": {"webhook": {"enabled": False}},
    "watch-namespaces": {"controlPlane": {"watchNamespaces": ["shop", "pay"]}},
    "custom": {
        "controlPlane": {"image": {"repository": "registry.example/cp", "tag": "1.2.3"}},
        "sidecar": {
            "image": {"repository": "registry.example/meshlet", "tag": "1.2.3"},
            "mode": "classic",
            "excludeOutboundPorts": [5432],
            "drainSeconds": 10,
        },
        "serviceCIDRs": ["10.0.0.0/16", "fd00:10:96::/112"],
        "clusterDNS": ["10.0.0.10"],
        "clusterDomain": "corp.example",
        "webhook": {"failurePolicy": "Ignore"},
    },
}


def test_the_chart_lints_strictly() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_chart_renders_as_its_golden_file(case: str, tmp_path: Path) -> None:
    text = render(CASES[case], tmp_path)
    path = DATA / f"{case}.yaml"
    if os.environ.get("MESHLET_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs; MESHLET_UPDATE_GOLDEN=1 rewrites it"


WRONG = [
    ({"controlPlane": {"replicas": 0}}, "at '/controlPlane/replicas': minimum: got 0, want 1"),
    ({"sidecar": {"mode": "sidecar"}}, "at '/sidecar/mode': value must be one of"),
    ({"webhook": {"failurePolicy": "fail"}}, "at '/webhook/failurePolicy'"),
    ({"serviceCIDRs": ["10.96.0.0"]}, "at '/serviceCIDRs/0'"),
    ({"serviceCIDRs": []}, "at '/serviceCIDRs'"),
    ({"clusterDNS": ["dns.local"]}, "at '/clusterDNS/0'"),
    ({"webhook": {"url": "http://10.0.0.1/inject"}}, "at '/webhook/url'"),
    ({"serviceCIDRs": ["10.96.0.0/33"]}, "at '/serviceCIDRs/0'"),
    ({"clusterDNS": ["999.1.1.1"]}, "at '/clusterDNS/0'"),
    ({"clusterDNS": [":"]}, "at '/clusterDNS/0'"),
    ({"webhook": {"url": "https://10.0.0.1/mutate"}}, "at '/webhook/url'"),
    (
        {"controlPlane": {"podLabels": {"app.kubernetes.io/name": "x"}}},
        "invalid propertyName 'app.kubernetes.io/name'",
    ),
    ({"controlPlane": {"replica": 2}}, "'replica'"),
    ({"sidecar": {"resources": {"limits": {"memory": "lots"}}}}, "/sidecar/resources/limits"),
]


@pytest.mark.parametrize(("values", "message"), WRONG, ids=[m for _, m in WRONG])
def test_a_wrong_value_is_refused_at_install_naming_it(
    values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    result = helm(
        "template", "meshlet", str(CHART), "-f", str(values_file(values, tmp_path)), check=False
    )
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


def _rules(found: list[dict[str, Any]], kind: str, name: str) -> list[dict[str, Any]]:
    return [dict(r) for r in find(found, kind, name)["rules"]]


def test_its_rbac_is_exactly_what_the_control_plane_asks_for(tmp_path: Path) -> None:
    found = objects(render({}, tmp_path))
    asked = keeper.rbac_rules("meshlet-system", "meshlet-injector-tls", "meshlet-injector")
    assert _rules(found, "ClusterRole", "meshlet-discovery") == list(RBAC_RULES)
    assert _rules(found, "ClusterRole", "meshlet-webhook") == asked["cluster"]
    assert _rules(found, "Role", "meshlet-webhook") == asked["namespaced"]
    # Never secrets cluster-wide.
    for role in (o for o in found if o["kind"] == "ClusterRole"):
        assert all("secrets" not in r["resources"] for r in role["rules"])


def test_watched_namespaces_get_role_bindings_not_a_cluster_wide_one(tmp_path: Path) -> None:
    found = objects(render(CASES["watch-namespaces"], tmp_path))
    bindings = [o for o in found if o["metadata"]["name"] == "meshlet-discovery"]
    assert sorted((o["kind"], o["metadata"].get("namespace")) for o in bindings) == [
        ("ClusterRole", None),
        ("RoleBinding", "pay"),
        ("RoleBinding", "shop"),
    ]


@pytest.mark.parametrize("case", sorted(c for c in CASES if c != "webhook-off"))
def test_what_it_renders_is_what_meshlet_accepts(case: str, tmp_path: Path) -> None:
    found = objects(render(CASES[case], tmp_path))
    container = control_plane_container(found)
    args = build_parser().parse_args(container["args"])  # exits on a flag it lacks
    assert args.command == "control-plane"
    settings = settings_from(yaml.safe_load(settings_text(found)), "the chart's settings")
    # The sidecar's image goes by the environment (--injector-image), where Tilt rewrites it.
    image = env_of(container)["MESHLET_INJECTOR_IMAGE"]
    sidecar = CASES[case].get("sidecar", {}).get("image", {})
    assert image == f"{sidecar.get('repository', 'ghcr.io/meshlet/meshlet')}:" + sidecar.get(
        "tag", __version__
    )
    assert args.webhook_configuration == "meshlet-injector"
    assert settings.control_plane == "meshlet.meshlet-system.svc:15010"
    assert (
        settings.cluster_domain
        == args.cluster_domain
        == CASES[case].get("clusterDomain", "cluster.local")
    )
    if case == "custom":
        assert settings.mode == "classic"
        assert settings.service_cidrs == ("10.0.0.0/16", "fd00:10:96::/112")
        assert settings.cluster_dns == ("10.0.0.10",)
        assert settings.exclude_ports == (5432,)
        assert settings.drain_seconds == 10
    else:
        assert settings.mode == NATIVE
    if case == "outside-the-cluster":
        assert args.webhook_host == ["10.240.0.1"]
        hook = find(found, "MutatingWebhookConfiguration")["webhooks"][0]
        assert hook["clientConfig"] == {"url": "https://10.240.0.1:15017/inject"}


def test_the_webhook_configuration_leaves_its_ca_bundle_to_the_control_plane(
    tmp_path: Path,
) -> None:
    for case in ("default", "outside-the-cluster"):
        found = objects(render(CASES[case], tmp_path))
        hook = find(found, "MutatingWebhookConfiguration")["webhooks"][0]
        assert "caBundle" not in hook["clientConfig"]
        # Never the control plane's own namespace: its pods would wait on themselves.
        expressions = hook["namespaceSelector"]["matchExpressions"]
        assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                "values": ["meshlet-system", "kube-system"]} in expressions  # fmt: skip


def test_no_hooks_and_no_secret_helm_would_not_remove(tmp_path: Path) -> None:
    for case in CASES:
        for obj in objects(render(CASES[case], tmp_path)):
            assert "helm.sh/hook" not in (obj["metadata"].get("annotations") or {})
            assert obj["kind"] != "Secret"


def test_two_replicas_get_a_budget_and_spread_over_nodes(tmp_path: Path) -> None:
    one = objects(render({}, tmp_path))
    two = objects(render(CASES["replicas-2"], tmp_path))
    assert not [o for o in one if o["kind"] == "PodDisruptionBudget"]
    assert find(two, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    spread = find(two, "Deployment")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread[0]["topologyKey"] == "kubernetes.io/hostname"


def test_the_webhook_off_renders_no_webhook_and_turns_it_off(tmp_path: Path) -> None:
    found = objects(render(CASES["webhook-off"], tmp_path))
    kinds = {o["kind"] for o in found}
    assert not kinds & {"MutatingWebhookConfiguration", "Role", "RoleBinding", "ConfigMap"}
    assert "--webhook-address=off" in control_plane_container(found)["args"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_control_plane_is_probed_only_once_its_admin_port_listens(
    case: str, tmp_path: Path
) -> None:
    container = control_plane_container(objects(render(CASES[case], tmp_path)))
    startup = container["startupProbe"]
    # Listening is enough (/healthz); the first sync is readiness's to wait for (/readyz).
    assert startup["httpGet"] == {"path": "/healthz", "port": "http-admin"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-admin"}
    # Checked every second, for a minute at least before the kubelet restarts it.
    assert startup["periodSeconds"] == 1
    budget = (
        startup.get("initialDelaySeconds", 0)
        + startup["periodSeconds"] * startup["failureThreshold"]
    )
    assert budget >= 60
    # The probed port is the one the control plane's admin server is told to listen on.
    (admin,) = [p for p in container["ports"] if p["name"] == "http-admin"]
    args = build_parser().parse_args(container["args"])
    assert args.admin_address[1] == admin["containerPort"] == 15014
