"""Ports, uids, domains and CIDRs that several parts must agree on: defined once here."""

from __future__ import annotations

CLUSTER_DOMAIN = "cluster.local"
# kubeadm's default --service-cluster-ip-range: what capture redirects by default.
SERVICE_CIDR = "10.96.0.0/12"

# The control plane.
XDS_PORT = 15010
# How long a client's xDS connection lives before the control plane asks it to go
# (GOAWAY) and it reconnects, resuming from what it holds: clients spread over the
# replicas again after one restarts (Istio's MaxServerConnectionAge is 30 minutes
# too). gRPC adds +-10 % jitter, so clients that came together do not leave together.
XDS_MAX_STREAM_AGE_SECONDS = 1800.0
CONTROL_PLANE_ADMIN_PORT = 15014
# The largest manifest file read (--max-manifest-bytes): parsing takes some 60 times
# a file's size in memory, so a hostile file costs a bounded amount.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

# The sidecar.
OUTBOUND_PORT = 15001
DNS_PORT = 15053
SIDECAR_ADMIN_PORT = 15000
# Read-only, on the pod IP (Istio's numbers): the kubelet's probes and Prometheus.
HEALTH_PORT = 15021
METRICS_PORT = 15020
# Where the injected sidecar keeps its last accepted config (an emptyDir): a
# restart while the control plane is away serves from it.
STATE_DIR = "/var/lib/meshlet"
# The largest saved config written or read (some 12 MB at 10,000 services), and the
# emptyDir's sizeLimit: room for the file and the temporary one that replaces it (the
# kubelet evicts a pod over its limit rather than failing the write).
STATE_FILE_MAX_BYTES = 32 * 1024 * 1024
STATE_DIR_SIZE_LIMIT = f"{2 * STATE_FILE_MAX_BYTES // (1024 * 1024)}Mi"
# The uid the sidecar runs as; capture never redirects its traffic.
PROXY_UID = 1337

# Injection (the webhook on the control plane, and `meshlet inject`).
WEBHOOK_PORT = 15017
# The namespace the control plane runs in (its Secret, Lease and Service live there).
SYSTEM_NAMESPACE = "meshlet-system"
# The control plane's Service: what injected sidecars dial, and the webhook's DNS name.
CONTROL_PLANE_SERVICE = "meshlet"
WEBHOOK_CONFIGURATION = "meshlet-injector"
# The one image of every role; the chart sets the registry and tag it was pushed to.
IMAGE_REPOSITORY = "ghcr.io/meshlet/meshlet"
