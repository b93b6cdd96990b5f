"""The registry auth challenge flow (distribution "token authentication" and HTTP Basic).

A request goes out with whatever authorization is known for its registry. When
the registry answers ``401`` with ``WWW-Authenticate``:

* ``Bearer realm="…",service="…",scope="…"``: ask the realm for a token for the
  repository's ``pull`` scope — anonymously, with the user's credentials as HTTP
  Basic, or, for an identity token, by the OAuth2 ``refresh_token`` grant — and
  send the request again with ``Authorization: Bearer <token>``. Tokens are
  cached (for every client of the same registry in the process) until
  ``expires_in`` (default 60 s) runs out, so further requests of the same
  repository skip the round trip. A token is never sent to another registry,
  even one whose challenge names the same realm.
* ``Basic realm="…"``: send the request again with the credentials as HTTP Basic.

Credentials belong to the registry they were configured for: they go to that
registry and to the token realm *its* challenge names, never to a host a
redirect led to (that host's ``401`` is an error naming it; see
``RegistryClient._request``). A realm on another site than the registry's gets
the credentials, as every client sends them, with a warning once per process, so
that the user learns where they went.

A second ``401``/``403`` after that means the credentials were refused:
``AuthError`` with a hint. Credentials are looked up only when a challenge asks
for them, so a public image never runs a credential helper.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from ..errors import AuthError
from .credentials import Credentials
from .proxies import is_loopback_host
from .transport import Transport, error_for_status, redact_url

log = logging.getLogger(__name__)

DEFAULT_EXPIRES_IN = 60
_TOKEN_BODY_LIMIT = 1 << 20
#: Renew a token this long before it expires, so it does not run out in flight.
_EXPIRY_MARGIN = 5.0

_AUTH_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*(,|$)')
_SCHEME_RE = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]*)(?:\s+|$)")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: a scheme (lower case) and its parameters."""

    scheme: str
    params: tuple[tuple[str, str], ...] = ()

    def get(self, key: str) -> str:
        for k, v in self.params:
            if k == key:
                return v
        return ""


def parse_challenges(headers: list[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` values (each may hold several challenges)."""
    out: list[Challenge] = []
    for header in headers:
        pos = 0
        while pos < len(header):
            m = _SCHEME_RE.match(header, pos)
            if not m:
                break
            scheme = m.group(1).lower()
            pos = m.end()
            params: list[tuple[str, str]] = []
            while pos < len(header):
                pm = _AUTH_PARAM_RE.match(header, pos)
                if not pm:
                    break
                value = pm.group(2)
                if value.startswith('"'):
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                params.append((pm.group(1).lower(), value))
                pos = pm.end()
                if pm.group(3) == "":
                    break
            out.append(Challenge(scheme, tuple(params)))
            while pos < len(header) and header[pos] in ", ":
                pos += 1
    return out


@dataclass(frozen=True, slots=True)
class Token:
    value: str = field(repr=False)
    expires_at: float  # time.monotonic()
    margin: float = _EXPIRY_MARGIN

    @classmethod
    def issued(cls, value: str, expires_in: float) -> Token:
        """A token valid for ``expires_in`` seconds from now (renewed a little early)."""
        return cls(value, time.monotonic() + expires_in, min(_EXPIRY_MARGIN, expires_in / 10))

    def valid(self) -> bool:
        return time.monotonic() < self.expires_at - self.margin


#: (registry, realm, service, scope, whose credentials): a token stays with the registry
#: it was fetched for, even when another registry's challenge names the same realm.
_TokenKey = tuple[str, str, str, str, str]
_token_cache: dict[_TokenKey, Token] = {}
#: The last challenge each registry sent, so a new client authorizes its first request.
_known_challenges: dict[str, Challenge] = {}
_token_cache_lock = threading.Lock()
#: (registry, realm host) pairs already warned about
_warned_realms: set[tuple[str, str]] = set()


def _site(host: str) -> str:
    """The part of a host name two hosts of one operator share: its last two labels
    (``auth.docker.io`` and ``registry-1.docker.io`` are both ``docker.io``); an
    address stands for itself."""
    name = host.lower().rstrip(".")
    if not name or name[0].isdigit() or ":" in name:
        return name
    return ".".join(name.split(".")[-2:])


def _warn_foreign_realm(registry: str, realm_host: str) -> None:
    """Say once that ``registry`` sends its credentials to a token server on another site."""
    registry_host = urlsplit("//" + registry).hostname or registry
    if _site(registry_host) == _site(realm_host):
        return
    with _token_cache_lock:
        if (registry, realm_host) in _warned_realms:
            return
        _warned_realms.add((registry, realm_host))
    log.warning("registry %s sends its credentials to a token server on another host, %s",
                registry, realm_host)


def clear_token_cache() -> None:
    """Forget every cached token and challenge (tests; after a credential change)."""
    with _token_cache_lock:
        _token_cache.clear()
        _known_challenges.clear()
        _warned_realms.clear()


class Authenticator:
    """The authorization state of one registry endpoint and one repository."""

    def __init__(self, transport: Transport, registry: str, repository: str,
                 credentials: Callable[[], Credentials | None],
                 actions: tuple[str, ...] = ("pull",)) -> None:
        self._transport = transport
        self.registry = registry
        #: the token scope asked for: ``pull`` to read; an upload would ask ``pull,push``
        self.scope = f"repository:{repository}:{','.join(actions)}"
        self._find_credentials = credentials
        self._credentials: Credentials | None = None
        self._looked_up = False
        self._challenge: Challenge | None = None
        self._lock = threading.Lock()

    def credentials(self) -> Credentials | None:
        with self._lock:
            if not self._looked_up:
                self._credentials = self._find_credentials()
                self._looked_up = True
            return self._credentials

    def _key(self, challenge: Challenge) -> _TokenKey:
        creds = self._credentials
        who = f"{creds.source}:{creds.username}" if creds is not None else ""
        return (self.registry, challenge.get("realm"), challenge.get("service"), self.scope, who)

    def header(self) -> str | None:
        """The ``Authorization`` value known for this registry without a round trip, if any."""
        challenge = self._challenge
        if challenge is None:
            with _token_cache_lock:
                challenge = _known_challenges.get(self.registry)
            if challenge is None:
                return None
        if challenge.scheme == "basic":
            creds = self.credentials()
            return creds.basic_auth if creds is not None and creds.username else None
        self.credentials()  # the cache key names whose token it is
        with _token_cache_lock:
            token = _token_cache.get(self._key(challenge))
        return f"Bearer {token.value}" if token is not None and token.valid() else None

    def answer(self, challenges: list[Challenge], *, what: str, sent: str | None = None) -> str:
        """Answer a ``401``'s challenges; return the ``Authorization`` value to retry with.

        ``sent`` is the value the refused request carried: a token another thread
        fetched meanwhile is used instead of fetching one more.
        """
        by_scheme = {c.scheme: c for c in challenges}
        if "bearer" in by_scheme:
            challenge = by_scheme["bearer"]
            if not challenge.get("realm"):
                raise AuthError("registry sent a Bearer challenge without a realm", context=what)
            creds = self.credentials()
            with _token_cache_lock:
                _known_challenges[self.registry] = challenge
            with self._lock:
                self._challenge = challenge
                key = self._key(challenge)
                with _token_cache_lock:
                    cached = _token_cache.get(key)
                if cached is not None and cached.valid() and f"Bearer {cached.value}" != sent:
                    return f"Bearer {cached.value}"
                token = self._fetch_token(challenge, creds, what=what)
                with _token_cache_lock:
                    _token_cache[key] = token
            return f"Bearer {token.value}"
        if "basic" in by_scheme:
            creds = self.credentials()
            if creds is None or not creds.username:
                raise AuthError(
                    "the registry requires a username and password", context=what,
                    hint="give them with --username/--password-stdin or log in with "
                         "'podman login'/'docker login'")
            self._challenge = by_scheme["basic"]
            with _token_cache_lock:
                _known_challenges[self.registry] = self._challenge
            return creds.basic_auth
        schemes = ", ".join(sorted(by_scheme)) or "none"
        raise AuthError(f"registry asked for unsupported authentication ({schemes})", context=what)

    def _fetch_token(self, challenge: Challenge, creds: Credentials | None, *, what: str) -> Token:
        realm = challenge.get("realm")
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise AuthError(f"registry named an invalid token realm {redact_url(realm)!r}",
                            context=what)
        if creds is not None and parts.scheme == "http" and not (
                is_loopback_host(parts.netloc) or self._transport.options.plain_http):
            raise AuthError(
                f"refusing to send credentials to a plain-HTTP token server {parts.netloc}",
                context=what, hint="use --plain-http if this is really intended")
        if creds is not None:
            _warn_foreign_realm(self.registry, parts.hostname or parts.netloc)
        service = challenge.get("service")
        # The registry's scope names what this request needs; ours is the same for pulls.
        # A challenge may name several, space-separated (a cross-repository mount needs
        # ``pull`` of the source too): the token spec sends each as its own parameter.
        scopes = (challenge.get("scope") or self.scope).split()
        headers = {"Accept": "application/json"}
        if creds is not None and creds.identity_token:
            form = [("grant_type", "refresh_token"), ("refresh_token", creds.identity_token),
                    ("client_id", "ocisquash"), *(("scope", s) for s in scopes)]
            if service:
                form.append(("service", service))
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            resp = self._transport.request("POST", realm, headers, what=what,
                                           body=urlencode(form).encode())
        else:
            query = [("scope", s) for s in scopes]
            if service:
                query.insert(0, ("service", service))
            if creds is not None and creds.username:
                query.append(("account", creds.username))
                headers["Authorization"] = creds.basic_auth
            sep = "&" if parts.query else "?"
            resp = self._transport.request("GET", realm + sep + urlencode(query), headers,
                                           what=what)
        with resp:
            if resp.status in (401, 403):
                resp.read_all(_TOKEN_BODY_LIMIT)
                if creds is not None:
                    raise AuthError(
                        f"the token server {parts.netloc} refused the credentials from "
                        f"{creds.source} (HTTP {resp.status})", context=what, status=resp.status,
                        hint="check the username and password, or log in again")
                raise AuthError(
                    f"the token server {parts.netloc} refused anonymous access "
                    f"(HTTP {resp.status})", context=what, status=resp.status,
                    hint="give credentials with --username/--password-stdin or log in with "
                         "'podman login'/'docker login'")
            if resp.status != 200:
                raise error_for_status(resp, what)
            body = resp.read_all(_TOKEN_BODY_LIMIT)
        try:
            obj = json.loads(body)
            value = obj.get("token") or obj.get("access_token")
            expires_in = obj.get("expires_in") or DEFAULT_EXPIRES_IN
        except (ValueError, AttributeError):
            raise AuthError(f"the token server {parts.netloc} answered with invalid JSON",
                            context=what) from None
        if not isinstance(value, str) or not value:
            raise AuthError(f"the token server {parts.netloc} sent no token", context=what)
        if not isinstance(expires_in, (int, float)) or expires_in <= 0:
            expires_in = DEFAULT_EXPIRES_IN
        log.debug("got a token from %s for %s, valid %ss", parts.netloc, " ".join(scopes),
                  expires_in)
        return Token.issued(value, float(expires_in))


