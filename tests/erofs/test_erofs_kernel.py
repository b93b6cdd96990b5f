"""The kernel mounts our EROFS images and sees what squashfs of the same tree shows."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocisquash.entry import EntryMeta
from ocisquash.erofs import ErofsCompression, ErofsOptions, ErofsWriter
from ocisquash.pack import pack_directory
from ocisquash.squashfs import WriterOptions
from squashfs._util import (
    build_feature_tree,
    mounted,
    require_root,
    snapshot,
)

from ._util import (
    MKFS_TIME,
    assert_mounts_alike,
    dump_inode,
    erofs_mounted,
    fsck,
    fsck_extracts_holes,
    write_erofs,
)

pytestmark = pytest.mark.root

EROFS = ErofsOptions(compression=ErofsCompression.NONE, mkfs_time=MKFS_TIME)


@pytest.fixture(scope="module")
def feature_tree() -> Iterator[Path]:
    require_root()
    with tempfile.TemporaryDirectory(prefix="ocisquash-erofs-tree-") as tmp:
        root = Path(tmp) / "tree"
        # 4 KiB "blocks" in the builder: tails, exact blocks and multi-block files at
        # EROFS's block size.
        build_feature_tree(root, block_size=4096)
        yield root


def test_feature_tree_mounts_as_squashfs_of_the_same_tree(feature_tree: Path,
                                                           tmp_path: Path) -> None:
    erofs = tmp_path / "t.erofs"
    sqfs = tmp_path / "t.sqfs"
    pack_directory(feature_tree, erofs, EROFS)
    pack_directory(feature_tree, sqfs, WriterOptions(mkfs_time=MKFS_TIME, workers=1))
    fsck(erofs)
    with erofs_mounted(erofs, tmp_path / "e") as e, mounted(sqfs, tmp_path / "s") as s:
        # The hard-linked file has three names.
        assert_mounts_alike(e, s, 20, ("dir/small.txt", "dir", "dir/sub", "empty", ""))


def test_fsck_extract_matches_the_source(feature_tree: Path, tmp_path: Path) -> None:
    erofs = tmp_path / "t.erofs"
    pack_directory(feature_tree, erofs, EROFS)
    out = tmp_path / "x"
    fsck(erofs, f"--extract={out}")
    # fsck.erofs 1.5 extracts types, contents, permissions and symlinks (not owners,
    # xattrs, nor setuid/setgid/sticky, which its chown clears).
    def view(root: Path) -> dict[bytes, tuple[object, ...]]:
        return {p: (e.kind, e.mode & 0o777, e.content, e.target, e.rdev)
                for p, e in snapshot(root, times=False, owners=False, xattrs=()).items()}

    src, got = view(feature_tree), view(out)
    assert len(src) > 20
    if not fsck_extracts_holes():
        # This fsck.erofs drops the holes of a chunk-based file when it extracts it;
        # the kernel reads the file right in the test above.
        assert dump_inode(erofs, "/sparse")["Layout"] == "4"
        del src[b"sparse"], got[b"sparse"]
    assert src == got


# -- the layout rules, on a tree built entry by entry -------------------------------------

#: Names that sort before "." and ".." (0x2e): the kernel's binary search over a
#: directory must find them and the dot entries alike.
EARLY_NAMES = [b"!bang", b"+plus", b"-dash", b",comma", b"#hash"]


def _edge_tree(w: ErofsWriter) -> None:
    m = EntryMeta(mode=0o644, mtime=MKFS_TIME)
    for name in EARLY_NAMES:
        w.add_file(b"early/" + name, m, name)
    # 1,500 entries with long names: a directory of many blocks.
    for i in range(1500):
        w.add_file(b"big/entry-with-a-rather-long-name-%05d" % i, m, b"%d" % i)
    # Tails of every awkward size, after inodes with bulky xattrs, so that some tails
    # would cross a block boundary where they are laid out.
    bulky = EntryMeta(mode=0o600, mtime=MKFS_TIME + 1,
                      xattrs=((b"user.bulk", b"x" * 1500),))
    for i, size in enumerate((1, 100, 2000, 2500, 3000, 4000, 4095, 4096, 4097, 8191,
                              12288, 3 * 4096 + 3900)):
        data = bytes((i * 7 + j) % 251 for j in range(size))
        w.add_file(b"tails/f%02d" % i, bulky if i % 2 else m, data)
    # A tail that cannot share a block with its inode and xattrs: stored as a block.
    w.add_file(b"tails/no-room", EntryMeta(mode=0o644, xattrs=((b"user.v", b"v" * 3000),)),
               b"t" * 1500)
    # Owners and times a compact inode cannot hold.
    w.add_file(b"owners/big-uid", EntryMeta(mode=0o640, uid=4_000_000_000, gid=70000,
                                            mtime=MKFS_TIME), b"u")
    w.add_file(b"owners/time-0", EntryMeta(mode=0o640, mtime=0), b"t")
    w.add_file(b"owners/time-64bit", EntryMeta(mode=0o640, mtime=5_000_000_000), b"t")
    w.add_directory(b"owners", EntryMeta(mode=0o2750, uid=1, gid=2, mtime=MKFS_TIME - 9))
    # Symlinks: short (inline), and one too long for its inode's block.
    w.add_symlink(b"links/short", m, b"../early/-dash")
    w.add_symlink(b"links/long", m, b"a/" * 2047 + b"z")
    w.add_symlink(b"links/xattr", EntryMeta(mode=0o777, xattrs=((b"trusted.t", b"1"),)),
                  b"b" * 4000)
    # Shared xattrs (the same pair on many inodes) beside inline ones.
    cap = bytes.fromhex("0100000200200000000000000000000000000000")
    for i in range(5):
        w.add_file(b"caps/c%d" % i, EntryMeta(mode=0o755, mtime=MKFS_TIME, xattrs=(
            (b"security.capability", cap), (b"user.own", b"%d" % i))), b"#!/bin/sh\n")
    w.add_device(b"dev/tty", EntryMeta(mode=0o620, mtime=MKFS_TIME), "char", 4, 64)
    w.add_device(b"dev/nvme", EntryMeta(mode=0o660, mtime=MKFS_TIME), "block", 259, 70000)
    w.add_fifo(b"dev/fifo", EntryMeta(mode=0o600, mtime=MKFS_TIME))
    w.add_socket(b"dev/sock", EntryMeta(mode=0o600, mtime=MKFS_TIME))
    for i in range(3):
        w.add_hardlink(b"caps/link%d" % i, b"caps/c0")


def test_edge_tree_reads_back_through_the_kernel(tmp_path: Path) -> None:
    image = tmp_path / "edge.erofs"
    summary = write_erofs(image, _edge_tree, compression=ErofsCompression.NONE)
    assert summary.hardlinks == 3
    assert summary.shared_xattrs == 2  # user.bulk and the capability
    fsck(image)
    with erofs_mounted(image, tmp_path / "m") as m:
        names = os.listdir(m / "early")
        assert sorted(names) == sorted(n.decode() for n in EARLY_NAMES)
        for name in EARLY_NAMES:  # lookups: the kernel's binary search
            assert (m / "early" / name.decode()).read_bytes() == name
        assert os.stat(m / "early").st_nlink == 2
        big = os.listdir(m / "big")
        assert len(big) == 1500
        for i in (0, 1, 700, 1498, 1499):
            assert (m / "big" / f"entry-with-a-rather-long-name-{i:05d}").read_bytes() \
                == b"%d" % i
        for i, size in enumerate((1, 100, 2000, 2500, 3000, 4000, 4095, 4096, 4097, 8191,
                                  12288, 3 * 4096 + 3900)):
            data = bytes((i * 7 + j) % 251 for j in range(size))
            assert (m / "tails" / f"f{i:02d}").read_bytes() == data, size
        assert (m / "tails/no-room").read_bytes() == b"t" * 1500
        assert os.getxattr(m / "tails/no-room", "user.v") == b"v" * 3000
        st = os.stat(m / "owners/big-uid")
        assert (st.st_uid, st.st_gid) == (4_000_000_000, 70000)
        assert os.stat(m / "owners/time-0").st_mtime == 0
        assert os.stat(m / "owners/time-64bit").st_mtime == 5_000_000_000
        st = os.stat(m / "owners")
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == \
            (0o2750, 1, 2, MKFS_TIME - 9)
        assert os.readlink(m / "links/short") == "../early/-dash"
        assert os.readlink(m / "links/long") == "a/" * 2047 + "z"
        assert os.readlink(m / "links/xattr") == "b" * 4000
        assert os.getxattr(m / "links/xattr", "trusted.t", follow_symlinks=False) == b"1"
        for i in range(5):
            c = m / "caps" / f"c{i}"
            assert os.getxattr(c, "security.capability") == bytes.fromhex(
                "0100000200200000000000000000000000000000")
            assert os.getxattr(c, "user.own") == b"%d" % i
            assert sorted(os.listxattr(c)) == ["security.capability", "user.own"]
        assert os.stat(m / "caps/c0").st_nlink == 4
        assert os.stat(m / "caps/link2").st_ino == os.stat(m / "caps/c0").st_ino
        tty, nvme = os.stat(m / "dev/tty"), os.stat(m / "dev/nvme")
        assert stat.S_ISCHR(tty.st_mode) and os.major(tty.st_rdev) == 4
        assert os.minor(tty.st_rdev) == 64
        assert stat.S_ISBLK(nvme.st_mode) and os.major(nvme.st_rdev) == 259
        assert os.minor(nvme.st_rdev) == 70000
        assert stat.S_ISFIFO(os.stat(m / "dev/fifo").st_mode)
        assert stat.S_ISSOCK(os.stat(m / "dev/sock").st_mode)


def _gappy_tree(w: ErofsWriter) -> None:
    """Inline tails that leave most of a block unused after each (2,100 bytes: two do
    not fit a block), then smaller ones that fit those ends, and ztailpacked files."""
    m = EntryMeta(mode=0o644, mtime=MKFS_TIME)
    for i in range(100):
        w.add_file(b"a/wide-%03d" % i, m, bytes((i + j) % 251 for j in range(2100)))
    for i in range(100):
        w.add_file(b"b/narrow-%03d" % i, m, bytes((i * 3 + j) % 241 for j in range(1000)))
    w.add_symlink(b"b/link", m, b"x" * 900)


def test_block_ends_left_by_inline_tails_hold_later_inodes(tmp_path: Path) -> None:
    image = tmp_path / "gaps.erofs"
    write_erofs(image, _gappy_tree, compression=ErofsCompression.NONE)
    # In order, each wide tail takes a block of its own (100 blocks) and the narrow
    # ones 25 more; placed in the ends the wide ones leave, they take none.
    meta_blkaddr = int.from_bytes(image.read_bytes()[1024 + 40:1024 + 44], "little")
    assert image.stat().st_size // 4096 - meta_blkaddr <= 102
    fsck(image)
    with erofs_mounted(image, tmp_path / "m") as m:
        for i in range(100):
            assert (m / f"a/wide-{i:03d}").read_bytes() == \
                bytes((i + j) % 251 for j in range(2100))
            assert (m / f"b/narrow-{i:03d}").read_bytes() == \
                bytes((i * 3 + j) % 241 for j in range(1000))
        assert os.readlink(m / "b/link") == "x" * 900
        assert sorted(os.listdir(m / "b"))[:2] == ["link", "narrow-000"]
