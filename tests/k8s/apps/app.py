"""The test apps that run in the real node's pods (Python's standard library only).

app.py serve [--port 8080]         HTTP: GET / answers this pod's name; SIGTERM stops
                                   accepting, lets requests in flight finish, exits 0
app.py get URL [--tries N]         one GET (the first try is the app's very first
                                   lookup and connection); prints the answer; exit 1
                                   if no try succeeded
app.py load URL [--rate R]         a new connection per request, R a second, until
                                   SIGTERM; one JSON line per second of counts, and
                                   the answers of the last second by pod
app.py calls URL                   one keep-alive connection for its life: for each
                                   count read from stdin, that many GETs; one JSON line
                                   each, the answers by pod and the connections opened
"""

from __future__ import annotations

import argparse
import collections
import http.client
import http.server
import json
import os
import signal
import socketserver
import sys
import threading
import time
import urllib.parse
import urllib.request

POD = os.environ.get("POD_NAME", os.uname().nodename)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # a connection per request, as the mesh's load makes

    def do_GET(self) -> None:
        delay = float(self.headers.get("X-Delay", "0") or 0)
        if delay:
            time.sleep(delay)
        body = (POD + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close waits for the requests in flight


def serve(port: int) -> int:
    server = _Server(("", port), _Handler)
    stopping = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_term)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"serving on :{port} as {POD}", flush=True)
    stopping.wait()
    server.shutdown()  # the accept loop ends
    # Connections the kernel completed before the listener closes are answered too:
    # closing it with some still queued would reset them (serve_forever leaves the one
    # that woke it last). Then no new connections, and the ones accepted are answered.
    server.socket.setblocking(False)
    while True:
        try:
            conn, peer = server.socket.accept()
        except BlockingIOError:
            break
        conn.setblocking(True)
        server.process_request(conn, peer)
    server.server_close()
    print("stopped after finishing requests in flight", flush=True)
    return 0


def _get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode().strip())


def get(url: str, tries: int) -> int:
    for attempt in range(1, tries + 1):
        try:
            print(json.dumps({"attempt": attempt, "answer": _get(url)}), flush=True)
            return 0
        except OSError as error:
            print(json.dumps({"attempt": attempt, "error": str(error)}), flush=True)
            time.sleep(1)
    return 1


def _stop_at_eof(stopping: threading.Event) -> None:
    sys.stdin.read()  # until whoever started the load (kubectl exec -i) closes stdin
    stopping.set()


def load(url: str, rate: float, duration: float, until_eof: bool) -> int:
    stopping = threading.Event()
    timer = threading.Timer(duration, stopping.set)
    timer.daemon = True
    timer.start()
    if until_eof:
        threading.Thread(target=_stop_at_eof, args=(stopping,), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    totals: collections.Counter[str] = collections.Counter({"ok": 0, "failed": 0})
    second: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    everyone: collections.Counter[str] = collections.Counter()
    next_report = time.monotonic() + 1
    while not stopping.is_set():
        started = time.monotonic()
        try:
            answer = _get(url, timeout=3)
            second[answer] += 1
            everyone[answer] += 1
            totals["ok"] += 1
        except OSError as error:
            totals["failed"] += 1
            errors[str(error)[:120]] += 1
            print(json.dumps({"failed_at": time.time(), "error": str(error)[:120]}), flush=True)
        if time.monotonic() >= next_report:
            line = {"ok": totals["ok"], "failed": totals["failed"], "by_pod": dict(second)}
            print(json.dumps({**line, "errors": dict(errors)}), flush=True)
            second.clear()
            next_report += 1
        stopping.wait(max(0.0, 1 / rate - (time.monotonic() - started)))
    by_pod = dict(everyone)
    print(
        json.dumps({"final": True, **totals, "by_pod": by_pod, "errors": dict(errors)}), flush=True
    )
    return 0


class _Counted(http.client.HTTPConnection):
    """Counts its connects: http.client opens a new one when the last was closed."""

    connects = 0

    def connect(self) -> None:
        _Counted.connects += 1
        super().connect()


def calls(url: str) -> int:
    parts = urllib.parse.urlsplit(url)
    conn = _Counted(parts.hostname or "", parts.port or 80, timeout=5)
    for line in sys.stdin:
        by_pod: collections.Counter[str] = collections.Counter()
        failed = 0
        for _ in range(int(line)):
            try:
                conn.request("GET", parts.path or "/")
                response = conn.getresponse()
                by_pod[response.read().decode().strip()] += 1
            except OSError:
                failed += 1
                conn.close()
        counts = {"by_pod": dict(by_pod), "failed": failed, "connections": _Counted.connects}
        print(json.dumps(counts), flush=True)
    conn.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    serving = commands.add_parser("serve")
    serving.add_argument("--port", type=int, default=8080)
    getting = commands.add_parser("get")
    getting.add_argument("url")
    getting.add_argument("--tries", type=int, default=1)
    loading = commands.add_parser("load")
    loading.add_argument("url")
    loading.add_argument("--rate", type=float, default=20)
    loading.add_argument("--duration", type=float, default=3600)
    loading.add_argument("--until-eof", action="store_true", help="also stop when stdin ends")
    calling = commands.add_parser("calls")
    calling.add_argument("url")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.port)
    if args.command == "get":
        return get(args.url, args.tries)
    if args.command == "calls":
        return calls(args.url)
    return load(args.url, args.rate, args.duration, args.until_eof)


if __name__ == "__main__":
    sys.exit(main())
