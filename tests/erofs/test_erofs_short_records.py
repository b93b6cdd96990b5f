"""A million small files must fit in bounded memory: a short file (its bytes fit beside
its inode) is a record in its directory's log, not objects, and skips the data
writers. The image must be the one the data writers make of the same files given as
streams, and fsck.erofs and the kernel read it."""

from __future__ import annotations

import hashlib
import io
import os
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from ocisquash.entry import EntryMeta
from ocisquash.erofs import ErofsCompression, ErofsOptions, ErofsWriter, compress
from ocisquash.erofs import tree as tree_module
from ocisquash.erofs import writer as writer_module
from ocisquash.erofs.tree import Tails
from squashfs._util import bytes_held_per_file

from ._util import (
    MKFS_TIME,
    dump_inode,
    dump_super,
    erofs_mounted,
    fsck,
    fsck_extracts_holes,
)

META = [EntryMeta(0o644, mtime=MKFS_TIME), EntryMeta(0o600, 5, 7, MKFS_TIME),
        EntryMeta(0o640, 70_000, 3, MKFS_TIME),             # extended: uid past 65535
        EntryMeta(0o644, mtime=MKFS_TIME + 1),              # extended: its own mtime
        EntryMeta(0o644, mtime=MKFS_TIME, xattrs=((b"user.a", b"1"),)),
        EntryMeta(0o644, mtime=MKFS_TIME, xattrs=((b"user.big", b"v" * 3000),))]


def _files(seed: int) -> list[tuple[bytes, bytes, EntryMeta]]:
    """Short files of every kind (empty, all zeros, a block but one, a tail that fits
    beside a large xattr body or not), some replaced, in directories of a few to
    hundreds of entries (directories of several blocks)."""
    rng = random.Random(seed)
    out = []
    for i in range(1500):
        d = b"many" if i % 3 == 0 else b"d%d/e%d" % (rng.randrange(5), rng.randrange(3))
        size = rng.choice([0, 1, 30, 500, 1000, 4000, 4032, 4095])
        data = bytes(size) if rng.random() < 0.1 else rng.randbytes(size)
        out.append((d + b"/f%04d-%s" % (rng.randrange(1200), b"n" * rng.randrange(40)),
                    data, rng.choice(META)))
    return out


def _write(path: Path, files: list[tuple[bytes, bytes, EntryMeta]], streams: bool,
           compression: ErofsCompression) -> None:
    options = ErofsOptions(compression=compression, mkfs_time=MKFS_TIME, workers=2)
    with ErofsWriter(path, options) as w:
        for name, content, meta in files:
            if streams:  # the data writers' path
                w.add_file(name, meta, io.BytesIO(content), len(content))
            else:
                w.add_file(name, meta, content)
            if name.endswith(b"nnn"):
                w.add_hardlink(name + b".link", name)
        w.add_directory(files[5][0], META[1])  # a directory over a short file
        w.add_file(b"d1", META[0], b"a short file over a directory")
        w.finish()


@pytest.mark.parametrize("compression", [ErofsCompression.NONE, ErofsCompression.LZ4HC])
def test_short_files_as_records_make_the_image_streams_make(
        tmp_path: Path, compression: ErofsCompression) -> None:
    files = _files(seed=len(compression.value))
    records, streams = tmp_path / "records.erofs", tmp_path / "streams.erofs"
    _write(records, files, False, compression)
    _write(streams, files, True, compression)
    assert records.read_bytes() == streams.read_bytes()
    out = tmp_path / "x"
    fsck(records, f"--extract={out}")
    # An uncompressed file of zeros is chunk-based: one hole (1.5 extracts none).
    holes_extracted = compression is not ErofsCompression.NONE or fsck_extracts_holes()
    with erofs_mounted(records, tmp_path / "m") as mnt:
        expected: dict[bytes, bytes] = {}
        for name, content, _ in files:
            expected[name] = content
        expected.pop(files[5][0])
        expected = {n: c for n, c in expected.items() if not n.startswith(b"d1/")}
        expected[b"d1"] = b"a short file over a directory"
        for name, content in expected.items():
            assert (mnt / name.decode()).read_bytes() == content, name
            if holes_extracted or content.count(0) < len(content):
                assert (out / name.decode()).read_bytes() == content, name
            if name.endswith(b"nnn"):
                link = mnt / (name.decode() + ".link")
                assert link.stat().st_ino == (mnt / name.decode()).stat().st_ino
                assert link.stat().st_nlink == 2
        assert (mnt / files[5][0].decode()).is_dir()


@pytest.mark.parametrize("features", [{}, {"fragments": True},
                                      {"fragments": True, "metabox": True}],
                         ids=["inline", "fragments", "fragments-metabox"])
def test_a_short_file_costs_under_40_bytes_in_the_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, features: dict[str, bool]) -> None:
    """Memory the writer holds per short file until the end (tracemalloc: its name and
    record in the directory's log; their bytes are on disk here, or compressed into
    the packed inode as they come, with little in flight)."""
    monkeypatch.setattr(Tails, "FLUSH", 4096)
    monkeypatch.setattr(compress, "IN_FLIGHT_BYTES", 32 << 10)
    monkeypatch.setattr(compress, "PACKED_PCLUSTER_BYTES", 16 << 10)
    monkeypatch.setattr(compress, "METABOX_PCLUSTER_BYTES", 16 << 10)
    monkeypatch.setattr(compress, "SEGMENT_BYTES", 16 << 10)
    monkeypatch.setattr(compress, "PACKED_SEGMENT_PCLUSTERS", 1)
    rng = random.Random(3)
    n = 20_000
    files = [(b"d%02d/file-%06d" % (i % 100, i), rng.randbytes(rng.randrange(16, 512)))
             for i in range(n)]
    options = ErofsOptions(mkfs_time=MKFS_TIME, workers=1, **features)
    with ErofsWriter(tmp_path / "i.erofs", options) as w:
        per_file = bytes_held_per_file(w, files, META[0])
        w.finish()
    assert per_file < 40, per_file


@pytest.mark.parametrize("flush", [5000, 1000])
@pytest.mark.parametrize("order", ["added", "reversed", "shuffled"])
def test_short_files_bytes_read_back_in_any_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: str, flush: int) -> None:
    # Most in the file, the last in memory; with 1000, pieces as long as the buffer go
    # to the file directly, between buffered ones.
    monkeypatch.setattr(Tails, "FLUSH", flush)
    monkeypatch.setattr(Tails, "WINDOW", 8192)
    monkeypatch.setattr(Tails, "BEHIND", 2048)
    rng = random.Random(order)
    pieces = [rng.randbytes(rng.randrange(0, 4000)) for _ in range(3000)]
    tails = Tails(str(tmp_path))
    try:
        offsets = [tails.put(p) for p in pieces]
        picks = list(range(len(pieces)))
        if order == "reversed":
            picks.reverse()
        elif order == "shuffled":
            rng.shuffle(picks)
        for i in picks:
            assert tails.get(offsets[i], len(pieces[i])) == pieces[i], i
    finally:
        tails.close()
    assert list(tmp_path.iterdir()) == []


def test_nothing_is_left_beside_the_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Tails, "FLUSH", 4096)
    image = tmp_path / "i.erofs"
    with pytest.raises(RuntimeError), ErofsWriter(image, ErofsOptions(mkfs_time=0)) as w:
        for i in range(100):
            w.add_file(b"d/f%d" % i, META[0], b"x" * 300)
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []
    with ErofsWriter(image, ErofsOptions(mkfs_time=0)) as w:
        for i in range(100):
            w.add_file(b"d/f%d" % i, META[0], b"x" * 300)
    assert list(tmp_path.iterdir()) == [image]
    fsck(image)


@pytest.mark.parametrize("features", [
    {}, {"fragments": True, "metabox": True, "pcluster_size": 16 << 10}],
    ids=["inline", "fragments-metabox"])
def test_laying_out_short_files_costs_under_44_bytes_each(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, features: dict[str, Any]) -> None:
    """What the finish sequence holds at its peak per short file, beyond what adding
    them held (tracemalloc; its buffers made small): numbers and nids in arrays, no
    object or directory block kept per file or directory; with a metabox, the records
    stream through the compressor."""
    monkeypatch.setattr(Tails, "FLUSH", 4096)
    monkeypatch.setattr(Tails, "WINDOW", 4096)
    monkeypatch.setattr(writer_module, "_WRITE_BATCH", 4096)
    monkeypatch.setattr(compress, "IN_FLIGHT_BYTES", 32 << 10)
    monkeypatch.setattr(compress, "PACKED_PCLUSTER_BYTES", 16 << 10)
    monkeypatch.setattr(compress, "METABOX_PCLUSTER_BYTES", 16 << 10)
    monkeypatch.setattr(compress, "SEGMENT_BYTES", 16 << 10)
    monkeypatch.setattr(compress, "PACKED_SEGMENT_PCLUSTERS", 1)
    rng = random.Random(5)
    n = 20_000
    options = ErofsOptions(mkfs_time=MKFS_TIME, workers=1, **features)
    with ErofsWriter(tmp_path / "i.erofs", options) as w:
        for i in range(n):  # 200 directories of 100 files
            w.add_file(b"d%03d/file-%06d" % (i // 100, i), META[0],
                       rng.randbytes(rng.randrange(16, 512)))
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            w.finish()
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
    per_file = peak / n
    assert per_file < 44, per_file


def test_short_files_bytes_go_to_the_temporary_directory_when_the_output_s_takes_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Tails, "FLUSH", 16)
    tails = Tails(str(tmp_path / "gone"))  # as a directory that takes no new file
    try:
        at = [tails.put(b"%020d" % i) for i in range(10)]
        assert [tails.get(a, 20) for a in at] == [b"%020d" % i for i in range(10)]
    finally:
        tails.close()


def _again_and_again(w: ErofsWriter, n: int) -> None:
    """Paths added again and again: one name, two names in turn, a file and a symlink in
    turn, a file over a directory over a file; the last add of each wins."""
    for i in range(n):
        w.add_file(b"d/same", META[i % 2], b"%d" % i)
        w.add_file(b"d/turn-%d" % (i % 2), META[0], b"turn %d" % i)
        if i % 2:
            w.add_symlink(b"d/kind", META[0], b"target-%d" % i)
        else:
            w.add_file(b"d/kind", META[0], b"file %d" % i)
        w.add_file(b"d/z-%05d" % (i % 300), META[0], b"z %d" % i)
    w.add_hardlink(b"d/linked", b"d/same")
    w.add_file(b"e/x", META[0], b"under e")
    w.add_directory(b"e/x", META[1])
    w.add_file(b"e/x", META[0], b"x again")


def test_a_path_added_again_and_again_costs_one_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hostile layers may repeat a path millions of times: replaced records are
    compacted away, and the image is the one without compaction."""
    monkeypatch.setattr(Tails, "FLUSH", 4096)
    n = 30_000
    compacted = tmp_path / "compacted.erofs"
    options = ErofsOptions(mkfs_time=MKFS_TIME, workers=1)
    with ErofsWriter(compacted, options) as w:
        tracemalloc.start()
        try:
            _again_and_again(w, n)
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    assert held < 2_000_000, held  # 4 records of 120,000 kept: about 20 MB
    whole = tmp_path / "whole.erofs"
    monkeypatch.setattr(tree_module, "COMPACT_AT", 1 << 30)
    with ErofsWriter(whole, options) as w:
        _again_and_again(w, n)
    assert compacted.read_bytes() == whole.read_bytes()
    with erofs_mounted(compacted, tmp_path / "m") as mnt:
        last = n - 1
        assert (mnt / "d/same").read_bytes() == b"%d" % last
        assert (mnt / "d/same").stat().st_ino == (mnt / "d/linked").stat().st_ino
        assert (mnt / "d/turn-1").read_bytes() == b"turn %d" % last
        assert (mnt / "d/turn-0").read_bytes() == b"turn %d" % (last - 1)
        assert os.readlink(mnt / "d/kind") == f"target-{last}"
        assert (mnt / "d/z-00000").read_bytes() == b"z %d" % (n - 300)
        assert len(list((mnt / "d").iterdir())) == 5 + 300
        assert (mnt / "e/x").read_bytes() == b"x again"


def test_records_that_fill_the_gap_before_the_root_are_written_first(tmp_path: Path) -> None:
    """The root comes first, after the shared xattrs; when its inline directory does not
    fit the rest of that block, it starts the next one and later records fill the gap
    it left, so they are written before it."""
    shared = EntryMeta(0o644, mtime=MKFS_TIME, xattrs=((b"user.g0", b"v" * 1990),))
    image = tmp_path / "i.erofs"
    with ErofsWriter(image, ErofsOptions(mkfs_time=MKFS_TIME)) as w:
        w.add_file(b"x1", shared, b"one")
        w.add_file(b"x2", shared, b"two")  # the pair is shared: the area is ~2 KB
        for i in range(150):
            w.add_file(b"file-%03d" % i, META[0], b"%03d" % i * 33)
    root_nid = int(dump_super(image)["Filesystem root nid"])
    assert root_nid * 32 % 4096 == 0  # the root went to the next block...
    assert int(dump_inode(image, "/file-000")["NID"]) < root_nid  # ...after a gap
    fsck(image)
    with erofs_mounted(image, tmp_path / "m") as mnt:
        for i in range(150):
            assert (mnt / f"file-{i:03d}").read_bytes() == b"%03d" % i * 33
        assert os.getxattr(mnt / "x2", "user.g0") == b"v" * 1990


@pytest.mark.parametrize("compression", [ErofsCompression.NONE, ErofsCompression.LZ4HC])
def test_the_digest_read_behind_the_records_is_the_image_s(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: ErofsCompression) -> None:
    """The sha256 that finish() gives reads the records as each batch is written (a
    small batch here: hundreds of them), then the rest: it is the finished file's."""
    monkeypatch.setattr(writer_module, "_WRITE_BATCH", 4096)
    image = tmp_path / "i.erofs"
    options = ErofsOptions(compression=compression, mkfs_time=MKFS_TIME, workers=2)
    descriptors = len(os.listdir("/proc/self/fd"))
    with ErofsWriter(image, options, digest=True) as w:
        for name, content, meta in _files(seed=9):
            w.add_file(name, meta, content)
        w.add_file(b"big", META[0], random.Random(9).randbytes(300_000))
        summary = w.finish()
    assert summary.sha256 == hashlib.sha256(image.read_bytes()).digest()
    assert len(os.listdir("/proc/self/fd")) == descriptors  # the digest's let go
    fsck(image)


def test_a_build_that_fails_while_its_records_are_hashed_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digest's thread, reading behind the records, stops when the finish fails
    (no hang), and the image is discarded."""
    monkeypatch.setattr(writer_module, "_WRITE_BATCH", 4096)
    calls = 0
    inline = writer_module._Finisher._inline

    def failing(self: Any, *args: Any) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 300:
            raise RuntimeError("stop")
        return inline(self, *args)

    monkeypatch.setattr(writer_module._Finisher, "_inline", failing)
    image = tmp_path / "i.erofs"
    descriptors = len(os.listdir("/proc/self/fd"))
    with pytest.raises(RuntimeError, match="stop"), ErofsWriter(
            image, ErofsOptions(mkfs_time=MKFS_TIME), digest=True) as w:
        for i in range(2000):
            w.add_directory(b"d%04d" % i, META[0])
            w.add_file(b"d%04d/f" % i, META[0], b"x" * 5000)
        w.finish()
    assert calls == 300
    assert list(tmp_path.iterdir()) == []
    assert len(os.listdir("/proc/self/fd")) == descriptors
