"""An HTTP/1.1 backend for the balancing tests: one process, one address, one name.

    python tests/http1_who_server.py PORT ADDRESS=NAME

Prints "ready" once listening, ends when its stdin closes. Keep-alive on (HTTP/1.1).
What it answers:

- GET /who: its name (Content-Length); every answer names it in `x-who` and repeats
  the request's `traceparent` in `x-seen-traceparent`;
- GET /chunked: its name in chunks, with a trailer `x-who: NAME`;
- POST /echo: the request body back, with `x-who` (`Expect: 100-continue` answered
  by the standard library's server with a 100 first);
- GET /big?bytes=N: N bytes, for flow control;
- GET /slow?seconds=S: its name after S seconds;
- any path under /status/CODE: that status, body NAME (a name starting with
  `sick-` answers 503 to everything);
- an `Upgrade: echo` request: 101, then every byte echoed back;
- CONNECT: 200, then every byte echoed back.
"""

from __future__ import annotations

import http.server
import socketserver
import sys
import threading
import time
import urllib.parse


class Who(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # its head and body are two writes
    name = "?"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-who", self.name)
        if "traceparent" in self.headers:  # what came, for the test to compare
            self.send_header("x-seen-traceparent", self.headers["traceparent"])
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _echo_forever(self) -> None:
        self.wfile.flush()
        sock = self.connection
        while True:
            data = sock.recv(65536)
            if not data:
                break
            sock.sendall(data)
        self.close_connection = True

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        name = self.name.encode()
        if self.headers.get("upgrade", "").lower() == "echo":
            self.send_response(101)
            self.send_header("upgrade", "echo")
            self.send_header("connection", "upgrade")
            self.end_headers()
            self._echo_forever()
            return
        if self.name.startswith("sick-"):
            self._answer(503, name)
        elif url.path == "/who":
            self._answer(200, name)
        elif url.path == "/chunked":
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.send_header("trailer", "x-who")
            self.end_headers()
            for piece in (name[:3], name[3:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nx-who: " + name + b"\r\n\r\n")
        elif url.path == "/big":
            self._answer(200, b"x" * int(query.get("bytes", "0")))
        elif url.path == "/slow":
            time.sleep(float(query.get("seconds", "1")))
            self._answer(200, name)
        elif url.path.startswith("/status/"):
            self._answer(int(url.path.rsplit("/", 1)[1]), name)
        else:
            self._answer(404, name)

    do_HEAD = do_GET
    do_DELETE = do_GET

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length) if length else b""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._read_chunked()
        if self.name.startswith("sick-"):
            self._answer(503, self.name.encode())
            return
        self._answer(200, body)

    def _read_chunked(self) -> bytes:
        body = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if not size:
                while self.rfile.readline() not in (b"\r\n", b""):
                    pass
                return body
            body += self.rfile.read(size)
            self.rfile.readline()

    def do_CONNECT(self) -> None:
        self.send_response(200)
        self.end_headers()
        self._echo_forever()


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main() -> None:
    port = int(sys.argv[1])
    address, name = sys.argv[2].split("=", 1)
    handler = type("Named", (Who,), {"name": name})
    server = Server((address, port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes it
    server.shutdown()


if __name__ == "__main__":
    main()
