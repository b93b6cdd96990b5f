"""A time budget for each request, so that a registry that trickles cannot hold one forever.

A socket timeout bounds each read only: a server that sends one byte every ten
seconds never trips a 60 s timeout, and keeps a request alive for hours (a
"slowloris"). So each request gets a ``TransferGuard``, and one ``Watchdog``
thread per transport checks the guards as their windows end:

* the answer's status line and headers must arrive within one window (the
  ``timeout``) from the moment the request was sent;
* after that, each window must bring at least ``min_rate`` bytes per second
  of body on average (curl's ``--speed-limit``/``--speed-time``, git's
  ``http.lowSpeedLimit``); ``min_rate`` 0 sets no minimum.

A guard that fails shuts its connection's socket down, which wakes the thread
blocked reading it; that thread then raises the guard's ``reason``. To find the
socket while the headers are still awaited, the connection classes below attach
it to the guard that ``active`` names for the current thread.

The watchdog thread runs only while a guard is armed, so an idle client holds no
thread.
"""

from __future__ import annotations

import contextlib
import contextvars
import socket
import threading
import time
from typing import Any

import urllib3
import urllib3.connection

#: The guard of the request the current thread is sending (set by the transport).
active: contextvars.ContextVar[TransferGuard | None] = contextvars.ContextVar(
    "ocisquash_transfer_guard", default=None)


def _raw_socket(sock: Any) -> socket.socket | None:
    """The operating system's socket under ``sock`` (which may be a TLS wrapper)."""
    for _ in range(4):
        if isinstance(sock, socket.socket):
            return sock
        sock = getattr(sock, "socket", None)
    return None


class TransferGuard:
    """The time budget of one request: headers within ``window`` seconds, then at
    least ``min_rate`` bytes per second of body over each ``window``."""

    def __init__(self, watchdog: Watchdog, host: str, window: float, min_rate: int) -> None:
        self._watchdog = watchdog
        self.host = host
        self.window = window
        self.min_rate = min_rate
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._in_body = False
        self._got = 0
        #: when the current window ends (``time.monotonic()``)
        self.deadline = time.monotonic() + window
        #: why the guard cut the transfer, once it did, and whether the body was too slow
        #: (else the headers were)
        self.reason: str | None = None
        self.in_body = False

    def attach(self, sock: Any) -> None:
        """The socket the request uses (the guard shuts it down when the budget runs out)."""
        raw = _raw_socket(sock)
        if raw is None:
            return
        with self._lock:
            self._socks.append(raw)
            cut = self.reason is not None
        if cut:
            _shut(raw)

    def headers_received(self) -> None:
        """The headers arrived: from now on, the body is measured."""
        with self._lock:
            self._in_body = True
            self._got = 0
            self.deadline = time.monotonic() + self.window

    def count(self, n: int) -> None:
        """``n`` bytes of body arrived."""
        with self._lock:
            self._got += n

    def check(self, now: float) -> bool:
        """At the end of a window: start the next one, or cut the transfer (False)."""
        with self._lock:
            if self._in_body and self._got >= self.min_rate * self.window:
                self._got = 0
                self.deadline = now + self.window
                return True
            self.in_body = self._in_body
            if self._in_body:
                self.reason = (f"{self.host} sent {self._got} bytes in {self.window:g}s, less "
                               f"than the {self.min_rate} bytes per second required")
            else:
                self.reason = f"{self.host} did not answer within {self.window:g}s"
            socks = list(self._socks)
        for raw in socks:
            _shut(raw)
        return False

    def close(self) -> None:
        """The request is over (answered, read, or failed): stop watching it."""
        self._watchdog.disarm(self)


def _shut(raw: socket.socket) -> None:
    """Wake whoever reads ``raw`` (a TLS socket's own ``shutdown`` would unwrap it)."""
    with contextlib.suppress(OSError):  # closed meanwhile: nothing left to wake
        socket.socket.shutdown(raw, socket.SHUT_RDWR)


class Watchdog:
    """Checks the armed guards of one transport as their windows end."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._guards: set[TransferGuard] = set()
        self._running = False

    def guard(self, host: str, window: float, min_rate: int) -> TransferGuard:
        """An armed guard for a request to ``host``; ``close()`` it when the request ends."""
        g = TransferGuard(self, host, window, min_rate)
        with self._cond:
            self._guards.add(g)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="ocisquash-deadline", daemon=True).start()
            self._cond.notify()
        return g

    def disarm(self, g: TransferGuard) -> None:
        with self._cond:
            self._guards.discard(g)
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            try:
                while self._guards:
                    now = time.monotonic()
                    for g in [g for g in self._guards if g.deadline <= now]:
                        if not g.check(now):
                            self._guards.discard(g)
                    if self._guards:
                        self._cond.wait(max(0.0, min(g.deadline for g in self._guards)
                                            - time.monotonic()))
            finally:
                self._running = False


class _HTTPConnection(urllib3.connection.HTTPConnection):
    """Attaches its socket to the current thread's guard, new or kept alive."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        guard = active.get()
        if guard is not None:
            guard.attach(sock)  # before the TLS handshake, which a trickle could stretch too
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        guard = active.get()
        if guard is not None and self.sock is not None:
            guard.attach(self.sock)
        super().request(*args, **kwargs)


class _HTTPSConnection(_HTTPConnection, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


def guarded(manager: urllib3.PoolManager) -> urllib3.PoolManager:
    """``manager``, made to open connections that attach their sockets to guards."""
    manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
    return manager
