"""The hand-assembled responses parse as the real protobuf messages."""

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse, DiscoveryResponse

from meshlet.controlplane.cache import Resource
from meshlet.xds import types, wire


def _cluster_resource(name: str) -> Resource:
    body = Cluster(name=name, type=Cluster.EDS).SerializeToString()
    return Resource.make(types.CLUSTER, name, body)


def test_sotw_response_parses() -> None:
    resources = [_cluster_resource("a"), _cluster_resource("b" * 300)]
    payload = wire.sotw_response("v1", types.CLUSTER, "7", [r.sotw_field for r in resources])
    parsed = DiscoveryResponse.FromString(payload)
    assert parsed.version_info == "v1"
    assert parsed.type_url == types.CLUSTER
    assert parsed.nonce == "7"
    names = []
    for packed in parsed.resources:
        cluster = Cluster()
        assert packed.Unpack(cluster)
        names.append(cluster.name)
    assert names == ["a", "b" * 300]


def test_delta_response_parses() -> None:
    resource = _cluster_resource("a")
    payload = wire.delta_response("sys", types.CLUSTER, "3", [resource.delta_field], ["gone"])
    parsed = DeltaDiscoveryResponse.FromString(payload)
    assert parsed.system_version_info == "sys"
    assert parsed.nonce == "3"
    assert list(parsed.removed_resources) == ["gone"]
    assert [(r.name, r.version) for r in parsed.resources] == [("a", resource.version)]
    cluster = Cluster()
    assert parsed.resources[0].resource.Unpack(cluster)
    assert cluster.name == "a"


def test_equal_content_equal_version() -> None:
    assert _cluster_resource("a").version == _cluster_resource("a").version
    assert _cluster_resource("a").version != _cluster_resource("b").version
