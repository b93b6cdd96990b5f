"""Reading one layer: compression sniffing, verification at EOF, tar dialects, limits."""

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import io
import lzma
import random
import signal
import struct
import tarfile
import threading
from collections.abc import Callable, Set
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

import ocisquash.digest as digest_module
from ocisquash.digest import Digest, VerifyingReader
from ocisquash.entry import HoleReader
from ocisquash.errors import (
    DigestMismatchError,
    IntegrityError,
    LayerError,
    LimitExceededError,
    UnsafeLayerError,
    UnsupportedError,
)
from ocisquash.flatten import flatten
from ocisquash.layers import TarStream, normalize_path, read_layer
from ocisquash.layers.compression import PeekReader
from ocisquash.layers.tar import _byte_sum, _num
from ocisquash.layers.zstd import ZstdReader
from ocisquash.rules import Fidelity, Limits
from ocisquash.sniff import SNIFF_BYTES, sniff_compression

from .cases import D, F, H, gnu_tar
from .layerkit import MEDIA, BlobLayer, RecordingSink
from imagebuilder import Entry, make_tar

TAR = make_tar([D("etc"), F("etc/hosts", b"127.0.0.1 localhost\n"), F("big", bytes(range(256)) * 4096)])


def entries(layer: BlobLayer, **kw: object) -> dict[bytes, bytes | None]:
    return {e.path: (d if d is None or isinstance(d, bytes) else d.read())
            for e, d in read_layer(layer, **kw)}  # type: ignore[arg-type]


def test_compression_is_sniffed_from_magic_bytes_not_media_type() -> None:
    for blob, label in ((gzip.compress(TAR), "tar"), (zstandard.compress(TAR), "gzip"),
                        (TAR, "zstd")):
        layer = BlobLayer(blob, Digest.of(TAR), MEDIA[label])
        assert entries(layer)[b"etc/hosts"] == b"127.0.0.1 localhost\n"
    assert sniff_compression(b"\x1f\x8b\x08\x00") == "gzip"
    assert sniff_compression(b"\x28\xb5\x2f\xfd") == "zstd"
    assert sniff_compression(b"etc/") == "tar"
    skippable = struct.pack("<II", 0x184D2A5E, 3) + b"abc"
    layer = BlobLayer(skippable + zstandard.compress(TAR), Digest.of(TAR), MEDIA["zstd"])
    assert entries(layer)[b"etc/hosts"] == b"127.0.0.1 localhost\n"


def test_archive_compressions_are_sniffed_but_refused_for_layers() -> None:
    # One sniffer serves layers and archives: a layer may not be bzip2 or xz...
    for blob, name in ((bz2.compress(TAR), "bzip2"), (lzma.compress(TAR), "xz")):
        assert sniff_compression(blob[:SNIFF_BYTES]) == name
        with pytest.raises(UnsupportedError, match=f"the layer is {name}-compressed"):
            entries(BlobLayer(blob, Digest.of(TAR), MEDIA["gzip"]))
    # ...and a tar whose first name merely starts with "BZh" is still a tar.
    tar = make_tar([F("BZh9-notes", b"n")])
    assert sniff_compression(tar[:SNIFF_BYTES]) == "tar"
    assert entries(BlobLayer.of(tar, "tar")) == {b"BZh9-notes": b"n"}


def test_unknown_media_type_is_refused_naming_it() -> None:
    layer = BlobLayer(gzip.compress(TAR), Digest.of(TAR), "application/vnd.example.squashfs")
    with pytest.raises(UnsupportedError, match=r"application/vnd\.example\.squashfs"):
        entries(layer)


@pytest.mark.parametrize("media_type", [
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
])
def test_docker_and_nondistributable_media_types_are_read(media_type: str) -> None:
    assert b"big" in entries(BlobLayer(gzip.compress(TAR), Digest.of(TAR), media_type))


def test_multi_member_gzip_and_multi_frame_zstd_are_read_to_the_end() -> None:
    half = len(TAR) // 2
    gz = gzip.compress(TAR[:half]) + gzip.compress(TAR[half:])
    zst = zstandard.compress(TAR[:half]) + zstandard.compress(TAR[half:])
    for blob, media in ((gz, MEDIA["gzip"]), (zst, MEDIA["zstd"])):
        got = entries(BlobLayer(blob, Digest.of(TAR), media))
        assert got[b"big"] == bytes(range(256)) * 4096


def test_zstd_reader_hands_on_whole_reads_across_frames() -> None:
    # Each fill decodes only a few KiB of input; a read still returns all it asks for,
    # across frame ends, so the layer's bytes travel in chunks and not in slivers.
    data = b"".join(b"line %d of some text\n" % i for i in range(200_000))
    third = len(data) // 3
    blob = b"".join(zstandard.compress(data[i:i + third]) for i in range(0, len(data), third))
    reader = ZstdReader(PeekReader(io.BytesIO(blob)))
    sizes = []
    got = b""
    while chunk := reader.read(1 << 20):
        sizes.append(len(chunk))
        got += chunk
    assert got == data
    assert sizes[:-1] == [1 << 20] * (len(sizes) - 1)
    assert 0 < sizes[-1] <= 1 << 20


@pytest.mark.parametrize("compression,cut,message", [
    ("gzip", -9, "gzip stream truncated"),
    ("gzip", 40, "gzip stream truncated"),
    ("zstd", -3, "zstd stream truncated"),
    ("zstd", 30, "zstd stream truncated"),
])
def test_truncated_compressed_stream_is_a_layer_error_naming_the_layer(
        compression: str, cut: int, message: str) -> None:
    blob = (gzip.compress(TAR) if compression == "gzip" else zstandard.compress(TAR))[:cut]
    layer = BlobLayer(blob, None, MEDIA[compression])
    with pytest.raises(LayerError, match=message) as info:
        entries(layer)
    assert f"layer sha256:{layer.descriptor.digest.hex[:12]}" in str(info.value)


@pytest.mark.parametrize("small_files", [-1, 1 << 16])
@pytest.mark.parametrize("cut", [512 + 100, 512 * 3 + 10, 700,
                                 512 * 2 + 10, 512 * 2 + 100])  # etc/hosts' data, its padding
def test_truncated_tar_is_a_layer_error(cut: int, small_files: int) -> None:
    with pytest.raises(LayerError, match="truncated"):
        entries(BlobLayer(TAR[:cut], None, MEDIA["tar"]), small_files=small_files)


def test_small_files_come_whole_as_bytes_and_the_rest_as_streams() -> None:
    layer = BlobLayer.of(TAR, "gzip")
    kinds = {e.path: type(d) for e, d in read_layer(layer, small_files=20)}
    assert kinds[b"etc"] is type(None)
    assert kinds[b"etc/hosts"] is bytes  # exactly 20 bytes
    assert kinds[b"big"] is not bytes and kinds[b"big"] is not type(None)
    assert entries(layer, small_files=20) == entries(layer)
    assert entries(layer, small_files=20)[b"etc/hosts"] == b"127.0.0.1 localhost\n"
    just_under = {e.path: type(d) for e, d in read_layer(layer, small_files=19)}
    assert just_under[b"etc/hosts"] is not bytes


def test_tar_without_end_blocks_ending_on_a_header_boundary_is_accepted() -> None:
    one = make_tar([F("a", b"x" * 10)])
    assert entries(BlobLayer(one[:1024], None, MEDIA["tar"])) == {b"a": b"x" * 10}


def test_empty_blob_is_an_empty_layer() -> None:
    assert entries(BlobLayer(b"", Digest.of(b""), MEDIA["tar"])) == {}


def test_diff_id_is_checked_even_when_the_tar_ends_before_the_stream() -> None:
    """Regression: the parser stops at the end-of-archive blocks; data after them must
    still be hashed, or a layer with appended bytes would pass as the config's diff_id."""
    blob = gzip.compress(TAR + b"appended after the end of the archive")
    layer = BlobLayer(blob, Digest.of(TAR), MEDIA["gzip"])
    with pytest.raises(DigestMismatchError, match=r"the image config says"):
        entries(layer)


def test_blob_digest_is_checked_even_when_the_tar_ends_early() -> None:
    blob = gzip.compress(TAR)
    layer = BlobLayer(blob, Digest.of(TAR), MEDIA["gzip"])
    layer.blob = blob + gzip.compress(b"\0" * 1024)  # a second gzip member the digest does not cover
    with pytest.raises(IntegrityError):
        entries(layer)


class _CountingHash:
    """A hashlib object that adds what it hashes to a shared count."""

    def __init__(self, inner: Any, counted: list[int]) -> None:
        self._inner, self._counted = inner, counted
        self.name = inner.name

    def update(self, data: bytes) -> None:
        self._counted[0] += len(data)
        self._inner.update(data)

    def hexdigest(self) -> str:
        return str(self._inner.hexdigest())

    def digest(self) -> bytes:
        return bytes(self._inner.digest())


def _bytes_hashed(layer: BlobLayer, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many bytes reading ``layer`` hashes; a refused layer's error is re-raised."""
    counted = [0]
    real = hashlib.new
    with monkeypatch.context() as m:
        m.setattr(hashlib, "new", lambda name, *a: _CountingHash(real(name, *a), counted))
        try:
            entries(layer)
        except DigestMismatchError as e:
            e.add_note(f"{counted[0]} bytes hashed")
            raise
    return counted[0]


def test_a_plain_tar_whose_digest_is_its_diff_id_is_hashed_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``docker save`` layer: the blob's own check is the diff_id check."""
    plain = BlobLayer.of(TAR, "tar")
    assert plain.descriptor.digest == plain.diff_id
    assert _bytes_hashed(plain, monkeypatch) == len(TAR)
    # A compressed blob has two digests to check, so both are computed.
    packed = BlobLayer.of(TAR, "gzip")
    assert _bytes_hashed(packed, monkeypatch) == len(packed.blob) + len(TAR)
    # So does a plain tar whose config names another diff_id, which is then refused.
    other = BlobLayer(TAR, Digest.of(TAR + b"\0" * 512), MEDIA["tar"])
    with pytest.raises(DigestMismatchError, match=r"the image config says") as refused:
        _bytes_hashed(other, monkeypatch)
    assert refused.value.__notes__ == [f"{2 * len(TAR)} bytes hashed"]


def test_a_plain_tar_changed_after_it_was_described_is_refused() -> None:
    """Hashed once, a plain tar is still checked: a changed byte in a file's data or
    bytes appended after the archive's end."""
    for changed in (TAR.replace(b"127.0.0.1 localhost", b"127.0.0.2 localhost"),
                    TAR + b"\0" * 512):
        layer = BlobLayer.of(TAR, "tar")
        layer.blob = changed
        with pytest.raises(IntegrityError):
            entries(layer)


def _decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ocisquash-decode"]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "tar"])
def test_a_reader_left_half_way_stops_its_decoding_thread(compression: str) -> None:
    # Many 1 MiB chunks, so that the decoder is blocked handing one over when the
    # consumer walks away (as the flattener does when a later entry is refused).
    tar = make_tar([F(f"f{i}", bytes([i]) * (1 << 20)) for i in range(12)])
    layer = BlobLayer.of(tar, compression)
    before = len(_decode_threads())
    members = read_layer(layer)
    first, data = next(members)
    assert first.path == b"f0" and data is not None and data.read(10) == bytes(10)
    assert len(_decode_threads()) == before + 1
    members.close()
    assert len(_decode_threads()) == before


def _hash_threads(before: Set[threading.Thread] = frozenset()) -> set[threading.Thread]:
    """The hashing threads alive now that are not in ``before`` (other tests may leave
    one to a later garbage collection)."""
    return {t for t in threading.enumerate() if t.name == "ocisquash-hash"} - before


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_layer_hashed_behind_is_checked_and_leaves_no_thread(
        compression: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With both digests computed on threads of their own (machines of 4 cores or more):
    the same entries, both checks still refuse, and no hashing thread outlives a read,
    whole or left half-way."""
    before = _hash_threads()
    monkeypatch.setattr(digest_module, "HASH_BEHIND", True)
    rnd = random.Random(12)
    files = {f"f{i}".encode(): rnd.randbytes(1 << 20) for i in range(12)}
    tar = make_tar([F(path.decode(), data) for path, data in files.items()])
    layer = BlobLayer.of(tar, compression)
    assert len(layer.blob) > 4 * digest_module.HashBehind.BATCH  # random bytes stay big
    members = read_layer(layer)
    seen = {}
    for entry, data in members:
        assert data is not None
        seen[entry.path] = data.read()
        if len(seen) == 6:  # past the first batch of both the blob and the tar
            assert len(_hash_threads(before)) == 2
    assert seen == files
    assert not _hash_threads(before)

    members = read_layer(layer)
    next(members)
    members.close()
    assert not _hash_threads(before)

    other = BlobLayer(layer.blob, Digest.of(tar + b"\0" * 512), MEDIA[compression])
    with pytest.raises(DigestMismatchError, match="the image config says"):
        entries(other)
    # Bytes the blob's digest does not cover, that decode to more end-of-archive zeros.
    pack = gzip.compress if compression == "gzip" else zstandard.compress
    layer.blob += pack(b"\0" * 1024)
    with pytest.raises(IntegrityError):
        entries(layer)
    # The error came from reading a member's data, so its traceback still holds the
    # suspended reader: the threads must have ended when the stream broke, not with it.
    assert not _hash_threads(before)


def test_a_decoding_error_arrives_after_the_entries_before_it() -> None:
    # The decoder runs ahead of the parser; its error must still come in stream order.
    tar = make_tar([F("a", b"a" * 5000), F("b", b"b" * (3 << 20))])
    blob = gzip.compress(tar)
    layer = BlobLayer(blob[:len(blob) // 2], None, MEDIA["gzip"])
    seen = []
    with pytest.raises(LayerError, match="gzip stream truncated"):
        for entry, data in read_layer(layer):
            seen.append((entry.path, data.read() if data else None))
    assert seen == [(b"a", b"a" * 5000)]


def test_xattrs_keep_user_trusted_security_and_record_the_rest() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("f")
        ti.pax_headers = {
            "SCHILY.xattr.user.a": "1",
            "SCHILY.xattr.system.posix_acl_access": "\x02\x00",
            "LIBARCHIVE.xattr.security.capability": base64.b64encode(b"\x01\x00\xff").decode(),
            "LIBARCHIVE.xattr.trusted.%41": base64.b64encode(b"pct").decode().rstrip("="),
        }
        tf.addfile(ti, io.BytesIO(b""))
    fid = Fidelity()
    (entry, _), = list(read_layer(BlobLayer.of(buf.getvalue(), "tar"), fidelity=fid))
    assert entry.meta.xattrs == ((b"security.capability", b"\x01\x00\xff"),
                                 (b"trusted.A", b"pct"), (b"user.a", b"1"))
    (issue,) = fid.issues()
    assert (issue.kind, issue.count, issue.examples) == ("xattr-dropped", 1, (b"f",))


def test_out_of_range_mtime_is_clamped_and_recorded() -> None:
    layer = BlobLayer.of([F("old", mtime=-100), F("far", mtime=2**33)], "tar")
    fid = Fidelity()
    got = {e.path: e.meta.mtime for e, _ in read_layer(layer, fidelity=fid)}
    assert got == {b"old": 0, b"far": 2**32 - 1}
    assert [(i.kind, i.count) for i in fid.issues()] == [("mtime-clamped", 2)]


def test_sub_second_mtime_is_truncated_and_recorded() -> None:
    layer = BlobLayer.of([F("frac", mtime=1_700_000_000.75), F("whole")], "tar")  # type: ignore[arg-type]
    fid = Fidelity()
    got = {e.path: e.meta.mtime for e, _ in read_layer(layer, fidelity=fid)}
    assert got == {b"frac": 1_700_000_000, b"whole": 1_700_000_000}
    assert [(i.kind, i.examples) for i in fid.issues()] == [("mtime-subsecond-truncated", (b"frac",))]


def test_mode_holds_permission_bits_only() -> None:
    (e, _), = list(read_layer(BlobLayer.of([F("x", mode=0o104755)], "tar")))
    assert e.meta.mode == 0o4755


@pytest.mark.parametrize("name", ["../x", "a/../../x", "a/.."])
def test_dot_dot_component_is_refused_naming_layer_and_path(name: str) -> None:
    layer = BlobLayer.of([F(name, b"x")], "tar")
    with pytest.raises(UnsafeLayerError, match=r"\.\.") as info:
        entries(layer)
    assert "layer sha256:" in str(info.value)


def test_hardlink_outside_the_root_is_refused() -> None:
    with pytest.raises(UnsafeLayerError):
        entries(BlobLayer.of([H("l", "../../etc/shadow")], "tar"))


def test_limits_are_enforced() -> None:
    with pytest.raises(LimitExceededError, match="longer than 20"):
        entries(BlobLayer.of([F("a" * 30)], "tar"), limits=Limits(max_path_length=20))
    with pytest.raises(LimitExceededError, match="xattr"):
        entries(BlobLayer.of([F("a", xattrs={"user.big": b"x" * 100})], "tar"),
                limits=Limits(max_xattr_size=99))
    with pytest.raises(LimitExceededError, match="entries"):
        flatten([BlobLayer.of([F("a"), F("b"), F("c")])], RecordingSink(),
                limits=Limits(max_entries=2))
    with pytest.raises(LimitExceededError, match="layers"):
        flatten([BlobLayer.of([F("a")])] * 3, RecordingSink(), limits=Limits(max_layers=2))
    with pytest.raises(LimitExceededError, match="more than 10"):
        entries(BlobLayer.of([F("eleven", b"x" * 11)], "tar"), limits=Limits(max_file_size=10))
    bomb = make_tar([F("zeros", bytes(64 << 20))])
    with pytest.raises(LimitExceededError, match="expands"):
        entries(BlobLayer(zstandard.compress(bomb), None, MEDIA["zstd"]),
                limits=Limits(max_ratio=100, ratio_floor=1 << 20))


def test_hardlink_to_an_entry_not_in_the_layer_is_a_layer_error() -> None:
    with pytest.raises(LayerError, match="not an earlier"):
        flatten([BlobLayer.of([F("a"), H("b", "missing")])], RecordingSink())


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=30))
def test_file_data_reads_the_same_whatever_the_read_sizes(sizes: list[int]) -> None:
    want = bytes(range(256)) * 4096
    for entry, data in read_layer(BlobLayer(gzip.compress(TAR), Digest.of(TAR), MEDIA["gzip"])):
        if entry.path != b"big":
            continue
        assert data is not None
        got, i = bytearray(), 0
        while chunk := data.read(sizes[i % len(sizes)]):
            got += chunk
            i += 1
        assert bytes(got) == want


class _Slivers(io.RawIOBase):
    """A blob that arrives in pieces of the given sizes, as a download gives it."""

    def __init__(self, blob: bytes, sizes: list[int]) -> None:
        self._blob, self._sizes, self._at, self._i = blob, sizes, 0, 0

    def read(self, n: int = -1) -> bytes:
        size = self._sizes[self._i % len(self._sizes)]
        self._i += 1
        if n is not None and n >= 0:
            size = min(size, n)
        out = self._blob[self._at:self._at + size]
        self._at += len(out)
        return out


class _SliverLayer(BlobLayer):
    def __init__(self, layer: BlobLayer, sizes: list[int]) -> None:
        super().__init__(layer.blob, layer.diff_id, layer.descriptor.media_type)
        self._sizes = sizes

    def open(self) -> BinaryIO:
        return VerifyingReader(_Slivers(self.blob, self._sizes),  # type: ignore[return-value]
                               self.descriptor.digest, self.descriptor.size, what="layer")


def _compressed_by_entry(layer: BlobLayer) -> list[int]:
    """``TarStream.compressed`` as each entry of ``layer`` comes."""
    streams: list[TarStream] = []
    return [streams[0].compressed for _ in read_layer(layer, progress=streams.append)]


_MANY_CHUNKS = make_tar([F(f"f{i}", random.Random(i).randbytes(200_000)) for i in range(16)])


@pytest.mark.parametrize("compression", ["gzip", "zstd", "tar"])
@settings(max_examples=6, deadline=None)
@given(sizes=st.lists(st.integers(min_value=1, max_value=300_000), min_size=1, max_size=8))
def test_the_blob_read_for_each_entry_is_the_same_however_its_bytes_arrive(
        compression: str, sizes: list[int]) -> None:
    """How much of the blob was read by the time an entry comes is the same for the same
    blob whatever the sizes of the reads that brought it (a layer index is given up by
    it, and the cache's contents must not depend on the download's timing); it grows
    as the entries do, and is the whole blob at the end."""
    layer = BlobLayer.of(_MANY_CHUNKS, compression)
    whole = _compressed_by_entry(layer)
    assert whole == sorted(whole) and whole[0] < whole[-1] <= len(layer.blob)
    assert _compressed_by_entry(_SliverLayer(layer, sizes)) == whole


def test_unsupported_entry_types_are_skipped_and_recorded() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        ti = tarfile.TarInfo("label")
        ti.type = tarfile.GNUTYPE_LONGNAME[:0] + b"V"  # a GNU volume header
        tf.addfile(ti)
        tf.addfile(tarfile.TarInfo("ok"), io.BytesIO(b""))
    fid = Fidelity()
    assert [e.path for e, _ in read_layer(BlobLayer.of(buf.getvalue(), "tar"), fidelity=fid)] == [b"ok"]
    assert [i.kind for i in fid.issues()] == ["entry-type-skipped"]


def test_entry_kinds() -> None:
    layer = BlobLayer.of([Entry("c", "char", devmajor=4, devminor=64), Entry("p", "fifo"),
                          Entry("s", "symlink", linkname="/abs/target")], "tar")
    got = {e.path: (e.kind, e.devmajor, e.devminor, e.linkname) for e, _ in read_layer(layer)}
    assert got == {b"c": ("char", 4, 64, b""), b"p": ("fifo", 0, 0, b""),
                   b"s": ("symlink", 0, 0, b"/abs/target")}


def test_pax_global_header_applies_to_every_following_entry() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"uid": "77", "mtime": "1234.5"}) as tf:
        for name in ("a", "b"):
            tf.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
    ours = {e.path: (e.meta.uid, e.meta.mtime) for e, _ in read_layer(BlobLayer.of(buf.getvalue(), "tar"))}
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        theirs = {m.name.encode(): (m.uid, int(m.mtime)) for m in tf.getmembers()}
    assert ours == theirs == {b"a": (77, 1234), b"b": (77, 1234)}


def test_old_style_directory_marked_by_trailing_slash_only() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        ti = tarfile.TarInfo("olddir/")
        ti.type = tarfile.AREGTYPE
        tf.addfile(ti, io.BytesIO(b""))
    ((entry, data),) = list(read_layer(BlobLayer.of(buf.getvalue(), "tar")))
    assert (entry.path, entry.kind, data) == (b"olddir", "dir", None)


def test_header_with_signed_checksum_is_accepted_and_bad_checksum_refused() -> None:
    tar = bytearray(make_tar([F("caf\xe9", b"x")], format=tarfile.USTAR_FORMAT))
    block = tar[:512]
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + b" " * 8 + block[156:])
    tar[148:156] = b"%06o\0 " % signed
    assert [e.path for e, _ in read_layer(BlobLayer.of(bytes(tar), "tar"))] == [b"caf\xc3\xa9"]
    tar[148:156] = b"%06o\0 " % (signed + 1)
    with pytest.raises(LayerError, match="bad checksum"):
        list(read_layer(BlobLayer.of(bytes(tar), "tar")))


def test_a_bad_header_is_named_by_its_offset_in_the_tar() -> None:
    """The offset in the message is the header's, after reads that went past the
    parser's buffer (a file of 3 MiB, read as a stream) and many small members."""
    files = [F("big", bytes(range(256)) * (3 << 12))] + [F(f"s{i}", b"y" * (i * 37))
                                                          for i in range(300)]
    tar = bytearray(make_tar(files, format=tarfile.USTAR_FORMAT))
    with tarfile.open(fileobj=io.BytesIO(bytes(tar))) as tf:
        at = tf.getmember("s250").offset
    tar[at + 148:at + 156] = b"%06o\0 " % 7
    with pytest.raises(LayerError, match=f"invalid tar header at offset {at} "):
        for _entry, data in read_layer(BlobLayer.of(bytes(tar), "tar")):
            if data is not None and not isinstance(data, bytes):
                data.read(1000)  # the rest is skipped by the parser


def test_owner_ids_beyond_32_bits_are_replaced_and_recorded() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("huge")
        ti.uid, ti.gid = 2**40, 3_000_000
        tf.addfile(ti, io.BytesIO(b""))
    fid = Fidelity()
    ((entry, _),) = list(read_layer(BlobLayer.of(buf.getvalue(), "tar"), fidelity=fid))
    assert (entry.meta.uid, entry.meta.gid) == (65534, 3_000_000)
    assert [(i.kind, i.examples) for i in fid.issues()] == [("id-clamped", (b"huge",))]


def test_pax_record_without_length_after_a_good_record_is_refused() -> None:
    """Regression: a length-less record after a valid one used to loop forever."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("f")
        ti.pax_headers = {"SCHILY.xattr.user.a": "1", "SCHILY.xattr.user.b": "2"}
        tf.addfile(ti, io.BytesIO(b""))
    tar = buf.getvalue()
    good, bad = b"25 SCHILY.xattr.user.a=1\n", b"25 SCHILY.xattr.user.b=2\n"
    assert good in tar and bad in tar
    def hung(*_: object) -> None:
        raise TimeoutError("the PAX parser loops")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        with pytest.raises(LayerError, match="invalid PAX header record"):
            list(read_layer(BlobLayer.of(tar.replace(bad, b"x" * len(bad)), "tar")))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_negative_pax_size_is_refused() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("f")
        ti.pax_headers = {"comment": "x" * 9}
        tf.addfile(ti, io.BytesIO(b""))
    record, negative = b"21 comment=xxxxxxxxx\n", b"21 size=-00000000005\n"
    assert len(record) == len(negative) and record in buf.getvalue()
    tar = buf.getvalue().replace(record, negative)
    with pytest.raises(LayerError, match="negative size"):
        list(read_layer(BlobLayer.of(tar, "tar")))


def _normalized_by_definition(raw: bytes) -> bytes | None:
    """The rule normalize_path implements, spelled out: None where it must refuse."""
    if b"\0" in raw:
        return None
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    return None if b".." in parts else b"/".join(parts)


@settings(max_examples=400, deadline=None)
@given(raw=st.lists(st.sampled_from([b"/", b".", b"..", b"a", b".wh.", b"b.c", b"\0"]),
                    max_size=8).map(b"".join))
def test_normalize_path_fast_path_agrees_with_the_rule(raw: bytes) -> None:
    want = _normalized_by_definition(raw)
    if want is None:
        with pytest.raises(UnsafeLayerError):
            normalize_path(raw)
    else:
        assert normalize_path(raw) == want


@settings(max_examples=300, deadline=None)
@given(block=st.one_of(st.binary(min_size=512, max_size=512),
                       st.sampled_from([b"\xff" * 512, bytes(512), b"\x80" * 512])))
def test_header_byte_sum_is_the_plain_sum(block: bytes) -> None:
    assert _byte_sum(block) == sum(block)


def _num_by_definition(field: bytes) -> int | None:
    """Octal text up to the first NUL, spaces around it ignored; base-256 with the top
    bit set; None where the field must be refused."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field, "big")
        if field[0] == 0xFF:
            return value - (1 << (8 * len(field)))
        return value - (0x80 << (8 * (len(field) - 1)))
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        return None


@settings(max_examples=400, deadline=None)
@given(field=st.one_of(
    st.lists(st.sampled_from([b"0", b"7", b"1", b"8", b" ", b"\0", b"-", b"x"]),
             min_size=1, max_size=12).map(b"".join),
    st.binary(min_size=8, max_size=12),
))
def test_numeric_header_field_fast_path_agrees_with_the_rule(field: bytes) -> None:
    want = _num_by_definition(field)
    if want is None:
        with pytest.raises(LayerError):
            _num(field, "size", "layer")
    else:
        assert _num(field, "size", "layer") == want


@pytest.mark.parametrize("small_files", [-1, 1 << 16])
def test_a_gnu_sparse_size_without_a_sparse_map_is_ignored(small_files: int) -> None:
    # A PAX header may name a "real size" with no map: the entry is a plain file of
    # its stored size, and the entries after it are read from the right place.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("f")
        ti.size = 3
        ti.pax_headers = {"GNU.sparse.realsize": "100000"}
        tf.addfile(ti, io.BytesIO(b"abc"))
        ti = tarfile.TarInfo("g")
        ti.size = 2
        tf.addfile(ti, io.BytesIO(b"hi"))
    layer = BlobLayer.of(buf.getvalue(), "tar")
    sizes = {e.path: e.size for e, _ in read_layer(layer, small_files=small_files)}
    assert sizes == {b"f": 3, b"g": 2}
    assert entries(layer, small_files=small_files) == {b"f": b"abc", b"g": b"hi"}


def _global_header(records: dict[str, str]) -> bytes:
    return tarfile.TarInfo._create_pax_generic_header(  # type: ignore[attr-defined]
        records, tarfile.XGLTYPE, "utf-8")


def test_pax_global_headers_are_bounded_across_headers() -> None:
    # Each header is small, but together they would hand every later entry 400 xattrs
    # to read again (the fields used to pile up without bound).
    head = b"".join(_global_header({f"SCHILY.xattr.user.k{i}.{j}": "v" for j in range(2)})
                    for i in range(200))
    tar = head + make_tar([F("a", b"x")])
    with pytest.raises(LimitExceededError, match=r"PAX global headers set \d+ fields"):
        entries(BlobLayer.of(tar, "gzip"))
    # One global field too large for every entry to carry.
    big = _global_header({"SCHILY.xattr.user.big": "v" * (64 << 10)}) + make_tar([F("a")])
    with pytest.raises(LimitExceededError, match="for every later entry"):
        entries(BlobLayer.of(big, "tar"))


def test_pax_global_fields_no_entry_reads_are_not_kept() -> None:
    # git archive writes a global "comment"; a large one costs nothing per entry.
    tar = _global_header({"comment": "c" * (4 << 20), "GNU.sparse.map": "0,1"}) + \
        make_tar([F("a", b"x"), F("b", b"y")])
    assert entries(BlobLayer.of(tar, "tar")) == {b"a": b"x", b"b": b"y"}


def _holey_tree(regions: int) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        with open(root / "holey", "wb") as f:
            for i in range(regions):
                f.seek(i * 16384)
                f.write(b"%06d" % i)
            f.truncate(regions * 16384)
    return build


@pytest.mark.parametrize("options", [("--format=gnu",), ("--format=pax", "--sparse-version=0.0"),
                                     ("--format=pax", "--sparse-version=0.1"),
                                     ("--format=pax", "--sparse-version=1.0")],
                         ids=["old-gnu", "pax-0.0", "pax-0.1", "pax-1.0"])
def test_sparse_maps_are_bounded_in_every_format(options: tuple[str, ...]) -> None:
    tar = gnu_tar(_holey_tree(60), "--sparse", *options)()
    want = bytearray(60 * 16384)
    for i in range(60):
        want[i * 16384:i * 16384 + 6] = b"%06d" % i
    assert entries(BlobLayer.of(tar, "tar"), limits=Limits(max_sparse_regions=100)) == \
        {b"": None, b"holey": bytes(want)}
    with pytest.raises(LimitExceededError, match="sparse map of more than 50 regions"):
        entries(BlobLayer.of(tar, "tar"), limits=Limits(max_sparse_regions=50))


def test_a_sparse_file_hands_its_holes_over_without_reading_them() -> None:
    tar = gnu_tar(_holey_tree(3), "--sparse", "--format=pax")()
    for entry, data in read_layer(BlobLayer.of(tar, "tar")):
        if entry.path != b"holey":
            continue
        assert isinstance(data, HoleReader)
        # GNU tar maps data in whole filesystem blocks of 4 KiB.
        assert data.zeros_ahead() == 0
        assert data.read(6) == b"000000" and data.zeros_ahead() == 0
        assert data.read(4090) == bytes(4090)
        assert data.zeros_ahead() == 16384 - 4096
        with pytest.raises(ValueError):
            data.skip_zeros(16384)
        data.skip_zeros(16384 - 4096)
        assert data.read(16384) == b"000001" + bytes(16384 - 6)
        assert data.zeros_ahead() == 0 and data.read(7) == b"000002\0"


def test_a_huge_pax_number_is_cut_in_the_error() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("f")
        ti.pax_headers = {"uid": "9" * 5000}
        tf.addfile(ti)
    with pytest.raises(LayerError) as err:
        entries(BlobLayer.of(buf.getvalue(), "tar"))
    assert "(5000 bytes)" in str(err.value) and len(str(err.value)) < 300


def _ustar_member(name: bytes, typeflag: bytes, data: bytes, mode: int, uid: int, gid: int,
                  mtime: int) -> bytes:
    """One ustar member, written by hand so the name's bytes are exactly ``name``."""
    def octal(value: int, width: int) -> bytes:
        return b"%0*o\0" % (width - 1, value) if value >= 0 else b"-%0*o\0" % (width - 2, -value)
    header = bytearray(512)
    header[0:len(name)] = name
    header[100:108] = octal(mode, 8)
    header[108:116] = octal(uid, 8)
    header[116:124] = octal(gid, 8)
    header[124:136] = octal(len(data), 12)
    header[136:148] = octal(mtime, 12)
    header[148:156] = b" " * 8
    header[156:157] = typeflag
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + data + bytes(-len(data) % 512)


def _pax_comment() -> bytes:
    """An extended header that sets only a comment: the member after it is read by the
    general path, and nothing about it changes."""
    record = b"13 comment=x\n"
    header = bytearray(512)
    header[0:9] = b"PaxHeader"
    header[100:108] = b"0000644\0"
    header[124:136] = b"%011o\0" % len(record)
    header[136:148] = b"00000000000\0"
    header[148:156] = b" " * 8
    header[156:157] = b"x"
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + record + bytes(-len(record) % 512)


def _parsed(tar: bytes) -> list[tuple[object, ...]]:
    from ocisquash.layers.tar import members
    from ocisquash.rules import DEFAULT_LIMITS

    out: list[tuple[object, ...]] = []
    fid = Fidelity()
    try:
        for e, d in members(io.BytesIO(tar), DEFAULT_LIMITS, fid, "ctx", 100):  # type: ignore[arg-type]
            out.append((e, d if d is None or isinstance(d, bytes) else d.read()))
    except LayerError as err:  # the same error either way
        out.append((type(err), str(err).split(" at offset")[0]))
    out.append(tuple(fid.issues()))
    return out


_NAME_PARTS = [b"a", b"b", b".", b"..", b"", b".wh.x", b"caf\xc3\xa9", b"./", b"/"]


@settings(max_examples=300, deadline=None)
@given(members=st.lists(st.tuples(
    st.lists(st.sampled_from(_NAME_PARTS), min_size=1, max_size=4).map(b"/".join),
    st.sampled_from([b"0", b"5"]),
    st.binary(max_size=300),
    st.integers(0, 0o7777777), st.integers(-1, 0o7777777), st.integers(0, 0o7777777),
    st.sampled_from([0, 1, 2**32 - 1, 2**32, 0o77777777777, -5]),
), min_size=1, max_size=6))
def test_plain_headers_parse_as_the_general_path_parses_them(
        members: list[tuple[bytes, bytes, bytes, int, int, int, int]]) -> None:
    """The parser's fast path for plain file and directory headers gives the entries,
    data, errors and fidelity notes the general path (taken after an extended header)
    gives for the same members."""
    plain = b"".join(_ustar_member(*m) for m in members) + bytes(1024)
    general = b"".join(_pax_comment() + _ustar_member(*m) for m in members) + bytes(1024)
    assert _parsed(plain) == _parsed(general)
