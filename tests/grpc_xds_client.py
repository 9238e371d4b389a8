"""A gRPC client: dials a target and reports which backends answered.

Run as `python tests/grpc_xds_client.py xds:///<svc>.<ns>.svc.cluster.local:<port>`
with GRPC_XDS_BOOTSTRAP pointing at a bootstrap file (proxyless), or with a plain
`host:port` (through a proxy). It keeps one channel (so
one xDS client) for its whole life, and for every line N read from stdin it
makes N unary calls of METHOD and prints one JSON line:

    {"names": ["backend-a", ...], "errors": ["UNAVAILABLE: ...", ...]}

It exits at the end of stdin.
"""

from __future__ import annotations

import argparse
import json
import sys

import grpc

METHOD = "/meshlet.test.Who/Name"


def call_many(
    stub: grpc.UnaryUnaryMultiCallable, count: int, timeout: float
) -> dict[str, list[str]]:
    names: list[str] = []
    errors: list[str] = []
    for _ in range(count):
        try:
            # wait_for_ready: the first calls wait for xDS to resolve instead of failing.
            reply = stub(b"", timeout=timeout, wait_for_ready=True)
            names.append(reply.decode())
        except grpc.RpcError as exc:
            errors.append(f"{exc.code().name}: {exc.details()}")
    return {"names": names, "errors": errors}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", help="an xds:/// target, or host:port")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each call")
    args = parser.parse_args()
    with grpc.insecure_channel(args.target) as channel:
        stub = channel.unary_unary(METHOD)  # no (de)serializers: bytes in, bytes out
        for line in sys.stdin:
            if not line.strip():
                continue
            result = call_many(stub, int(line), args.timeout)
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
