"""A tiny real HTTP server on loopback that answers what a test scripts (400, 401, 429 + Retry-After, 503, ...).

Real sockets and real HTTP, so the client library, its headers, gzip and error parsing are exercised as in
production; only the server's answers are scripted.

>>> with StubServer([(503, {}, b"busy")]) as s:
...     import urllib.request, urllib.error
...     try:
...         urllib.request.urlopen(s.url + "/api/v2/write", data=b"m f=1 1")
...     except urllib.error.HTTPError as e:
...         print(e.code)
...     print(urllib.request.urlopen(s.url + "/api/v2/write", data=b"m f=1 1").status, len(s.requests))
503
204 2
"""
from __future__ import annotations

import gzip
import json
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: dict
    body: bytes = b""
    at: float = 0.0          # time.monotonic() when it arrived

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass
class StubServer:
    """Answers each request with the next scripted ``(status, headers, body)``; then ``default``.

    ``body`` may be bytes, str or a dict (sent as JSON, like InfluxDB's ``{"code": ..., "message": ...}``).
    Request bodies are un-gzipped before they are recorded.
    """

    script: list = field(default_factory=list)
    default: tuple = (204, {}, b"")
    requests: list = field(default_factory=list)

    def __post_init__(self):
        self._queue = deque(self.script)
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                u = urllib.parse.urlsplit(self.path)
                with stub._lock:
                    stub.requests.append(Request(self.command, u.path, dict(urllib.parse.parse_qsl(u.query)),
                                                 dict(self.headers), body, time.monotonic()))
                    status, headers, payload = stub._queue.popleft() if stub._queue else stub.default
                if isinstance(payload, dict):
                    payload, headers = json.dumps(payload).encode(), {"Content-Type": "application/json", **headers}
                elif isinstance(payload, str):
                    payload = payload.encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, str(v))
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = do_GET = do_PUT = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="http-stub", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def push(self, *answers) -> None:
        """Script more answers: ``push((429, {"Retry-After": "1"}, ""), (204, {}, b""))``."""
        with self._lock:
            self._queue.extend(answers)

    def start(self) -> "StubServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "StubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
