"""Which proxy a request goes through: ``HTTPS_PROXY``, ``HTTP_PROXY`` and ``NO_PROXY``.

Read as Go's ``ProxyFromEnvironment`` and curl read them: ``https://`` URLs go
through ``HTTPS_PROXY``, ``http://`` URLs through ``HTTP_PROXY``, except hosts
that ``NO_PROXY`` names. Loopback hosts never use a proxy (as in Go):
``ProxySettings.from_environment`` lists them in ``no_proxy`` itself, so a caller
that builds ``ProxySettings`` by hand says exactly which hosts connect directly.
``ALL_PROXY`` is not read, as in Go.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import SplitResult, unquote, urlsplit

from ..errors import UsageError

#: What ``from_environment`` adds to ``NO_PROXY``: this machine is reached directly.
LOOPBACK_NO_PROXY = ("localhost", "127.0.0.0/8", "::1")


def redact_proxy(url: str) -> str:
    """A proxy URL as it may be shown: ``scheme://host:port``, never its credentials.

    Cuts at the last ``@`` so that even a password with unescaped ``/`` or ``@``
    stays hidden.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "http", url
    return f"{scheme}://{rest.rpartition('@')[2].partition('/')[0]}"


def is_loopback_host(netloc: str) -> bool:
    """Whether ``host[:port]`` names this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = urlsplit("//" + netloc).hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


@dataclass(frozen=True, slots=True)
class Proxy:
    """A proxy to send requests through: its URL without credentials, and its auth header."""

    url: str
    authorization: str | None = field(default=None, repr=False)


def _env(*names: str) -> str:
    """The first of ``names`` set to a non-empty value (lower case first, as curl reads them)."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return ""


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The proxies to use: ``https`` and ``http`` proxy URLs, and the ``no_proxy`` entries.

    ``no_proxy`` entries are hosts (``registry.example.com``), domain suffixes
    (``example.com`` and ``.example.com`` both match the domain and its subdomains,
    ``*.example.com`` too), ``host:port``, IP addresses and CIDR ranges; ``*``
    turns proxies off. The default value uses no proxy at all.
    """

    https: str = ""
    http: str = ""
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def parse(cls, *, https: str = "", http: str = "", no_proxy: str = "") -> ProxySettings:
        """Settings from the variables' values (``no_proxy`` comma-separated), as given."""
        entries = tuple(e.strip().lower() for e in no_proxy.split(",") if e.strip())
        return cls(https.strip(), http.strip(), entries)

    @classmethod
    def from_environment(cls) -> ProxySettings:
        """The environment's proxies; lower-case names win; loopback hosts go direct."""
        parsed = cls.parse(https=_env("https_proxy", "HTTPS_PROXY"),
                           http=_env("http_proxy", "HTTP_PROXY"),
                           no_proxy=_env("no_proxy", "NO_PROXY"))
        return cls(parsed.https, parsed.http, parsed.no_proxy + LOOPBACK_NO_PROXY)

    def proxy_for(self, url: str) -> Proxy | None:
        """The proxy to reach ``url`` through, or None to connect directly."""
        parts = urlsplit(url)
        configured = self.https if parts.scheme == "https" else self.http
        if not configured or self._bypassed(parts):
            return None
        return parse_proxy(configured, "HTTPS_PROXY" if parts.scheme == "https" else "HTTP_PROXY")

    def _bypassed(self, parts: SplitResult) -> bool:
        host = (parts.hostname or "").rstrip(".")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        for entry in self.no_proxy:
            if entry == "*":
                return True
            if entry.startswith("[") or entry.count(":") == 1:  # host:port, [v6]:port
                entry_parts = urlsplit("//" + entry)
                name = entry_parts.hostname or ""
                try:
                    entry_port = entry_parts.port
                except ValueError:
                    continue
                if entry_port is not None and entry_port != port:
                    continue
                entry = name
            entry = entry.removeprefix("*").rstrip(".")
            if _host_matches(host, entry):
                return True
        return False


def _host_matches(host: str, entry: str) -> bool:
    if not entry:
        return False
    if entry[0].isdigit() or ":" in entry:  # an address or a CIDR range
        import ipaddress  # only NO_PROXY entries of addresses pay for this import

        try:
            net = ipaddress.ip_network(entry.strip("[]"), strict=False)
            return ipaddress.ip_address(host) in net
        except ValueError:
            pass
    domain = entry.lstrip(".")
    return host == domain or host.endswith("." + domain)


def parse_proxy(text: str, variable: str) -> Proxy:
    """A proxy URL as configured (``http://[user:pass@]host[:port]``; scheme optional)."""
    if "://" not in text:
        text = "http://" + text
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    userinfo, at, hostport = rest.partition("/")[0].rpartition("@")
    shown = redact_proxy(f"{scheme}://{hostport}")
    if scheme not in ("http", "https") or not hostport:
        raise UsageError(f"unsupported proxy {shown} in {variable}",
                         hint="give an http://HOST:PORT proxy")
    authorization = None
    if at:
        import base64

        user, _, password = userinfo.partition(":")
        token = f"{unquote(user)}:{unquote(password)}".encode()
        authorization = "Basic " + base64.b64encode(token).decode()
    return Proxy(shown, authorization)
