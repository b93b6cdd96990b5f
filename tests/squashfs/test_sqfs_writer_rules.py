"""SquashfsWriter API rules, each checked through external readers."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocisquash.entry import EntryMeta
from ocisquash.errors import SquashfsError, UsageError
from ocisquash.squashfs import FORMAT_VERSION, Compression, SquashfsWriter, WriterOptions
from ocisquash.squashfs.blocks import BATCH_BYTES, BlockPipeline
from ocisquash.squashfs.compressor import Compressor
from ocisquash.squashfs.format import CompressorId
from ocisquash.squashfs.tree import split_path

from ._util import (
    inode_type,
    mounted,
    require_tool,
    run,
    unsquashfs_extract,
    unsquashfs_listing,
    write_image,
)

F = EntryMeta(mode=0o644, mtime=1_000_000)
D = EntryMeta(mode=0o755, mtime=1_000_000)


class ZeroStream(io.RawIOBase):
    """``size`` zero bytes, produced without touching a disk."""

    def __init__(self, size: int) -> None:
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._left)
        buffer[:n] = bytes(n)
        self._left -= n
        return n


class TrickleStream(io.RawIOBase):
    """Returns at most ``step`` bytes per read, like a pipe."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._step, len(self._data))
        buffer[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


def test_children_before_parents_create_parents_that_later_meta_updates(tmp_path: Path) -> None:
    image = tmp_path / "i.sqfs"

    def build(w: SquashfsWriter) -> None:
        w.add_file(b"a/b/c.txt", F, b"c")
        w.add_directory(b"a", EntryMeta(mode=0o700, uid=5, gid=6, mtime=42))
        w.add_directory(b"", EntryMeta(mode=0o711, mtime=7))

    write_image(image, build, default_dir_meta=EntryMeta(mode=0o750, mtime=9))
    listing = unsquashfs_listing(image)
    assert listing[0].startswith("drwx--x--x 0/0")
    assert any(
        line.startswith("drwx------ 5/6") and line.endswith("squashfs-root/a") for line in listing
    )
    assert any(
        line.startswith("drwxr-x--- 0/0") and line.endswith("squashfs-root/a/b") for line in listing
    )


def test_adding_an_existing_path_replaces_it(tmp_path: Path) -> None:
    image = tmp_path / "i.sqfs"

    def build(w: SquashfsWriter) -> None:
        w.add_file(b"x", F, b"first")
        w.add_hardlink(b"keeps-old", b"x")
        w.add_file(b"x", F, b"second")
        w.add_file(b"d/child", F, b"gone")
        w.add_symlink(b"d", F, b"target")  # a non-directory replaces the subtree
        w.add_file(b"f", F, b"file")
        w.add_directory(b"f", D)  # a directory replaces the file

    write_image(image, build)
    out = tmp_path / "out"
    unsquashfs_extract(image, out)
    assert (out / "x").read_bytes() == b"second"
    assert (out / "keeps-old").read_bytes() == b"first"
    assert os.stat(out / "keeps-old").st_nlink == 1
    assert os.readlink(out / "d") == "target"
    assert (out / "f").is_dir()


def _split_by_definition(path: bytes) -> list[bytes] | None:
    """The rule split_path implements, spelled out: None where it must refuse."""
    if path == b"":
        return []
    parts = path.split(b"/")
    if any(p in (b"", b".", b"..") or b"\0" in p or len(p) > 256 for p in parts):
        return None
    return parts


@settings(max_examples=400, deadline=None)
@given(path=st.one_of(
    st.lists(st.sampled_from([b"/", b".", b"..", b"a", b".wh.x", b"b.c", b"\0"]),
             max_size=8).map(b"".join),
    st.lists(st.sampled_from([b"/", b"n" * 100, b"m" * 157, b"."]), max_size=5).map(b"".join),
))
def test_split_path_fast_path_agrees_with_the_rule(path: bytes) -> None:
    want = _split_by_definition(path)
    if want is None:
        with pytest.raises(SquashfsError):
            split_path(path)
    else:
        assert split_path(path) == want


def test_a_directory_replaced_between_siblings_starts_empty(tmp_path: Path) -> None:
    # The tree remembers the last parent it found; replacing that directory (or one
    # above it) must not leave later siblings in the detached old directory.
    image = tmp_path / "i.sqfs"

    def build(w: SquashfsWriter) -> None:
        w.add_file(b"a/b/x", F, b"x")
        w.add_file(b"a/b/y", F, b"y")
        w.add_file(b"a/b", F, b"now a file")
        w.add_file(b"a/b/z", F, b"z")  # b becomes a directory again, holding z only
        w.add_file(b"p/q/r", F, b"r")
        w.add_symlink(b"p", F, b"elsewhere")
        w.add_file(b"p/q/s", F, b"s")

    write_image(image, build)
    out = tmp_path / "out"
    unsquashfs_extract(image, out)
    assert sorted(os.listdir(out / "a" / "b")) == ["z"]
    assert (out / "a" / "b" / "z").read_bytes() == b"z"
    assert sorted(os.listdir(out / "p" / "q")) == ["s"]


def test_add_directory_on_existing_directory_keeps_children(tmp_path: Path) -> None:
    image = tmp_path / "i.sqfs"

    def build(w: SquashfsWriter) -> None:
        w.add_file(b"d/kept", F, b"k")
        w.add_directory(b"d", EntryMeta(mode=0o701))

    write_image(image, build)
    assert any(line.endswith("squashfs-root/d/kept") for line in unsquashfs_listing(image))


@pytest.mark.parametrize(
    "path",
    [b"/abs", b"a//b", b"a/./b", b"a/../b", b"..", b".", b"nul\0name", b"trailing/", b"n" * 257],
)
def test_invalid_paths_are_refused(tmp_path: Path, path: bytes) -> None:
    with SquashfsWriter(tmp_path / "i.sqfs", WriterOptions(mkfs_time=0)) as w:
        with pytest.raises(SquashfsError):
            w.add_file(path, F, b"")
        with pytest.raises(SquashfsError):
            w.add_directory(path, D)


def test_hardlink_to_missing_or_directory_target_is_refused(tmp_path: Path) -> None:
    with SquashfsWriter(tmp_path / "i.sqfs", WriterOptions(mkfs_time=0)) as w:
        w.add_directory(b"dir", D)
        with pytest.raises(SquashfsError, match="does not exist"):
            w.add_hardlink(b"l1", b"missing")
        with pytest.raises(SquashfsError, match="directory"):
            w.add_hardlink(b"l2", b"dir")
        assert not w.exists(b"l1")


@pytest.mark.parametrize("size", [0, 1000, 4095, 3 * 4096 + 1, 2 * 1024 * 1024 + 1])
def test_block_size_must_be_a_power_of_two_between_4k_and_1m(tmp_path: Path, size: int) -> None:
    with pytest.raises(UsageError):
        SquashfsWriter(tmp_path / "i.sqfs", WriterOptions(block_size=size))


def test_unknown_xattr_namespace_is_refused(tmp_path: Path) -> None:
    with SquashfsWriter(tmp_path / "i.sqfs", WriterOptions(mkfs_time=0)) as w:
        meta = EntryMeta(xattrs=((b"system.posix_acl_access", b"x"),))
        with pytest.raises(SquashfsError, match="namespace"):
            w.add_file(b"f", meta, b"")


def test_short_stream_with_declared_size_is_an_error(tmp_path: Path) -> None:
    with (
        SquashfsWriter(tmp_path / "i.sqfs", WriterOptions(mkfs_time=0)) as w,
        pytest.raises(SquashfsError, match="ended after 3 of 10"),
    ):
        w.add_file(b"f", F, io.BytesIO(b"abc"), size=10)


def test_declared_size_reads_only_that_many_bytes(tmp_path: Path) -> None:
    image = tmp_path / "i.sqfs"
    stream = io.BytesIO(b"0123456789")
    write_image(image, lambda w: w.add_file(b"f", F, stream, size=4))
    assert stream.tell() == 4
    out = tmp_path / "out"
    unsquashfs_extract(image, out)
    assert (out / "f").read_bytes() == b"0123"


def test_whole_data_must_match_its_declared_size(tmp_path: Path) -> None:
    with SquashfsWriter(tmp_path / "i.sqfs", WriterOptions(mkfs_time=0)) as w:
        for data in (b"abc", bytearray(b"abc"), memoryview(b"abc")):
            with pytest.raises(SquashfsError, match="file data is 3 bytes, not 10"):
                w.add_file(b"f", F, data, size=10)
        w.add_file(b"f", F, bytearray(b"abc"), size=3)
        w.add_file(b"g", F, memoryview(b"0123456789" * 1000))
        w.add_file(b"h", F, b"x" * (3 << 17) + b"tail", size=(3 << 17) + 4)
        w.finish()
    out = tmp_path / "out"
    unsquashfs_extract(tmp_path / "i.sqfs", out)
    assert (out / "f").read_bytes() == b"abc"
    assert (out / "g").read_bytes() == b"0123456789" * 1000
    assert (out / "h").read_bytes() == b"x" * (3 << 17) + b"tail"


@pytest.mark.parametrize("block_size", [4096, 131072, 1 << 20])
@pytest.mark.parametrize("fragments", [True, False])
def test_file_sizes_around_block_boundaries_round_trip(
    tmp_path: Path, block_size: int, fragments: bool
) -> None:
    rng = hashlib.sha256()
    sizes = [0, 1, block_size - 1, block_size, block_size + 1, 3 * block_size]
    contents = {}
    for size in sizes:
        rng.update(str(size).encode())
        contents[f"f{size}".encode()] = (rng.digest() * (size // 32 + 1))[:size]
    image = tmp_path / "i.sqfs"

    def build(w: SquashfsWriter) -> None:
        for name, data in contents.items():
            # Short reads, as from a pipe, must not change the result.
            w.add_file(name, F, TrickleStream(data, 1000))  # type: ignore[arg-type]

    write_image(image, build, block_size=block_size, fragments=fragments)
    out = tmp_path / "out"
    unsquashfs_extract(image, out)
    for name, data in contents.items():
        assert (out / name.decode()).read_bytes() == data


def test_incompressible_blocks_are_stored_uncompressed(tmp_path: Path) -> None:
    image = tmp_path / "i.sqfs"
    data = os.urandom(3 * 131072)
    write_image(image, lambda w: w.add_file(b"random", F, data), fragments=False)
    stat_out = run("rdsquashfs", "-s", "/random", image).stdout
    assert stat_out.count("(uncompressed)") == 3
    assert image.stat().st_size < len(data) + 8192
    out = tmp_path / "out"
    unsquashfs_extract(image, out)
    assert (out / "random").read_bytes() == data


def test_identical_files_are_stored_once(tmp_path: Path) -> None:
    image = tmp_path / "i.sqfs"
    data = os.urandom(5 * 131072 + 77)
    # The last byte changed (a fixed replacement would match it one time in 256).
    changed = data[:-1] + bytes([data[-1] ^ 1])

    def build(w: SquashfsWriter) -> None:
        w.add_file(b"one", F, data)
        w.add_file(b"two", F, io.BytesIO(data))
        w.add_file(b"three", F, changed)

    summary = write_image(image, build)
    assert summary.duplicates == 1
    # two copies of random data, not three
    assert image.stat().st_size < 2 * len(data) + 16384
    out = tmp_path / "out"
    unsquashfs_extract(image, out)
    assert (out / "two").read_bytes() == data
    assert (out / "three").read_bytes() == changed


def test_files_shorter_than_a_block_are_deduplicated_with_or_without_a_known_size(
    tmp_path: Path,
) -> None:
    image = tmp_path / "i.sqfs"
    small = os.urandom(3000)
    other = small[:-1] + bytes([small[-1] ^ 1])  # same size, other bytes
    block = os.urandom(131072)  # exactly one block: keyed by the per-block records

    def build(w: SquashfsWriter) -> None:
        w.add_file(b"a", F, small)
        w.add_file(b"b", F, io.BytesIO(small))  # size unknown until EOF
        w.add_file(b"c", F, other)
        w.add_file(b"d", F, block)
        w.add_file(b"e", F, io.BytesIO(block))
        w.add_file(b"f", F, b"")
        w.add_file(b"g", F, io.BytesIO(b""))

    summary = write_image(image, build)
    assert summary.duplicates == 3
    out = tmp_path / "out"
    unsquashfs_extract(image, out)
    assert (out / "b").read_bytes() == small
    assert (out / "c").read_bytes() == other
    assert (out / "e").read_bytes() == block
    assert (out / "g").read_bytes() == b""
    assert image.stat().st_size < 2 * len(small) + len(block) + 16384


@pytest.mark.parametrize("size", [2047, 2048, 4095, 16376, 16377, 50000])
def test_short_files_differing_in_any_piece_are_kept_apart(tmp_path: Path, size: int) -> None:
    # Files up to 16 KiB are hashed in 2047-byte pieces: a change in any piece, at either
    # end of one, must give another key.
    data = os.urandom(size)
    changed = []
    for at in sorted({0, 2046, 2047, size // 2, size - 1} & set(range(size))):
        changed.append(data[:at] + bytes([data[at] ^ 1]) + data[at + 1:])

    def build(w: SquashfsWriter) -> None:
        w.add_file(b"a", F, data, size)  # a known size
        w.add_file(b"b", F, io.BytesIO(data))  # size unknown until EOF: the same key
        for i, other in enumerate(changed):
            w.add_file(b"c%d" % i, F, other, size)

    summary = write_image(tmp_path / "i.sqfs", build)
    assert summary.duplicates == 1
    out = tmp_path / "out"
    unsquashfs_extract(tmp_path / "i.sqfs", out)
    assert (out / "b").read_bytes() == data
    for i, other in enumerate(changed):
        assert (out / f"c{i}").read_bytes() == other


def test_a_writer_leaves_the_callers_interpreter_settings_alone(tmp_path: Path) -> None:
    """A library user's SquashfsWriter runs with the caller's collector and switch
    interval: made, used, finished or aborted, the writer changes neither."""
    import gc

    before, was = sys.getswitchinterval(), gc.isenabled()
    try:
        sys.setswitchinterval(0.004)
        gc.enable()
        first = SquashfsWriter(tmp_path / "1.sqfs")
        second = SquashfsWriter(tmp_path / "2.sqfs")
        assert (sys.getswitchinterval(), gc.isenabled()) == (0.004, True)
        first.add_file(b"big", F, os.urandom(5 * 131072))
        assert (sys.getswitchinterval(), gc.isenabled()) == (0.004, True)
        first.finish()
        second.abort()
        assert (sys.getswitchinterval(), gc.isenabled()) == (0.004, True)
    finally:
        sys.setswitchinterval(before)
        if not was:
            gc.disable()


def test_duplicate_detection_rewinds_when_later_files_follow(tmp_path: Path) -> None:
    image = tmp_path / "i.sqfs"
    big = os.urandom(20 * 131072)
    after = os.urandom(131072 * 2 + 5)

    def build(w: SquashfsWriter) -> None:
        w.add_file(b"a", F, big)
        w.add_file(b"b", F, big)  # its blocks were being written: must be rewound
        w.add_file(b"c", F, after)

    write_image(image, build, workers=2)
    out = tmp_path / "out"
    unsquashfs_extract(image, out)
    assert (out / "b").read_bytes() == big
    assert (out / "c").read_bytes() == after
    assert image.stat().st_size < len(big) + len(after) + 16384


@pytest.mark.parametrize("blocks", [1, 3, 4, 5, 7])
def test_duplicates_are_rewound_wherever_they_meet_a_batch_boundary(
    tmp_path: Path, blocks: int
) -> None:
    """Threads take blocks in batches of BATCH_BYTES: a duplicate's blocks may share a
    batch that was handed over with the blocks before them, or sit in the one still
    filling. The rewind must keep the earlier blocks and drop exactly the duplicate's."""
    assert BATCH_BYTES == 4 * 131072  # the sizes below straddle 4-block batches
    image = tmp_path / "i.sqfs"
    lead = os.urandom(131072 + 100)  # shifts every later file by a block
    data = os.urandom(blocks * 131072 + 3)
    after = os.urandom(3 * 131072 + 5)

    def build(w: SquashfsWriter) -> None:
        w.add_file(b"lead", F, lead)
        w.add_file(b"a", F, data)
        w.add_file(b"b", F, data)
        w.add_file(b"c", F, io.BytesIO(data))  # size unknown until EOF
        w.add_file(b"d", F, after)

    summary = write_image(image, build, workers=2)
    assert summary.duplicates == 2
    out = tmp_path / "out"
    unsquashfs_extract(image, out)
    for name, want in ((b"lead", lead), (b"a", data), (b"b", data), (b"c", data),
                       (b"d", after)):
        assert (out / name.decode()).read_bytes() == want
    assert image.stat().st_size < len(lead) + len(data) + len(after) + 16384


def test_rewinds_drop_exactly_the_forgotten_blocks_of_each_batch() -> None:
    """The pipeline's own bookkeeping, with the compressing thread held back so that
    every batch is still queued when blocks are forgotten."""
    gate = threading.Event()
    seen: list[bytes] = []

    def compress(data: bytes) -> bytes:
        gate.wait(30)
        seen.append(data[:2])
        return b"<" + data[:2] + b">"

    compressor = Compressor(Compression.ZSTD, CompressorId.ZSTD, compress, None)
    size = BATCH_BYTES // 4
    out = io.BytesIO()
    pipeline = BlockPipeline(out, 0, compressor, workers=1, block_size=size)
    placed: list[tuple[int, int]] = []

    def submit(*names: str) -> None:
        for name in names:
            pipeline.submit(name.encode().ljust(size, b"."), lambda p, f: placed.append((p, f)))

    try:
        submit("X0", "X1", "X2", "X3")  # a batch: the thread takes it and waits
        submit("Y0", "Y1", "Y2", "Y3")  # a batch queued behind it
        pipeline.discard_since(6, None)  # Y2, Y3 go; the batch still holds Y0, Y1
        submit("W0", "W1", "W2", "W3")
        pipeline.discard_since(6, None)  # a whole queued batch goes: never compressed
        submit("Z0", "Z1")  # a batch still filling
        pipeline.discard_since(7, None)  # Z1 leaves it before it is handed over
        gate.set()
        pipeline.drain()
    finally:
        gate.set()
        pipeline.close()
    kept = [b"X0", b"X1", b"X2", b"X3", b"Y0", b"Y1", b"Z0"]
    assert out.getvalue() == b"".join(b"<" + name + b">" for name in kept)
    assert [field for _, field in placed] == [4] * len(kept)
    assert [position for position, _ in placed] == [4 * i for i in range(len(kept))]
    assert sorted(seen) == sorted([*kept, b"Y2", b"Y3"])  # those two shared Y0's batch


def test_five_gib_zero_file_uses_extended_inode_and_no_data(tmp_path: Path) -> None:
    image = tmp_path / "i.sqfs"
    size = 5 * 1024**3
    write_image(
        image,
        lambda w: w.add_file(b"huge", F, ZeroStream(size), size=size),  # type: ignore[arg-type]
        block_size=1 << 20,
    )
    assert inode_type(image, "/huge") == "extended file"
    assert any(f" {size} " in line and line.endswith("/huge") for line in unsquashfs_listing(image))
    assert image.stat().st_size < 64 * 1024


def test_large_directory_splits_headers_and_is_indexed(tmp_path: Path) -> None:
    image = tmp_path / "i.sqfs"
    names = [f"entry-{i:05d}-{'x' * (i % 40)}".encode() for i in range(3000)]

    def build(w: SquashfsWriter) -> None:
        for i, name in enumerate(reversed(names)):
            if i % 3 == 0:
                w.add_directory(b"big/" + name, D)
            else:
                w.add_file(b"big/" + name, F, name)

    write_image(image, build)
    stat_out = run("rdsquashfs", "-s", "/big", image).stdout
    assert "Inode type: extended directory" in stat_out
    index_count = int(stat_out.split("Directory index entries:")[1].split()[0])
    assert index_count >= 5
    listed = [line.rsplit("/", 1)[1] for line in unsquashfs_listing(image)[2:]]
    assert listed == sorted(n.decode() for n in names)
    out = tmp_path / "out"
    unsquashfs_extract(image, out)
    for name in names[1::3]:
        assert (out / "big" / name.decode()).read_bytes() == name


@pytest.mark.root
def test_kernel_reads_large_directory_through_its_index(tmp_path: Path) -> None:
    image = tmp_path / "i.sqfs"
    names = [f"entry-{i:05d}-{'y' * (i % 50)}".encode() for i in range(3000)]

    links = [f"link-{i:04d}".encode() for i in range(700)]

    def build(w: SquashfsWriter) -> None:
        for i, name in enumerate(names):
            w.add_file(b"big/" + name, F, name if i % 2 else b"")
        # 700 names of one inode: only the 256-entries rule splits their headers.
        w.add_file(b"target", F, b"shared")
        for name in links:
            w.add_hardlink(b"links/" + name, b"target")

    write_image(image, build)
    with mounted(image, tmp_path / "mnt") as mnt:
        assert sorted(os.listdir(os.fsencode(mnt / "big"))) == sorted(names)
        assert sorted(os.listdir(os.fsencode(mnt / "links"))) == links
        assert (mnt / "links/link-0699").read_bytes() == b"shared"
        assert os.stat(mnt / "target").st_nlink == 701
        # Lookups by name go through the directory index (first, middle, last, absent).
        for i in (0, 1, 1499, 2998, 2999):
            expected = names[i] if i % 2 else b""
            assert (mnt / "big" / names[i].decode()).read_bytes() == expected
        assert not (mnt / "big" / "entry-99999").exists()
        assert not (mnt / "big" / "a-before-all").exists()


def test_same_input_gives_identical_bytes(tmp_path: Path) -> None:
    data = os.urandom(700_000)

    def build(w: SquashfsWriter) -> None:
        for i in range(40):
            w.add_file(f"d{i % 4}/f{i}".encode(), F, data[: i * 17_000])
        w.add_symlink(b"s", F, b"d0/f1")

    images = []
    for workers in (1, 2, 4):
        image = tmp_path / f"i{workers}.sqfs"
        write_image(image, build, workers=workers)
        images.append(image.read_bytes())
    assert images[0] == images[1] == images[2]


def test_tables_are_the_same_bytes_whether_a_pool_compresses_them_or_not(
        tmp_path: Path) -> None:
    """With one worker the tables' metadata blocks are compressed as they fill; with
    more, on a pool, while inode references wait by block number (metadata.py). Many
    inode and directory blocks (references across them), a directory large enough for
    an index, hard links, xattrs and gzip 9 (the slowest blocks to come back) make the
    same image, which unsquashfs reads."""
    caps = EntryMeta(mode=0o755, mtime=7, xattrs=((b"user.note", b"v" * 40),))

    def build(w: SquashfsWriter) -> None:
        for d in range(40):
            w.add_directory(f"d{d:02d}".encode(), D if d % 3 else caps)
            for i in range(300):
                meta = caps if i % 97 == 0 else F
                w.add_file(f"d{d:02d}/file-{i:04d}-{'n' * (i % 30)}".encode(), meta,
                           b"%d-%d" % (d, i) * (i % 7))
        w.add_file(b"target", F, b"shared")
        for i in range(300):
            w.add_hardlink(b"links/l%03d" % i, b"target")
        w.add_symlink(b"s", F, b"target")

    images = []
    for workers in (1, 2, 4):
        image = tmp_path / f"i{workers}.sqfs"
        write_image(image, build, workers=workers, compression=Compression.GZIP, level=9)
        images.append(image.read_bytes())
    assert images[0] == images[1] == images[2]
    require_tool("unsquashfs")
    listed = unsquashfs_listing(tmp_path / "i2.sqfs")
    assert sum("/file-" in line for line in listed) == 40 * 300
    out = tmp_path / "out"
    run("unsquashfs", "-no-progress", "-no-xattrs", "-d", out, tmp_path / "i2.sqfs")
    assert (out / "links/l299").read_bytes() == b"shared"
    assert os.stat(out / "links/l000").st_ino == os.stat(out / "target").st_ino
    last = f"d39/file-0299-{'n' * (299 % 30)}"
    assert (out / last).read_bytes() == b"39-299" * (299 % 7)


def test_mkfs_time_comes_from_source_date_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234567890")
    image = tmp_path / "i.sqfs"
    with SquashfsWriter(image) as w:
        w.add_file(b"f", F, b"x")
    assert int.from_bytes(image.read_bytes()[8:12], "little") == 1234567890


def test_image_is_padded_to_4k_and_writes_to_streams(tmp_path: Path) -> None:
    buffer = io.BytesIO(b"junk that must be overwritten" * 1000)
    with SquashfsWriter(buffer, WriterOptions(mkfs_time=0)) as w:
        w.add_file(b"f", F, b"hello")
        summary = w.finish()
    data = buffer.getvalue()
    assert len(data) == summary.bytes_written
    assert len(data) % 4096 == 0
    image = tmp_path / "i.sqfs"
    image.write_bytes(data)
    out = tmp_path / "out"
    unsquashfs_extract(image, out)
    assert (out / "f").read_bytes() == b"hello"


def test_abort_in_context_manager_stops_workers(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), SquashfsWriter(tmp_path / "i.sqfs") as w:
        w.add_file(b"f", F, os.urandom(1 << 20))
        raise RuntimeError("boom")
    with pytest.raises(SquashfsError):
        w.add_file(b"g", F, b"")


def test_all_root_and_no_xattrs_options(tmp_path: Path) -> None:
    image = tmp_path / "i.sqfs"
    meta = EntryMeta(mode=0o600, uid=1000, gid=1000, xattrs=((b"user.k", b"v"),))
    write_image(image, lambda w: w.add_file(b"f", meta, b"x"), all_root=True, xattrs=False)
    assert inode_type(image, "/f") == "file"
    assert any(line.startswith("-rw------- 0/0") for line in unsquashfs_listing(image))


def test_format_version_is_a_string() -> None:
    assert isinstance(FORMAT_VERSION, str) and FORMAT_VERSION


@pytest.mark.root
@pytest.mark.parametrize(
    "options",
    [
        {"exportable": False},
        {"fragments": False},
        {"exportable": False, "fragments": False, "dedup": False},
    ],
)
def test_kernel_mounts_images_without_optional_tables(
    tmp_path: Path, options: dict[str, bool]
) -> None:
    image = tmp_path / "i.sqfs"
    files = {f"f{i}".encode(): os.urandom(i * 3000) for i in range(60)}

    def build(w: SquashfsWriter) -> None:
        for name, data in files.items():
            w.add_file(name, F, data)

    write_image(image, build, **options)
    with mounted(image, tmp_path / "mnt") as mnt:
        for name, data in files.items():
            assert (mnt / name.decode()).read_bytes() == data


def test_abort_removes_the_image_file_it_created(tmp_path: Path) -> None:
    image = tmp_path / "i.sqfs"
    writer = SquashfsWriter(image, WriterOptions(mkfs_time=0))
    writer.add_file(b"f", F, os.urandom(300_000))
    writer.abort()
    assert not image.exists()


def test_symlink_target_longer_than_a_page_is_refused(tmp_path: Path) -> None:
    with SquashfsWriter(tmp_path / "i.sqfs", WriterOptions(mkfs_time=0)) as w:
        w.add_symlink(b"ok", F, b"t" * 4095)
        with pytest.raises(SquashfsError, match="4095"):
            w.add_symlink(b"long", F, b"t" * 4096)
