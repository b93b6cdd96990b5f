"""Publishing to docker-registry 2.8, which has no referrers API: the artifact and the
index at the tag ``sha256-<hex>`` as skopeo reads them, pushing again sends nothing, the
index keeps other tools' entries, and a writer racing ours does not lose our entry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ocisquash.publish import ARTIFACT_TYPES, EMPTY_TYPE
from registry.servers import skopeo_inspect_raw

from .conftest import Run, as_json
from .helpers import fallback_index, push_foreign_artifact, put_index, subject_of
from .referrersproxy import ReferrersProxy


def test_push_writes_an_artifact_and_fallback_index_that_skopeo_reads(
        registries: Any, repo: str, ocisquash: Run, tmp_path: Path) -> None:
    host = registries.plain.host
    subject = subject_of(host, repo)
    pushed = as_json(ocisquash("push", f"{host}/{repo}:1", "--verity", "--json", "-q",
                               "--cache-dir", tmp_path / "cache"))
    assert pushed["digest"] == subject["digest"]
    assert pushed["listed"] == "tag" and pushed["wrote_manifest"] and pushed["wrote_index"]
    artifact = json.loads(skopeo_inspect_raw(f"{host}/{repo}@{pushed['artifact']}"))
    assert artifact["artifactType"] == ARTIFACT_TYPES["squashfs"]
    assert artifact["subject"] == subject
    assert artifact["config"]["mediaType"] == EMPTY_TYPE and artifact["config"]["size"] == 2
    titles = [layer["annotations"]["org.opencontainers.image.title"] for layer in artifact["layers"]]
    assert titles == ["image.squashfs", "image.squashfs.verity", "image.squashfs.roothash"]
    ann = artifact["annotations"]
    assert ann["org.opencontainers.image.created"] == "2024-01-01T00:00:00Z"
    assert len(ann["io.ocisquash.verity.roothash"]) == 64
    assert {"io.ocisquash.format.version", "io.ocisquash.options.key",
            "io.ocisquash.tool.version"} <= set(ann)
    # Options read as a user wrote them: the compressor by its name.
    options = json.loads(ann["io.ocisquash.options"])
    assert options["compression"] == "zstd" and options["block_size"] == 131072
    # The root hash in the annotation is the one compile wrote beside the image.
    cache_images = list((tmp_path / "cache" / "images").iterdir())
    roothash = (cache_images[0] / "image.squashfs.roothash").read_text().strip()
    assert ann["io.ocisquash.verity.roothash"] == roothash
    index = fallback_index(host, repo, subject["digest"])
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    [entry] = index["manifests"]
    assert entry["digest"] == pushed["artifact"]
    assert entry["artifactType"] == ARTIFACT_TYPES["squashfs"]
    assert entry["annotations"] == ann


def test_pushing_again_uploads_nothing_new(
        registries: Any, repo: str, ocisquash: Run, logging_proxy: ReferrersProxy,
        tmp_path: Path) -> None:
    ref = f"{logging_proxy.host}/{repo}:1"
    first = as_json(ocisquash("push", ref, "--json", "-q", "--cache-dir", tmp_path / "c"))
    assert first["bytes_sent"] > 0
    mark = len(logging_proxy.requests())
    again = as_json(ocisquash("push", ref, "--json", "-q", "--cache-dir", tmp_path / "c"))
    assert again["artifact"] == first["artifact"]
    assert again["bytes_sent"] == 0 and not again["wrote_manifest"] and not again["wrote_index"]
    assert {b["how"] for b in again["blobs"]} == {"present"}
    writes = [s for s in logging_proxy.requests()[mark:] if s.method in ("POST", "PATCH", "PUT")]
    assert writes == []


def test_fallback_index_keeps_other_tools_entries(
        registries: Any, repo: str, ocisquash: Run, tmp_path: Path) -> None:
    host = registries.plain.host
    subject = subject_of(host, repo)
    theirs = push_foreign_artifact(host, repo, subject)
    theirs["annotations"]["org.example.note"] = "a field only that tool reads"
    put_index(host, repo, "sha256-" + subject["digest"].split(":")[1], [theirs])
    pushed = as_json(ocisquash("push", f"{host}/{repo}:1", "--json", "-q",
                               "--cache-dir", tmp_path / "c"))
    index = fallback_index(host, repo, subject["digest"])
    assert index["manifests"][0] == theirs  # kept as it was, byte for byte in its fields
    assert [e["digest"] for e in index["manifests"]] == [theirs["digest"], pushed["artifact"]]


def test_a_writer_that_replaces_the_index_meanwhile_does_not_lose_our_entry(
        registries: Any, repo: str, ocisquash: Run, logging_proxy: ReferrersProxy,
        tmp_path: Path) -> None:
    host = registries.plain.host
    subject = subject_of(host, repo)
    theirs = push_foreign_artifact(host, repo, subject)
    tag = "sha256-" + subject["digest"].split(":")[1]
    raced = []

    def other_writer(path: str) -> None:
        # Another tool read the (empty) index before our write and writes its own
        # version after it, without our entry: the classic lost update.
        if path.endswith("/manifests/" + tag) and not raced:
            raced.append(path)
            put_index(host, repo, tag, [theirs])

    logging_proxy.after_put = other_writer
    pushed = as_json(ocisquash("push", f"{logging_proxy.host}/{repo}:1", "--json", "-q",
                               "--cache-dir", tmp_path / "c"))
    assert raced
    index = fallback_index(host, repo, subject["digest"])
    assert sorted(e["digest"] for e in index["manifests"]) == sorted(
        [theirs["digest"], pushed["artifact"]])
    assert len(logging_proxy.requests("PUT", f"/manifests/{tag}$")) == 2


def test_inspect_lists_the_compiled_images_published_for_an_image(
        registries: Any, repo: str, ocisquash: Run, tmp_path: Path) -> None:
    host = registries.plain.host
    assert as_json(ocisquash("inspect", "--json", f"{host}/{repo}:1"))["published"] == []
    plain = as_json(ocisquash("push", f"{host}/{repo}:1", "--json", "-q", "--cache-dir",
                              tmp_path / "c"))
    signed = as_json(ocisquash("push", f"{host}/{repo}:1", "--json", "-q", "--verity",
                               "--format", "erofs", "--cache-dir", tmp_path / "c"))
    push_foreign_artifact(host, repo, subject_of(host, repo))  # not listed: not ours
    doc = as_json(ocisquash("inspect", "--json", f"{host}/{repo}:1"))
    listed = {a["artifact"]: a for a in doc["published"]}
    assert set(listed) == {plain["artifact"], signed["artifact"]}
    assert listed[plain["artifact"]]["format"] == "squashfs"
    assert listed[plain["artifact"]]["root_hash"] is None
    erofs = listed[signed["artifact"]]
    assert erofs["format"] == "erofs" and erofs["artifact_type"] == ARTIFACT_TYPES["erofs"]
    assert len(erofs["root_hash"]) == 64 and erofs["listed"] == "tag"
    text = ocisquash("inspect", f"{host}/{repo}:1").stdout
    assert f"  {signed['artifact']}  erofs" in text and erofs["root_hash"] in text
