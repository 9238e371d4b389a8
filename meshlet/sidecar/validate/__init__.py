"""Received xDS resources -> the plain configs of SidecarState, or a ValidationError (pure).

One decoder per resource type (cluster, load_assignment, listener, name_table),
each over the field checks in `fields`, and the reducer that applies one whole
response to the state with them. A response is taken or refused whole: one bad
resource NACKs it, and the error names the type, the resource and the field, e.g.

    Cluster "outbound|80||web.default.svc.cluster.local": load_balancing_policy has no
    policy meshlet supports (got envoy.load_balancing_policies.foo)

Every bad value is a ValidationError, never another exception: a peer chooses
these bytes. What the control plane writes beyond the Envoy types (metadata
keys, the defaults of absent fields) is in meshlet.xds.contract.
"""

from __future__ import annotations

from meshlet.sidecar.validate.cluster import decode_cluster
from meshlet.sidecar.validate.errors import ValidationError
from meshlet.sidecar.validate.fields import is_dns_name
from meshlet.sidecar.validate.listener import decode_listener
from meshlet.sidecar.validate.load_assignment import decode_load_assignment
from meshlet.sidecar.validate.name_table import decode_name_table
from meshlet.sidecar.validate.reducer import Received, Update, apply_update

__all__ = [
    "Received",
    "Update",
    "ValidationError",
    "apply_update",
    "decode_cluster",
    "decode_listener",
    "decode_load_assignment",
    "decode_name_table",
    "is_dns_name",
]
