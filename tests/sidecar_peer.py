"""`meshlet sidecar` as a peer: run on loopback, asked by a real DNS client (dnspython)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
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
    free_port,
    get_json,
    http_get,
    running,
    wait_until,
)


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

    def clusters(self) -> Any:
        """The sidecar's /clusters: each cluster, its endpoints and what the proxy did."""
        return self.admin("/clusters")

    def admin(self, path: str) -> Any:
        self.process.check_alive()
        return get_json(f"http://127.0.0.1:{self.admin_port}{path}")


@contextlib.contextmanager
def sidecar(
    plane: ControlPlane,
    tmp_path: Path,
    protocol: str,
    *,
    node_id: str = "sidecar-1",
    namespace: str = "default",
    extra_args: Sequence[str] = (),
    wait_ready: bool = True,
) -> Iterator[Sidecar]:
    """`meshlet sidecar` on loopback ports of its own, ready when yielded."""
    dns_port, admin_port = free_port(), free_port()
    # Ports are only reserved by being bound: the kernel may hand out one twice, and an
    # upstream on the sidecar's own DNS port is refused as a loop.
    upstream_port = free_port()
    while upstream_port in (dns_port, admin_port):
        upstream_port = free_port()
    argv = [
        PYTHON,
        "-m",
        "meshlet",
        "sidecar",
        f"--xds-address={plane.xds_address}",
        f"--node-id={node_id}",
        f"--namespace={namespace}",
        f"--dns-address=127.0.0.1:{dns_port}",
        f"--admin-address=127.0.0.1:{admin_port}",
        # Nothing listens there: these tests ask only for mesh names.
        f"--upstream-dns=127.0.0.1:{upstream_port}",
        f"--xds-protocol={protocol}",
        *extra_args,
    ]
    with running(argv, "meshlet sidecar", tmp_path / f"sidecar-{dns_port}.log") as process:
        car = Sidecar(process, dns_port, admin_port)

        def ready() -> int:
            process.check_alive()
            return http_get(f"http://127.0.0.1:{admin_port}/ready", timeout=2)[0]

        if wait_ready:
            wait_until(lambda status: status == 200, 30, "the sidecar to be ready", observe=ready)
        yield car
