"""meshlet: a DNS-plus-VIP service-mesh sidecar and its xDS control plane."""

__version__ = "0.1.0"
