"""A real forward HTTP proxy on 127.0.0.1 for the proxy tests.

``ForwardProxy`` tunnels ``CONNECT host:port`` (answering ``200`` and then copying
bytes both ways, so TLS stays between the client and the registry) and forwards
absolute-URI requests (``GET http://host:port/path``) as origin-form requests with
``Connection: close``. Host names in ``names`` are resolved by the proxy only
(``registry.test`` → ``127.0.0.1``): the client never resolves them, as with a real
corporate proxy. Each request line and its ``Proxy-Authorization`` and
``Authorization`` headers are recorded; with ``require_auth`` set, requests
without that exact ``Proxy-Authorization`` get ``407``.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import select
import socket
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

_DROP = {"proxy-authorization", "proxy-connection", "connection", "keep-alive"}


@dataclass(frozen=True)
class ProxySeen:
    method: str
    target: str  # ``host:port`` for CONNECT, the absolute URI otherwise
    proxy_authorization: str | None
    authorization: str | None
    status: int


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class ForwardProxy:
    def __init__(self, names: dict[str, str] | None = None,
                 require_auth: tuple[str, str] | None = None) -> None:
        self.names = dict(names or {})
        self.require_auth = basic(*require_auth) if require_auth else None
        self.seen: list[ProxySeen] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_CONNECT(self) -> None:
                proxy._connect(self)

            def do_GET(self) -> None:
                proxy._forward(self)

            def do_HEAD(self) -> None:
                proxy._forward(self)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()

    def requests(self, method: str | None = None) -> list[ProxySeen]:
        with self._lock:
            return [s for s in self.seen if method is None or s.method == method]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # --- internals ---------------------------------------------------------------------------

    def _record(self, h: http.server.BaseHTTPRequestHandler, status: int) -> None:
        with self._lock:
            self.seen.append(ProxySeen(h.command, h.path, h.headers.get("Proxy-Authorization"),
                                       h.headers.get("Authorization"), status))

    def _refuse(self, h: http.server.BaseHTTPRequestHandler, status: int, reason: str,
                extra: dict[str, str] | None = None) -> None:
        self._record(h, status)
        h.send_response(status, reason)
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", "0")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True

    def _authorized(self, h: http.server.BaseHTTPRequestHandler) -> bool:
        if self.require_auth is None or h.headers.get("Proxy-Authorization") == self.require_auth:
            return True
        self._refuse(h, 407, "Proxy Authentication Required",
                     {"Proxy-Authenticate": 'Basic realm="ocisquash-test-proxy"'})
        return False

    def _upstream(self, host: str, port: int) -> socket.socket | None:
        try:
            return socket.create_connection((self.names.get(host, host), port), timeout=10)
        except OSError:
            return None

    def _connect(self, h: http.server.BaseHTTPRequestHandler) -> None:
        if not self._authorized(h):
            return
        host, _, port = h.path.rpartition(":")
        upstream = self._upstream(host.strip("[]"), int(port))
        if upstream is None:
            self._refuse(h, 502, "Bad Gateway")
            return
        self._record(h, 200)
        h.send_response(200, "Connection established")
        h.end_headers()
        h.wfile.flush()
        h.close_connection = True
        self._pipe(h.connection, upstream)

    def _forward(self, h: http.server.BaseHTTPRequestHandler) -> None:
        if not self._authorized(h):
            return
        parts = urlsplit(h.path)
        if parts.scheme != "http" or not parts.hostname:
            self._refuse(h, 400, "Absolute URI Required")
            return
        upstream = self._upstream(parts.hostname, parts.port or 80)
        if upstream is None:
            self._refuse(h, 502, "Bad Gateway")
            return
        self._record(h, 0)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"{h.command} {path or '/'} HTTP/1.1", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in h.headers.items() if k.lower() not in _DROP]
        with upstream:
            upstream.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            # The upstream closes after its answer (Connection: close): copy it all back.
            while data := upstream.recv(1 << 16):
                h.connection.sendall(data)
        h.close_connection = True

    @staticmethod
    def _pipe(client: socket.socket, upstream: socket.socket) -> None:
        with upstream:
            socks = [client, upstream]
            while True:
                readable, _, _ = select.select(socks, [], [], 30)
                if not readable:
                    return
                for s in readable:
                    try:
                        data = s.recv(1 << 16)
                    except OSError:
                        return
                    if not data:
                        with contextlib.suppress(OSError):
                            (upstream if s is client else client).shutdown(socket.SHUT_WR)
                        return
                    (upstream if s is client else client).sendall(data)
