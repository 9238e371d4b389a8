"""The mesh as both halves see it: services, their ports, and the endpoints behind them.

Plain frozen values, no I/O. The control plane builds them from Kubernetes objects;
`meshlet.xds` turns them into xDS resources.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Health(enum.Enum):
    HEALTHY = "HEALTHY"
    # Serving but terminating: used only when nothing healthy is left.
    DRAINING = "DRAINING"


class LbPolicy(enum.Enum):
    ROUND_ROBIN = "round-robin"
    LEAST_REQUEST = "least-request"
    RANDOM = "random"
    RING_HASH = "ring-hash"
    MAGLEV = "maglev"


class ServiceKind(enum.Enum):
    CLUSTER_IP = "ClusterIP"  # also NodePort and LoadBalancer: they all have a ClusterIP
    HEADLESS = "Headless"
    EXTERNAL_NAME = "ExternalName"


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int
    health: Health = Health.HEALTHY
    zone: str = ""
    hostname: str = ""
    weight: int = 1


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    protocol: str = "TCP"
    endpoints: tuple[Endpoint, ...] = ()
    # spec.ports[].appProtocol ("grpc", "kubernetes.io/h2c", ...): with the name, what
    # app_protocols.port_protocol makes of the port.
    app_protocol: str = ""


@dataclass(frozen=True)
class RoutePolicy:
    """How an HTTP port's requests are timed out and retried (the Service's annotations)."""

    # Retries of a request the server never saw, or answered 503 to a method safe to repeat.
    retries: int = 2
    per_try_timeout_seconds: float = 0.0  # 0: each try may take the whole timeout
    # 0: none. Streams live as long as they need (gRPC streams are long-lived).
    timeout_seconds: float = 0.0
    # Every method is safe to repeat: a 503 or gRPC UNAVAILABLE is retried for all.
    idempotent: bool = False


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    kind: ServiceKind = ServiceKind.CLUSTER_IP
    cluster_ips: tuple[str, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    external_name: str = ""
    lb_policy: LbPolicy = LbPolicy.ROUND_ROBIN
    # True when the Service chose no policy (no meshlet.io/lb-policy annotation): its
    # HTTP ports balance by least request (Istio's default), its TCP ports by lb_policy.
    lb_policy_default: bool = False
    # sessionAffinity: ClientIP; the balancer hashes the client's source IP.
    client_ip_affinity: bool = False
    # trafficDistribution: PreferClose; sidecars prefer endpoints in their own zone.
    prefer_same_zone: bool = False
    # The Service's timeout and retry annotations, for its HTTP ports.
    route_policy: RoutePolicy = RoutePolicy()
    # Every endpoint of the service once per address (port 0), whatever its ports:
    # what DNS answers for a headless service, and the hostnames of its pods.
    pod_addresses: tuple[Endpoint, ...] = field(default=())

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def fqdn(self, domain: str) -> str:
        return f"{self.name}.{self.namespace}.svc.{domain}"


@dataclass(frozen=True)
class Mesh:
    """Every service of the mesh, sorted by namespace and name."""

    services: tuple[Service, ...] = ()
