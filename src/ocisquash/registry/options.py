"""How the registry client reaches registries, as one frozen value.

The image sources build it (``sources.registry.registry_options``) from their
own options; nothing here knows of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from .proxies import ProxySettings


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    """TLS, credentials, mirrors, time budget, retries and proxies of the registry client.

    ``username``/``password`` are for the registry of the reference (and its token
    server), else credentials come from ``auth_file`` or the user's auth files.
    ``insecure`` skips TLS certificate verification; ``plain_http`` speaks HTTP.
    ``mirrors`` are hosts tried before ``docker.io``. ``timeout`` is how long a
    registry may take to connect and to send an answer's headers, and may stay
    silent; it is also the window over which a body must bring at least
    ``min_rate`` bytes per second on average (0: no minimum). ``retries`` counts the attempts after the first for a temporary
    failure. ``max_connections`` is how many requests run at once.
    """

    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never shown in logs
    auth_file: Path | None = None
    ca_cert: Path | None = None
    insecure: bool = False
    plain_http: bool = False
    mirrors: tuple[str, ...] = ()
    timeout: float = 60.0
    #: a download that averages less over a ``timeout`` window is cut (and retried): any
    #: link does far better, while a registry trickling bytes to hold the client is stopped
    min_rate: int = 1024
    retries: int = 5
    max_connections: int = 4
    proxies: ProxySettings = field(default_factory=ProxySettings.from_environment)

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise UsageError(f"timeout must be a positive number of seconds, not {self.timeout}")
        if self.min_rate < 0:
            raise UsageError(f"min_rate must not be negative, not {self.min_rate}")
        if self.retries < 0:
            raise UsageError(f"retries must not be negative, not {self.retries}")
        if self.max_connections < 1:
            raise UsageError(f"max_connections must be at least 1, not {self.max_connections}")
