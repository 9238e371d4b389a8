"""ClusterLoadAssignment -> the endpoints the balancer may use (pure)."""

from __future__ import annotations

from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from meshlet.model import Endpoint, Health
from meshlet.sidecar.validate import fields
from meshlet.sidecar.validate.errors import Where

_HEALTH = {
    health_check_pb2.UNKNOWN: Health.HEALTHY,
    health_check_pb2.HEALTHY: Health.HEALTHY,
    health_check_pb2.DRAINING: Health.DRAINING,
}
# Envoy refuses a locality whose endpoints' weights add up to more than a uint32.
_MAX_LOCALITY_WEIGHT = 2**32 - 1


def decode_load_assignment(
    name: str, assignment: endpoint_pb2.ClusterLoadAssignment
) -> tuple[Endpoint, ...]:
    """The usable endpoints: HEALTHY and UNKNOWN as healthy, DRAINING as draining, no others."""
    where = Where("ClusterLoadAssignment", name)
    out = []
    for i, locality in enumerate(assignment.endpoints):
        zone = locality.locality.zone
        total = 0
        for j, lb_endpoint in enumerate(locality.lb_endpoints):
            path = f"endpoints[{i}].lb_endpoints[{j}]"
            if lb_endpoint.WhichOneof("host_identifier") != "endpoint":
                raise where.fail(f"{path} has no endpoint")
            ip, port = fields.socket_address(
                where, f"{path}.endpoint.address", lb_endpoint.endpoint.address
            )
            weight = 1
            if lb_endpoint.HasField("load_balancing_weight"):
                weight = lb_endpoint.load_balancing_weight.value
                if weight < 1:
                    raise where.fail(f"{path}.load_balancing_weight must be at least 1")
            total += weight
            if total > _MAX_LOCALITY_WEIGHT:
                raise where.fail(f"endpoints[{i}] has weights that add up to over 2^32 - 1")
            status = lb_endpoint.health_status
            health = _HEALTH.get(status)
            if health is None:
                # A number HealthStatus does not name is an error; the others (unhealthy,
                # timed out, degraded) are no place to send connections.
                enum = health_check_pb2.HealthStatus
                fields.enum_name(where, f"{path}.health_status", enum, status)
                continue
            out.append(Endpoint(ip, port, health, zone, lb_endpoint.endpoint.hostname, weight))
    return tuple(out)
