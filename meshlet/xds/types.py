"""Type URLs of the resources meshlet serves, in make-before-break push order."""

from __future__ import annotations

_PREFIX = "type.googleapis.com/"

CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
NAME_TABLE = _PREFIX + "meshlet.v1.NameTable"

# Clusters and their endpoints before the listeners that point at them; the
# name table last, so a name never resolves to a VIP nobody listens on.
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE, NAME_TABLE)

# What the control plane makes (the API listeners for proxyless gRPC carry
# their routes inline; RDS is for the HTTP ports' socket listeners).
SERVED: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE, NAME_TABLE)

# In state-of-the-world, a response of these types carries every subscribed
# resource, and a resource left out counts as deleted. (A NameTable has no name
# field a removal could carry, so its type is one of them: over delta, a
# namespace's table comes and goes alone.)
FULL_STATE_TYPES = frozenset({CLUSTER, LISTENER, NAME_TABLE})

SHORT_NAMES = {
    CLUSTER: "cds",
    ENDPOINT: "eds",
    LISTENER: "lds",
    ROUTE: "rds",
    NAME_TABLE: "nds",
}

# NameTables: one per namespace with services, named by the namespace, so a change
# re-sends that namespace's names alone. Every node subscribes to all (wildcard).

# The virtual outbound listener and the cluster for traffic to unknown destinations.
OUTBOUND_LISTENER = "virtualOutbound"
PASSTHROUGH_CLUSTER = "PassthroughCluster"


def short_name(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1])
