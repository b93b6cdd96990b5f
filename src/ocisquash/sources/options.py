"""The settings every image source accepts, as one frozen value.

Local sources use only a few of them (``cache_dir`` for a compressed archive's
unpacked blobs, ``progress``); the registry source uses the rest (credentials,
TLS, mirrors, parallelism, timeouts and retries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:  # the events are imported only where there are some
    from ..progress import ProgressCallback


@dataclass(frozen=True, slots=True)
class SourceOptions:
    """How to reach and read an image source.

    ``insecure`` skips TLS certificate verification; ``plain_http`` allows HTTP
    without TLS (``Reference.is_loopback`` tells where that is a local registry).
    ``registry_mirrors`` are hosts tried before ``docker.io``. ``timeout`` is how
    long a registry may take to answer or stay silent, and the window over which a
    download must average ``min_rate`` bytes per second (0: no minimum);
    ``retries`` counts the attempts after the first for a temporary failure. ``progress`` receives
    progress events (plain data) and must not block. ``lock_timeout`` bounds the wait
    for another process building or downloading the same thing in the cache (None:
    wait as long as it takes).
    """

    cache_dir: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never shown in logs
    auth_file: Path | None = None
    ca_cert: Path | None = None
    insecure: bool = False
    plain_http: bool = False
    registry_mirrors: tuple[str, ...] = ()
    max_parallel: int = 4
    timeout: float = 60.0
    min_rate: int = 1024
    retries: int = 5
    progress: ProgressCallback | None = None
    lock_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.max_parallel < 1:
            raise UsageError(f"max_parallel must be at least 1, not {self.max_parallel}")
        if not self.timeout > 0:
            raise UsageError(f"timeout must be a positive number of seconds, not {self.timeout}")
        if self.min_rate < 0:
            raise UsageError(f"min_rate must not be negative, not {self.min_rate}")
        if self.lock_timeout is not None and not self.lock_timeout >= 0:
            raise UsageError(f"lock timeout must be a number of seconds, not {self.lock_timeout}")
        if self.retries < 0:
            raise UsageError(f"retries must not be negative, not {self.retries}")
