"""Conflicting objects: the older keeps its ClusterIP or name, whatever order they came in."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest

from meshlet.controlplane.claims import resolve
from meshlet.controlplane.sources.base import Kind, ObjectKey
from meshlet.controlplane.sources.kube_objects import (
    ServiceSpec,
    parse_endpoint_slice,
    parse_service,
)

JAN, FEB = "2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z"


def service(
    name: str, *ips: str, created: str = "", scope: str = "", namespace: str = "shop"
) -> tuple[ObjectKey, ServiceSpec]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if created:
        meta["creationTimestamp"] = created
    obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"clusterIPs": list(ips), "ports": [{"port": 80}]},
    }
    spec = parse_service(obj)
    origin = f"{scope}: document 1" if scope else ""
    key = ObjectKey(Kind.SERVICE, namespace, name, scope)
    return key, replace(spec, origin=origin)


def served(*entries: tuple[ObjectKey, ServiceSpec]) -> tuple[list[str], dict[str, str]]:
    claims = resolve(dict(entries), {})
    return [s.key for s in claims.services], {str(k): why for k, why in claims.left_out.items()}


def test_no_conflict_serves_everything() -> None:
    names, left_out = served(service("web", "10.96.0.1"), service("api", "10.96.0.2"))
    assert sorted(names) == ["shop/api", "shop/web"]
    assert left_out == {}


def test_the_older_service_keeps_the_cluster_ip_in_any_order() -> None:
    web = service("web", "10.96.0.1", created=JAN, scope="web.yaml")
    api = service("api", "10.96.0.1", created=FEB, scope="api.yaml")
    db = service("db", "10.96.0.3", scope="db.yaml")
    for order in itertools.permutations([web, api, db]):
        names, left_out = served(*order)
        assert sorted(names) == ["shop/db", "shop/web"]
        assert left_out == {
            "Service shop/api": "ClusterIP 10.96.0.1 is Service shop/web's (in web.yaml: "
            "document 1), which is older (metadata.creationTimestamp); this Service is left out"
        }


def test_a_service_with_a_timestamp_is_older_than_one_without() -> None:
    names, left_out = served(service("api", "10.96.0.1"), service("web", "10.96.0.1", created=FEB))
    assert names == ["shop/web"]
    assert "has a creationTimestamp and this one has none" in left_out["Service shop/api"]


@pytest.mark.parametrize("created", ["", JAN])
def test_without_an_older_one_namespace_and_name_decide(created: str) -> None:
    names, left_out = served(
        service("web", "10.96.0.1", created=created),
        service("api", "10.96.0.1", created=created, namespace="zoo"),
        service("api", "10.96.0.1", created=created),
    )
    assert names == ["shop/api"]
    assert set(left_out) == {"Service shop/web", "Service zoo/api"}
    assert "comes first by namespace/name" in left_out["Service shop/web"]


def test_dual_stack_conflict_on_the_second_address() -> None:
    names, left_out = served(
        service("web", "10.96.0.20", "fd00::20", created=JAN),
        service("api", "fd00::0020", created=FEB),
    )
    assert names == ["shop/web"]
    assert left_out["Service shop/api"].startswith("ClusterIP fd00::20 is Service shop/web's")


def test_a_service_left_out_holds_no_address() -> None:
    # api loses 10.96.0.1 to web; db may then have fd00::2, which only api claimed too.
    names, _ = served(
        service("web", "10.96.0.1", created=JAN),
        service("api", "10.96.0.1", "fd00::2", created=FEB),
        service("db", "fd00::2", created="2024-03-01T00:00:00Z"),
    )
    assert sorted(names) == ["shop/db", "shop/web"]


def test_the_same_service_in_two_files_serves_the_older_copy() -> None:
    copy_b = service("web", "10.96.0.2", created=JAN, scope="b.yaml")
    copy_a = service("web", "10.96.0.1", created=FEB, scope="a.yaml")
    claims = resolve(dict([copy_a, copy_b]), {})
    assert [s.cluster_ips for s in claims.services] == [("10.96.0.2",)]
    assert claims.left_out == {
        copy_a[0]: "defined twice: the copy in b.yaml: document 1 is served, which is older "
        "(metadata.creationTimestamp); this copy is left out"
    }


def test_without_timestamps_the_first_file_by_name_wins() -> None:
    copy_b = service("web", "10.96.0.2", scope="b.yaml")
    copy_a = service("web", "10.96.0.1", scope="a.yaml")
    claims = resolve(dict([copy_b, copy_a]), {})
    assert [s.cluster_ips for s in claims.services] == [("10.96.0.1",)]
    assert "comes first by file name" in claims.left_out[copy_b[0]]


def test_the_same_slice_in_two_files_serves_one() -> None:
    obj = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-1",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.1.0.1"]}],
    }
    spec = parse_endpoint_slice(obj)
    keys = [ObjectKey(Kind.ENDPOINT_SLICE, "shop", "web-1", f) for f in ("b.yaml", "a.yaml")]
    slices = {k: replace(spec, origin=k.scope) for k in keys}
    claims = resolve({}, slices)
    assert [s.origin for s in claims.slices] == ["a.yaml"]
    assert set(claims.left_out) == {keys[0]}
