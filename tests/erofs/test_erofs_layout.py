"""dump.erofs reads the superblock and inode layout we chose; output is deterministic."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from ocisquash.entry import EntryMeta
from ocisquash.erofs import ErofsCompression, ErofsOptions, ErofsWriter
from ocisquash.errors import ErofsError

from ._util import MKFS_TIME, dump_inode, dump_super, write_erofs

NONE = ErofsCompression.NONE


def _tree(w: ErofsWriter) -> None:
    at_epoch = EntryMeta(mode=0o644, mtime=MKFS_TIME)
    w.add_directory(b"", EntryMeta(mode=0o755, mtime=MKFS_TIME))
    w.add_file(b"compact", at_epoch, b"small")
    w.add_file(b"other-time", EntryMeta(mode=0o644, mtime=MKFS_TIME + 1), b"small")
    w.add_file(b"big-uid", EntryMeta(mode=0o644, uid=65536, mtime=MKFS_TIME), b"small")
    w.add_file(b"blocks", at_epoch, io.BytesIO(os.urandom(3 * 4096)))
    w.add_file(b"tail", at_epoch, os.urandom(4096 + 10))
    w.add_file(b"empty", at_epoch, b"")


@pytest.mark.parametrize(("path", "inode_size", "layout"), [
    ("/compact", "32", "2"),       # mtime == epoch, small ids: compact, tail inline
    ("/other-time", "64", "2"),    # its own mtime: extended
    ("/big-uid", "64", "2"),       # uid > 65535: extended
    ("/blocks", "32", "0"),        # whole blocks only: FLAT_PLAIN
    ("/tail", "32", "2"),          # a block and an inline tail: FLAT_INLINE
    ("/empty", "32", "0"),
])
def test_inode_form_and_layout_as_mkfs_erofs_chooses(tmp_path: Path, path: str,
                                                    inode_size: str, layout: str) -> None:
    image = tmp_path / "l.erofs"
    write_erofs(image, _tree, compression=NONE)
    fields = dump_inode(image, path)
    assert (fields["Inode size"], fields["Layout"]) == (inode_size, layout)


def test_superblock_fields(tmp_path: Path) -> None:
    image = tmp_path / "s.erofs"
    summary = write_erofs(image, _tree, compression=NONE)
    sb = dump_super(image)
    assert sb["Filesystem magic number"] == "0xE0F5E1E2"
    assert int(sb["Filesystem inode count"]) == summary.inodes == 7
    assert int(sb["Filesystem blocks"]) * 4096 == image.stat().st_size == summary.bytes_written
    assert int(sb["Filesystem root nid"]) > 0  # readdir() hides entries numbered 0
    assert sb["Filesystem UUID"] == "00000000-0000-0000-0000-000000000000"


def test_output_is_byte_identical_across_runs(tmp_path: Path) -> None:
    data = os.urandom(50_000)

    def build(w: ErofsWriter) -> None:
        for i in range(200):
            w.add_file(b"d%d/f%d" % (i % 7, i), EntryMeta(mode=0o644, mtime=i,
                       xattrs=((b"user.k", b"v%d" % (i % 3)),)), data[: i * 97])
        w.add_hardlink(b"h", b"d0/f7")
        w.add_symlink(b"s", EntryMeta(), b"d0")

    digests = set()
    for run in range(2):
        image = tmp_path / f"r{run}.erofs"
        write_erofs(image, build, compression=NONE)
        digests.add(hashlib.sha256(image.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_source_date_epoch_sets_the_image_time(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234567890")
    image = tmp_path / "e.erofs"
    with ErofsWriter(image, ErofsOptions(compression=NONE)) as w:
        w.add_file(b"f", EntryMeta(mtime=1234567890), b"x")
    # The epoch is the build time, so an entry with that mtime gets a compact inode.
    assert dump_inode(image, "/f")["Inode size"] == "32"
    assert dump_super(image)["Filesystem created"].startswith("Fri Feb 13")


@pytest.mark.parametrize(("build", "message"), [
    (lambda w: w.add_file(b"n" * 256, EntryMeta(), b""), "EROFS allows 255"),
    (lambda w: w.add_file(b"f", EntryMeta(xattrs=((b"system.other", b"1"),)), b""),
     "not in a namespace EROFS can store"),
    (lambda w: w.add_file(b"f", EntryMeta(xattrs=((b"user.v", b"v" * 65536),)), b""),
     "EROFS allows 65535"),
    (lambda w: w.add_symlink(b"s", EntryMeta(), b"x" * 4096), "Linux allows 4095"),
    (lambda w: w.add_file(b"f", EntryMeta(), io.BytesIO(b"abc"), size=10),
     "ended after 3 of 10 bytes"),
])
def test_entries_the_format_cannot_hold_are_refused(tmp_path: Path, build: object,
                                                     message: str) -> None:
    image = tmp_path / "bad.erofs"
    with (pytest.raises(ErofsError, match=message),
          ErofsWriter(image, ErofsOptions(compression=NONE, mkfs_time=0)) as w):
        build(w)  # type: ignore[operator]
    assert not image.exists()  # a failed image is removed
