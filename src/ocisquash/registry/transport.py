"""One HTTP request to a registry: TLS, timeouts, redirects, scheme fallback, retries.

TLS is verified by default against the system's CAs (OpenSSL honours
``SSL_CERT_FILE``/``SSL_CERT_DIR``), plus ``RegistryOptions.ca_cert`` when given;
``insecure`` turns verification off. ``plain_http`` speaks HTTP to the registry.

A registry on a loopback address may speak plain HTTP without a flag, as local
test registries usually do: like Docker does for its insecure registries, HTTPS
is tried first and, when the TLS handshake or the connection fails (but not when
a certificate is refused: that server does speak TLS), the same request is sent
over HTTP, and the answer is noted in the caller's ``SchemeHints``. ``insecure``
allows the same fallback for any host.

Redirects are followed here, not by urllib3, so that the ``Authorization``
header is dropped as soon as a redirect leaves the registry's host (blob storage
gets its own signed URL and must never see the registry credentials).

Proxies come from ``RegistryOptions.proxies`` (by default the environment's, see
``proxies.py``): ``https://`` URLs go through a CONNECT tunnel, so TLS and its
checks stay end to end; ``http://`` URLs are relayed by the proxy. A failure of the proxy itself is reported as such, naming the proxy (without
its credentials); over plain HTTP the proxy reports its failures as statuses
(502, 503, 504), and the error for those names the proxy as well.

Failures become typed errors: a connection that times out or is cut, and the
statuses 408, 429, 500, 502, 503 and 504, raise ``TransientRegistryError``
(``temporary`` is true), which ``RetryPolicy`` retries with exponential backoff,
honouring ``Retry-After``. What waiting will not mend fails at once, as skopeo
does, with ``RegistryUnreachableError``: a host name that does not resolve (with
no network at all, too), and a connection refused (or without a route) by a host
that has not answered once in this run. A host that did answer and then refuses
is restarting, and that is retried.
"""

from __future__ import annotations

import errno
import json
import logging
import random
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import TypeVar
from urllib.parse import urljoin, urlsplit, urlunsplit

import urllib3
import urllib3.exceptions

from ..errors import (
    AuthError,
    ImageNotFoundError,
    OcisquashError,
    RegistryError,
    RegistryUnreachableError,
    TransientRegistryError,
    UsageError,
)
from .deadline import TransferGuard, Watchdog, active, guarded
from .options import RegistryOptions
from .proxies import Proxy, is_loopback_host
from .schemes import SchemeHints

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Statuses that say "try again later" (as go-containerregistry's transport counts them).
TEMPORARY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: What a forward proxy answers when it cannot get a response from the registry.
_GATEWAY_STATUSES = frozenset({502, 503, 504})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10
_ERROR_BODY_LIMIT = 8192
_USER_AGENT = "ocisquash"


def redact_url(url: str) -> str:
    """The URL without query and credentials: signed storage URLs carry secrets there."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _tunnel_failure(e: BaseException) -> str | None:
    """The proxy's answer when a CONNECT was refused (``"407 Proxy Authentication Required"``)."""
    if len(e.args) > 1 and isinstance(e.args[-1], BaseException):  # a ProxyError's cause
        e = e.args[-1]
    reason = _reason(e)
    prefix = "Tunnel connection failed: "
    return reason[len(prefix):] if reason.startswith(prefix) else None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a registry's API lives: ``host[:port]`` and a scheme.

    ``scheme`` is ``https``, ``http``, or ``auto`` (HTTPS, falling back to HTTP
    when the TLS handshake or the connection fails).
    """

    host: str
    scheme: str = "https"

    @classmethod
    def for_host(cls, host: str, options: RegistryOptions) -> Endpoint:
        """The endpoint of a registry named by host, honouring the TLS options."""
        if options.plain_http:
            return cls(host, "http")
        if options.insecure or is_loopback_host(host):
            return cls(host, "auto")
        return cls(host, "https")

    @classmethod
    def parse(cls, text: str, options: RegistryOptions) -> Endpoint:
        """A mirror as given by the user: ``host[:port]`` or ``http(s)://host[:port]``."""
        if "://" in text:
            parts = urlsplit(text)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise UsageError(f"invalid registry mirror {text!r}",
                                 hint="use HOST[:PORT] or https://HOST[:PORT]")
            return cls(parts.netloc, parts.scheme)
        return cls.for_host(text.strip().rstrip("/"), options)


def make_ssl_context(options: RegistryOptions) -> ssl.SSLContext:
    """The TLS settings of every connection: verified unless ``insecure``."""
    ctx = ssl.create_default_context()
    if options.ca_cert is not None:
        path = Path(options.ca_cert)
        try:
            ctx.load_verify_locations(cafile=str(path))
        except (OSError, ssl.SSLError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise UsageError(f"cannot load CA certificate {path}: {reason}",
                             hint="give a PEM file with --ca-cert") from None
    if options.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _is_cert_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        if any(isinstance(a, ssl.SSLCertVerificationError) for a in seen.args):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils  # only a server asking to wait pays for this import

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now_ts = time.time() if now is None else now
    return max(0.0, when.timestamp() - now_ts)


class Response:
    """A response whose body is read raw (no content decoding) with typed errors."""

    def __init__(self, raw: urllib3.BaseHTTPResponse, url: str, via: str | None = None,
                 origin: str | None = None, guard: TransferGuard | None = None) -> None:
        self._raw = raw
        self.url = url
        #: the time budget of the body (see ``deadline``); closed with the response
        self._guard = guard
        #: ``host[:port]`` the request was sent to before any redirect
        self.origin = origin if origin is not None else urlsplit(url).netloc
        #: the forward proxy that relayed a plain-HTTP request (its URL without
        #: credentials), whose own failures then arrive as ordinary statuses
        self.via = via
        self.status = raw.status
        self.headers = raw.headers
        self._done = False

    @property
    def host(self) -> str:
        """``host[:port]`` that sent this response (after redirects)."""
        return urlsplit(self.url).netloc

    @property
    def elsewhere(self) -> bool:
        """Whether a redirect led to another host (blob storage) that sent this response."""
        return self.host != self.origin

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return str(value) if value is not None else None

    def header_list(self, name: str) -> list[str]:
        return list(self.headers.getlist(name))

    def read(self, n: int, *, some: bool = False) -> bytes:
        """Up to ``n`` bytes of the body, ``b""`` at its end; a cut raises a transient error.
        With ``some``, what one read of the connection gives (at least one byte) rather
        than waiting for all ``n``."""
        try:
            if some and hasattr(self._raw, "read1"):  # urllib3 ≥ 2.1
                data = self._raw.read1(n, decode_content=False)
            else:
                data = self._raw.read(n, decode_content=False)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            self._done = True
            self._raw.close()
            self._check_budget()
            raise TransientRegistryError(f"connection broke while reading the body: {_reason(e)}",
                                         context=redact_url(self.url)) from None
        if not data:
            self._done = True
            self._check_budget()
        elif self._guard is not None:
            self._guard.count(len(data))
        return data

    def _check_budget(self) -> None:
        """Raise the guard's reason if it was the guard that cut the body."""
        guard = self._guard
        if guard is not None:
            guard.close()
            if guard.reason is not None:
                raise _too_slow(guard, redact_url(self.url))

    def read_all(self, limit: int) -> bytes:
        """The whole body; more than ``limit`` bytes is an error of the caller's choosing."""
        chunks: list[bytes] = []
        total = 0
        while chunk := self.read(min(1 << 16, limit + 1 - total) or 1):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                break
        return b"".join(chunks)

    def close(self) -> None:
        """Give the connection back when the body was read, else close it."""
        if self._guard is not None:
            self._guard.close()
        if not self._done:
            self._raw.close()
        self._raw.release_conn()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _too_slow(guard: TransferGuard, what: str) -> TransientRegistryError:
    """The error of a request whose time budget ran out (retried: it may be a bad moment)."""
    return TransientRegistryError(
        guard.reason or "", context=what,
        hint="the registry sends too slowly; on a slow link lower --min-rate or raise --timeout"
        if guard.in_body else "")


#: ``connect()`` failures that mean nothing listens there (or no route leads there)
_UNREACHABLE_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH})


def _os_cause(e: BaseException) -> OSError | None:
    """The operating system's error under a urllib3 one (``gaierror``, refused, …)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        cur = todo.pop(0)
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, OSError) and not isinstance(cur, urllib3.exceptions.HTTPError) \
                and (cur.errno is not None or isinstance(cur, socket.gaierror)):
            return cur
        todo += [cur.__cause__, cur.__context__,
                 *(a for a in cur.args if isinstance(a, BaseException))]
    return None


def _reason(e: BaseException) -> str:
    """A short reason for a network error, without the URLs urllib3 puts in."""
    inner = e
    if isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason is not None:
        inner = e.reason
    if isinstance(inner, urllib3.exceptions.ProtocolError) and inner.args and isinstance(
            inner.args[-1], BaseException):
        inner = inner.args[-1]
    text = str(inner)
    if isinstance(inner, urllib3.exceptions.NewConnectionError):
        text = text.rpartition(": ")[2] or text
    return text or type(inner).__name__


def error_for_status(resp: Response, what: str) -> RegistryError | ImageNotFoundError:
    """The typed error for a non-success response; reads (a bounded part of) its body."""
    detail = ""
    try:
        body = resp.read_all(_ERROR_BODY_LIMIT)
        obj = json.loads(body) if body else None
        if isinstance(obj, dict) and isinstance(obj.get("errors"), list) and obj["errors"]:
            first = obj["errors"][0]
            if isinstance(first, dict):
                detail = f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")
    except (OcisquashError, ValueError):
        pass
    status = resp.status
    suffix = f" ({detail})" if detail else ""
    if resp.elsewhere:
        # Blob storage the registry redirected to answered: blame that host, not the
        # registry, and never suggest sending the registry's credentials there.
        message = (f"{resp.host}, where the registry {resp.origin} redirected the request, "
                   f"answered HTTP {status}{suffix}")
        if status in (401, 403):
            return AuthError(message, context=what, status=status,
                             hint=f"the registry's credentials are never sent to {resp.host}: "
                                  "the registry's storage is misconfigured or its signed URL "
                                  "expired; try again, or ask the registry's operator")
        if status == 404:
            return ImageNotFoundError(message, context=what)
        if status in TEMPORARY_STATUSES:
            return TransientRegistryError(message, context=what, status=status,
                                          retry_after=parse_retry_after(resp.header("Retry-After")))
        return RegistryError(message, context=what, status=status)
    if resp.via is not None and status in _GATEWAY_STATUSES:
        # A forward proxy reports its own failures (it cannot resolve or reach the
        # registry, or the registry timed out) as these statuses: say who sent them.
        return TransientRegistryError(
            f"HTTP {status} through proxy {resp.via}{suffix}: the proxy, or the registry "
            f"behind it, failed", context=what, status=status,
            retry_after=parse_retry_after(resp.header("Retry-After")),
            hint="if the proxy cannot reach the registry, check HTTP_PROXY, or list the "
                 "registry in NO_PROXY to connect directly")
    if status == 404:
        return ImageNotFoundError(f"not found in the registry{suffix}", context=what,
                                  hint="check the repository name, tag or digest")
    if status in (401, 403):
        return AuthError(
            f"{'access denied' if status == 403 else 'authentication required'} "
            f"(HTTP {status}){suffix}", context=what, status=status,
            hint="check the image name; for a private image give credentials with "
                 "--username/--password-stdin or log in with 'podman login'/'docker login'")
    if status in TEMPORARY_STATUSES:
        return TransientRegistryError(
            f"registry answered HTTP {status}{suffix}", context=what, status=status,
            retry_after=parse_retry_after(resp.header("Retry-After")))
    return RegistryError(f"registry answered HTTP {status}{suffix}", context=what, status=status)


class Transport:
    """Sends requests with one pool of connections shared by all threads."""

    def __init__(self, options: RegistryOptions, hints: SchemeHints | None = None) -> None:
        self.options = options
        self.timeout = options.timeout
        if options.ca_cert is not None:
            make_ssl_context(options)  # a bad --ca-cert is a usage error at once
        self._pools: dict[tuple[str, Proxy | None], urllib3.PoolManager] = {}
        self._pools_lock = threading.Lock()
        self.proxies = options.proxies
        #: what ``auto`` endpoints speak: owned by the caller, who may keep it for later runs
        self.hints = hints if hints is not None else SchemeHints()
        #: cuts requests that outlast their time budget (see ``deadline``)
        self._watchdog = Watchdog()
        #: hosts (and proxies) that answered in this run: a refusal from one of them is
        #: temporary (it restarts), from any other it is not
        self._reached: set[str] = set()

    def _pool(self, scheme: str, proxy: Proxy | None = None) -> urllib3.PoolManager:
        """The connection pool of ``scheme`` (through ``proxy``); TLS settings only when needed."""
        with self._pools_lock:
            pool = self._pools.get((scheme, proxy))
            if pool is None:
                kw: dict[str, object] = {}
                if scheme == "https":
                    kw = {"ssl_context": make_ssl_context(self.options),
                          "cert_reqs": ssl.CERT_NONE if self.options.insecure else ssl.CERT_REQUIRED}
                common: dict[str, object] = {
                    "num_pools": 16,
                    "maxsize": self.options.max_connections + 2,
                    "retries": False,
                    "timeout": urllib3.Timeout(connect=self.timeout, read=self.timeout),
                }
                if proxy is None:
                    pool = urllib3.PoolManager(**common, **kw)  # type: ignore[arg-type]
                else:
                    # HTTPS goes through a CONNECT tunnel: TLS with the registry stays end to end.
                    headers = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
                    pool = urllib3.ProxyManager(proxy.url, proxy_headers=headers,
                                                **common, **kw)  # type: ignore[arg-type]
                self._pools[(scheme, proxy)] = pool = guarded(pool)
            return pool

    def base_url(self, endpoint: Endpoint) -> str:
        """``scheme://host`` of the endpoint as far as known (``auto`` reads as HTTPS until it fell back)."""
        scheme = self.hints.learned(endpoint.host) or endpoint.scheme
        return f"{'https' if scheme == 'auto' else scheme}://{endpoint.host}"

    def open(self, method: str, endpoint: Endpoint, path: str, headers: Mapping[str, str],
             *, what: str, body: bytes | None = None) -> Response:
        """Send a request to a registry endpoint, falling back from HTTPS to HTTP for ``auto``."""
        scheme = self.hints.learned(endpoint.host) or endpoint.scheme
        if scheme != "auto":
            return self.request(method, f"{scheme}://{endpoint.host}{path}", headers, what=what,
                                body=body)
        if self.hints.earlier(endpoint.host) == "http":
            # An earlier run learned that this host speaks plain HTTP: try that first, and
            # skip loading TLS settings. A TLS server answers plain HTTP with 400 or a reset.
            try:
                resp = self._request(method, f"http://{endpoint.host}{path}", headers, what=what,
                                     body=body, fallback=True)
                if resp.status != 400:
                    self.hints.learn(endpoint.host, "http")
                    return resp
                resp.close()
            except _FallbackSignal:
                pass
        try:
            resp = self._request(method, f"https://{endpoint.host}{path}", headers, what=what,
                                 body=body, fallback=True)
            self.hints.learn(endpoint.host, "https")
            return resp
        except _FallbackSignal as first:
            log.info("%s does not speak TLS (%s); using plain HTTP", endpoint.host, first.reason)
            try:
                resp = self.request(method, f"http://{endpoint.host}{path}", headers, what=what,
                                    body=body)
            except (TransientRegistryError, RegistryUnreachableError) as e:
                raise type(e)(
                    f"cannot connect over HTTPS ({first.reason}) nor over HTTP ({e.message})",
                    context=what, hint=e.hint) from None
            self.hints.learn(endpoint.host, "http")
            return resp

    def request(self, method: str, url: str, headers: Mapping[str, str], *, what: str,
                body: bytes | None = None) -> Response:
        """Send one request and follow redirects; the ``Authorization`` header stays home."""
        return self._request(method, url, headers, what=what, body=body, fallback=False)

    def _request(self, method: str, url: str, headers: Mapping[str, str], *, what: str,
                 body: bytes | None, fallback: bool) -> Response:
        origin = urlsplit(url)
        hdrs = {"User-Agent": _USER_AGENT, **headers}
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            raw, proxy, guard = self._send(method, current, hdrs, body, what=what,
                                           fallback=fallback and current == url)
            location = raw.headers.get("Location")
            if raw.status not in _REDIRECT_STATUSES or not location:
                # Over plain HTTP the proxy relays the request itself (no CONNECT
                # tunnel), so its own failures arrive as statuses: the response says so.
                via = proxy.url if proxy is not None and current.startswith("http://") else None
                return Response(raw, current, via, origin.netloc, guard)
            try:
                raw.drain_conn()
            finally:
                guard.close()
            raw.release_conn()
            target = urljoin(current, location)
            parts = urlsplit(target)
            if parts.scheme not in ("http", "https"):
                raise RegistryError(f"redirected to an unsupported URL scheme {parts.scheme!r}",
                                    context=what)
            if parts.netloc != origin.netloc or (origin.scheme == "https" and parts.scheme != "https"):
                # Credentials are for the registry only, never for blob storage elsewhere.
                hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
            if raw.status == 303:
                method, body = "GET", None
            log.debug("%s redirected to %s", redact_url(current), redact_url(target))
            current = target
        raise RegistryError(f"more than {MAX_REDIRECTS} redirects", context=what)

    def _send(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None,
              *, what: str, fallback: bool
              ) -> tuple[urllib3.BaseHTTPResponse, Proxy | None, TransferGuard]:
        """Send one request within its time budget; return the response (its headers
        read), the proxy it went through and the guard that keeps timing its body."""
        guard = self._watchdog.guard(urlsplit(url).netloc, self.timeout, self.options.min_rate)
        token = active.set(guard)  # the connection attaches its socket to the guard
        try:
            raw, proxy = self._send_once(method, url, headers, body, what=what, fallback=fallback)
        except (OcisquashError, _FallbackSignal):
            guard.close()
            if guard.reason is not None:  # the guard cut the connection: that is the error
                raise _too_slow(guard, what) from None
            raise
        except BaseException:
            guard.close()
            raise
        finally:
            active.reset(token)
        guard.headers_received()
        return raw, proxy, guard

    def _send_once(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None,
                   *, what: str, fallback: bool) -> tuple[urllib3.BaseHTTPResponse, Proxy | None]:
        """Send one request (through the proxy the options give for ``url``, which is
        returned with the response)."""
        insecure = self.options.insecure
        scheme = urlsplit(url).scheme
        proxy = self.proxies.proxy_for(url)
        if proxy is not None:
            log.debug("%s through proxy %s", redact_url(url), proxy.url)
        try:
            with warnings.catch_warnings():
                if insecure:
                    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                raw = self._pool(scheme, proxy).request(
                                          method, url, headers=dict(headers), body=body,
                                          preload_content=False, redirect=False, retries=False,
                                          decode_content=False)
        except urllib3.exceptions.ProxyError as e:
            assert proxy is not None
            answer = _tunnel_failure(e)
            if answer is not None:
                raise _proxy_refused(proxy, answer, urlsplit(url).netloc, what) from None
            raise _proxy_unreachable(proxy, e, what,
                                     reached=proxy.url in self._reached) from None
        except urllib3.exceptions.SSLError as e:
            if _is_cert_error(e):
                raise RegistryError(
                    f"TLS certificate of {urlsplit(url).netloc} not trusted: {_reason(e)}",
                    context=what,
                    hint="give the registry's CA with --ca-cert, or skip verification with "
                         "--insecure") from None
            if fallback:
                raise _FallbackSignal(_reason(e)) from None
            raise RegistryError(f"TLS handshake with {urlsplit(url).netloc} failed: {_reason(e)}",
                                context=what,
                                hint="use --plain-http if the registry speaks plain HTTP") from None
        except urllib3.exceptions.TimeoutError as e:
            # A refused connection is a NewConnectionError, which urllib3 files under timeouts.
            refused = isinstance(e, urllib3.exceptions.NewConnectionError)
            if refused:
                self._raise_unreachable(url, e, what)  # a name that does not resolve
            if fallback and not isinstance(e, urllib3.exceptions.ReadTimeoutError):
                raise _FallbackSignal(_reason(e)) from None
            if refused:
                self._raise_unreachable(url, e, what, refused=True)
                raise TransientRegistryError(
                    f"cannot connect to {urlsplit(url).netloc}: {_reason(e)}", context=what
                ) from None
            raise TransientRegistryError(
                f"{urlsplit(url).netloc} did not answer within {self.timeout:g}s", context=what
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            answer = _tunnel_failure(e) if proxy is not None else None
            if proxy is not None and answer is not None:
                raise _proxy_refused(proxy, answer, urlsplit(url).netloc, what) from None
            if fallback:
                raise _FallbackSignal(_reason(e)) from None
            raise TransientRegistryError(
                f"cannot connect to {urlsplit(url).netloc}: {_reason(e)}", context=what
            ) from None
        if proxy is not None:
            self._reached.add(proxy.url)
        if proxy is not None and raw.status == 407:
            raw.drain_conn()
            raw.release_conn()
            raise _proxy_refused(proxy, f"407 {raw.reason or 'Proxy Authentication Required'}",
                                 urlsplit(url).netloc, what)
        if proxy is None or scheme == "https":  # else the proxy answered, maybe for itself
            self._reached.add(urlsplit(url).netloc)
        return raw, proxy

    def _raise_unreachable(self, url: str, e: BaseException, what: str, *,
                           refused: bool = False) -> None:
        """Raise ``RegistryUnreachableError`` if ``e`` says waiting will not help: the
        host name does not resolve, or (with ``refused``) a host not reached before in
        this run refuses the connection or has no route to it."""
        cause = _os_cause(e)
        parts = urlsplit(url)
        if isinstance(cause, socket.gaierror):
            raise RegistryUnreachableError(
                f"cannot resolve the host name {parts.hostname}: {cause.strerror or cause}",
                context=what,
                hint="check the registry's name, and that this machine has a network and DNS"
            ) from None
        if refused and cause is not None and cause.errno in _UNREACHABLE_ERRNOS \
                and parts.netloc not in self._reached:
            raise RegistryUnreachableError(
                f"cannot connect to {parts.netloc}: {_reason(e)}", context=what,
                hint="nothing answers there: check the registry's host and port, that it runs, "
                     "and the network") from None

    def close(self) -> None:
        with self._pools_lock:
            for pool in self._pools.values():
                pool.clear()


def _proxy_unreachable(proxy: Proxy, e: BaseException, what: str,
                       *, reached: bool) -> RegistryError:
    """The proxy itself cannot be reached (refused, timed out, its TLS failed); not
    temporary when its name does not resolve, or it refused without having answered
    once in this run (``reached``)."""
    inner: BaseException = e
    if len(e.args) > 1 and isinstance(e.args[-1], BaseException):
        inner = e.args[-1]
    if isinstance(inner, urllib3.exceptions.ConnectTimeoutError) and not isinstance(
            inner, urllib3.exceptions.NewConnectionError):  # refused is filed under timeouts
        reason = "no answer (timed out)"
    else:
        reason = _reason(inner)
    reason = reason.removeprefix("[Errno 111] ").removeprefix("[Errno 113] ")
    cause = _os_cause(inner)
    permanent = isinstance(cause, socket.gaierror) or (
        not reached and cause is not None and cause.errno in _UNREACHABLE_ERRNOS)
    kind = RegistryUnreachableError if permanent else TransientRegistryError
    return kind(
        f"cannot reach the registry through proxy {proxy.url}: {reason.lower()}", context=what,
        hint="the proxy, not the registry, failed: check HTTPS_PROXY/HTTP_PROXY, or list the "
             "registry in NO_PROXY to connect directly")


def _proxy_refused(proxy: Proxy, answer: str, netloc: str, what: str) -> RegistryError:
    """The proxy answered with an error instead of connecting to the registry.

    407 (the proxy wants other credentials) will not mend by retrying; the others
    (502, 503, …) are the proxy's temporary trouble.
    """
    message = f"proxy {proxy.url} refused to connect to {netloc}: {answer}"
    if answer.startswith("407"):
        hint = ("check the user and password in the proxy URL (http://USER:PASSWORD@HOST:PORT)"
                if proxy.authorization else
                "the proxy wants credentials: give them in the proxy URL "
                "(http://USER:PASSWORD@HOST:PORT)")
        return RegistryError(message, context=what, hint=hint, status=407)
    return TransientRegistryError(message, context=what,
                                  hint="the proxy, not the registry, failed; try again later "
                                       "or list the registry in NO_PROXY")


class _FallbackSignal(Exception):
    """HTTPS failed in a way that plain HTTP may fix (internal to ``Transport.open``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a temporary failure is retried.

    ``attempts`` counts the first try. The delay doubles from ``base_delay`` up to
    ``max_delay`` with jitter; a server's ``Retry-After`` replaces it, up to
    ``max_retry_after`` (a longer wait fails instead: the budget is bounded).
    """

    attempts: int = 6
    base_delay: float = 0.25
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def from_options(cls, options: RegistryOptions) -> RetryPolicy:
        return cls(attempts=max(options.retries, 0) + 1)

    def delay(self, attempt: int, error: OcisquashError) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, (int, float)):
            return float(retry_after)
        d: float = min(self.base_delay * (2 ** attempt), self.max_delay)
        return d * (0.75 + random.random() / 4)

    def call(self, operation: Callable[[], T], *,
             on_retry: Callable[[int, OcisquashError, float], None] | None = None) -> T:
        """Run ``operation``, retrying while it raises errors whose ``temporary`` is true."""
        attempt = 0
        while True:
            try:
                return operation()
            except OcisquashError as e:
                if not getattr(e, "temporary", False):
                    raise
                delay = self.delay(attempt, e)
                attempt += 1
                if attempt >= self.attempts or delay > self.max_retry_after:
                    if not e.hint:
                        e.hint = (f"gave up after {attempt} attempts; try again later"
                                  if delay <= self.max_retry_after
                                  else f"the registry asked to wait {delay:.0f}s")
                    raise
                log.info("%s; retrying in %.1fs (attempt %d of %d)", e, delay, attempt + 1,
                         self.attempts)
                if on_retry is not None:
                    on_retry(attempt, e, delay)
                self.sleep(delay)
