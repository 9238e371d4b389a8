"""gRPC backends that answer with their own name, as a process (for network namespaces).

Run as `python tests/grpc_who_server.py PORT ADDRESS=NAME...`: one server per
address, all on PORT, each answering /meshlet.test.Who/Name with its NAME. It
prints "ready" once all listen and serves until stdin closes.
"""

from __future__ import annotations

import sys
from concurrent import futures

import grpc

SERVICE, METHOD = "meshlet.test.Who", "Name"


def who_handler(name: str) -> grpc.GenericRpcHandler:
    def who(_request: bytes, _context: grpc.ServicerContext) -> bytes:
        return name.encode()

    # No (de)serializers: bytes in, bytes out.
    return grpc.method_handlers_generic_handler(
        SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(who)}
    )


def main() -> int:
    port = int(sys.argv[1])
    servers = []
    for spec in sys.argv[2:]:
        address, _, name = spec.partition("=")
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        server.add_generic_rpc_handlers([who_handler(name)])
        server.add_insecure_port(f"{address}:{port}")
        server.start()
        servers.append(server)
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes it
    for server in servers:
        server.stop(None).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
