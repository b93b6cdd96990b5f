"""An HTTP proxy in front of a real registry that injects faults on request.

``FaultProxy`` listens on 127.0.0.1 and forwards to a plain-HTTP registry; a
second listener on 127.0.0.2 plays "blob storage on another host" for redirect
tests: it serves ``/storage/<registry path>`` by forwarding with credentials of
its own, and records whether the client sent any. Every request either listener
sees is recorded (method, path, headers, status) for the tests to check.

Faults match a request path by regular expression and apply ``times`` times
(``-1``: always):

``status``    answer ``status`` with ``headers``/``body`` instead of forwarding
``stall``     wait ``delay`` seconds, then close the connection without an answer
``delay``     wait ``delay`` seconds, then forward (to make downloads overlap)
``cut``       send the headers and ``after`` bytes of the body, then close the socket
``truncate``  send only ``after`` bytes, with a Content-Length saying so
``corrupt``   flip the byte at offset ``after``
``redirect``  answer ``307`` to the same path under the storage host (or under
              ``target``, ``http://host:port``, another server of the test's)
``no_range``  drop the ``Range`` header (a server that cannot resume)
``body``      answer ``200`` with ``headers``/``body`` (a canned manifest)

Any fault that forwards a body may also send it slowly: ``pace`` seconds between
64 KiB pieces (``slow`` is the fault that does only that), so that a client
reads a blob while it is still arriving; and damage one byte of it: ``flip`` is
the offset of a byte to invert (``-1``: none), for a body that is also cut.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate", "host", "content-length"}


@dataclass
class Fault:
    kind: str
    path: str = ""
    times: int = 1
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    after: int = 0
    delay: float = 0.0
    method: str = "GET"
    pace: float = 0.0
    flip: int = -1
    target: str = ""


@dataclass(frozen=True)
class Seen:
    server: str  # "proxy" or "storage"
    method: str
    path: str
    headers: dict[str, str]
    status: int


class FaultProxy:
    def __init__(self, upstream: str, *, storage_host: str = "127.0.0.2",
                 upstream_auth: str | None = None) -> None:
        self.upstream = upstream
        self.upstream_auth = upstream_auth
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        #: requests being answered now, and the most at once
        self.inflight = 0
        self.max_inflight = 0
        self._lock = threading.Lock()
        self._proxy = self._serve("127.0.0.1", "proxy")
        self._storage = self._serve(storage_host, "storage")
        self.host = f"127.0.0.1:{self._proxy.server_address[1]}"
        self.storage = f"{storage_host}:{self._storage.server_address[1]}"

    def add(self, kind: str, path: str = "", **kw: Any) -> Fault:
        fault = Fault(kind, path, **kw)
        with self._lock:
            self.faults.append(fault)
        return fault

    def requests(self, server: str = "proxy", path: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.server == server and re.search(path, s.path)]

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.times != 0 and f.method == method and re.search(f.path, path):
                    if f.times > 0:
                        f.times -= 1
                    return f
        return None

    def _serve(self, host: str, role: str) -> http.server.ThreadingHTTPServer:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with proxy._lock:
                    proxy.inflight += 1
                    proxy.max_inflight = max(proxy.max_inflight, proxy.inflight)
                try:
                    proxy._handle(self, role)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client hung up, as clients that give up do
                finally:
                    with proxy._lock:
                        proxy.inflight -= 1

            def do_HEAD(self) -> None:
                proxy._handle(self, role)

        httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        return httpd

    def _record(self, role: str, h: http.server.BaseHTTPRequestHandler, status: int) -> None:
        with self._lock:
            self.seen.append(Seen(role, h.command, h.path, {k.lower(): v for k, v in h.headers.items()},
                                  status))

    def _forward(self, h: http.server.BaseHTTPRequestHandler, path: str,
                 headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            conn.request(h.command, path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, [(k, v) for k, v in resp.getheaders()
                                 if k.lower() not in _HOP_BY_HOP], body
        finally:
            conn.close()

    def _send(self, h: http.server.BaseHTTPRequestHandler, status: int,
              headers: list[tuple[str, str]], body: bytes, *, length: int | None = None,
              pace: float = 0.0) -> None:
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        if h.command == "HEAD":
            return
        if not pace:
            h.wfile.write(body)
            return
        for at in range(0, len(body), 1 << 16):
            h.wfile.write(body[at:at + (1 << 16)])
            h.wfile.flush()
            time.sleep(pace)

    def _handle(self, h: http.server.BaseHTTPRequestHandler, role: str) -> None:
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_BY_HOP}
        if role == "storage":
            path = h.path.removeprefix("/storage")
            headers.pop("Authorization", None)
            if self.upstream_auth:
                headers["Authorization"] = self.upstream_auth
            status, rheaders, body = self._forward(h, path, headers)
            self._record(role, h, status)
            self._send(h, status, rheaders, body)
            return
        fault = self._take(h.command, h.path)
        kind = fault.kind if fault else ""
        if fault is not None and kind in ("status", "body"):
            status = fault.status if kind == "status" else 200
            self._record(role, h, status)
            self._send(h, status, list(fault.headers.items()), fault.body)
            return
        if fault is not None and kind == "redirect":
            self._record(role, h, 307)
            where = fault.target or f"http://{self.storage}"
            self._send(h, 307, [("Location", f"{where}/storage{h.path}")], b"")
            return
        if fault is not None and kind == "stall":
            self._record(role, h, 0)
            time.sleep(fault.delay)
            h.close_connection = True
            return
        if fault is not None and kind == "delay":
            time.sleep(fault.delay)
        if fault is not None and kind == "no_range":
            headers = {k: v for k, v in headers.items() if k.lower() != "range"}
        status, rheaders, body = self._forward(h, h.path, headers)
        self._record(role, h, status)
        pace = fault.pace if fault is not None else 0.0
        if fault is not None and 0 <= fault.flip < len(body) and status in (200, 206):
            body = body[: fault.flip] + bytes([body[fault.flip] ^ 0xFF]) + body[fault.flip + 1:]
        if fault is not None and kind == "cut" and status in (200, 206):
            self._send(h, status, rheaders, body[: fault.after], length=len(body), pace=pace)
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and kind == "truncate" and status in (200, 206):
            body = body[: fault.after]
        if fault is not None and kind == "corrupt" and status in (200, 206) and fault.after < len(body):
            body = body[: fault.after] + bytes([body[fault.after] ^ 0xFF]) + body[fault.after + 1:]
        self._send(h, status, rheaders, body, pace=pace)

    def close(self) -> None:
        for httpd in (self._proxy, self._storage):
            httpd.shutdown()
            httpd.server_close()
