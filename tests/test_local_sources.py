"""OCI layouts, OCI archives and docker-save archives as image sources.

Archives and layouts are made by skopeo wherever it can make them, and what the
sources find is compared with what ``skopeo inspect --raw`` reports.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocisquash.digest import Digest
from ocisquash.errors import (
    DigestMismatchError,
    ImageNotFoundError,
    ManifestError,
    OcisquashError,
    PlatformNotFoundError,
    SizeMismatchError,
    UnsafeLayerError,
    UnsupportedError,
    UsageError,
)
from ocisquash.model import OCI_LAYER_GZIP, OCI_LAYER_TAR, Platform
from ocisquash.reference import parse_reference
from ocisquash.sources.archive import DockerArchiveSource, OciArchiveSource
from ocisquash.sources.oci_layout import MAX_INDEX_DEPTH, LocalImage, OciLayoutSource
from ocisquash.sources.open import open_source
from ocisquash.sources.options import SourceOptions

from conftest import require_or_skip
from imagebuilder import (
    BuiltImage,
    Entry,
    make_config,
    make_tar,
    write_docker_archive,
    write_oci_layout,
)

AMD64 = Platform.parse("linux/amd64")
ARM64 = Platform.parse("linux/arm64")
LAYERS = [
    [Entry("etc", kind="dir", mode=0o755), Entry("etc/hostname", data=b"one\n")],
    [Entry("bin", kind="dir", mode=0o755), Entry("bin/tool", data=b"\x7fELF" + bytes(range(256)) * 40)],
]


def skopeo(*args: str) -> bytes:
    require_or_skip(shutil.which("skopeo") is not None, "skopeo is not installed")
    proc = subprocess.run(["skopeo", *args], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_all(image: LocalImage) -> list[bytes]:
    """Every layer's stored bytes, read through the verifying streams."""
    out = []
    for layer in image.layers():
        with layer.open() as f:
            out.append(f.read())
    return out


def blob_path(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.split(":", 1)[1]


def flip_byte(path: Path, offset: int) -> None:
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    return write_oci_layout(tmp_path_factory.mktemp("src") / "layout", LAYERS,
                            compression=["gzip", "tar"], tag="v1")


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    return write_oci_layout(tmp_path_factory.mktemp("src") / "multi", LAYERS, tag="v1",
                            extra_platforms=[("arm64", "v8"), ("arm", "v7")])


@pytest.fixture
def own_layout(tmp_path: Path) -> BuiltImage:
    """A layout a test may damage."""
    return write_oci_layout(tmp_path / "layout", LAYERS, compression=["gzip", "tar"], tag="v1")


# --- OCI layout --------------------------------------------------------------------------------


def test_layout_image_matches_what_skopeo_reads(layout: BuiltImage) -> None:
    image = OciLayoutSource(layout.path, "v1").resolve()
    raw_manifest = skopeo("inspect", "--raw", f"oci:{layout.path}:v1")
    raw_config = skopeo("inspect", "--raw", "--config", f"oci:{layout.path}:v1")
    assert image.manifest().raw == raw_manifest
    assert str(image.digest) == sha256(raw_manifest) == layout.manifest_digest
    assert image.config().raw == raw_config
    assert image.platform == AMD64
    assert image.index is None
    assert image.reference == f"oci:{layout.path}:v1"
    skopeo_layers = json.loads(raw_manifest)["layers"]
    assert [str(layer.descriptor.digest) for layer in image.layers()] == [d["digest"] for d in skopeo_layers]
    assert [str(layer.diff_id) for layer in image.layers()] == layout.diff_ids
    blobs = read_all(image)
    assert [sha256(b) for b in blobs] == layout.layer_digests
    # the tar one is its own diff_id; the gzip one decompresses to its diff_id
    assert sha256(gzip.decompress(blobs[0])) == layout.diff_ids[0]
    assert sha256(blobs[1]) == layout.diff_ids[1]


def test_layout_with_one_image_needs_no_tag(layout: BuiltImage) -> None:
    image = OciLayoutSource(layout.path).resolve()
    assert str(image.digest) == layout.manifest_digest
    assert image.reference.endswith(":v1")  # the tag it found, for records


def test_layout_tags_made_by_skopeo(layout: BuiltImage, multi: BuiltImage, tmp_path: Path) -> None:
    both = tmp_path / "both"
    skopeo("copy", "-q", f"oci:{layout.path}:v1", f"oci:{both}:one")
    skopeo("copy", "-q", "--override-arch", "arm64", "--override-variant", "v8",
           f"oci:{multi.path}:v1", f"oci:{both}:two")
    source = OciLayoutSource(both, "two")
    assert source.tags() == ["one", "two"]
    two = source.resolve(ARM64)
    assert two.manifest().raw == skopeo("inspect", "--raw", f"oci:{both}:two")
    assert two.platform == Platform("linux", "arm64", "v8")
    with pytest.raises(ImageNotFoundError, match="several images; name one by tag: one, two"):
        OciLayoutSource(both).resolve()
    with pytest.raises(ImageNotFoundError, match=r"no image tagged 'three'; tags: one, two") as info:
        OciLayoutSource(both, "three").resolve()
    assert str(both) in str(info.value)


@pytest.mark.parametrize(
    ("platform", "arch", "variant"),
    [("linux/amd64", "amd64", ""), ("linux/arm64", "arm64", "v8"), ("linux/arm64/v8", "arm64", "v8"),
     ("linux/arm/v7", "arm", "v7"), ("linux/aarch64", "arm64", "v8")],
)
def test_multi_platform_index_selects_the_requested_platform(
    multi: BuiltImage, platform: str, arch: str, variant: str
) -> None:
    index = json.loads(skopeo("inspect", "--raw", f"oci:{multi.path}:v1"))
    want = next(m["digest"] for m in index["manifests"]
                if m["platform"]["architecture"] == arch and m["platform"].get("variant", "") == variant)
    image = OciLayoutSource(multi.path, "v1").resolve(Platform.parse(platform))
    assert str(image.digest) == want
    assert image.index is not None  # what inspect shows
    assert [str(d.digest) for d in image.index.manifests] == [m["digest"] for m in index["manifests"]]
    assert image.config().architecture == arch
    assert len(read_all(image)) == 2


def test_missing_platform_lists_what_the_index_has(multi: BuiltImage) -> None:
    with pytest.raises(PlatformNotFoundError) as info:
        OciLayoutSource(multi.path).resolve(Platform.parse("linux/s390x"))
    assert "linux/s390x" in str(info.value)
    assert "linux/amd64, linux/arm64/v8, linux/arm/v7" in str(info.value)
    assert info.value.hint


def test_single_manifest_is_checked_against_an_explicit_platform(layout: BuiltImage) -> None:
    source = OciLayoutSource(layout.path)
    assert source.resolve(AMD64).platform == AMD64
    with pytest.raises(PlatformNotFoundError, match=r"no image for platform linux/arm64/v8; the image has: linux/amd64"):
        source.resolve(ARM64)


def _write_blob(root: Path, obj: dict[str, Any]) -> dict[str, Any]:
    data = json.dumps(obj).encode()
    blob_path(root, sha256(data)).write_bytes(data)
    return {"mediaType": obj["mediaType"], "digest": sha256(data), "size": len(data)}


def _nest(root: Path, target: dict[str, Any], depth: int) -> None:
    """Point index.json at ``depth`` indexes wrapped around ``target``."""
    desc = target
    for _ in range(depth):
        desc = _write_blob(root, {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                  "manifests": [desc]})
    desc = {**desc, "annotations": {"org.opencontainers.image.ref.name": "v1"}}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))


def test_nested_indexes_are_followed_within_a_bound(own_layout: BuiltImage) -> None:
    root = own_layout.path
    index = json.loads((root / "index.json").read_text())
    manifest_desc = {k: v for k, v in index["manifests"][0].items() if k != "annotations"}
    manifest_desc["platform"] = {"os": "linux", "architecture": "amd64"}
    _nest(root, manifest_desc, MAX_INDEX_DEPTH)
    assert str(OciLayoutSource(root).resolve(AMD64).digest) == own_layout.manifest_digest
    _nest(root, manifest_desc, MAX_INDEX_DEPTH + 2)
    with pytest.raises(ManifestError, match="nested more than"):
        OciLayoutSource(root).resolve(AMD64)


def test_flipped_byte_in_a_layer_fails_at_end_of_stream(own_layout: BuiltImage) -> None:
    path = blob_path(own_layout.path, own_layout.layer_digests[1])
    flip_byte(path, path.stat().st_size - 600)
    image = OciLayoutSource(own_layout.path).resolve()
    layer = image.layers()[1]
    with layer.open() as f:
        assert len(f.read(512)) == 512  # the damage is past here: no error yet
        with pytest.raises(DigestMismatchError) as info:
            while f.read(4096):
                pass
    assert own_layout.layer_digests[1].split(":")[1][:12] in str(info.value)
    with image.layers()[0].open() as f:
        f.read()  # the other layer is intact


def test_truncated_layer_fails_with_size_mismatch(own_layout: BuiltImage) -> None:
    path = blob_path(own_layout.path, own_layout.layer_digests[0])
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(SizeMismatchError), OciLayoutSource(own_layout.path).resolve().layers()[0].open() as f:
        f.read()


def test_damaged_manifest_is_refused_at_resolve(own_layout: BuiltImage) -> None:
    flip_byte(blob_path(own_layout.path, own_layout.manifest_digest), 3)
    with pytest.raises(DigestMismatchError, match="manifest"):
        OciLayoutSource(own_layout.path).resolve()


@pytest.mark.parametrize("which", ["layer", "config", "manifest"])
def test_missing_blob_names_digest_and_layout(own_layout: BuiltImage, which: str) -> None:
    digest = {"layer": own_layout.layer_digests[1], "config": own_layout.config_digest,
              "manifest": own_layout.manifest_digest}[which]
    blob_path(own_layout.path, digest).unlink()
    with pytest.raises(ImageNotFoundError) as info:
        OciLayoutSource(own_layout.path).resolve()
    assert digest in str(info.value)
    assert str(own_layout.path) in str(info.value)


def test_blob_symlink_leaving_the_layout_is_refused(own_layout: BuiltImage, tmp_path: Path) -> None:
    path = blob_path(own_layout.path, own_layout.layer_digests[1])
    outside = tmp_path / "outside"
    outside.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(outside)
    with pytest.raises(UnsafeLayerError, match="outside the layout"):
        OciLayoutSource(own_layout.path).resolve()


def test_config_with_wrong_diff_id_count_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "layout"
    built = write_oci_layout(root, LAYERS)
    config = make_config(built.diff_ids[:1])
    blob_path(root, sha256(config)).write_bytes(config)
    manifest = json.loads(built.manifest)
    manifest["config"].update(digest=sha256(config), size=len(config))
    data = json.dumps(manifest).encode()
    blob_path(root, sha256(data)).write_bytes(data)
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": manifest["mediaType"], "digest": sha256(data), "size": len(data)}]}))
    with pytest.raises(ManifestError, match="lists 2 layers but the config has 1 diff_ids"):
        OciLayoutSource(root).resolve()


def test_not_a_layout(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFoundError, match="no such directory"):
        OciLayoutSource(tmp_path / "nothing").resolve()
    with pytest.raises(ImageNotFoundError, match="not an OCI image layout"):
        OciLayoutSource(tmp_path).resolve()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(1, 9000), min_size=1, max_size=40))
def test_layer_streams_survive_any_read_sizes(layout: BuiltImage, sizes: list[int]) -> None:
    layer = OciLayoutSource(layout.path).resolve().layers()[1]
    expected = blob_path(layout.path, layout.layer_digests[1]).read_bytes()
    got = bytearray()
    with layer.open() as f:
        for n in sizes:
            got += f.read(n)
        got += f.read()
    assert bytes(got) == expected


# --- OCI archive -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oci_archive(layout: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("arch") / "image.tar"
    skopeo("copy", "-q", f"oci:{layout.path}:v1", f"oci-archive:{out}:v1")
    return out


def test_oci_archive_made_by_skopeo(oci_archive: Path, layout: BuiltImage) -> None:
    with OciArchiveSource(oci_archive, "v1") as source:
        image = source.resolve()
        raw = skopeo("inspect", "--raw", f"oci-archive:{oci_archive}:v1")
        assert image.manifest().raw == raw
        assert image.config().raw == skopeo("inspect", "--raw", "--config", f"oci-archive:{oci_archive}")
        assert image.reference == f"oci-archive:{oci_archive}:v1"
        blobs = read_all(image)
        assert [sha256(b) for b in blobs] == [d["digest"] for d in json.loads(raw)["layers"]]
        # skopeo compresses the plain layer on the way, but the content stays the same
        assert [sha256(gzip.decompress(b)) for b in blobs] == layout.diff_ids
        assert [str(layer.diff_id) for layer in image.layers()] == layout.diff_ids
        assert source.tags() == ["v1"]


def _recompress(src: Path, dest: Path, how: str) -> Path:
    data = src.read_bytes()
    packers = {"gzip": gzip.compress, "zstd": zstandard.ZstdCompressor().compress,
               "bzip2": bz2.compress, "xz": lzma.compress}
    dest.write_bytes(packers[how](data))
    return dest


@pytest.mark.parametrize("how", ["gzip", "zstd", "bzip2", "xz"])
def test_compressed_oci_archive_is_unpacked_once_into_an_anonymous_file(
    oci_archive: Path, layout: BuiltImage, tmp_path: Path, how: str
) -> None:
    packed = _recompress(oci_archive, tmp_path / f"image.tar.{how}", how)
    cache = tmp_path / "cache"
    with OciArchiveSource(packed, options=SourceOptions(cache_dir=cache)) as source:
        image = source.resolve()
        plain = OciArchiveSource(oci_archive).resolve()
        assert image.digest == plain.digest
        assert read_all(image) == read_all(plain)
        assert list((cache / "tmp").iterdir()) == []  # unlinked at once: nothing to clean up


def test_oci_archive_with_flipped_layer_byte_fails_at_end_of_stream(oci_archive: Path, layout: BuiltImage,
                                                                    tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.tar"
    shutil.copy(oci_archive, damaged)
    digest = OciArchiveSource(oci_archive).resolve().layers()[1].descriptor.digest
    with tarfile.open(damaged) as tf:
        member = tf.getmember(f"blobs/sha256/{digest.hex}")
    flip_byte(damaged, member.offset_data + member.size // 2)
    image = OciArchiveSource(damaged).resolve()
    with pytest.raises(DigestMismatchError), image.layers()[1].open() as f:
        f.read()


def test_multi_platform_oci_archive(multi: BuiltImage, tmp_path: Path) -> None:
    out = tmp_path / "multi.tar"
    skopeo("copy", "-q", "--all", f"oci:{multi.path}:v1", f"oci-archive:{out}:v1")
    image = OciArchiveSource(out).resolve(ARM64)
    assert image.platform == Platform("linux", "arm64", "v8")
    index = json.loads(skopeo("inspect", "--raw", f"oci-archive:{out}:v1"))
    assert [str(image.digest)] == [m["digest"] for m in index["manifests"]
                                   if m["platform"]["architecture"] == "arm64"]
    assert len(read_all(image)) == 2


def test_not_an_archive(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"hello, this is not a tar file" * 30)
    with pytest.raises(UnsupportedError, match="not a tar archive"):
        OciArchiveSource(junk).resolve()
    with pytest.raises(ImageNotFoundError, match="no such file"):
        OciArchiveSource(tmp_path / "absent.tar").resolve()


# --- docker save archives ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_archive(layout: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("arch") / "docker.tar"
    skopeo("copy", "-q", f"oci:{layout.path}:v1", f"docker-archive:{out}:example.com/app:1")
    return out


def test_docker_archive_made_by_skopeo(docker_archive: Path, layout: BuiltImage) -> None:
    image = DockerArchiveSource(docker_archive).resolve()
    theirs = json.loads(skopeo("inspect", "--raw", f"docker-archive:{docker_archive}"))
    ours = json.loads(image.manifest().raw)
    assert ours["config"]["digest"] == theirs["config"]["digest"] == str(image.config().digest)
    assert image.config().raw == skopeo("inspect", "--raw", "--config", f"docker-archive:{docker_archive}")
    # skopeo stores the layers uncompressed, so each layer's digest is its diff_id
    assert [d["digest"] for d in ours["layers"]] == [d["digest"] for d in theirs["layers"]] == layout.diff_ids
    assert [d["mediaType"] for d in ours["layers"]] == [OCI_LAYER_TAR, OCI_LAYER_TAR]
    assert [sha256(b) for b in read_all(image)] == layout.diff_ids
    assert image.reference == f"docker-archive:{docker_archive}:example.com/app:1"
    assert image.platform == AMD64


def test_docker_archive_manifest_digest_is_stable(docker_archive: Path, tmp_path: Path) -> None:
    first = DockerArchiveSource(docker_archive).resolve()
    copy = tmp_path / "copy.tar"
    shutil.copy(docker_archive, copy)
    again = DockerArchiveSource(copy, "example.com/app:1").resolve()
    assert again.digest == first.digest == Digest.of(first.manifest().raw)
    assert json.loads(first.manifest().raw)["mediaType"] == "application/vnd.oci.image.manifest.v1+json"


def _two_image_archive(path: Path) -> list[str]:
    """A docker archive with two images: RepoTags a.io/one:1 and a.io/two:2 (and an untagged third)."""
    members: list[tuple[str, bytes]] = []
    entries = []
    digests = []
    for n, (tag, content) in enumerate([("a.io/one:1", b"one"), ("a.io/two:2", b"two"), (None, b"three")]):
        tar = make_tar([Entry(f"file{n}", data=content)])
        config = make_config([sha256(tar)])
        digests.append(sha256(tar))
        members += [(f"layer{n}.tar", tar), (f"config{n}.json", config)]
        entries.append({"Config": f"config{n}.json", "RepoTags": [tag] if tag else None,
                        "Layers": [f"layer{n}.tar"]})
    members.append(("manifest.json", json.dumps(entries).encode()))
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return digests


def test_docker_archive_with_several_images(tmp_path: Path) -> None:
    path = tmp_path / "several.tar"
    layer_digests = _two_image_archive(path)
    with pytest.raises(ImageNotFoundError, match=re.escape("holds 3 images; name one by tag: a.io/one:1, a.io/two:2")):
        DockerArchiveSource(path).resolve()
    two = DockerArchiveSource(path, parse_reference("a.io/two:2")).resolve()
    assert str(two.layers()[0].descriptor.digest) == layer_digests[1]
    assert str(DockerArchiveSource(path, index=2).resolve().layers()[0].diff_id) == layer_digests[2]
    assert DockerArchiveSource(path, index=1).resolve().digest == two.digest
    with pytest.raises(ImageNotFoundError, match=re.escape("no image tagged a.io/two:3; tags: a.io/one:1, a.io/two:2")):
        DockerArchiveSource(path, "a.io/two:3").resolve()
    with pytest.raises(ImageNotFoundError, match="no image @3"):
        DockerArchiveSource(path, index=3).resolve()
    with pytest.raises(UsageError):
        DockerArchiveSource(path, "a.io/two:2", index=1)


def test_docker_archive_with_gzip_layers(tmp_path: Path) -> None:
    path = tmp_path / "gz.tar"
    write_docker_archive(path, LAYERS, gzip_layers=True)
    image = DockerArchiveSource(path, "example.com/test/image:latest").resolve()
    blobs = read_all(image)
    for layer, blob in zip(image.layers(), blobs, strict=True):
        assert layer.descriptor.media_type == OCI_LAYER_GZIP
        assert str(layer.descriptor.digest) == sha256(blob)  # digest of the file as stored
        assert str(layer.diff_id) == sha256(gzip.decompress(blob))


def test_gzipped_docker_archive(docker_archive: Path, layout: BuiltImage, tmp_path: Path) -> None:
    packed = _recompress(docker_archive, tmp_path / "docker.tar.gz", "gzip")
    image = DockerArchiveSource(packed).resolve()
    assert image.digest == DockerArchiveSource(docker_archive).resolve().digest
    assert [sha256(b) for b in read_all(image)] == layout.diff_ids


def test_docker_archive_with_flipped_layer_byte(docker_archive: Path, layout: BuiltImage,
                                                tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.tar"
    shutil.copy(docker_archive, damaged)
    with tarfile.open(damaged) as tf:
        member = tf.getmember(layout.diff_ids[1].split(":")[1] + ".tar")
    flip_byte(damaged, member.offset_data + 700)
    image = DockerArchiveSource(damaged).resolve()
    with image.layers()[0].open() as f:
        f.read()
    with pytest.raises(DigestMismatchError), image.layers()[1].open() as f:
        f.read()


def test_docker_archive_holding_an_oci_layout(tmp_path: Path) -> None:
    """The format of docker save since Docker 25: manifest.json naming blobs/sha256/… files."""
    root = tmp_path / "layout"
    built = write_oci_layout(root, LAYERS, compression="tar")
    manifest = [{"Config": "blobs/sha256/" + built.config_digest.split(":")[1],
                 "RepoTags": ["app:1"],
                 "Layers": ["blobs/sha256/" + d.split(":")[1] for d in built.layer_digests]}]
    (root / "manifest.json").write_text(json.dumps(manifest))
    path = tmp_path / "docker25.tar"
    with tarfile.open(path, "w") as tf:
        tf.add(root, arcname=".")
    image = DockerArchiveSource(path, "app:1").resolve()
    assert [str(d.digest) for d in image.manifest().layers] == built.layer_digests
    assert str(image.config().digest) == built.config_digest
    assert [sha256(b) for b in read_all(image)] == built.layer_digests
    # skopeo reads the same archive to the same layers
    theirs = json.loads(skopeo("inspect", "--raw", f"docker-archive:{path}"))
    assert [d["digest"] for d in theirs["layers"]] == built.layer_digests


def test_docker_archive_config_named_by_wrong_digest(tmp_path: Path) -> None:
    path = tmp_path / "bad.tar"
    write_docker_archive(path, LAYERS)
    with tarfile.open(path) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(path, "w") as tf:
        for m, data in members:
            if m.name.endswith(".json") and m.name != "manifest.json":
                data = data.replace(b"/bin/sh", b"/bin/ls")
            tf.addfile(m, io.BytesIO(data))
    with pytest.raises(DigestMismatchError, match="its name says"):
        DockerArchiveSource(path).resolve()


# --- dispatch ----------------------------------------------------------------------------------


def test_open_source_dispatches_on_transport(layout: BuiltImage, oci_archive: Path,
                                             docker_archive: Path) -> None:
    options = SourceOptions()
    for spec, kind in [
        (f"oci:{layout.path}:v1", OciLayoutSource),
        (f"oci-archive:{oci_archive}:v1", OciArchiveSource),
        (f"docker-archive:{docker_archive}:example.com/app:1", DockerArchiveSource),
        (f"docker-archive:{docker_archive}:@0", DockerArchiveSource),
    ]:
        source = open_source(spec, options=options)
        assert isinstance(source, kind)
        image = source.resolve()
        assert image.digest == Digest.of(image.manifest().raw)
        assert len(image.layers()) == 2


def test_open_source_hands_registry_references_to_the_registry_source() -> None:
    from ocisquash.sources.registry import RegistrySource

    source = open_source("127.0.0.1:5000/app:1", options=SourceOptions(plain_http=True))
    assert isinstance(source, RegistrySource)
    source = open_source("docker://alpine")
    assert isinstance(source, RegistrySource)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_archives_raise_only_ocisquash_errors(docker_archive: Path, oci_archive: Path,
                                                      tmp_path: Path, data: st.DataObject) -> None:
    kind, original = data.draw(st.sampled_from([(DockerArchiveSource, docker_archive),
                                                (OciArchiveSource, oci_archive)]))
    blob = bytearray(original.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="length")]
    else:
        for offset in data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=4)):
            blob[offset] ^= 0xFF
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(blob))
    try:
        with kind(damaged) as source:
            read_all(source.resolve())
    except OcisquashError as e:
        assert e.message


@pytest.mark.parametrize("bad", [{"max_parallel": 0}, {"timeout": 0.0}, {"retries": -1}])
def test_source_options_refuse_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        SourceOptions(**bad)
    assert "hunter2" not in repr(SourceOptions(username="u", password="hunter2"))
