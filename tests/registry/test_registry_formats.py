"""Manifest formats and resolution against a real registry, judged by skopeo."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ocisquash.errors import (
    DigestMismatchError,
    ImageNotFoundError,
    PlatformNotFoundError,
    UnsupportedError,
)
from ocisquash.model import (
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V1_SIGNED,
    MANIFEST_ACCEPT,
    OCI_INDEX,
    OCI_MANIFEST,
    Platform,
)
from ocisquash.sources.registry import pull

from .conftest import Registries
from .faultproxy import FaultProxy
from .helpers import file_digest, sha256, source
from .servers import skopeo_inspect_raw

AMD64 = Platform.parse("linux/amd64")
ARM64 = Platform.parse("linux/arm64")


def test_oci_manifest_by_tag_costs_one_request_and_matches_skopeo(
        registries: Registries, proxy: FaultProxy, make_options: Any) -> None:
    src = source(f"{proxy.host}/app:oci", make_options(plain_http=True))
    image = src.resolve(AMD64)
    manifest_requests = proxy.requests(path="/manifests/")
    assert len(manifest_requests) == 1
    assert manifest_requests[0].headers["accept"] == MANIFEST_ACCEPT
    raw = skopeo_inspect_raw(f"{registries.plain.host}/app:oci")
    assert str(image.digest) == sha256(raw)
    manifest = image.manifest()
    assert manifest.media_type == OCI_MANIFEST
    assert manifest.raw == raw
    assert len(proxy.requests(path="/manifests/")) == 1  # a single manifest is not fetched twice
    config = image.config()
    assert str(config.digest) == registries.image.config_digest
    assert config.config.entrypoint == ("/bin/app",)
    judge = registries.skopeo_dir("app:oci")
    layers = image.layers()
    assert [str(layer.diff_id) for layer in layers] == registries.image.diff_ids
    for layer in layers:
        with layer.open() as stream:
            data = stream.read()
        assert sha256(data) == str(layer.descriptor.digest)
        assert data == (judge / layer.descriptor.digest.hex).read_bytes()


@pytest.mark.parametrize(("tag", "index_type", "manifest_type"), [
    ("latest", OCI_INDEX, OCI_MANIFEST),
    ("list", DOCKER_MANIFEST_LIST, DOCKER_MANIFEST),
])
def test_index_resolves_platform_digest_without_fetching_its_manifest(
        registries: Registries, proxy: FaultProxy, make_options: Any,
        tag: str, index_type: str, manifest_type: str) -> None:
    raw_index = skopeo_inspect_raw(f"{registries.plain.host}/multi:{tag}")
    entries = json.loads(raw_index)["manifests"]
    arm = next(e["digest"] for e in entries if e["platform"]["architecture"] == "arm64")
    image = source(f"{proxy.host}/multi:{tag}", make_options(plain_http=True)).resolve(ARM64)
    assert str(image.digest) == arm
    assert len(proxy.requests(path="/manifests/")) == 1
    assert image.index is not None
    assert str(image.index.digest) == sha256(raw_index)
    assert image.index.media_type == index_type
    assert image.platform == Platform("linux", "arm64", "v8")

    manifest = image.manifest()
    assert [s.path for s in proxy.requests(path="/manifests/")][1].endswith(f"/manifests/{arm}")
    assert manifest.media_type == manifest_type
    assert manifest.raw == skopeo_inspect_raw(f"{registries.plain.host}/multi@{arm}")
    assert image.config().architecture == "arm64"


def test_index_without_the_platform_names_the_ones_it_has(
        registries: Registries, make_options: Any) -> None:
    src = source(f"{registries.plain.host}/multi:latest", make_options())
    with pytest.raises(PlatformNotFoundError, match="linux/amd64, linux/arm64/v8") as err:
        src.resolve(Platform.parse("linux/s390x"))
    assert "multi:latest" in str(err.value)


def test_single_platform_image_of_another_platform_is_refused(
        registries: Registries, make_options: Any) -> None:
    image = source(f"{registries.plain.host}/app:oci", make_options()).resolve(ARM64)
    with pytest.raises(PlatformNotFoundError, match="the image has: linux/amd64"):
        image.config()
    unasked = source(f"{registries.plain.host}/app:oci", make_options()).resolve()
    assert unasked.config().platform == AMD64


def test_docker_schema2_image_pulls_the_blobs_skopeo_pulls(
        registries: Registries, make_options: Any) -> None:
    options = make_options()
    image = source(f"{registries.plain.host}/app:v2s2", options).resolve(AMD64)
    manifest = image.manifest()
    assert manifest.media_type == DOCKER_MANIFEST
    assert all(d.media_type == DOCKER_LAYER_GZIP for d in manifest.layers)
    paths = pull(image)
    judge = registries.skopeo_dir("app:v2s2")
    for desc, path in zip(manifest.layers, paths, strict=True):
        assert file_digest(path) == str(desc.digest)
        assert path.read_bytes() == (judge / desc.digest.hex).read_bytes()
    store = image.source.store
    assert store.has(image.digest)  # the manifest is in the store too
    assert store.has(manifest.config.digest)


def test_reference_by_digest_is_verified(registries: Registries, proxy: FaultProxy,
                                         make_options: Any) -> None:
    digest = sha256(skopeo_inspect_raw(f"{registries.plain.host}/app:oci"))
    image = source(f"{proxy.host}/app@{digest}", make_options(plain_http=True)).resolve(AMD64)
    assert str(image.digest) == digest
    proxy.add("corrupt", "/manifests/sha256:", after=20)
    with pytest.raises(DigestMismatchError, match="manifest"):
        source(f"{proxy.host}/app@{digest}", make_options(plain_http=True)).resolve(AMD64)


@pytest.mark.parametrize("ref", ["app:no-such-tag", "no-such-repo:oci",
                                 "app@sha256:" + "0" * 64])
def test_missing_image_is_image_not_found_naming_the_reference(
        registries: Registries, make_options: Any, ref: str) -> None:
    with pytest.raises(ImageNotFoundError) as err:
        source(f"{registries.plain.host}/{ref}", make_options()).resolve(AMD64)
    assert f"{registries.plain.host}/{ref}" in str(err.value)


def test_schema1_manifest_is_refused_as_legacy(proxy: FaultProxy, make_options: Any) -> None:
    schema1 = json.dumps({"schemaVersion": 1, "name": "app", "tag": "old", "architecture": "amd64",
                          "fsLayers": [], "history": [], "signatures": []}).encode()
    proxy.add("body", "/manifests/old", headers={"Content-Type": DOCKER_MANIFEST_V1_SIGNED},
              body=schema1)
    with pytest.raises(UnsupportedError, match="unsupported legacy manifest"):
        source(f"{proxy.host}/app:old", make_options(plain_http=True)).resolve(AMD64)


def test_loopback_registry_falls_back_to_plain_http_without_a_flag(
        registries: Registries, make_options: Any) -> None:
    src = source(f"{registries.plain.host}/app:oci", make_options())
    image = src.resolve(AMD64)
    assert str(image.digest) == sha256(skopeo_inspect_raw(f"{registries.plain.host}/app:oci"))
    assert src.client.transport.base_url(src.client.endpoints[0]).startswith("http://")


def test_stored_manifest_is_reused_by_a_later_resolve(
        registries: Registries, proxy: FaultProxy, make_options: Any) -> None:
    options = make_options(plain_http=True)
    pull(source(f"{proxy.host}/multi:latest", options).resolve(ARM64))
    manifests, blobs = len(proxy.requests(path="/manifests/")), len(proxy.requests(path="/blobs/"))
    image = source(f"{proxy.host}/multi:latest", options).resolve(ARM64)
    image.manifest()
    image.config()
    for layer in image.layers():
        layer.open().close()
    assert len(proxy.requests(path="/manifests/")) == manifests + 1  # only the index again
    assert len(proxy.requests(path="/blobs/")) == blobs
