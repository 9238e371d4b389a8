"""The Grafana dashboard and the Prometheus alert rules the chart ships cannot drift from
what meshlet exports: every query parses as PromQL (a real PromQL parser), and every
metric it reads is in a real scrape of a running control plane (on the Kubernetes API,
for its source's metrics, and on manifests) and of a sidecar that resolved names and
relayed connections, one of whose endpoints died."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from meshlet.devmesh.stack import APP_UID, CP_ADMIN_PORT, LocalMesh, ServiceSpec, http_get
from tests.helm_chart import CHART, objects, render
from tests.k8s.cluster import Cluster
from tests.local_mesh import local_mesh
from tests.procs import control_plane, wait_until

DASHBOARD = CHART / "files" / "grafana-dashboard.json"
ALERTS = CHART / "files" / "alerts.yaml"
# The dashboard's connection panels read L4 metrics: the port is not an HTTP one. Its
# request panels read those of an HTTP port, API's, on the same backends.
WEB = ServiceSpec("web", "10.96.0.20", 80, ("web-0", "web-1"), port_name="web")
API = ServiceSpec("api", "10.96.0.21", 80, ("web-0", "web-1"))
WEB_CLUSTER = "outbound|80||web.default.svc.cluster.local"


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, also those inside rows (a collapsed row holds its own)."""
    for item in items:
        yield item
        yield from panels(item.get("panels", []))


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in panels(board["panels"]) for t in p.get("targets", [])]
    queries += [
        v["query"]["query"] for v in board["templating"]["list"] if isinstance(v.get("query"), dict)
    ]
    return queries


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def selectors(query: str) -> list[promql_parser.VectorSelector]:
    """The series selectors of a query, from its syntax tree (`label_values(m, l)`: m)."""
    if query.startswith("label_values("):  # Grafana's, not PromQL: its first argument is
        query = query[len("label_values(") :].split(",")[0]
    found: list[promql_parser.VectorSelector] = []

    def walk(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        for child in ("lhs", "rhs", "expr", "param", "vector_selector"):
            if (value := getattr(node, child, None)) is not None:
                walk(value)
        for arg in getattr(node, "args", None) or ():
            walk(arg)

    walk(promql_parser.parse(query))
    return found


def all_selectors() -> list[promql_parser.VectorSelector]:
    queries = dashboard_queries() + [rule["expr"] for rule in alert_rules()]
    return [selector for query in queries for selector in selectors(query)]


# Labels the scraper adds to every series (the target's), not the process.
TARGET_LABELS = {"job", "instance"}


def matches(matcher: Any, have: str) -> bool:
    op, want = matcher.op, matcher.value
    if op == promql_parser.MatchOp.Equal:
        return bool(have == want)
    if op == promql_parser.MatchOp.NotEqual:
        return bool(have != want)
    found = re.fullmatch(want, have) is not None
    return found if op == promql_parser.MatchOp.Re else not found


def selects(selector: promql_parser.VectorSelector, series: tuple[str, dict[str, str]]) -> bool:
    name, labels = series
    return name == selector.name and all(
        matches(m, labels.get(m.name, ""))
        for m in selector.matchers.matchers
        if m.name not in TARGET_LABELS
    )


def scraped_series(text: str) -> list[tuple[str, dict[str, str]]]:
    """Every sample's name and labels, read by Prometheus' own Python parser."""
    return [
        (sample.name, sample.labels)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def test_every_query_parses_and_reads_meshlet_metrics() -> None:
    queries = dashboard_queries()
    assert len(queries) > 20
    used = {selector.name for selector in all_selectors()}
    assert used and all(n.startswith(("meshlet_", "process_")) for n in used), used


def test_every_alert_says_what_and_how_bad() -> None:
    rules = alert_rules()
    assert len({rule["alert"] for rule in rules}) == len(rules) > 5
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["for"].endswith("m"), rule["alert"]


def test_the_chart_ships_them_as_they_are(tmp_path: Path) -> None:
    values = {"monitoring": {"grafanaDashboard": {"enabled": True}}}
    values["monitoring"]["prometheusRule"] = {"enabled": True, "labels": {"release": "prom"}}
    rendered = objects(render(values, tmp_path))
    board = next(o for o in rendered if o["metadata"]["name"].endswith("-dashboard"))
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["meshlet.json"]) == json.loads(DASHBOARD.read_text())
    rule = next(o for o in rendered if o["kind"] == "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())
    # Off by default: a cluster without Grafana's sidecar or the Prometheus Operator
    # installs the chart as before.
    kinds = {o["kind"] for o in objects(render({}, tmp_path))}
    assert "PrometheusRule" not in kinds


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalMesh]:
    with local_mesh(tmp_path, WEB) as local:
        yield local


def scrape(url: str) -> str:
    status, body = http_get(url)
    assert status == 200, url
    return body.decode()


def test_every_metric_they_read_is_exported(
    stack: LocalMesh, kube: Cluster, tmp_path: Path
) -> None:
    # The sidecar: names resolved (a mesh name over UDP and TCP, one forwarded), and
    # connections relayed, then retried and ejected once an endpoint dies.
    assert stack.client is not None
    for name in ("web", "nothing.invalid"):
        stack.client.run(["getent", "hosts", name], uid=APP_UID)
    tcp = stack.client.run(["dig", "+tcp", "+short", "web.default.svc.cluster.local"], uid=APP_UID)
    assert tcp.stdout.split() == [WEB.cluster_ip], tcp.stderr
    log = stack.log("sidecar-client")
    logged = log.read_text()
    report = stack.load(["web=http://web/"], "--count=20")
    assert report["targets"]["web"]["errors"] == 0
    assert log.read_text() == logged  # nothing per connection at info, nor per query
    stack.write_services([WEB, API])
    wait_until(
        lambda eps: len(eps) == 2,
        30,
        "the HTTP service to reach the sidecar",
        observe=lambda: stack.cluster_endpoints("api", 80),
    )
    assert stack.load(["api=http://api/"], "--count=20")["targets"]["api"]["errors"] == 0
    stack.kill_backend("web-1")
    assert stack.load(["web=http://web/"], "--count=40")["targets"]["web"]["errors"] == 0
    endpoints = stack.sidecar_json("/clusters")[WEB_CLUSTER]["endpoints"]
    assert any(e["ejected"] for e in endpoints), endpoints
    # The control plane pushes a change (its push latency), as it would when the
    # EndpointSlice drops the dead pod.
    stack.write_services([dataclasses.replace(WEB, backends=("web-0",)), API])
    wait_until(
        lambda eps: len(eps) == 1,
        30,
        "the change to reach the sidecar",
        observe=lambda: stack.cluster_endpoints("web", 80),
    )
    texts = [scrape(stack.sidecar_url("/metrics"))]
    assert stack.control_plane is not None
    texts.append(scrape(f"http://{stack.control_plane.ip}:{CP_ADMIN_PORT}/metrics"))
    # The control plane on the Kubernetes API: its source's health.
    with control_plane(None, tmp_path, kubeconfig=kube.admin_kubeconfig) as plane:
        texts.append(plane.metrics())
    # Each selector, with its label matchers, selects a series of a real scrape: a
    # renamed metric, label or label value would leave a panel or an alert blind.
    series = [one for text in texts for one in scraped_series(text)]
    blind = sorted({str(s) for s in all_selectors() if not any(selects(s, one) for one in series)})
    assert not blind, f"the dashboard or the alerts select series nothing exports: {blind}"
