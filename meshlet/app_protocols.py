"""Which Service ports carry HTTP, and which version goes upstream (pure).

Kubernetes' own signal first: a port's `appProtocol`. When it is set it decides
alone, as in Istio, so a port named `http-admin` with `appProtocol: mysql` stays
L4. Without it, Istio's port-name convention: `grpc`, `http2` and `http` or a
name starting with one of those and a dash. Anything else (`https`, `tls`,
`tcp`, `kubernetes.io/ws`, no name at all) is L4: its bytes are relayed untouched
and never sniffed, so a server-first protocol such as MySQL never waits.
"""

from __future__ import annotations

import enum


class PortProtocol(enum.Enum):
    TCP = "tcp"  # L4: one upstream connection per client connection
    HTTP1 = "http"  # requests balanced one by one, HTTP/1.1 upstream
    HTTP2 = "http2"  # requests balanced one by one, HTTP/2 upstream (gRPC)

    @property
    def is_http(self) -> bool:
        return self is not PortProtocol.TCP


_BY_APP_PROTOCOL = {
    "grpc": PortProtocol.HTTP2,
    "http2": PortProtocol.HTTP2,
    "kubernetes.io/h2c": PortProtocol.HTTP2,
    "http": PortProtocol.HTTP1,
}
# Port names: the protocol's name alone, or it and a dash ("http2-web"; "httpbin" is L4).
_BY_NAME = (
    ("http2", PortProtocol.HTTP2),
    ("grpc", PortProtocol.HTTP2),
    ("http", PortProtocol.HTTP1),
)


def port_protocol(name: str, app_protocol: str = "") -> PortProtocol:
    if app_protocol:
        return _BY_APP_PROTOCOL.get(app_protocol.lower(), PortProtocol.TCP)
    for prefix, protocol in _BY_NAME:
        if name == prefix or name.startswith(prefix + "-"):
            return protocol
    return PortProtocol.TCP
