"""Manifests and blobs of one repository, from the registry or its mirrors.

For ``docker.io`` references the ``registry_mirrors`` are tried first, in order,
and the origin last: a mirror that fails (unreachable, missing the image, bad
content) is logged and skipped. A mirror is given one retry; the origin the full
retry budget.

Blobs are streamed into the ``BlobStore`` (``Accept-Encoding: identity``, so
the bytes hashed are the bytes the digest names). A download that breaks off
keeps what it received and continues with ``Range: bytes=N-``; a server that
answers ``200`` instead of ``206``, or a ``Content-Range`` that does not start at
``N``, makes it start over. The store publishes a blob only after its size and
digest were checked, so a corrupt or truncated body never lands under its name.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar
from urllib.parse import quote

from ..digest import Digest, verify_bytes
from ..errors import (
    AuthError,
    DigestMismatchError,
    ImageNotFoundError,
    IntegrityError,
    LimitExceededError,
    OcisquashError,
    RegistryError,
    SizeMismatchError,
    TransientRegistryError,
)
from ..model import MANIFEST_ACCEPT, OCI_INDEX, Descriptor
from ..rules import MAX_MANIFEST_SIZE
from ..store import BlobStore, BlobWriter
from .auth import Authenticator, parse_challenges
from .credentials import Credentials, find_credentials
from .options import RegistryOptions
from .schemes import SchemeHints
from .transport import Endpoint, Response, RetryPolicy, Transport, error_for_status

if TYPE_CHECKING:  # the events are imported where blobs are fetched: a warm compile needs none
    from ..progress import ProgressCallback

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Manifests larger than this are refused (the distribution spec suggests 4 MiB).
MANIFEST_LIMIT = MAX_MANIFEST_SIZE
#: A blob is read as the connection delivers it, up to this much at a time: fewer,
#: larger reads cost less CPU (figures: ``bench/README.md``).
_CHUNK = 1 << 20
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class ReferenceLike(Protocol):
    """What the client needs of ``ocisquash.reference.Reference``."""

    @property
    def registry(self) -> str: ...
    @property
    def repository(self) -> str: ...
    @property
    def api_host(self) -> str: ...


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    """A manifest or index as received: raw bytes, Content-Type and digest."""

    raw: bytes = field(repr=False)
    media_type: str
    digest: Digest


@dataclass(slots=True)
class _Remote:
    endpoint: Endpoint
    auth: Authenticator
    retry: RetryPolicy
    mirror: bool


class _ShortBody(TransientRegistryError):
    """A body that ended early without a transport error; resumable, and if it
    keeps happening the ``SizeMismatchError`` in ``cause`` is what the user sees."""

    def __init__(self, cause: SizeMismatchError) -> None:
        super().__init__(cause.message, context=cause.context)
        self.cause = cause


class RegistryClient:
    """Reads one repository of one registry (with mirrors before it for Docker Hub)."""

    #: what the client's tokens are asked for (``upload.Uploader`` adds ``push``)
    ACTIONS: tuple[str, ...] = ("pull",)
    #: the hint of an ``AuthError`` when the registry refuses the credentials
    REFUSED_HINT = ("check the image name and that you may pull it; give credentials with "
                    "--username/--password-stdin or log in with 'podman login'/'docker login'")

    def __init__(self, reference: ReferenceLike, options: RegistryOptions | None = None, *,
                 transport: Transport | None = None, retry: RetryPolicy | None = None,
                 hints: SchemeHints | None = None) -> None:
        """``hints`` are what the caller knows of which registries speak plain HTTP
        (see ``SchemeHints``); ``transport`` and ``retry`` replace the ones built
        from ``options``."""
        self.reference = reference
        self.repository = reference.repository
        self.options = options = options if options is not None else RegistryOptions()
        #: set to make running blob downloads stop at their next chunk (see ``pull``)
        self.cancelled = threading.Event()
        self.transport = transport or Transport(options, hints)
        policy = retry or RetryPolicy.from_options(options)
        self._remotes: list[_Remote] = []
        if reference.registry == "docker.io":
            for mirror in options.mirrors:
                ep = Endpoint.parse(mirror, options)
                self._remotes.append(_Remote(
                    ep, self._authenticator(ep.host), mirror=True,
                    retry=RetryPolicy(min(policy.attempts, 2), policy.base_delay, policy.max_delay,
                                      policy.max_retry_after, policy.sleep)))
        origin = Endpoint.for_host(reference.api_host, options)
        self._remotes.append(_Remote(origin, self._authenticator(reference.registry),
                                     retry=policy, mirror=False))

    def _authenticator(self, registry: str) -> Authenticator:
        def lookup() -> Credentials | None:
            return find_credentials(registry, self.repository, self.options)

        return Authenticator(self.transport, registry, self.repository, lookup, self.ACTIONS)

    @property
    def endpoints(self) -> list[Endpoint]:
        """Where requests go, in the order tried."""
        return [r.endpoint for r in self._remotes]

    # -- requests ---------------------------------------------------------------------------

    def _request(self, remote: _Remote, path: str, headers: dict[str, str], what: str,
                 *, method: str = "GET", body: bytes | None = None) -> Response:
        """Send ``method path`` to the remote, answering the registry's auth challenge once.

        Only a challenge the registry itself sent is answered. A ``401`` from a host a
        redirect led to (blob storage) is returned as it is, for ``error_for_status`` to
        name that host: the registry's credentials belong to the registry.
        """
        sent = remote.auth.header()
        hdrs = dict(headers)
        if sent:
            hdrs["Authorization"] = sent
        resp = self.transport.open(method, remote.endpoint, path, hdrs, what=what, body=body)
        if resp.status != 401 or resp.elsewhere:
            return resp
        with resp:
            challenges = parse_challenges(resp.header_list("WWW-Authenticate"))
            resp.read_all(8192)
        if not challenges:
            raise AuthError("registry answered HTTP 401 without an auth challenge", context=what,
                            status=401)
        hdrs["Authorization"] = remote.auth.answer(challenges, what=what, sent=sent)
        resp = self.transport.open(method, remote.endpoint, path, hdrs, what=what, body=body)
        if resp.status in (401, 403) and not resp.elsewhere:
            with resp:
                resp.read_all(8192)
            creds = remote.auth.credentials()
            who = f"the credentials from {creds.source}" if creds else "anonymous access"
            raise AuthError(
                f"the registry refused {who} (HTTP {resp.status})", context=what,
                status=resp.status, hint=self.REFUSED_HINT)
        return resp

    def check_access(self) -> None:
        """``GET /v2/`` of the registry itself (never a mirror), answering its challenge
        with the credentials; ``AuthError`` when it refuses them (``ocisquash login``)."""
        remote = self._remotes[-1]
        what = f"registry {self.reference.registry}"
        with self._request(remote, "/v2/", {}, what) as resp:
            resp.read_all(8192)
            if resp.status != 200:
                raise error_for_status(resp, what)

    def _each_remote(self, operation: Callable[[_Remote], _T], what: str) -> _T:
        for remote in self._remotes:
            try:
                return operation(remote)
            except (RegistryError, ImageNotFoundError, IntegrityError) as e:
                if not remote.mirror:
                    raise
                log.warning("mirror %s failed for %s: %s; trying the next", remote.endpoint.host,
                            what, e)
        raise AssertionError("the origin is always the last remote")  # pragma: no cover

    # -- manifests --------------------------------------------------------------------------

    def get_manifest(self, ref: str, expected: Digest | None = None, *,
                     what: str = "") -> FetchedManifest:
        """GET a manifest or index by tag or digest; verified when ``expected`` is given."""
        what = what or f"manifest {self.reference.registry}/{self.repository}@{ref}"

        def from_remote(remote: _Remote) -> FetchedManifest:
            return remote.retry.call(lambda: self._manifest_once(remote, ref, expected, what))

        return self._each_remote(from_remote, what)

    def _manifest_once(self, remote: _Remote, ref: str, expected: Digest | None,
                       what: str) -> FetchedManifest:
        resp = self._request(remote, f"/v2/{self.repository}/manifests/{ref}",
                             {"Accept": MANIFEST_ACCEPT}, what)
        with resp:
            if resp.status != 200:
                raise error_for_status(resp, what)
            length = resp.header("Content-Length")
            if length and length.isdigit() and int(length) > MANIFEST_LIMIT:
                raise LimitExceededError(f"manifest of {length} bytes is larger than the "
                                         f"{MANIFEST_LIMIT} bytes allowed", context=what)
            raw = resp.read_all(MANIFEST_LIMIT)
            if len(raw) > MANIFEST_LIMIT:
                raise LimitExceededError(f"manifest is larger than the {MANIFEST_LIMIT} bytes "
                                         "allowed", context=what)
            media_type = (resp.header("Content-Type") or "").split(";")[0].strip()
        if expected is not None:
            verify_bytes(raw, expected, what="manifest")
        digest = Digest.of(raw, expected.algorithm if expected is not None else "sha256")
        return FetchedManifest(raw, media_type, digest)

    def get_referrers(self, subject: Digest, artifact_type: str = "") -> FetchedManifest | None:
        """``GET /v2/<name>/referrers/<digest>[?artifactType=]``: the index of the manifests
        whose ``subject`` is ``subject``, or None when the registry has no referrers API
        (it answers 404; the caller then reads the ``sha256-<hex>`` tag instead)."""
        what = f"referrers of {self.reference.registry}/{self.repository}@{subject}"
        path = f"/v2/{self.repository}/referrers/{subject}"
        if artifact_type:
            path += f"?artifactType={quote(artifact_type, safe='')}"

        def once(remote: _Remote) -> FetchedManifest | None:
            resp = self._request(remote, path, {"Accept": OCI_INDEX}, what)
            with resp:
                if resp.status == 404:
                    resp.read_all(8192)
                    return None
                if resp.status != 200:
                    raise error_for_status(resp, what)
                raw = resp.read_all(MANIFEST_LIMIT)
                if len(raw) > MANIFEST_LIMIT:
                    raise LimitExceededError(f"referrers index is larger than the "
                                             f"{MANIFEST_LIMIT} bytes allowed", context=what)
                media_type = (resp.header("Content-Type") or "").split(";")[0].strip()
            return FetchedManifest(raw, media_type, Digest.of(raw))

        origin = self._remotes[-1]  # a mirror serves content, not the origin's referrers
        return origin.retry.call(lambda: once(origin))

    # -- blobs ------------------------------------------------------------------------------

    def fetch_blob(self, desc: Descriptor, store: BlobStore, *, what: str = "blob",
                   progress: ProgressCallback | None = None) -> Path:
        """Download the blob ``desc`` names into ``store`` (unless there) and return its path."""
        from ..progress import BlobDone, emit

        if store.has(desc.digest):
            emit(progress, BlobDone(desc.digest, desc.size, what, cached=True))
            return store.blob_path(desc.digest)
        context = f"{what} {desc.digest.short}"
        return self._each_remote(
            lambda remote: self._blob_from(remote, desc, store, what, progress), context)

    def _blob_from(self, remote: _Remote, desc: Descriptor, store: BlobStore, what: str,
                   progress: ProgressCallback | None) -> Path:
        from ..progress import BlobDone, BlobRetrying, BlobStarted, emit

        context = f"{what} {desc.digest.short}"
        for fresh in (False, True):
            with store.writer(desc.digest, desc.size) as w:
                if store.has(desc.digest):  # another process finished it while we waited
                    emit(progress, BlobDone(desc.digest, desc.size, what, cached=True))
                    return store.blob_path(desc.digest)
                emit(progress, BlobStarted(desc.digest, desc.size, what, w.offset))

                def on_retry(attempt: int, err: OcisquashError, delay: float) -> None:
                    emit(progress, BlobRetrying(desc.digest, attempt, err.message, delay))

                def attempt(w: BlobWriter = w) -> Path:
                    return self._blob_once(remote, desc, w, context, progress)

                try:
                    path = remote.retry.call(attempt, on_retry=on_retry)
                except _ShortBody as e:
                    raise e.cause from None
                except DigestMismatchError:
                    # The bytes kept from an earlier attempt may be what was wrong:
                    # the store dropped them, so one fresh download settles it.
                    if w.resumed and not fresh:
                        log.warning("%s: resumed download did not verify; downloading again",
                                    context)
                        continue
                    raise
                emit(progress, BlobDone(desc.digest, desc.size, what))
                return path
        raise AssertionError("unreachable")  # pragma: no cover

    def _blob_once(self, remote: _Remote, desc: Descriptor, w: BlobWriter, context: str,
                   progress: ProgressCallback | None) -> Path:
        from ..progress import BlobProgress, emit

        # Ask for the bytes as stored: a transparently decompressed body would not hash
        # to the digest (pip's network/utils.py explains the same trap).
        headers = {"Accept-Encoding": "identity"}
        offset = w.offset
        if offset and offset == desc.size:
            # A run stopped between the last byte and publishing it: nothing is left to ask
            # for (a Range past the end gets 416, or a broken answer from some proxies).
            # A wrong digest drops the bytes and the caller downloads afresh.
            return w.commit()
        if offset:
            headers["Range"] = f"bytes={offset}-"
        resp = self._request(remote, f"/v2/{self.repository}/blobs/{desc.digest}", headers,
                             context)
        with resp:
            if offset and resp.status == 206:
                m = _CONTENT_RANGE_RE.match(resp.header("Content-Range") or "")
                if not m or int(m.group(1)) != offset:
                    w.restart()
                    raise TransientRegistryError(
                        f"server resumed at the wrong place (Content-Range "
                        f"{resp.header('Content-Range')!r}, wanted byte {offset}); starting over",
                        context=context)
                log.info("%s: resuming at byte %d", context, offset)
                w.resumed = True
            elif resp.status == 200:
                if offset:
                    log.info("%s: server cannot resume; starting over", context)
                    w.restart()
            elif offset and resp.status == 416:
                w.restart()
                raise TransientRegistryError("server cannot serve the rest (HTTP 416); "
                                             "starting over", context=context)
            else:
                raise error_for_status(resp, context)
            while chunk := resp.read(_CHUNK, some=True):
                if self.cancelled.is_set():
                    # Ctrl-C in the main thread: stop now, keep the bytes as a partial.
                    raise OcisquashError("download cancelled", context=context)
                w.write(chunk)
                emit(progress, BlobProgress(desc.digest, w.offset, desc.size))
        if w.offset < desc.size:
            raise _ShortBody(SizeMismatchError(
                f"blob ended after {w.offset} of {desc.size} bytes", context=context))
        return w.commit()
