"""gRPC backends that answer with their own name, as a process (for network namespaces).

Run as `python tests/grpc_who_server.py PORT ADDRESS=NAME...`: one server per
address, all on PORT, each answering with its NAME:

- /meshlet.test.Who/Name (unary): the name (a backend named sick-... answers
  UNAVAILABLE instead);
- /meshlet.test.Who/Count (server streaming): the request is a number N as text
  (and optionally a pause in seconds after each message), the answer N messages,
  each the name and its index, padded to 1 KiB;
- /meshlet.test.Who/Echo (bidi): each message back, prefixed with the name.

It prints "ready" once all listen and serves until stdin closes, then stops as a
terminating pod does: GOAWAY, and the calls under way may finish.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from concurrent import futures

import grpc

SERVICE, METHOD = "meshlet.test.Who", "Name"


def who_handler(name: str) -> grpc.GenericRpcHandler:
    def who(_request: bytes, context: grpc.ServicerContext) -> bytes:
        if name.startswith("sick"):
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{name} is sick")
        return name.encode()

    def count(request: bytes, _context: grpc.ServicerContext) -> Iterator[bytes]:
        count, _, pause = request.decode().partition(" ")
        for i in range(int(count)):
            yield f"{name} {i}".encode().ljust(1024, b".")
            if pause:
                time.sleep(float(pause))

    def echo(requests: Iterator[bytes], _context: grpc.ServicerContext) -> Iterator[bytes]:
        for message in requests:
            yield name.encode() + b" " + message

    # No (de)serializers: bytes in, bytes out.
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            METHOD: grpc.unary_unary_rpc_method_handler(who),
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "Echo": grpc.stream_stream_rpc_method_handler(echo),
        },
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
    # A graceful stop, as a pod's: GOAWAY, and the calls under way get 10 s to end.
    for server in servers:
        server.stop(10).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
