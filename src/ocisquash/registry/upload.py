"""Uploads to one repository: blobs and manifests, as the distribution-spec defines them.

* ``HEAD /v2/<name>/blobs/<digest>``: a blob the repository holds is not sent again.
* ``POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<other>``: "201 Created" when
  the registry mounted the blob from another repository; "202 Accepted" with a
  ``Location`` when it did not, and the upload goes on in that session.
* Monolithic: ``POST /v2/<name>/blobs/uploads/`` ("202", ``Location``), then
  ``PUT <location>?digest=<digest>`` with the whole blob ("201 Created").
* Chunked: ``PATCH <location>`` per chunk with ``Content-Range: <start>-<end>``
  (inclusive); each "202" names in its ``Location`` where the next request goes;
  ``PUT <location>?digest=<digest>`` with no body closes the upload.
* ``PUT /v2/<name>/manifests/<reference>``: a registry with the referrers API answers
  with ``OCI-Subject`` when it indexed the manifest's ``subject`` itself.

Tokens are asked for ``repository:<name>:pull,push``. A ``Location`` on another host
than the registry's gets no ``Authorization``: credentials stay with their registry.
Uploads go to the origin only, never to a Docker Hub mirror. A temporary failure
starts the blob's upload over in a new session (the session's state lives on the
server, and a half-sent chunk cannot be told apart from a lost one).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from ..digest import Digest
from ..errors import IntegrityError, OcisquashError, RegistryError
from ..model import Descriptor
from .client import ReferenceLike, RegistryClient, _Remote
from .options import RegistryOptions
from .schemes import SchemeHints
from .transport import Response, RetryPolicy, Transport, error_for_status

log = logging.getLogger(__name__)

#: Bytes per ``PATCH`` of a chunked upload, and the largest blob sent in one ``PUT``:
#: one chunk is what an upload holds in memory.
CHUNK_SIZE = 8 << 20
_OCTETS = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class PushedBlob:
    """What pushing one blob did: found it ``present``, ``mounted`` it or ``uploaded`` it."""

    digest: Digest
    how: Literal["present", "mounted", "uploaded"]
    #: bytes of the blob sent over the wire (0 unless uploaded)
    sent: int


@dataclass(frozen=True, slots=True)
class PushedManifest:
    digest: Digest
    #: the ``OCI-Subject`` the registry answered with: it indexed the subject itself
    subject: str | None


class Uploader(RegistryClient):
    """Writes blobs and manifests into one repository (and reads it, as its base does)."""

    ACTIONS = ("pull", "push")
    REFUSED_HINT = ("check the repository name and that you may push to it; give credentials "
                    "with --username/--password-stdin or log in with 'podman login'/"
                    "'docker login'")

    def __init__(self, reference: ReferenceLike, options: RegistryOptions | None = None, *,
                 transport: Transport | None = None, retry: RetryPolicy | None = None,
                 hints: SchemeHints | None = None, chunk_size: int = CHUNK_SIZE) -> None:
        super().__init__(reference, options, transport=transport, retry=retry, hints=hints)
        self._remotes = self._remotes[-1:]  # the origin: a mirror is never written to
        self._origin: _Remote = self._remotes[0]
        self.chunk_size = chunk_size

    # -- blobs ------------------------------------------------------------------------------

    def blob_exists(self, desc: Descriptor) -> bool:
        """Whether the repository holds ``desc``'s blob (of that size, when it says)."""
        what = f"blob {desc.digest.short} in {self.reference.registry}/{self.repository}"

        def once() -> bool:
            resp = self._request(self._origin, f"/v2/{self.repository}/blobs/{desc.digest}",
                                 {}, what, method="HEAD")
            with resp:
                if resp.status == 404:
                    return False
                if resp.status != 200:
                    raise error_for_status(resp, what)
                length = resp.header("Content-Length")
            return not (length and length.isdigit() and int(length) != desc.size)

        return self._origin.retry.call(once)

    def push_blob(self, desc: Descriptor, content: Path | bytes, *,
                  mount_from: Iterable[str] = ()) -> PushedBlob:
        """Put ``content`` (a file or bytes, which must hash to ``desc``) into the repository.

        Nothing is sent when the repository holds the blob; else a mount from each
        repository of ``mount_from`` (same registry) is tried before uploading it.
        """
        if self.blob_exists(desc):
            return PushedBlob(desc.digest, "present", 0)
        what = f"upload of blob {desc.digest.short} to {self.reference.registry}/{self.repository}"
        for other in mount_from:
            if other == self.repository:
                continue
            location = self._origin.retry.call(functools.partial(self._start, what, desc, other))
            if location is None:
                log.info("%s: mounted from %s", what, other)
                return PushedBlob(desc.digest, "mounted", 0)
            # Not mounted: the registry opened an ordinary session instead. It is left to
            # expire (the spec has no use for it here beyond one more chance to mount).
        return self._origin.retry.call(lambda: self._upload(what, desc, content))

    def _start(self, what: str, desc: Descriptor | None = None,
               mount_from: str | None = None) -> str | None:
        """Open an upload session; its ``Location``, or None when the blob was mounted."""
        path = f"/v2/{self.repository}/blobs/uploads/"
        if desc is not None and mount_from is not None:
            path += f"?mount={desc.digest}&from={quote(mount_from, safe='/')}"
        resp = self._request(self._origin, path, {"Content-Length": "0"}, what, method="POST",
                             body=b"")
        with resp:
            if resp.status == 201 and mount_from is not None:
                resp.read_all(8192)
                return None
            if resp.status != 202:
                raise error_for_status(resp, what)
            resp.read_all(8192)
            return self._location(resp, what)

    def _location(self, resp: Response, what: str) -> str:
        location = resp.header("Location")
        if not location:
            raise RegistryError(f"the registry answered HTTP {resp.status} without a Location",
                                context=what)
        return urljoin(resp.url, location)

    def _upload(self, what: str, desc: Descriptor, content: Path | bytes) -> PushedBlob:
        location = self._start(what)
        assert location is not None
        size = len(content) if isinstance(content, bytes) else content.stat().st_size
        if size != desc.size:
            raise IntegrityError(f"blob holds {size} bytes, its descriptor says {desc.size}",
                                 context=what)
        if size <= self.chunk_size:
            data = content if isinstance(content, bytes) else content.read_bytes()
            self._finish(location, desc, data, what)
            return PushedBlob(desc.digest, "uploaded", size)
        sent = 0
        with open(content, "rb") if isinstance(content, Path) else _BytesReader(content) as f:
            while chunk := f.read(self.chunk_size):
                headers = {"Content-Type": _OCTETS, "Content-Length": str(len(chunk)),
                           "Content-Range": f"{sent}-{sent + len(chunk) - 1}"}
                resp = self._at("PATCH", location, headers, what, chunk)
                with resp:
                    if resp.status != 202:
                        raise error_for_status(resp, what)
                    resp.read_all(8192)
                    location = self._location(resp, what)
                sent += len(chunk)
        self._finish(location, desc, b"", what)
        return PushedBlob(desc.digest, "uploaded", sent)

    def _finish(self, location: str, desc: Descriptor, data: bytes, what: str) -> None:
        """``PUT <location>?digest=`` with the last bytes (all of them, monolithic)."""
        parts = urlsplit(location)
        query = f"{parts.query}&" if parts.query else ""
        url = urlunsplit((parts.scheme, parts.netloc, parts.path,
                          f"{query}digest={desc.digest}", ""))
        resp = self._at("PUT", url, {"Content-Type": _OCTETS, "Content-Length": str(len(data))},
                        what, data)
        with resp:
            if resp.status != 201:
                raise error_for_status(resp, what)
            resp.read_all(8192)
            got = resp.header("Docker-Content-Digest")
        if got and got != str(desc.digest):
            raise IntegrityError(f"the registry stored the blob as {got}", context=what)

    def _at(self, method: str, location: str, headers: dict[str, str], what: str,
            body: bytes) -> Response:
        """Send a request to an upload ``location``, with credentials only if it is the
        registry's own host."""
        parts = urlsplit(location)
        if parts.netloc and parts.netloc != self._origin.endpoint.host:
            log.debug("%s: upload location on another host %s; sent without credentials",
                      what, parts.netloc)
            return self.transport.request(method, location, headers, what=what, body=body)
        path = urlunsplit(("", "", parts.path, parts.query, ""))
        return self._request(self._origin, path, headers, what, method=method, body=body)

    # -- manifests --------------------------------------------------------------------------

    def put_manifest(self, ref: str, raw: bytes, media_type: str) -> PushedManifest:
        """``PUT`` a manifest or index under ``ref`` (a tag or its digest)."""
        what = f"manifest {self.reference.registry}/{self.repository}:{ref}"
        digest = Digest.of(raw)

        def once() -> PushedManifest:
            resp = self._request(self._origin, f"/v2/{self.repository}/manifests/{ref}",
                                 {"Content-Type": media_type, "Content-Length": str(len(raw))},
                                 what, method="PUT", body=raw)
            with resp:
                if resp.status != 201:
                    raise error_for_status(resp, what)
                resp.read_all(8192)
                got = resp.header("Docker-Content-Digest")
                subject = resp.header("OCI-Subject")
            if got and got != str(digest):
                raise IntegrityError(f"the registry stored the manifest as {got}, not {digest}",
                                     context=what)
            return PushedManifest(digest, subject)

        try:
            return self._origin.retry.call(once)
        except OcisquashError as e:
            if isinstance(e, RegistryError) and e.status == 400 and not e.hint:
                e.hint = "the registry refused the manifest; it may not accept OCI 1.1 artifacts"
            raise


class _BytesReader:
    """``bytes`` read in chunks like a file (a chunked upload of bytes in memory)."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def read(self, n: int) -> bytes:
        out = bytes(self._data[self._pos:self._pos + n])
        self._pos += len(out)
        return out

    def __enter__(self) -> _BytesReader:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
