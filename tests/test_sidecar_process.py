"""`meshlet sidecar` against the real control plane, asked by a real DNS client."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from tests.procs import (
    PYTHON,
    ControlPlane,
    Process,
    control_plane,
    endpoint_slice_manifest,
    free_port,
    get_json,
    http_get,
    running,
    service_manifest,
    wait_until,
    write_manifests,
)


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


class Sidecar:
    def __init__(self, process: Process, dns_port: int, admin_port: int) -> None:
        self.process, self.dns_port, self.admin_port = process, dns_port, admin_port

    def ask(self, name: str, rdtype: str = "A", tcp: bool = False) -> tuple[str, list[str]]:
        """(rcode, answers as text) from the sidecar's DNS."""
        self.process.check_alive()
        query = dns.message.make_query(name, rdtype)
        send = dns.query.tcp if tcp else dns.query.udp
        response = send(query, "127.0.0.1", port=self.dns_port, timeout=3)
        answers = [rr.to_text() for rrset in response.answer for rr in rrset]
        return dns.rcode.to_text(response.rcode()), sorted(answers)

    def admin(self, path: str) -> Any:
        self.process.check_alive()
        return get_json(f"http://127.0.0.1:{self.admin_port}{path}")


@contextlib.contextmanager
def sidecar(plane: ControlPlane, tmp_path: Path, protocol: str) -> Iterator[Sidecar]:
    dns_port, admin_port = free_port(), free_port()
    argv = [
        PYTHON,
        "-m",
        "meshlet",
        "sidecar",
        f"--xds-address={plane.xds_address}",
        "--node-id=sidecar-1",
        "--namespace=default",
        f"--dns-address=127.0.0.1:{dns_port}",
        f"--admin-address=127.0.0.1:{admin_port}",
        # Nothing listens there: these tests ask only for mesh names.
        f"--upstream-dns=127.0.0.1:{free_port()}",
        f"--xds-protocol={protocol}",
    ]
    with running(argv, "meshlet sidecar", tmp_path / f"sidecar-{dns_port}.log") as process:
        car = Sidecar(process, dns_port, admin_port)

        def ready() -> int:
            process.check_alive()
            return http_get(f"http://127.0.0.1:{admin_port}/ready", timeout=2)[0]

        wait_until(lambda status: status == 200, 30, "the sidecar to be ready", observe=ready)
        yield car


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
        assert "meshlet" in dump["resources"]["nds"]["resources"]
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
