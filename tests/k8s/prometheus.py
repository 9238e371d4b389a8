"""A real Prometheus (tests/k8s/build.py) that finds the real node's pods by Kubernetes
discovery and scrapes the ones whose `prometheus.io/*` annotations ask for it, as the
annotation-driven scrape config of Prometheus' own Helm chart does."""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.procs import free_port, get_json, http_get, running, wait_until

JOB = "kubernetes-pods"


def config(kubeconfig: Path, rules: Path | None, interval: str = "1s") -> dict[str, Any]:
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(rules)] if rules else [],
        "scrape_configs": [
            {
                "job_name": JOB,
                "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig)}],
                "relabel_configs": [
                    {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
                     "action": "keep", "regex": "true"},
                    {"source_labels": ["__meta_kubernetes_pod_phase"],
                     "action": "drop", "regex": "Pending|Succeeded|Failed"},
                    {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
                     "target_label": "__metrics_path__", "regex": "(.+)"},
                    {"source_labels": ["__address__",
                                       "__meta_kubernetes_pod_annotation_prometheus_io_port"],
                     "regex": r"([^:]+)(?::\d+)?;(\d+)", "replacement": "$1:$2",
                     "target_label": "__address__"},
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                ],
            }
        ],
    }  # fmt: skip


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        found = get_json(f"{self.url}/api/v1/{path}{query}")
        assert found["status"] == "success", found
        return found["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=promql)["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return active

    def alerts(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return found


@contextlib.contextmanager
def running_prometheus(
    binary: Path, kubeconfig: Path, folder: Path, rules: Mapping[str, Any] | None = None
) -> Iterator[Prometheus]:
    """Prometheus on a loopback port for the block, ready, with `rules` loaded."""
    folder.mkdir(parents=True, exist_ok=True)
    rules_file = None
    if rules is not None:
        rules_file = folder / "rules.yaml"
        rules_file.write_text(yaml.safe_dump(dict(rules)))
    (folder / "prometheus.yml").write_text(json.dumps(config(kubeconfig, rules_file)))
    port = free_port()
    argv = [
        str(binary),
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with running(argv, "prometheus", folder / "prometheus.log") as process:
        prometheus = Prometheus(f"http://127.0.0.1:{port}")

        def ready() -> int:
            process.check_alive()
            return http_get(f"{prometheus.url}/-/ready", timeout=2)[0]

        wait_until(lambda status: status == 200, 60, "Prometheus ready", observe=ready)
        yield prometheus
