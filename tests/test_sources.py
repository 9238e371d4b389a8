"""The registry, fed by hand and by the manifest source, through the same table of events.

The Kubernetes source runs the same table against a real API server in
test_k8s_source.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

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


def test_a_conflict_keeps_the_last_good_mesh() -> None:
    registry = Registry()
    web = source_table.service(NS, "web", IPS[0])
    registry.apply([ObjectEvent(key_of(web), web, "a.yaml: document 1")])
    good = registry.result().mesh
    # The same Service from another file: both copies are objects, and they conflict.
    registry.apply([ObjectEvent(key_of(web, "b.yaml"), web, "b.yaml: document 1")])
    result = registry.result()
    assert result.mesh == good
    assert result.errors == (
        f"b.yaml: document 1: Service {NS}/web is defined twice (also in a.yaml: document 1)",
    )
    registry.apply([ObjectEvent(key_of(web, "b.yaml"), None)])
    assert registry.result().errors == ()


@pytest.mark.parametrize("kind", list(Kind))
def test_an_object_without_a_usable_body_is_a_problem_not_a_crash(kind: Kind) -> None:
    registry = Registry()
    registry.apply([ObjectEvent(ObjectKey(kind, NS, "x"), {"metadata": "nope"})])
    (error,) = registry.result().errors
    assert error == f'{kind.value} {NS}/x: metadata must be a mapping, not "nope"'
