"""Small helpers of the publishing tests: the image's subject descriptor as skopeo reads
it, another tool's artifact, and the fallback index as skopeo reads it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ocisquash.digest import Digest
from ocisquash.model import Descriptor
from ocisquash.reference import parse_reference
from ocisquash.registry import RegistryOptions
from ocisquash.registry.upload import Uploader
from registry.servers import skopeo_inspect_raw


def subject_of(host: str, repo: str, tag: str = "1") -> dict[str, Any]:
    """The descriptor of ``host/repo:tag``'s manifest, from the bytes skopeo reads."""
    raw = skopeo_inspect_raw(f"{host}/{repo}:{tag}")
    return {"mediaType": json.loads(raw)["mediaType"],
            "digest": "sha256:" + hashlib.sha256(raw).hexdigest(), "size": len(raw)}


def fallback_index(host: str, repo: str, subject: str) -> dict[str, Any]:
    """The index at the referrers tag ``sha256-<hex>``, read by skopeo."""
    doc = json.loads(skopeo_inspect_raw(f"{host}/{repo}:sha256-{subject.split(':')[1]}"))
    assert isinstance(doc, dict)
    return doc


def push_foreign_artifact(host: str, repo: str, subject: dict[str, Any]) -> dict[str, Any]:
    """Another tool's artifact (an "SBOM") for the same subject; returns the index entry
    that tool would write for it."""
    up = Uploader(parse_reference(f"{host}/{repo}"), RegistryOptions(timeout=10, retries=1))
    empty = Descriptor("application/vnd.oci.empty.v1+json", Digest.of(b"{}"), 2)
    up.push_blob(empty, b"{}")
    sbom = b'{"spdxVersion":"SPDX-2.3","name":"example"}'
    layer = Descriptor("application/spdx+json", Digest.of(sbom), len(sbom))
    up.push_blob(layer, sbom)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/spdx+json",
        "config": {"mediaType": empty.media_type, "digest": str(empty.digest), "size": 2},
        "layers": [{"mediaType": layer.media_type, "digest": str(layer.digest),
                    "size": layer.size}],
        "subject": subject, "annotations": {"org.example.tool": "sbom-maker"}}).encode()
    digest = Digest.of(manifest)
    up.put_manifest(str(digest), manifest, "application/vnd.oci.image.manifest.v1+json")
    up.transport.close()
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": str(digest),
            "size": len(manifest), "artifactType": "application/spdx+json",
            "annotations": {"org.example.tool": "sbom-maker"}}


def put_index(host: str, repo: str, tag: str, entries: list[dict[str, Any]]) -> None:
    """Write an index at ``tag`` as another client would."""
    up = Uploader(parse_reference(f"{host}/{repo}"), RegistryOptions(timeout=10, retries=1))
    raw = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                      "manifests": entries}).encode()
    up.put_manifest(tag, raw, "application/vnd.oci.image.index.v1+json")
    up.transport.close()
