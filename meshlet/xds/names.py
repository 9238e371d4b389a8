"""Resource names, shared by the control plane that makes them and the sidecar that reads them."""

from __future__ import annotations

from meshlet.model import Service


def cluster_name(service: Service, port: int, domain: str) -> str:
    # Istio's naming, so dashboards and habits carry over.
    return f"outbound|{port}||{service.fqdn(domain)}"


def socket_listener_name(ip: str, port: int) -> str:
    return f"{ip}_{port}"


def api_listener_name(service: Service, port: int, domain: str) -> str:
    # What a proxyless gRPC client asks for when it dials xds:///<this>.
    return f"{service.fqdn(domain)}:{port}"


def route_config_name(service: Service, port: int, domain: str) -> str:
    # One per service port, shared by its VIPs; named as its API listener.
    return f"{service.fqdn(domain)}:{port}"
