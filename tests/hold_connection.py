"""Holds one keep-alive HTTP connection: a GET now, and another on the same connection
for each line read from stdin; prints the backend's name (or the error) after each.

    python -m tests.hold_connection HOST PORT
"""

from __future__ import annotations

import http.client
import sys


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    connection = http.client.HTTPConnection(host, port, timeout=10)
    while True:
        try:
            connection.request("GET", "/")
            print(connection.getresponse().read().decode().strip(), flush=True)
        except OSError as exc:
            print(f"error: {exc}", flush=True)
            return 1
        if not sys.stdin.readline():
            return 0


if __name__ == "__main__":
    sys.exit(main())
