"""Which ports are HTTP: appProtocol first, then Istio's name prefixes, L4 otherwise."""

from __future__ import annotations

import pytest

from meshlet.app_protocols import PortProtocol, port_protocol

HTTP1, HTTP2, TCP = PortProtocol.HTTP1, PortProtocol.HTTP2, PortProtocol.TCP


@pytest.mark.parametrize(
    ("name", "app_protocol", "expected"),
    [
        ("", "grpc", HTTP2),
        ("", "http2", HTTP2),
        ("", "kubernetes.io/h2c", HTTP2),
        ("", "HTTP", HTTP1),  # IANA names are case-insensitive
        ("", "http", HTTP1),
        ("web", "kubernetes.io/ws", TCP),  # WebSocket: a tunnel, relayed as bytes
        ("", "kubernetes.io/wss", TCP),
        ("http-admin", "mysql", TCP),  # appProtocol decides alone, as in Istio
        ("tcp", "grpc", HTTP2),
        ("grpc", "", HTTP2),
        ("grpc-api", "", HTTP2),
        ("http2", "", HTTP2),
        ("http2-web", "", HTTP2),
        ("http", "", HTTP1),
        ("http-web", "", HTTP1),
        ("https", "", TCP),  # TLS from the app: bytes the proxy cannot read
        ("tls", "", TCP),
        ("tcp", "", TCP),
        ("httpbin", "", TCP),  # a prefix needs its dash
        ("grpcweb", "", TCP),
        ("web", "", TCP),
        ("", "", TCP),
    ],
)
def test_port_protocol(name: str, app_protocol: str, expected: PortProtocol) -> None:
    assert port_protocol(name, app_protocol) is expected


def test_only_the_l4_protocol_is_not_http() -> None:
    assert [p for p in PortProtocol if not p.is_http] == [TCP]
