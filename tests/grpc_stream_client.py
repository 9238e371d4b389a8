"""Streaming calls on one gRPC channel, as a process (for network namespaces).

Run as `python tests/grpc_stream_client.py TARGET count N [--pause SECONDS]
[--server-pause SECONDS]` for a server-streaming call of N messages (read with a
pause after each of the first ten, so the proxy's flow control holds the sender
back; sent with a pause after each, so the call lasts), or `... echo N` for a
bidi call of N messages, each read back before the next is sent. Prints one JSON
line: {"names": [the backend of each answer], "messages": how many, "error": ""}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import grpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target")
    parser.add_argument("mode", choices=("count", "echo"))
    parser.add_argument("n", type=int)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument(
        "--server-pause", type=float, default=0.0, help="the server's pause after each message"
    )
    args = parser.parse_args()
    names: list[str] = []
    error = ""
    with grpc.insecure_channel(args.target) as channel:
        try:
            if args.mode == "count":
                call = channel.unary_stream("/meshlet.test.Who/Count")
                request = f"{args.n} {args.server_pause}" if args.server_pause else str(args.n)
                for i, message in enumerate(call(request.encode(), timeout=60)):
                    names.append(message.split(b" ", 1)[0].decode())
                    if i < 10:
                        time.sleep(args.pause)
            else:
                echo = channel.stream_stream("/meshlet.test.Who/Echo")
                outbox: list[bytes] = []

                def requests() -> object:
                    for i in range(args.n):
                        while len(outbox) < i:  # one at a time: each answered first
                            time.sleep(0.0005)
                        yield f"message {i}".encode()

                for message in echo(requests(), timeout=60):  # type: ignore[arg-type]
                    outbox.append(message)
                    names.append(message.split(b" ", 1)[0].decode())
        except grpc.RpcError as exc:
            error = f"{exc.code().name}: {exc.details()}"
    print(json.dumps({"names": names, "messages": len(names), "error": error}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
