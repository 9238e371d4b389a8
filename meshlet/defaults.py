"""Ports, uids, domains and CIDRs that several parts must agree on: defined once here."""

from __future__ import annotations

CLUSTER_DOMAIN = "cluster.local"
# kubeadm's default --service-cluster-ip-range: what capture redirects by default.
SERVICE_CIDR = "10.96.0.0/12"

# The control plane.
XDS_PORT = 15010
CONTROL_PLANE_ADMIN_PORT = 15014

# The sidecar.
OUTBOUND_PORT = 15001
DNS_PORT = 15053
SIDECAR_ADMIN_PORT = 15000
# The uid the sidecar runs as; capture never redirects its traffic.
PROXY_UID = 1337
