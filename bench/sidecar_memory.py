"""The whole `meshlet sidecar` process's memory with N services in its tables.

    python bench/sidecar_memory.py [--services 10000]

Starts a control plane on N generated services and a sidecar against it, waits
until the sidecar is ready and answers a mesh name, then prints the sidecar's
VmRSS next to the goal (issue 3: under 60 MB with 10,000 services).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

# The repo root instead of bench/, whose dns.py would shadow dnspython's `dns`.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import dns.message  # noqa: E402
import dns.query  # noqa: E402

from tests.procs import (  # noqa: E402
    PYTHON,
    control_plane,
    endpoint_slice_manifest,
    free_port,
    http_get,
    running,
    service_manifest,
    wait_until,
    write_manifests,
)

GOAL_MB = 60


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshlet-sidecar-mem-") as tmp:
        work = Path(tmp)
        folder = work / "manifests"
        folder.mkdir()
        objects = []
        for i in range(args.services):
            ip = f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}"
            objects.append(service_manifest(f"svc-{i}", f"ns-{i % 20}", ip, [("http", 80, 8080)]))
            objects.append(
                endpoint_slice_manifest(
                    f"svc-{i}",
                    f"ns-{i % 20}",
                    [("http", 8080)],
                    [f"10.200.{i // 256 % 256}.{i % 256}"],
                )
            )
        write_manifests(folder / "mesh.yaml", *objects)
        with control_plane(folder, work, ready_timeout=300) as plane:
            dns_port, admin_port = free_port(), free_port()
            argv = [
                PYTHON,
                "-m",
                "meshlet",
                "sidecar",
                f"--xds-address={plane.xds_address}",
                "--namespace=ns-0",
                f"--dns-address=127.0.0.1:{dns_port}",
                f"--admin-address=127.0.0.1:{admin_port}",
                f"--upstream-dns=127.0.0.1:{free_port()}",
            ]
            with running(argv, "meshlet sidecar", work / "sidecar.log") as sidecar:
                started = time.monotonic()
                wait_until(
                    lambda s: s == 200,
                    300,
                    "the sidecar to be ready",
                    observe=lambda: http_get(f"http://127.0.0.1:{admin_port}/ready")[0],
                )
                synced = time.monotonic() - started
                name = f"svc-{(args.services - 1) // 20 * 20}.ns-0.svc.cluster.local"
                reply = dns.query.udp(
                    dns.message.make_query(name, "A"), "127.0.0.1", port=dns_port, timeout=5
                )
                assert reply.answer, f"{name} did not resolve"
                rss = rss_mb(sidecar.pid)
    verdict = "PASS" if rss < GOAL_MB else "MISS"
    print(
        f"sidecar with {args.services} services: ready in {synced:.1f} s, "
        f"VmRSS {rss:.1f} MB (goal < {GOAL_MB} MB: {verdict})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
