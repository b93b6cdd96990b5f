"""A loopback proxy in front of the real docker-registry that logs every request and,
when asked, adds the distribution-spec's referrers API.

Why it exists: no registry packaged for this machine has the referrers API (Debian's
docker-registry 2.8 predates it), yet ``ocisquash`` must use it where a registry has it
(zot, Harbor, ECR, ACR, GAR). This proxy adds exactly what the spec's "Listing
Referrers" section defines, on top of the real registry's own storage:

* ``GET /v2/<name>/referrers/<digest>[?artifactType=X]`` answers ``200`` with an image
  index (``application/vnd.oci.image.index.v1+json``) listing every manifest of the
  repository whose ``subject`` is ``<digest>``: ``mediaType``, ``digest``, ``size``,
  ``artifactType`` ("if the artifactType is empty or missing in the image manifest, the
  value of artifactType MUST be set to the config descriptor mediaType value") and
  ``annotations``; with ``artifactType`` it filters and says so with
  ``OCI-Filters-Applied: artifactType``. A repository without such manifests gets an
  empty index, never a 404 (a 404 means "no referrers API").
* A manifest ``PUT`` with a ``subject`` that the registry accepted is answered with
  ``OCI-Subject: <subject digest>``, telling the client not to maintain the tag
  fallback itself.

The manifests are read from the registry's filesystem storage
(``docker/registry/v2/repositories/<name>/_manifests/revisions`` and the blobs they
link), so manifests pushed before the proxy started are listed too. Everything else is
forwarded with the client's ``Host`` header, so that the registry's ``Location``
headers point back at the proxy. Without ``referrers`` the proxy only forwards and
logs: the "access log" of the tests.

``after_put`` lets a test act as another writer: it is called after each forwarded
manifest ``PUT`` (with the path), before the client gets the answer. ``uploads_to``
(``host:port`` of another proxy) moves upload sessions to another host: the ``Location``
of a ``202`` answering ``POST .../blobs/uploads/`` names it, as registries that hand
uploads to a separate service do; that proxy, given ``upstream_auth``, logs in to the
registry itself and records whether the client sent it any credentials.
"""

from __future__ import annotations

import http.client
import http.server
import json
import re
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate", "content-length"}
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_REFERRERS = re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<digest>[^/?]+)$")
_MANIFEST = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/?]+)$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    status: int
    authorization: bool


class ReferrersProxy:
    def __init__(self, upstream: str, storage: Path, *, referrers: bool = True,
                 bind: str = "127.0.0.1", upstream_auth: str | None = None,
                 uploads_to: str | None = None) -> None:
        self.upstream = upstream
        self.upstream_auth = upstream_auth
        self.uploads_to = uploads_to
        self.root = storage / "docker" / "registry" / "v2"
        self.referrers = referrers
        self.seen: list[Seen] = []
        self.after_put: Callable[[str], None] | None = None
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        self._httpd = http.server.ThreadingHTTPServer((bind, 0), Handler)
        self._httpd.daemon_threads = True
        self.host = f"{bind}:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()

    def requests(self, method: str = "", path: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if (not method or s.method == method)
                    and re.search(path, s.path)]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- the referrers API ------------------------------------------------------------------

    def _blob(self, digest: str) -> bytes:
        hexa = digest.split(":", 1)[1]
        return (self.root / "blobs" / "sha256" / hexa[:2] / hexa / "data").read_bytes()

    def list_referrers(self, name: str, subject: str, artifact_type: str) -> list[dict[str, Any]]:
        revisions = self.root / "repositories" / name / "_manifests" / "revisions" / "sha256"
        out = []
        for rev in sorted(revisions.iterdir()) if revisions.is_dir() else ():
            digest = f"sha256:{rev.name}"
            try:
                raw = self._blob(digest)
                doc = json.loads(raw)
            except (OSError, ValueError):
                continue
            subj = doc.get("subject") if isinstance(doc, dict) else None
            if not isinstance(subj, dict) or subj.get("digest") != subject:
                continue
            kind = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType", "")
            if artifact_type and kind != artifact_type:
                continue
            entry: dict[str, Any] = {"mediaType": doc.get("mediaType"), "digest": digest,
                                     "size": len(raw), "artifactType": kind}
            if doc.get("annotations"):
                entry["annotations"] = doc["annotations"]
            out.append(entry)
        return out

    # -- forwarding -------------------------------------------------------------------------

    def _record(self, h: http.server.BaseHTTPRequestHandler, status: int) -> None:
        with self._lock:
            self.seen.append(Seen(h.command, h.path, status, "Authorization" in h.headers))

    def _reply(self, h: http.server.BaseHTTPRequestHandler, status: int,
               headers: list[tuple[str, str]], body: bytes) -> None:
        self._record(h, status)
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        if h.command != "HEAD" or not any(k.lower() == "content-length" for k, _ in headers):
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        parts = urllib.parse.urlsplit(h.path)
        m = _REFERRERS.match(parts.path)
        if m and self.referrers and h.command == "GET":
            if not _DIGEST.match(m["digest"]):
                self._reply(h, 400, [("Content-Type", "application/json")],
                            b'{"errors":[{"code":"DIGEST_INVALID","message":"invalid digest"}]}')
                return
            query = urllib.parse.parse_qs(parts.query)
            wanted = (query.get("artifactType") or [""])[0]
            index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                     "manifests": self.list_referrers(m["name"], m["digest"], wanted)}
            headers = [("Content-Type", OCI_INDEX)]
            if wanted:
                headers.append(("OCI-Filters-Applied", "artifactType"))
            self._reply(h, 200, headers, json.dumps(index).encode())
            return
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_BY_HOP}
        if self.upstream_auth is not None:
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            headers["Authorization"] = self.upstream_auth
        conn = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            conn.request(h.command, h.path, body=body, headers=headers)
            resp = conn.getresponse()
            rbody = resp.read()
            status = resp.status
            rheaders = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP
                        or (h.command == "HEAD" and k.lower() == "content-length")]
        finally:
            conn.close()
        if self.uploads_to is not None and h.command == "POST" and status == 202:
            rheaders = [(k, _moved(v, self.uploads_to) if k.lower() == "location" else v)
                        for k, v in rheaders]
        mm = _MANIFEST.match(parts.path)
        if mm and h.command == "PUT" and status == 201:
            if self.after_put is not None:
                self.after_put(parts.path)
            try:
                subject = json.loads(body or b"").get("subject")
            except (ValueError, AttributeError):
                subject = None
            if self.referrers and isinstance(subject, dict) and subject.get("digest"):
                rheaders.append(("OCI-Subject", str(subject["digest"])))
        self._reply(h, status, rheaders, rbody)


def _moved(location: str, host: str) -> str:
    parts = urllib.parse.urlsplit(location)
    return urllib.parse.urlunsplit(("http", host, parts.path, parts.query, ""))
