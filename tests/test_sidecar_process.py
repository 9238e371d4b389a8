"""`meshlet sidecar` against the real control plane, asked by a real DNS client."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from tests.procs import (
    control_plane,
    endpoint_slice_manifest,
    free_port,
    http_get,
    service_manifest,
    wait_until,
    write_manifests,
)
from tests.sidecar_peer import sidecar


def web() -> list[dict[str, Any]]:
    return [
        service_manifest("web", "default", "10.96.0.10", [("http", 80, "http")]),
        endpoint_slice_manifest("web", "default", [("http", 8080)], ["10.1.0.1", "10.1.0.2"]),
    ]


def api() -> list[dict[str, Any]]:
    return [
        service_manifest("api", "shop", "10.96.0.20", [("grpc", 9090, 9090)]),
        endpoint_slice_manifest("api", "shop", [("grpc", 9090)], ["10.1.0.3"]),
    ]


def test_dns_follows_the_control_plane_and_survives_its_absence(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "mesh.yaml", *web())
    with control_plane(folder, tmp_path) as plane, sidecar(plane, tmp_path, "delta") as car:
        assert car.ask("web.default.svc.cluster.local") == ("NOERROR", ["10.96.0.10"])
        assert car.ask("web") == ("NOERROR", ["10.96.0.10"])  # bare, relative to default
        assert car.ask("web.default.svc.cluster.local", tcp=True) == ("NOERROR", ["10.96.0.10"])
        assert car.ask("nope.default.svc.cluster.local")[0] == "NXDOMAIN"
        assert car.ask("web.default.svc.cluster.local", "AAAA") == ("NOERROR", [])

        # A manifest change shows up in DNS.
        write_manifests(folder / "mesh.yaml", *web(), *api())
        wait_until(
            lambda got: got == ("NOERROR", ["10.96.0.20"]),
            10,
            "api to resolve",
            observe=lambda: car.ask("api.shop"),
        )

        clusters = car.admin("/clusters")
        web_cluster = clusters["outbound|80||web.default.svc.cluster.local"]
        assert [e["address"] for e in web_cluster["endpoints"]] == [
            "10.1.0.1:8080",
            "10.1.0.2:8080",
        ]
        dump = car.admin("/config_dump")
        assert "default" in dump["resources"]["nds"]["resources"]  # its namespace's table
        status, metrics = http_get(f"http://127.0.0.1:{car.admin_port}/metrics")
        assert status == 200
        assert "meshlet_dns_queries_total{" in metrics and 'source="local"' in metrics
        assert 'result="accepted",type="cds"' in metrics

        # The control plane goes away: DNS keeps answering from the last good config.
        plane.process.popen.terminate()
        plane.process.popen.wait(timeout=10)
        for _ in range(3):
            assert car.ask("api.shop.svc.cluster.local") == ("NOERROR", ["10.96.0.20"])

    # (Both processes are ended by PID when their blocks close.)


def test_sidecar_resyncs_with_a_new_control_plane(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_manifests(folder / "mesh.yaml", *web())
    xds_port = free_port()
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(control_plane(folder, tmp_path, xds_port=xds_port))
        car = stack.enter_context(sidecar(first, tmp_path, "sotw"))
        assert car.ask("web")[1] == ["10.96.0.10"]
        first.process.popen.terminate()
        first.process.popen.wait(timeout=10)
        write_manifests(folder / "mesh.yaml", *api())
        second = stack.enter_context(control_plane(folder, tmp_path, xds_port=xds_port))
        wait_until(
            lambda got: got[0] == "NXDOMAIN",
            30,
            "web to be gone after resync",
            observe=lambda: car.ask("web.default.svc.cluster.local"),
        )
        assert car.ask("api.shop") == ("NOERROR", ["10.96.0.20"])
        wait_until(
            lambda c: c is not None,
            10,
            "the sidecar in /debug/clients",
            observe=lambda: second.client("sidecar-1"),
        )
