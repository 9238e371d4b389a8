"""The xDS client against a hostile control plane: whatever a response holds, the answer
is an ACK or a NACK with a bounded message, and the client's status stays bounded."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryResponse,
    DiscoveryResponse,
    Resource,
)

from meshlet.model import Endpoint, Mesh, Service, ServicePort
from meshlet.sidecar.state import SidecarState
from meshlet.sidecar.validate import Received, Update
from meshlet.sidecar.xds_client import (
    SUBSCRIBED_TYPES,
    DeltaSession,
    SotwSession,
    XdsClient,
    XdsProtocol,
)
from meshlet.xds import types
from meshlet.xds.error_detail import MAX_DETAIL_BYTES, MAX_QUOTED_CHARS
from meshlet.xds.translate import translate
from meshlet.xds.wire import pack

NODE = Node(id="pod-1")
WEB = "outbound|80||web.default.svc.cluster.local"


def client(protocol: XdsProtocol = "delta") -> XdsClient:
    return XdsClient(
        "127.0.0.1:1", "pod-1", "default", "zone-a", "cluster.local", protocol, lambda _: None
    )


def web_cluster() -> Cluster:
    web = Service(
        "web",
        "default",
        cluster_ips=("10.96.0.10",),
        ports=(ServicePort("http", 80, endpoints=(Endpoint("10.1.0.1", 8080),)),),
    )
    for generated in translate(Mesh((web,)), "cluster.local"):
        if generated.name == WEB:
            assert isinstance(generated.message, Cluster)
            return generated.message
    raise AssertionError("translate made no web cluster")


def cds(nonce: str, clusters: dict[str, Cluster], version: str = "") -> DeltaDiscoveryResponse:
    return DeltaDiscoveryResponse(
        type_url=types.CLUSTER,
        nonce=nonce,
        system_version_info=version or f"sys-{nonce}",
        resources=[Resource(name=n, version="1", resource=pack(c)) for n, c in clusters.items()],
    )


def test_an_enum_number_no_enum_names_is_a_nack_and_the_stream_goes_on() -> None:
    made = client()
    session = DeltaSession(NODE)
    bad = web_cluster()
    bad.ClearField("load_balancing_policy")
    bad.lb_policy = 99  # type: ignore[assignment,unused-ignore]
    [nack] = made.handle(session, cds("1", {WEB: bad}))
    assert nack.response_nonce == "1"
    assert nack.error_detail.message == f'Cluster "{WEB}": lb_policy 99 is not a value of LbPolicy'
    assert made.state == SidecarState()
    [ack, *_] = made.handle(session, cds("2", {WEB: web_cluster()}))
    assert (ack.response_nonce, ack.HasField("error_detail")) == ("2", False)


class _Unreadable(Sequence[Received]):
    """Resources that fail when read, as a bug in decoding would."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: Any) -> Any:
        raise RuntimeError("cannot read this")

    def __iter__(self) -> Iterator[Received]:
        raise RuntimeError("cannot read this")


class _BrokenSession(DeltaSession):
    def update_of(self, response: DeltaDiscoveryResponse) -> Update:
        return dataclasses.replace(super().update_of(response), resources=_Unreadable())


def test_a_failure_that_is_no_validation_error_is_a_nack_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    made = client()
    with caplog.at_level(logging.ERROR, logger="meshlet.sidecar.xds_client"):
        [nack] = made.handle(_BrokenSession(NODE), cds("1", {WEB: web_cluster()}))
    assert nack.error_detail.message == (
        "the sidecar failed on this response (RuntimeError: cannot read this)"
    )
    assert any(r.exc_info for r in caplog.records), "logged with its traceback"
    status = made.status().types[types.CLUSTER]
    assert (status.rejected, status.last_error) == (1, nack.error_detail.message)


def test_a_nack_and_the_status_keep_what_the_peer_chose_bounded() -> None:
    made = client()
    huge = "outbound|80||" + "a" * 8_000_000
    bad = web_cluster()
    bad.name = huge
    bad.type = Cluster.STATIC
    [nack] = made.handle(DeltaSession(NODE), cds("1", {huge: bad}, version="v" * 1_000_000))
    message = nack.error_detail.message
    assert len(message.encode()) <= MAX_DETAIL_BYTES
    assert message.startswith('Cluster "outbound|80||aaa') and "…" in message
    status = made.status().types[types.CLUSTER]
    assert status.last_error == message
    assert len(status.rejected_version) == MAX_QUOTED_CHARS


@pytest.mark.parametrize("protocol", ["delta", "sotw"])
def test_responses_of_types_never_asked_for_are_nacked_and_only_counted(
    protocol: XdsProtocol,
) -> None:
    made = client(protocol)
    session = DeltaSession(NODE) if protocol == "delta" else SotwSession(NODE)
    for i in range(1000):
        type_url = f"type.googleapis.com/example.Thing{i}"
        response: Any
        if protocol == "delta":
            response = DeltaDiscoveryResponse(type_url=type_url, nonce=str(i))
        else:
            response = DiscoveryResponse(type_url=type_url, nonce=str(i), version_info="1")
        [nack] = made.handle(session, response)
        assert nack.response_nonce == str(i)
        assert nack.error_detail.message == f"type {type_url} is not one the sidecar asked for"
    status = made.status()
    assert set(status.types) == set(SUBSCRIBED_TYPES)
    assert status.rejected_other_types == 1000
    assert all(t.rejected == 0 for t in status.types.values())
    if isinstance(session, SotwSession):
        assert session._nonces == {}  # no nonce kept for a type never asked for
