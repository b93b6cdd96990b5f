"""What registries that may speak either HTTPS or plain HTTP turned out to speak.

A loopback registry (or any with ``--insecure``) is tried over HTTPS first and
over HTTP when the TLS handshake or the connection fails. The answer is learned
for the rest of the run, and an HTTP answer is also kept for later runs in a
small JSON file that the owner of ``SchemeHints`` names (the image cache keeps
it), so that the next run asks over HTTP first and skips loading TLS settings.
The file is only a hint: a wrong one costs one failed attempt.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

#: The name of the hints file in the cache directory.
HINTS_FILE = "registry-schemes.json"


class SchemeHints:
    """Schemes of ``host[:port]``s: learned in this run, and remembered from earlier ones."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._learned: dict[str, str] = {}
        #: the file's answers as they were when this object read it
        self._earlier: dict[str, str] = {}
        if path is not None:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                data = None
            if isinstance(data, dict):
                self._earlier = {str(k): str(v) for k, v in data.items() if v in ("http", "https")}

    @classmethod
    def in_cache(cls, cache_dir: Path | None) -> SchemeHints:
        """Hints kept in ``cache_dir`` (in memory only without one)."""
        return cls(Path(cache_dir) / HINTS_FILE if cache_dir is not None else None)

    def learned(self, host: str) -> str | None:
        """What ``host`` spoke earlier in this run, if anything was learned."""
        with self._lock:
            return self._learned.get(host)

    def earlier(self, host: str) -> str | None:
        """What an earlier run found ``host`` to speak."""
        return self._earlier.get(host)

    def learn(self, host: str, scheme: str) -> None:
        """Note what ``host`` speaks; an HTTP answer is kept for later runs too."""
        with self._lock:
            self._learned[host] = scheme
            if scheme != "http" or self.path is None or self._earlier.get(host) == scheme:
                return
            self._earlier[host] = scheme
            data = json.dumps(self._earlier, sort_keys=True).encode()
        from ..store import write_atomic

        with contextlib.suppress(OSError):  # only a hint
            write_atomic(self.path, data)
