"""The registry, fed by hand and by the manifest source, through the same table of events.

The Kubernetes source runs the same table against a real API server in
test_k8s_source.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from meshlet.controlplane import problems
from meshlet.controlplane.registry import Registry
from meshlet.controlplane.sources.base import Kind, ObjectEvent, ObjectKey
from meshlet.controlplane.sources.manifests import ManifestSource
from tests import source_table
from tests.source_table import Step

NS = "table"
IPS = ("10.96.100.10", "10.96.100.11", "10.96.100.12")
STEPS = source_table.table(NS, IPS)


def key_of(obj: dict[str, Any], scope: str = "") -> ObjectKey:
    meta = obj["metadata"]
    return ObjectKey(Kind(obj["kind"]), meta["namespace"], meta["name"], scope)


def check(step: Step, registry: Registry) -> None:
    result = registry.result()
    assert source_table.observed(result.mesh, NS) == step.mesh, step.what
    assert source_table.matches(step.problems, result.errors), (step.what, result.errors)


def test_the_table_fed_straight_to_the_registry() -> None:
    registry = Registry()
    registry.synced()
    for step in STEPS:
        events = [ObjectEvent(key_of(o), o) for o in step.put]
        events += [ObjectEvent(key_of(o), None) for o in step.delete]
        registry.apply(events)
        check(step, registry)


def test_the_table_through_the_manifest_source(tmp_path: Path) -> None:
    registry = Registry()
    source = ManifestSource(tmp_path, registry)

    def path(obj: dict[str, Any]) -> Path:
        return tmp_path / f"{obj['kind']}-{obj['metadata']['name']}.yaml"

    source.load()
    assert registry.is_synced
    for step in STEPS:
        for obj in step.put:
            path(obj).write_text(yaml.safe_dump(obj))
        for obj in step.delete:
            path(obj).unlink()
        source.load()
        check(step, registry)


def test_nothing_is_served_before_every_source_synced() -> None:
    registry = Registry(sources=2)
    registry.synced()
    assert not registry.is_synced
    registry.synced()
    assert registry.is_synced


def test_only_real_changes_count() -> None:
    changes: list[int] = []
    registry = Registry()
    registry.on_change = lambda: changes.append(registry.generation)
    obj = source_table.service(NS, "web", IPS[0])
    registry.apply([ObjectEvent(key_of(obj), obj)])
    assert len(changes) == 1
    # The same content again (a relist, a re-read file): nothing new.
    registry.apply([ObjectEvent(key_of(obj), dict(obj))])
    registry.apply(
        [ObjectEvent(key_of({**obj, "metadata": {**obj["metadata"], "name": "x"}}), None)]
    )
    assert len(changes) == 1
    bad = source_table.service(NS, "web", IPS[0], lb_policy="fastest")
    registry.apply([ObjectEvent(key_of(bad), bad)])
    registry.apply([ObjectEvent(key_of(bad), bad)])  # the same problem again is no news
    assert len(changes) == 2


def test_source_problems_replace_what_the_source_said_before() -> None:
    registry = Registry()
    registry.source_problems("kubernetes", ["kubernetes: services: cannot reach it"])
    registry.source_problems("manifests", ["web.yaml: cannot read"])
    assert registry.result().errors == (
        "kubernetes: services: cannot reach it",
        "web.yaml: cannot read",
    )
    registry.source_problems("kubernetes", [])
    assert registry.result().errors == ("web.yaml: cannot read",)


def test_the_same_service_in_two_files_serves_one_copy() -> None:
    registry = Registry()
    web = source_table.service(NS, "web", IPS[0])
    api = source_table.service(NS, "api", IPS[1])
    registry.apply([ObjectEvent(key_of(web, "a.yaml"), web, "a.yaml: document 1")])
    registry.apply([ObjectEvent(key_of(api, "a.yaml"), api, "a.yaml: document 2")])
    good = registry.result().mesh
    # The same Service from another file: both copies are objects, and they conflict.
    registry.apply([ObjectEvent(key_of(web, "b.yaml"), web, "b.yaml: document 1")])
    result = registry.result()
    assert result.mesh == good
    assert result.errors == (
        f"b.yaml: document 1 (Service {NS}/web): defined twice: the copy in a.yaml: document 1"
        " is served, which comes first by file name (set creationTimestamps to say which is"
        " older); this copy is left out",
    )
    registry.apply([ObjectEvent(key_of(web, "b.yaml"), None)])
    assert registry.result().errors == ()


def api_object(name: str, ip: str, created: str) -> dict[str, Any]:
    """A Service as the API returns it: with its creationTimestamp, in one copy (no scope)."""
    obj = source_table.service(NS, name, ip)
    obj["metadata"]["creationTimestamp"] = created
    return obj


def test_an_api_service_claiming_an_older_ones_cluster_ip_is_left_out() -> None:
    # The API server never lets this happen, but a watch of several namespaces can show
    # a new Service before the deletion of the old one that held its ClusterIP.
    registry = Registry()
    old = api_object("web", IPS[0], "2024-01-01T00:00:00Z")
    new = api_object("api", IPS[0], "2024-02-01T00:00:00Z")
    db = api_object("db", IPS[2], "2024-03-01T00:00:00Z")
    # The newer one first: arrival order must not matter.
    registry.apply([ObjectEvent(key_of(o), o) for o in (new, db, old)])
    result = registry.result()
    assert [s.key for s in result.mesh.services] == [f"{NS}/db", f"{NS}/web"]
    assert result.errors == (
        f"Service {NS}/api: ClusterIP {IPS[0]} is Service {NS}/web's, which is older"
        " (metadata.creationTimestamp); this Service is left out",
    )
    # The old one deleted: the new one takes the address, and the problem is gone.
    registry.apply([ObjectEvent(key_of(old), None)])
    result = registry.result()
    assert [s.key for s in result.mesh.services] == [f"{NS}/api", f"{NS}/db"]
    assert result.errors == ()


def test_a_conflict_is_the_problem_of_the_object_left_out() -> None:
    registry = Registry()
    web = api_object("web", IPS[0], "2024-01-01T00:00:00Z")
    api = api_object("api", IPS[0], "2024-02-01T00:00:00Z")
    registry.apply([ObjectEvent(key_of(o), o) for o in (web, api)])
    assert [problem.split(":")[0] for problem in registry.result().errors] == [f"Service {NS}/api"]
    # Fixing the newer one (its own address) clears it; the older was never touched.
    registry.apply([ObjectEvent(key_of(api), api_object("api", IPS[1], "2024-02-01T00:00:00Z"))])
    result = registry.result()
    assert [s.key for s in result.mesh.services] == [f"{NS}/api", f"{NS}/web"]
    assert result.errors == ()


def test_problems_are_bounded_per_file_and_in_all() -> None:
    registry = Registry()
    events = []
    for file in range(30):
        for number in range(20):
            bad = source_table.service(NS, f"s{file}-{number}", IPS[0], lb_policy="x" * 5000)
            events.append(ObjectEvent(key_of(bad, f"f{file}.yaml"), bad, f"f{file}.yaml"))
    registry.apply(events)
    errors = registry.result().errors
    assert len(errors) == problems.IN_ALL + 1
    assert errors[5] == "f0.yaml: 15 more problems in this file (the first 5 are listed)"
    assert errors[-1] == "and 80 more lines of problems, not listed (180 in all)"
    assert max(len(e) for e in errors) < problems.MAX_CHARS + 50


@pytest.mark.parametrize("kind", list(Kind))
def test_an_object_without_a_usable_body_is_a_problem_not_a_crash(kind: Kind) -> None:
    registry = Registry()
    registry.apply([ObjectEvent(ObjectKey(kind, NS, "x"), {"metadata": "nope"})])
    (error,) = registry.result().errors
    assert error == f'{kind.value} {NS}/x: metadata must be a mapping, not "nope"'
