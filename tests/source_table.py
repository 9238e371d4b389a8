"""One table of object events that every source is run through (registry, manifests, API).

Each step puts or deletes objects; after it, the Mesh and the problems must be
what the step says, whichever source carried the objects. The objects are ones
the Kubernetes API server accepts (its validation is stricter than a folder's),
so the same table runs against it: the invalid objects are invalid to meshlet,
not to Kubernetes (an unknown `meshlet.io/lb-policy`).

Services have no selector and their EndpointSlices are managed by the test (as
any controller of custom endpoints would), so Kubernetes' EndpointSlice
controller leaves them alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshlet.model import Mesh

Obj = dict[str, Any]
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"


def service(namespace: str, name: str, ip: str, lb_policy: str = "") -> Obj:
    annotations = {"meshlet.io/lb-policy": lb_policy} if lb_policy else {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
    }


def endpoint_slice(namespace: str, service_name: str, *addresses: str) -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-manual",
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service_name,
                MANAGED_BY: "tests.meshlet.dev",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [a], "conditions": {"ready": True, "serving": True, "terminating": False}}
            for a in addresses
        ],
    }


@dataclass(frozen=True)
class Step:
    what: str
    put: tuple[Obj, ...] = ()
    delete: tuple[Obj, ...] = ()
    # service key -> (lb policy, endpoint addresses)
    mesh: Mapping[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    # "<Kind> <ns>/<name>: <message start>", as the problem says it after its location
    problems: tuple[str, ...] = ()


def table(ns: str, ip: Iterable[str]) -> tuple[Step, ...]:
    """The steps, in namespace `ns`, with ClusterIPs taken from `ip`."""
    web_ip, api_ip, db_ip = list(ip)[:3]
    bad = 'metadata.annotations["meshlet.io/lb-policy"] "fastest" is not one of'
    web, api, db = f"{ns}/web", f"{ns}/api", f"{ns}/db"
    return (
        Step(
            "two services, one with endpoints",
            put=(
                service(ns, "web", web_ip),
                endpoint_slice(ns, "web", "10.244.200.1", "10.244.200.2"),
                service(ns, "api", api_ip),
            ),
            mesh={
                web: ("round-robin", ("10.244.200.1", "10.244.200.2")),
                api: ("round-robin", ()),
            },
        ),
        Step(
            "a service turns invalid: its last good version stays, its slice still moves",
            put=(
                service(ns, "web", web_ip, lb_policy="fastest"),
                endpoint_slice(ns, "web", "10.244.200.1", "10.244.200.2", "10.244.200.3"),
            ),
            mesh={
                web: ("round-robin", ("10.244.200.1", "10.244.200.2", "10.244.200.3")),
                api: ("round-robin", ()),
            },
            problems=(f"Service {web}: {bad}",),
        ),
        Step(
            "a new invalid service is left out; the others go on",
            put=(
                service(ns, "db", db_ip, lb_policy="fastest"),
                service(ns, "api", api_ip, "random"),
            ),
            mesh={
                web: ("round-robin", ("10.244.200.1", "10.244.200.2", "10.244.200.3")),
                api: ("random", ()),
            },
            problems=(f"Service {web}: {bad}", f"Service {db}: {bad}"),
        ),
        Step(
            "fixed: the new version is taken and its problem goes",
            put=(service(ns, "web", web_ip, lb_policy="least-request"),),
            mesh={
                web: ("least-request", ("10.244.200.1", "10.244.200.2", "10.244.200.3")),
                api: ("random", ()),
            },
            problems=(f"Service {db}: {bad}",),
        ),
        Step(
            "deleting an invalid object clears its problem; deleting a slice, its endpoints",
            delete=(
                service(ns, "db", db_ip),
                endpoint_slice(ns, "web"),
            ),
            mesh={web: ("least-request", ()), api: ("random", ())},
        ),
        Step(
            "everything deleted",
            delete=(service(ns, "web", web_ip), service(ns, "api", api_ip)),
        ),
    )


def observed(mesh: Mesh, namespace: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {
        svc.key: (svc.lb_policy.value, tuple(e.address for e in svc.ports[0].endpoints))
        for svc in mesh.services
        if svc.namespace == namespace
    }


_LOCATED = re.compile(r"^(?:.*\()?((?:Service|EndpointSlice) [^ )]+)\)?: (.*)$")


def problems(errors: Iterable[str]) -> tuple[str, ...]:
    """Problems without where they were read (a file and document, or nothing)."""
    found = []
    for error in errors:
        match = _LOCATED.match(error)
        found.append(f"{match.group(1)}: {match.group(2)}" if match else error)
    return tuple(sorted(found))


def matches(expected: Iterable[str], actual: Iterable[str]) -> bool:
    expected, actual = sorted(expected), list(problems(actual))
    return len(expected) == len(actual) and all(
        a.startswith(e) for e, a in zip(expected, actual, strict=True)
    )
