"""Idle keep-alive connections held through a proxy while bench/proxy.py measures (--idle N).

A sidecar in a busy pod holds many more connections than it moves bytes on
(clients' pools); whatever the proxy does per open connection, on its loop,
shows in the latency of the few that are busy. This opens N connections to a
URL's host and port, one request each (so the backend keeps them as
keep-alive), and holds them until stdin closes. They are spread over
services of their own (`idle-<i>`, same backend), under 1,000 each: a
cluster's circuit breaker allows 1,024 connections (Envoy's default too).

    python bench/proxy_idle.py N HOST:PORT [HOST:PORT ...]
"""

from __future__ import annotations

import contextlib
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshlet.devmesh.mesh import Pod

_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
PER_SERVICE = 1000


def services_for(count: int) -> list[tuple[str, str]]:
    """(name, VIP) of the services the idle connections go to."""
    return [(f"idle-{i}", f"10.96.1.{i + 1}") for i in range(-(-count // PER_SERVICE))]


@contextlib.contextmanager
def idle_connections(
    client: Pod, targets: list[tuple[str, int]], count: int, uid: int
) -> Iterator[None]:
    if not count:
        yield
        return
    argv = [sys.executable, str(Path(__file__).resolve()), str(count)]
    argv += [f"{host}:{port}" for host, port in targets]
    holder = subprocess.Popen(
        client.argv(argv, uid), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline().strip()
        if line != f"holding {count}":
            raise RuntimeError(f"the idle connections' holder said {line!r}")
        yield
    finally:
        if holder.stdin is not None:
            holder.stdin.close()  # the holder's cue to go
        try:
            holder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


def main() -> int:
    count = int(sys.argv[1])
    targets = [(t.rpartition(":")[0], int(t.rpartition(":")[2])) for t in sys.argv[2:]]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held = []
    for i in range(count):
        sock = socket.create_connection(targets[i % len(targets)], timeout=10)
        sock.sendall(_REQUEST)
        if not sock.recv(4096):
            print("closed by the peer", flush=True)
            return 1
        held.append(sock)
    print(f"holding {count}", flush=True)
    sys.stdin.read()  # until the bench closes it
    return 0


if __name__ == "__main__":
    sys.exit(main())
