"""What the control plane writes and the sidecar reads beyond the Envoy types: named once.

Both sides import these, so the translation and the sidecar's decoders cannot
drift apart: the keys of meshlet's own cluster metadata, and the defaults Envoy
applies when a field is absent (an absent field means to the sidecar what it
means to every other data plane).
"""

from __future__ import annotations

# Cluster.metadata.filter_metadata[METADATA_KEY]: a Struct with these fields.
METADATA_KEY = "meshlet"
PREFER_SAME_ZONE = "prefer_same_zone"  # bool: prefer endpoints in the client's zone
CLIENT_IP_AFFINITY = "client_ip_affinity"  # bool: sessionAffinity ClientIP
SERVICE = "service"  # string: the Service's name
NAMESPACE = "namespace"  # string: the Service's namespace

# Envoy's defaults for absent fields.
CONNECT_TIMEOUT_SECONDS = 5.0  # Cluster.connect_timeout
MAX_CONNECTIONS = 1024  # circuit_breakers thresholds (DEFAULT priority) max_connections
OUTLIER_CONSECUTIVE_5XX = 5  # outlier_detection.consecutive_5xx
OUTLIER_INTERVAL_SECONDS = 10.0  # outlier_detection.interval
OUTLIER_BASE_EJECTION_SECONDS = 30.0  # outlier_detection.base_ejection_time
OUTLIER_MAX_EJECTION_PERCENT = 10  # outlier_detection.max_ejection_percent
TCP_PROXY_IDLE_TIMEOUT_SECONDS = 3600.0  # TcpProxy.idle_timeout (0 means never)
ROUTE_TIMEOUT_SECONDS = 15.0  # RouteAction.timeout (0 means none)
NUM_RETRIES = 1  # RetryPolicy.num_retries
RETRY_BACKOFF_BASE_SECONDS = 0.025  # RetryPolicy.retry_back_off.base_interval (max: 10x)
MAX_REQUEST_HEADERS_KB = 60  # HttpConnectionManager.max_request_headers_kb
MAX_HEADERS_COUNT = 100  # common_http_protocol_options.max_headers_count
