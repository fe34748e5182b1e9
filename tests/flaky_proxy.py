"""A fault-injecting HTTP proxy in front of an S3 server, on 127.0.0.1 (tests only).

While `active` and until `budget` faults are spent, it fails every `every`-th request: with a 500
(S3's InternalError), a connection reset after reading part of the request, or a slow answer
(`slow_s` before forwarding it). A request (method, path, query) chosen so fails once, and a client
that retries it succeeds on its second attempt; except every `hard_every`-th one whose path
`hard(path)` accepts, which fails `repeat` times in a row (a 500 or a reset each time): more than
a client's per-request attempts, so a retry above them must take over. `faults` records each.
"""

from __future__ import annotations

import http.client
import itertools
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KINDS = ("500", "reset", "slow")
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}
ERROR = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
         b"<Message>injected by the test proxy</Message></Error>")


def _has_body(h: BaseHTTPRequestHandler) -> bool:
    return int(h.headers.get("Content-Length") or 0) > 0 or "chunked" in h.headers.get("Transfer-Encoding", "")


def _body(h: BaseHTTPRequestHandler) -> bytes:
    """The request's body, de-chunked (uploads come chunked: aws-chunked content inside HTTP chunks)."""
    if "chunked" not in h.headers.get("Transfer-Encoding", ""):
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length else b""
    parts = []
    while True:
        size = int(h.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while h.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(parts)
        parts.append(h.rfile.read(size))
        h.rfile.readline()


class FlakyProxy:
    def __init__(self, upstream: str, every: int = 4, budget: int = 60, slow_s: float = 1.5, hard_every: int = 0,
                 repeat: int = 1, hard=lambda path: True):
        self.upstream = upstream.split("://", 1)[-1]  # host:port of the S3 server
        self.every, self.budget, self.slow_s = every, budget, slow_s
        self.hard_every, self.repeat, self.hard = hard_every, repeat, hard
        self.active = False
        self.faults: list[tuple[str, str, str]] = []  # (kind, method, path)
        self.requests = 0
        self._failed: set[tuple[str, str]] = set()
        self._again: dict[tuple[str, str], int] = {}  # a hard fault's request -> failures still to come
        self._kinds, self._hard_kinds = itertools.cycle(KINDS), itertools.cycle(("500", "reset"))
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "FlakyProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _fault(self, method: str, path: str) -> str | None:
        with self._lock:
            self.requests += 1
            key = (method, path)
            if self._again.get(key):  # a hard fault, again
                self._again[key] -= 1
                kind = next(self._hard_kinds)
            elif not self.active or len(self.faults) >= self.budget or key in self._failed or self.requests % self.every:
                return None
            else:
                self._failed.add(key)
                hard = self.hard_every and (len(self._failed) % self.hard_every == 0) and self.hard(path)
                kind = next(self._hard_kinds if hard else self._kinds)
                if hard:
                    self._again[key] = self.repeat - 1
            self.faults.append((kind, method, path))
            return kind

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        kind = self._fault(h.command, h.path)
        if kind == "reset":  # part of the request read, then the connection cut (RST): the server never sees it
            h.rfile.read1(512) if _has_body(h) else None
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
            h.connection.close()
            return
        body = _body(h)
        if kind == "500":
            h.send_response(500)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(ERROR)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(ERROR)
            return
        if kind == "slow":
            time.sleep(self.slow_s)
        conn = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP}
            conn.request(h.command, h.path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
        finally:
            conn.close()
        h.send_response(r.status, r.reason)
        head = h.command == "HEAD"  # its Content-Length is the object's, with no body
        for k, v in r.getheaders():
            if k.lower() not in HOP and (head or k.lower() != "content-length"):
                h.send_header(k, v)
        if not head:
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
