"""``SlowProxy``: the registry tests' ``FaultProxy`` plus a slow trickle, a connection reset
at an offset, and a body longer than it should be.

``trickle(path, chunk, delay)`` makes every matching GET body arrive ``chunk`` bytes
at a time with ``delay`` seconds between chunks, and counts the bytes sent per
path (``sent(path)``) so a test can kill a client after N bytes. The extra fault
kinds, added with ``add`` like the base ones:

``reset``   send the headers and ``after`` bytes of the body, then reset the connection (RST)
``longer``  append ``body`` (default 4 KiB of junk) to the upstream body, Content-Length too
"""

from __future__ import annotations

import contextlib
import http.server
import re
import socket
import struct
import threading
import time
from typing import Any

from registry.faultproxy import Fault, FaultProxy


class SlowProxy(FaultProxy):
    def __init__(self, upstream: str, **kw: Any) -> None:
        self._trickle: list[tuple[str, int, float]] = []
        self._sent: dict[str, int] = {}
        self._sent_lock = threading.Lock()
        super().__init__(upstream, **kw)

    def trickle(self, path: str, chunk: int = 32 << 10, delay: float = 0.02) -> None:
        self._trickle.append((path, chunk, delay))

    def clear_trickle(self) -> None:
        self._trickle.clear()

    def sent(self, path: str) -> int:
        """Body bytes sent so far on requests whose path matches ``path``."""
        with self._sent_lock:
            return sum(n for p, n in self._sent.items() if re.search(path, p))

    def _count(self, path: str, n: int) -> None:
        with self._sent_lock:
            self._sent[path] = self._sent.get(path, 0) + n

    def _handle(self, h: http.server.BaseHTTPRequestHandler, role: str) -> None:
        fault = self._peek_custom(h.command, h.path) if role == "proxy" else None
        if fault is None:
            super()._handle(h, role)
            return
        headers = {k: v for k, v in h.headers.items()
                   if k.lower() not in ("host", "connection", "content-length")}
        status, rheaders, body = self._forward(h, h.path, headers)
        self._record(role, h, status)
        if status not in (200, 206):
            self._send(h, status, rheaders, body)
            return
        if fault.kind == "longer":
            self._send(h, status, rheaders, body + (fault.body or b"\x5a" * 4096))
            return
        # reset: part of the body, then an RST instead of the rest
        h.send_response(status)
        for k, v in rheaders:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        with contextlib.suppress(OSError):
            h.wfile.write(body[: fault.after])
            h.wfile.flush()
            self._count(h.path, min(fault.after, len(body)))
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.close_connection = True
        with contextlib.suppress(OSError):
            h.connection.close()

    def _peek_custom(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.kind in ("reset", "longer") and f.times != 0 and f.method == method \
                        and re.search(f.path, path):
                    if f.times > 0:
                        f.times -= 1
                    return f
        return None

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.kind in ("reset", "longer"):
                    continue
                if f.times != 0 and f.method == method and re.search(f.path, path):
                    if f.times > 0:
                        f.times -= 1
                    return f
        return None

    def _send(self, h: http.server.BaseHTTPRequestHandler, status: int,
              headers: list[tuple[str, str]], body: bytes, *, length: int | None = None,
              pace: float = 0.0) -> None:
        slow = next(((c, d) for p, c, d in self._trickle if re.search(p, h.path)), None)
        if slow is None or h.command != "GET" or status not in (200, 206):
            super()._send(h, status, headers, body, length=length, pace=pace)
            self._count(h.path, len(body) if h.command == "GET" else 0)
            return
        chunk, delay = slow
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        for i in range(0, len(body), chunk):
            try:
                h.wfile.write(body[i:i + chunk])
                h.wfile.flush()
            except OSError:  # the client went away (killed): nothing more to send
                h.close_connection = True
                return
            self._count(h.path, len(body[i:i + chunk]))
            time.sleep(delay)
