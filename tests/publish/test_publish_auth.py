"""Pushing with credentials (htpasswd and token auth), cross-repository mounts,
chunked uploads, and credentials kept from an upload service on another host."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

from ocisquash.digest import Digest
from ocisquash.model import Descriptor
from ocisquash.reference import parse_reference
from ocisquash.registry import RegistryOptions
from ocisquash.registry.upload import Uploader
from registry.conftest import HTPASSWD_PASSWORD, HTPASSWD_USER, TOKEN_PASSWORD, TOKEN_USER
from registry.servers import skopeo_inspect_raw

from .conftest import Run, as_json
from .helpers import subject_of
from .referrersproxy import ReferrersProxy


def _scopes(registry: Any) -> set[tuple[str, str, frozenset[str]]]:
    """The scopes asked of the token server (the registry names the actions in any order)."""
    out = set()
    for request in registry.tokens.requests:
        for scope in request.query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            out.add((kind, name, frozenset(actions.split(","))))
    return out


def test_push_with_token_auth_asks_for_push_and_mounts_into_another_repository(
        registries: Any, repo: str, token_registry: Any, ocisquash: Run, tmp_path: Path) -> None:
    host = token_registry.host
    creds = ["--username", TOKEN_USER, "--password-stdin"]
    first = as_json(ocisquash("push", f"{host}/{repo}:1", "--json", "-q", *creds,
                              "--cache-dir", tmp_path / "c", stdin=TOKEN_PASSWORD))
    assert ("repository", repo, frozenset({"pull", "push"})) in _scopes(token_registry)
    assert first["bytes_sent"] > 0
    token_registry.tokens.reset()
    other = f"{repo}-copy"
    second = as_json(ocisquash("push", f"{host}/{repo}:1", "--to", f"{host}/{other}", "--json",
                               "-q", *creds, "--cache-dir", tmp_path / "c", stdin=TOKEN_PASSWORD))
    assert second["artifact"] == first["artifact"] and second["repository"] == f"{host}/{other}"
    assert {b["how"] for b in second["blobs"]} == {"mounted"} and second["bytes_sent"] == 0
    # The mount's challenge named both repositories; each went as its own scope.
    scopes = _scopes(token_registry)
    assert ("repository", other, frozenset({"pull", "push"})) in scopes
    assert ("repository", repo, frozenset({"pull"})) in scopes
    # skopeo reads the mounted artifact in the other repository.
    raw = skopeo_inspect_raw(f"{host}/{other}@{second['artifact']}",
                             "--creds", f"{TOKEN_USER}:{TOKEN_PASSWORD}")
    assert json.loads(raw)["subject"]["digest"] == first["digest"]


def test_push_refused_without_push_rights_is_one_line_with_a_hint(
        registries: Any, repo: str, token_registry: Any, ocisquash: Run, tmp_path: Path) -> None:
    proc = ocisquash("push", f"{token_registry.host}/{repo}:1", "-q", "--cache-dir",
                     tmp_path / "c", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("ocisquash: ") and "Traceback" not in proc.stderr
    assert "push to it" in proc.stderr


def test_push_and_use_with_htpasswd(
        registries: Any, repo: str, htpasswd_registry: Any, ocisquash: Run,
        tmp_path: Path) -> None:
    host = htpasswd_registry.host
    creds = ["--username", HTPASSWD_USER, "--password-stdin"]
    pushed = as_json(ocisquash("push", f"{host}/{repo}:1", "--verity", "--json", "-q", *creds,
                               "--cache-dir", tmp_path / "c1", stdin=HTPASSWD_PASSWORD))
    index = json.loads(skopeo_inspect_raw(
        f"{host}/{repo}:sha256-{pushed['digest'].split(':')[1]}",
        "--creds", f"{HTPASSWD_USER}:{HTPASSWD_PASSWORD}"))
    assert [e["digest"] for e in index["manifests"]] == [pushed["artifact"]]
    doc = as_json(ocisquash("compile", f"{host}/{repo}:1", "--verity", "--use-published",
                            "--json", "-q", *creds, "--cache-dir", tmp_path / "c2",
                            stdin=HTPASSWD_PASSWORD))
    assert doc["source"] == "published" and doc["published"]["artifact"] == pushed["artifact"]


def test_a_large_blob_goes_up_in_chunks(
        registries: Any, repo: str, logging_proxy: ReferrersProxy) -> None:
    data = os.urandom(3 * (1 << 20) + 12345)
    desc = Descriptor("application/octet-stream", Digest.of(data), len(data))
    up = Uploader(parse_reference(f"{logging_proxy.host}/{repo}"),
                  RegistryOptions(timeout=10, retries=1), chunk_size=1 << 20)
    try:
        pushed = up.push_blob(desc, data)
        assert pushed.how == "uploaded" and pushed.sent == len(data)
        assert up.blob_exists(desc)
        assert up.push_blob(desc, data).how == "present"
    finally:
        up.transport.close()
    assert len(logging_proxy.requests("PATCH", "/blobs/uploads/")) == 4
    [final] = logging_proxy.requests("PUT", "/blobs/uploads/")
    assert final.status == 201 and f"digest={desc.digest}" in final.path
    # The registry serves what it stored under the digest (read without our client).
    url = f"http://{registries.plain.host}/v2/{repo}/blobs/{desc.digest}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert hashlib.sha256(resp.read()).hexdigest() == desc.digest.hex


def test_an_upload_location_on_another_host_gets_no_credentials(
        registries: Any, repo: str, htpasswd_registry: Any, ocisquash: Run,
        tmp_path: Path) -> None:
    basic = base64.b64encode(f"{HTPASSWD_USER}:{HTPASSWD_PASSWORD}".encode()).decode()
    elsewhere = ReferrersProxy(htpasswd_registry.host, registries.storage, referrers=False,
                               bind="127.0.0.2", upstream_auth=f"Basic {basic}")
    front = ReferrersProxy(htpasswd_registry.host, registries.storage, referrers=False,
                           uploads_to=elsewhere.host)
    try:
        pushed = as_json(ocisquash("push", f"{front.host}/{repo}:1", "--json", "-q",
                                   "--username", HTPASSWD_USER, "--password-stdin",
                                   "--cache-dir", tmp_path / "c", stdin=HTPASSWD_PASSWORD))
        assert pushed["bytes_sent"] > 0
        moved = elsewhere.requests()
        assert {s.method for s in moved} == {"PUT"} and all(s.status == 201 for s in moved)
        assert not any(s.authorization for s in moved)
        assert all(s.authorization for s in front.requests("POST"))
    finally:
        front.close()
        elsewhere.close()
    assert subject_of(registries.plain.host, repo)["digest"] == pushed["digest"]
