"""Fixtures shared by many test files: the real Kubernetes test cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.k8s import build
from tests.k8s.cluster import Cluster, running_cluster
from tests.k8s.kubelet import Kubelet
from tests.k8s.node import Node, running_node
from tests.k8s.node import missing as node_missing
from tests.layers import pytest_collection_modifyitems  # noqa: F401


@pytest.fixture(scope="session")
def kube() -> Iterator[Cluster]:
    """etcd, kube-apiserver and kube-controller-manager on loopback, for the whole run."""
    binaries = build.binaries()
    if isinstance(binaries, str):
        pytest.skip(binaries)
    with running_cluster(binaries) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def kubelet(kube: Cluster) -> Iterator[Kubelet]:
    """Pods of the test cluster get bound, Running and Ready, as kubelets would report."""
    stand_in = Kubelet(kube)
    stand_in.start()
    try:
        yield stand_in
    finally:
        stand_in.stop()


@pytest.fixture(scope="session")
def node() -> Iterator[Node]:
    """A test cluster of its own with a real node (kubelet, containerd, CNI, kube-proxy,
    CoreDNS), for the whole run: the journeys' pods run there."""
    why = node_missing()
    if why is not None:
        pytest.skip(why)
    binaries = build.binaries(("kube", "pods"))
    if isinstance(binaries, str):
        pytest.skip(binaries)
    with running_node(binaries) as started:
        yield started


@pytest.fixture
def namespace(kube: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of the test's own in the test cluster, deleted (with all in it) after."""
    name = kube.new_namespace(request.node.name)
    try:
        yield name
    finally:
        kube.delete_namespace(name)
