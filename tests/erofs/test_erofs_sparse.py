"""Holes in EROFS images: a file with an all-zero chunk is chunk-based, its zero chunks
holes (``erofs/chunks.py``); in a compressed image, so is a large file that is mostly
holes (``erofs/sparse.py``). The kernel reads the files back, squashfs of the same
layer is the reference, and fsck.erofs checks the layout."""

from __future__ import annotations

import hashlib
import io
import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flatten.layerkit import BlobLayer
from ocisquash.entry import EntryMeta, HoleReader
from ocisquash.erofs import ErofsCompression, ErofsOptions, ErofsWriter, compress
from ocisquash.erofs.chunks import Split, chunk_bits
from ocisquash.erofs.sparse import SPARSE_MIN_SIZE
from ocisquash.flatten import flatten
from ocisquash.squashfs import SquashfsWriter, WriterOptions
from squashfs._util import mounted, require_tool

from ._util import MKFS_TIME, dump_inode, dump_super, erofs_mounted, fsck

KIB = 1024
MIB = 1 << 20
TIB = 1 << 40
#: dump.erofs's "Layout" of a compressed inode: full (1) or compact (3) indexes
COMPRESSED = {"1", "3"}


class Holey:
    """A file's bytes in reads of random sizes, with declared holes (stretches of
    zeros) that a writer may skip: the ``HoleReader`` a sparse tar member is."""

    def __init__(self, data: bytes, holes: list[tuple[int, int]], seed: int) -> None:
        for start, end in holes:
            assert data[start:end] == bytes(end - start)
        self._data = data
        self._holes = sorted(holes)
        self._pos = 0
        self._rng = random.Random(seed)

    def read(self, n: int = -1) -> bytes:
        left = len(self._data) - self._pos
        n = left if n < 0 or n > left else n
        # Short reads too: the writer must ask again.
        n = min(n, self._rng.randint(1, 3 * 4096)) if n else 0
        piece = self._data[self._pos:self._pos + n]
        self._pos += len(piece)
        return piece

    def zeros_ahead(self) -> int:
        for start, end in self._holes:
            if start <= self._pos < end:
                return end - self._pos
        return 0

    def skip_zeros(self, n: int) -> None:
        assert 0 <= n <= self.zeros_ahead()
        self._pos += n


def _image(tmp: Path, name: str, files: dict[bytes, object], **options: object) -> bytes:
    options.setdefault("mkfs_time", MKFS_TIME)
    options.setdefault("compression", ErofsCompression.NONE)
    path = tmp / name
    with ErofsWriter(path, ErofsOptions(**options)) as w:  # type: ignore[arg-type]
        for p, source in files.items():
            if isinstance(source, bytes):
                w.add_file(p, EntryMeta(mode=0o644), source)
            else:
                data, size = source  # type: ignore[misc]
                w.add_file(p, EntryMeta(mode=0o644), data, size)
        w.finish()
    return path.read_bytes()


# -- the rule -------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "bits"), [
    (0, 0), (4096, 0), (4 << 30, 0),          # up to 4 GiB: 4 KiB chunks
    ((4 << 30) + 1, 1), (8 << 30, 1),         # then the block map stays 2**20 entries
    (TIB, 8),                                  # 1 MiB chunks, a 4 MiB block map
])
def test_chunk_size_keeps_the_block_map_at_most_a_million_entries(size: int, bits: int) -> None:
    assert chunk_bits(size) == bits


_segments = st.lists(st.tuples(st.booleans(), st.integers(1, 3 * 4096 + 7)), max_size=12)


@settings(max_examples=40, deadline=None)
@given(segments=_segments, seed=st.integers(0, 2**16))
def test_the_image_does_not_depend_on_how_the_zeros_arrive(tmp_path_factory: pytest.TempPathFactory,
                                                            segments: list[tuple[bool, int]],
                                                            seed: int) -> None:
    """Zeros given as bytes, read from a stream in pieces of any size, or declared as
    holes and skipped: the same image, byte for byte."""
    rng = random.Random(seed)
    data = bytearray()
    holes = []
    for zero, n in segments:
        if zero:
            holes.append((len(data), len(data) + n))
            data += bytes(n)
        else:
            data += bytes(rng.randrange(1, 256) for _ in range(n))
    data = bytes(data)
    tmp = tmp_path_factory.mktemp("holes")
    as_bytes = _image(tmp, "a", {b"f": data, b"g": data + b"x"})
    as_stream = _image(tmp, "b", {b"f": (io.BytesIO(data), len(data)),
                                  b"g": (io.BytesIO(data + b"x"), None)})
    as_holes = _image(tmp, "c", {b"f": (Holey(data, holes, seed), len(data)),
                                 b"g": (Holey(data + b"x", holes, seed + 1), len(data) + 1)})
    assert as_bytes == as_stream == as_holes


def test_a_file_without_a_zero_chunk_is_flat_and_one_with_one_is_chunk_based(
        tmp_path: Path) -> None:
    data = os.urandom(3 * 4096 + 100)
    files = {
        b"flat": data,
        # zeros, but no 4 KiB-aligned block of them
        b"unaligned-zeros": data[:2048] + bytes(4096) + data[:4096],
        b"zero-block": data[:4096] + bytes(4096) + data[:100],
        b"all-zero": bytes(10000),
    }
    image = tmp_path / "i.erofs"
    _image(tmp_path, "i.erofs", files)
    fsck(image)
    layout = {name: dump_inode(image, "/" + name.decode())["Layout"] for name in files}
    assert layout == {b"flat": "2", b"unaligned-zeros": "2", b"zero-block": "4",
                      b"all-zero": "4"}
    assert "chunked_file" in dump_super(image).get("Filesystem features", "")


def test_no_holes_keeps_every_file_flat(tmp_path: Path) -> None:
    image = tmp_path / "i.erofs"
    _image(tmp_path, "i.erofs", {b"zero-block": bytes(8192) + b"x"}, holes=False)
    assert dump_inode(image, "/zero-block")["Layout"] == "2"
    assert "chunked_file" not in dump_super(image).get("Filesystem features", "")


def test_identical_sparse_files_share_their_chunks_and_other_holes_do_not(
        tmp_path: Path) -> None:
    a = b"a" * 4096 + bytes(40960) + b"b" * 5000
    moved = b"a" * 4096 + bytes(36864) + b"b" * 4096 + bytes(4096) + b"b" * 904
    assert len(moved) == len(a)
    image = tmp_path / "i.erofs"
    with ErofsWriter(image, ErofsOptions(compression=ErofsCompression.NONE,
                                         mkfs_time=MKFS_TIME)) as w:
        for name, data in ((b"a1", a), (b"a2", a), (b"moved", moved)):
            # Streams, so that the first of a size is written unhashed and read back.
            w.add_file(name, EntryMeta(), io.BytesIO(data), len(data))
        summary = w.finish()
    assert summary.duplicates == 1
    assert summary.chunked_files == 2
    a1, a2 = dump_inode(image, "/a1"), dump_inode(image, "/a2")
    assert a1["NID"] != a2["NID"]
    _check_mounted(image, tmp_path / "m", {"a1": a, "a2": a, "moved": moved})


# -- judged by the kernel ------------------------------------------------------------


def _check_mounted(image: Path, where: Path, expected: dict[str, bytes]) -> None:
    with erofs_mounted(image, where) as mnt:
        for name, data in expected.items():
            assert (mnt / name).read_bytes() == data, name


def _sparse_tree(root: Path) -> dict[str, bytes]:
    """Sparse files on disk, holes at aligned and unaligned places, and their bytes."""
    root.mkdir()
    layouts: dict[str, list[tuple[int, bytes]]] = {
        "middle-hole": [(0, b"start"), (5 * 4096 + 17, b"end")],
        "leading-hole": [(3 * MIB + 5, b"after a hole")],
        "trailing-hole": [(0, os.urandom(10000)), (2 * MIB - 1, b"")],
        "many-holes": [(i * 3 * 4096 + i, b"%d" % i * 100) for i in range(40)],
        "only-hole": [(MIB, b"")],
    }
    out = {}
    for name, writes in layouts.items():
        with open(root / name, "wb") as f:
            for at, data in writes:
                f.seek(at)
                f.write(data)
            f.truncate(max(at + len(data) for at, data in writes) or 1)
        out[name] = (root / name).read_bytes()
    return out


def _gnu_sparse_tar(root: Path, *options: str) -> bytes:
    require_tool("tar")
    return subprocess.run(["tar", "-c", "-f", "-", "--sparse", *options, "-C", str(root), "."],
                          check=True, capture_output=True).stdout


@pytest.mark.root
@pytest.mark.parametrize("compression", [ErofsCompression.NONE, ErofsCompression.LZ4HC])
def test_sparse_tar_members_mount_as_their_squashfs(tmp_path: Path,
                                                    compression: ErofsCompression) -> None:
    """A GNU sparse layer flattened into EROFS and into squashfs: the kernel reads the
    same bytes from both, and the source's. The sparse members' zeros are never read."""
    files = _sparse_tree(tmp_path / "src")
    tar = _gnu_sparse_tar(tmp_path / "src", "--format=pax")
    erofs, sqfs = tmp_path / "l.erofs", tmp_path / "l.sqfs"
    with ErofsWriter(erofs, ErofsOptions(compression=compression, mkfs_time=MKFS_TIME,
                                         workers=1)) as w:
        flatten([BlobLayer.of(tar, "tar")], w)
        summary = w.finish()
    with SquashfsWriter(sqfs, WriterOptions(mkfs_time=MKFS_TIME, workers=1)) as s:
        flatten([BlobLayer.of(tar, "tar")], s)
        s.finish()
    fsck(erofs)
    # Below the size of sparse.py, a compressed image compresses the zeros.
    assert summary.chunked_files == (5 if compression is ErofsCompression.NONE else 0)
    with erofs_mounted(erofs, tmp_path / "e") as e, mounted(sqfs, tmp_path / "s") as s:
        for name, data in files.items():
            digest = hashlib.sha256(data).hexdigest()
            assert hashlib.sha256((s / name).read_bytes()).hexdigest() == digest, name
            assert hashlib.sha256((e / name).read_bytes()).hexdigest() == digest, name


def _terabyte_layer(tmp: Path) -> bytes:
    """bench_hostile's "sparse-1tib" member: 5 bytes, a 1 TiB hole, 3 bytes."""
    root = tmp / "tib"
    root.mkdir()
    with open(root / "big", "wb") as f:
        f.write(b"start")
        f.seek(TIB - 3)
        f.write(b"end")
    tar = _gnu_sparse_tar(root, "--format=pax")
    (root / "big").unlink()
    return tar


def _read_at(path: Path, at: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(at)
        return f.read(n)


@pytest.mark.root
@pytest.mark.parametrize("compression", [ErofsCompression.NONE, ErofsCompression.LZ4HC])
def test_a_terabyte_sparse_member_costs_its_data_not_its_size(
        tmp_path: Path, compression: ErofsCompression) -> None:
    """A 10 KB layer declaring a 1 TiB file: the image holds two 1 MiB chunks and a
    4 MiB block map (it held, or took hours to compress, 1 TiB of zeros)."""
    tar = _terabyte_layer(tmp_path)
    image = tmp_path / "tib.erofs"
    with ErofsWriter(image, ErofsOptions(compression=compression, mkfs_time=MKFS_TIME)) as w:
        flatten([BlobLayer.of(tar, "tar")], w)
        summary = w.finish()
    assert summary.chunked_files == 1
    assert image.stat().st_size < 16 * MIB
    fsck(image)
    assert dump_inode(image, "/big")["Layout"] == "4"
    with erofs_mounted(image, tmp_path / "m") as mnt:
        big = mnt / "big"
        assert big.stat().st_size == TIB
        assert _read_at(big, 0, 8) == b"start" + bytes(3)
        assert _read_at(big, TIB - 8, 100) == bytes(5) + b"end"
        for at in (MIB - 1, 12345 * MIB + 7, TIB // 2, TIB - 4 * MIB):
            assert _read_at(big, at, 2 * MIB) == bytes(2 * MIB), at


@pytest.mark.root
def test_a_large_file_mostly_holes_is_chunk_based_in_a_compressed_image(
        tmp_path: Path) -> None:
    """From SPARSE_MIN_SIZE on, a compressed image stores a file whose holes are half
    of it or more chunk-based, and compresses one with less; both read back."""
    size = SPARSE_MIN_SIZE + 5 * 4096 + 3
    rng = random.Random(7)
    mostly_holes = bytearray(size)
    mostly_data = bytearray(rng.randbytes(size))
    for at in range(0, size, 4 * MIB):
        mostly_holes[at:at + 100_000] = rng.randbytes(100_000)
        mostly_data[at + 8192:at + MIB] = bytes(MIB - 8192)
    sources: dict[str, Callable[[], bytes]] = {"holes": lambda: bytes(mostly_holes),
                                                "data": lambda: bytes(mostly_data)}
    image = tmp_path / "c.erofs"
    with ErofsWriter(image, ErofsOptions(compression=ErofsCompression.LZ4HC,
                                         mkfs_time=MKFS_TIME)) as w:
        for name, make in sources.items():
            data = make()
            w.add_file(name.encode(), EntryMeta(), io.BytesIO(data), len(data))
        summary = w.finish()
    assert summary.chunked_files == 1
    fsck(image)
    assert dump_inode(image, "/holes")["Layout"] == "4"
    assert dump_inode(image, "/data")["Layout"] == "3"  # compressed, compact indexes
    _check_mounted(image, tmp_path / "m", {"holes": bytes(mostly_holes),
                                           "data": bytes(mostly_data)})


@pytest.mark.root
def test_a_large_file_written_while_read_then_found_chunk_based_leaves_nothing_behind(
        tmp_path: Path) -> None:
    """A large file is compressed and written while it is read until holes come in; one
    that turns out chunk-based (under 8 MiB of data, then zeros) once more than one
    worker's in-flight limit of it was written is taken back: the image, with files
    before and after it, is the one its declared holes make (never compressed), and the
    kernel reads it."""
    size = SPARSE_MIN_SIZE + 12345
    rng = random.Random(5)
    data = 8 * MIB - 64 * KIB
    blob = rng.randbytes(data) + bytes(size - data - 5) + b"tail!"
    before, after = _prose(rng, 300_000), _prose(rng, 200_000)
    images = [
        _image(tmp_path, name, {b"a": before, b"f": source, b"z": after},
               compression=ErofsCompression.LZ4HC, workers=1)
        for name, source in (("stream", (io.BytesIO(blob), size)),
                             ("holes", (Holey(blob, [(data, size - 5)], 9), size)))
    ]
    assert images[0] == images[1]
    image = tmp_path / "stream"
    fsck(image)
    assert dump_inode(image, "/f")["Layout"] == "4"
    _check_mounted(image, tmp_path / "m", {"a": before, "f": blob, "z": after})


@pytest.mark.root
@pytest.mark.parametrize(("rest", "layouts"), [("zeros", {"4"}), ("data", COMPRESSED)],
                         ids=["chunk-based", "compressed-after-all"])
def test_a_large_file_taken_back_is_the_same_read_back_or_set_aside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rest: str, layouts: set[str]) -> None:
    """A large file is compressed and written while it is read until holes come in;
    its bytes so far then come back from the image (compressed extents decompressed,
    raw ones read), or, when the output cannot be read, from what was set aside as
    they passed. The same image either way, whether the file turns out chunk-based or
    compressed after all, and the kernel reads it."""
    monkeypatch.setattr(compress, "IN_FLIGHT_BYTES", 200_000)  # written early on
    monkeypatch.setattr(compress, "SEGMENT_BYTES", 256 << 10)
    size = SPARSE_MIN_SIZE + 12345
    rng = random.Random(17)
    # Prose (compressed extents) and noise (raw ones), then 5 MiB of zeros: more zeros
    # than data, so the file is taken back; then zeros or data to the end.
    head = b"".join(_prose(rng, 150_000) + rng.randbytes(50_000) for _ in range(20))
    blob = head + bytes(5 * MIB)
    blob += (bytes(size - len(blob) - 5) if rest == "zeros"
             else rng.randbytes(size - len(blob) - 5)) + b"tail!"
    before = _prose(rng, 300_000)
    options = ErofsOptions(compression=ErofsCompression.LZ4HC, mkfs_time=MKFS_TIME, workers=1)
    images = []
    for name in ("read-back", "set-aside"):
        path = tmp_path / name
        with open(path, "wb") as out:  # write-only: nothing can be read back
            output = path if name == "read-back" else out
            with ErofsWriter(output, options) as w:  # type: ignore[arg-type]
                w.add_file(b"a", EntryMeta(mode=0o644), before)
                w.add_file(b"f", EntryMeta(mode=0o644), io.BytesIO(blob), size)
                w.finish()
        images.append(path.read_bytes())
    assert images[0] == images[1]
    image = tmp_path / "read-back"
    fsck(image)
    assert dump_inode(image, "/f")["Layout"] in layouts
    _check_mounted(image, tmp_path / "m", {"a": before, "f": blob})


def _prose(rng: random.Random, n: int) -> bytes:
    words = [rng.randbytes(3).hex().encode() for _ in range(300)]
    return b" ".join(rng.choice(words) for _ in range(n // 6))[:n]


def test_holey_is_a_hole_reader() -> None:
    assert isinstance(Holey(b"", [], 0), HoleReader)


@pytest.mark.root
@pytest.mark.parametrize(("data_mib", "layouts"), [(9, {"4"}), (10, COMPRESSED)],
                         ids=["half-holes-chunk-based", "decided-compressed-midway"])
def test_a_large_file_is_the_same_image_from_bytes_a_stream_or_holes(
        tmp_path: Path, data_mib: int, layouts: set[str]) -> None:
    """A large file in a compressed image: with 9 MiB of data (6/7 of it non-zero) in
    16 MiB, holes are more than half, chunk-based; with 10 MiB, the data passes half its
    size before its end and what was read aside is replayed to the compressor, holes as
    zeros, then the rest read on. Bytes, a stream, or a sparse source: the same image,
    and the kernel reads the file back."""
    size = SPARSE_MIN_SIZE + 12345
    rng = random.Random(3)
    data = bytearray(rng.randbytes(data_mib * MIB))
    holes = [(i * 4096, (i + 1) * 4096) for i in range(3, data_mib * MIB // 4096, 7)]
    for start, end in holes:
        data[start:end] = bytes(end - start)
    data += bytes(size - len(data) - 5) + b"tail!"
    holes.append((data_mib * MIB, size - 5))
    blob = bytes(data)
    images = [
        _image(tmp_path, name, {b"f": source}, compression=ErofsCompression.LZ4, workers=1)
        for name, source in (("bytes", blob), ("stream", (io.BytesIO(blob), size)),
                             ("holes", (Holey(blob, holes, 5), size)))
    ]
    assert images[0] == images[1] == images[2]
    image = tmp_path / "holes"
    fsck(image)
    assert dump_inode(image, "/f")["Layout"] in layouts
    _check_mounted(image, tmp_path / "m", {"f": blob})


@pytest.mark.root
def test_chunk_based_files_in_a_compressed_image_do_not_depend_on_workers(
        tmp_path: Path) -> None:
    """A chunk-based file goes after every file added before it, whatever the
    compression threads had queued: the image is the same with 1 and 3 workers."""
    rng = random.Random(11)
    sparse = bytearray(SPARSE_MIN_SIZE + 4096)
    sparse[5 * MIB:5 * MIB + 70_000] = rng.randbytes(70_000)
    files: dict[bytes, object] = {}
    for i in range(30):
        files[b"small/%d" % i] = rng.randbytes(rng.randint(10, 300_000)) * 2
    files[b"sparse"] = (io.BytesIO(bytes(sparse)), len(sparse))
    files[b"after"] = rng.randbytes(200_000) * 2
    images = []
    for workers in (1, 3):
        files[b"sparse"] = (io.BytesIO(bytes(sparse)), len(sparse))
        images.append(_image(tmp_path, f"w{workers}", dict(files),
                             compression=ErofsCompression.LZ4HC, workers=workers,
                             fragments=True))
    assert images[0] == images[1]
    # fsck.erofs 1.5 cannot read fragments: the kernel judges.
    expected = {name.decode(): data for name, data in files.items() if isinstance(data, bytes)}
    expected["sparse"] = bytes(sparse)
    _check_mounted(tmp_path / "w1", tmp_path / "m", expected)


@pytest.mark.root
def test_a_file_past_4_gib_has_8_kib_chunks_the_kernel_reads(tmp_path: Path) -> None:
    """chunkbits 1: data across a chunk's blocks and across two chunks, far apart."""
    size = (4 << 30) + 3 * 8192 + 5
    writes = [(0, b"first"), (8190, b"across two chunks"), (2 << 30 | 4093, b"x" * 5000),
              (size - 5, b"last!")]
    root = tmp_path / "src"
    root.mkdir()
    with open(root / "f", "wb") as f:
        for at, data in writes:
            f.seek(at)
            f.write(data)
    assert chunk_bits(size) == 1
    tar = _gnu_sparse_tar(root, "--format=pax")
    (root / "f").unlink()
    image = tmp_path / "i.erofs"
    with ErofsWriter(image, ErofsOptions(compression=ErofsCompression.NONE,
                                         mkfs_time=MKFS_TIME)) as w:
        flatten([BlobLayer.of(tar, "tar")], w)
        w.finish()
    assert image.stat().st_size < 3 * MIB  # a 2 MiB block map, a few chunks of data
    fsck(image)
    with erofs_mounted(image, tmp_path / "m") as mnt:
        f = mnt / "f"
        assert f.stat().st_size == size
        for at, data in writes:
            start, end = max(at - 3, 0), min(at + len(data) + 3, size)
            expected = bytes(at - start) + data + bytes(end - at - len(data))
            assert _read_at(f, start, end - start) == expected, at
        assert _read_at(f, 3 << 30, MIB) == bytes(MIB)


@pytest.mark.parametrize("dedup", [True, False])
def test_identical_large_sparse_files_in_a_compressed_image_share_unless_told_not(
        tmp_path: Path, dedup: bool) -> None:
    blob = b"x" * 10000 + bytes(SPARSE_MIN_SIZE) + b"y"
    with ErofsWriter(tmp_path / "i.erofs",
                     ErofsOptions(mkfs_time=MKFS_TIME, dedup=dedup)) as w:
        for name in (b"a", b"b"):
            w.add_file(name, EntryMeta(), io.BytesIO(blob), len(blob))
        summary = w.finish()
    assert (summary.chunked_files, summary.duplicates) == ((1, 1) if dedup else (2, 0))
    fsck(tmp_path / "i.erofs")


@settings(max_examples=300, deadline=None)
@given(segments=st.lists(st.tuples(st.sampled_from(["data", "zeros", "hole"]),
                                   st.integers(1, 40000)), max_size=10),
       bits=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_the_cut_into_chunks_matches_its_definition(segments: list[tuple[str, int]],
                                                     bits: int, seed: int) -> None:
    """``Split`` fed in pieces of any size, holes skipped or zeros read: a chunk is a
    hole exactly when all its bytes are zero; the data chunks are emitted whole, in
    order, but for the bytes past the last whole block (the tail)."""
    rng = random.Random(seed)
    data = bytearray()
    feeds: list[tuple[bool, bytes | int]] = []
    for kind, n in segments:
        if kind == "hole":
            feeds.append((True, n))
            data += bytes(n)
        else:
            piece = bytes(n) if kind == "zeros" else bytes(rng.choice([0, 0, 7]) for _ in range(n))
            data += piece
            at = 0
            while at < n:  # in reads of random sizes
                k = rng.randint(1, n - at)
                feeds.append((False, piece[at:at + k]))
                at += k
    size = len(data)
    emitted = bytearray()
    cut = Split(size, bits, emitted.extend)
    for hole, piece in feeds:
        if hole:
            assert isinstance(piece, int)
            cut.feed_zeros(piece)
        else:
            assert isinstance(piece, bytes)
            cut.feed(piece)
    chunk = 4096 << bits
    chunks = [bytes(data[at:at + chunk]) for at in range(0, size, chunk)]
    assert list(cut.flags) == [int(any(c)) for c in chunks]
    stored = b"".join(c for c in chunks if any(c))
    whole = size - size % 4096
    tail = stored[len(stored) - (size - whole):] if chunks and any(chunks[-1]) and size % 4096 \
        else b""
    assert bytes(emitted) + cut.tail == stored
    assert cut.tail == tail
    assert cut.data_len == len(stored)
