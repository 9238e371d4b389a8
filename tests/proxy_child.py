"""The outbound proxy alone in a process of its own, for tests that set its fd budget.

RLIMIT_NOFILE is per process: in the test process, a thread of another fixture (the
stand-in kubelet's watch, say) opening or closing a socket would move the budget under
the test. Here the proxy is the only thing that opens fds once the limit is set.

Run in the test's network namespace as
`python -m tests.proxy_child VIP PORT BACKEND_PORT BACKEND...`; it prints `ready`, then
answers one JSON line per command line on stdin:
  limit N    only N more fds may be opened (until `unlimit`)
  unlimit    the limit as it was
  no-pipes   drop the pooled splice pipes, so a relay must make its own
  counters   the proxy's and the cluster's counters
  close      close the proxy
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import sys

from meshlet.defaults import CLUSTER_DOMAIN
from meshlet.model import Endpoint, Mesh, Service, ServicePort
from meshlet.sidecar.proxy.router import ClusterRuntime, Router
from meshlet.sidecar.proxy.server import OutboundProxy
from meshlet.xds.names import cluster_name
from tests.xds_fixtures import sidecar_state

LISTEN = [("127.0.0.1", 15001), ("::1", 15001)]
CLUSTER_COUNTERS = ("connect_failures", "local_failures", "retries", "ejections")
CLUSTER_COUNTERS += ("no_endpoint", "bytes_up", "opened")


class FdLimit:
    """Only `spare` more fds may be opened while it is on.

    RLIMIT_NOFILE bounds fd numbers, not their count, and a new fd takes the lowest free
    number: so the holes below the highest open fd are filled first, or they would be
    spare fds the limit does not see."""

    def __init__(self, spare: int) -> None:
        self.saved = resource.getrlimit(resource.RLIMIT_NOFILE)
        highest = max(int(name) for name in os.listdir("/proc/self/fd"))
        self.fillers: list[int] = []
        while not self.fillers or self.fillers[-1] < highest:  # every number up to it taken
            self.fillers.append(os.open("/dev/null", os.O_RDONLY))
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.fillers[-1] + 1 + spare, self.saved[1]))

    def lift(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, self.saved)
        for fd in self.fillers:
            os.close(fd)


def counters(proxy: OutboundProxy, runtime: ClusterRuntime) -> dict[str, object]:
    hosts = {
        host.name: [host.connect_failures, host.outlier.consecutive_failures]
        for host in runtime.balancer().hosts
    }
    cluster = {name: getattr(runtime.counters, name) for name in CLUSTER_COUNTERS}
    return {"accept_failures": proxy.counters.accept_failures, "cluster": cluster, "hosts": hosts}


async def serve(vip: str, port: int, backend_port: int, backends: list[str]) -> None:
    endpoints = tuple(Endpoint(host, backend_port) for host in backends)
    web = Service(
        "web",
        "default",
        cluster_ips=(vip,),
        ports=(ServicePort("web", port, endpoints=endpoints),),
    )
    router = Router()
    router.update(sidecar_state(Mesh((web,))))
    proxy = OutboundProxy(router, random.Random(7))
    proxy.listen(LISTEN)
    runtime = router.clusters[cluster_name(web, port, CLUSTER_DOMAIN)]
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    limit: FdLimit | None = None
    print("ready", flush=True)
    while line := (await commands.readline()).decode().split():
        command, args = line[0], line[1:]
        if command == "limit":
            limit = FdLimit(int(args[0]))
        elif command == "unlimit" and limit is not None:
            limit.lift()
            limit = None
        elif command == "no-pipes":
            proxy.tcp.pipes.close()
        elif command == "close":
            await proxy.close()
        elif command != "counters":
            raise SystemExit(f"unknown command {command!r}")
        print(json.dumps(counters(proxy, runtime)), flush=True)
    await proxy.close()


if __name__ == "__main__":
    vip, port, backend_port, *hosts = sys.argv[1:]
    asyncio.run(serve(vip, int(port), int(backend_port), hosts))
