"""``pack_directory`` on a tree with every feature, judged by external readers."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocisquash.compile import DEFAULT_ZSTD_LEVEL
from ocisquash.pack import pack_directory
from ocisquash.squashfs import Compression, WriterOptions

from ._util import (
    build_feature_tree,
    diff_snapshots,
    fuse_mounted,
    inode_type,
    link_groups,
    mksquashfs,
    mounted,
    require_root,
    run,
    snapshot,
    sqfsdiff,
    unsquashfs_extract,
    unsquashfs_listing,
)

pytestmark = pytest.mark.root

OPTIONS = WriterOptions(mkfs_time=1_700_000_000, workers=2)


@pytest.fixture(scope="module")
def feature_tree() -> Iterator[Path]:
    require_root()
    with tempfile.TemporaryDirectory(prefix="ocisquash-tree-") as tmp:
        src = Path(tmp) / "src"
        build_feature_tree(src)
        yield src


@pytest.fixture(scope="module")
def packed(feature_tree: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ocisquash-img-") as tmp:
        image = Path(tmp) / "tree.squashfs"
        pack_directory(feature_tree, image, OPTIONS)
        yield image


def test_extraction_equals_source_tree(feature_tree: Path, packed: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    unsquashfs_extract(packed, out)
    assert diff_snapshots(snapshot(feature_tree), snapshot(out)) == []
    assert link_groups(out) == link_groups(feature_tree)
    assert len(link_groups(out)) == 1


def test_sqfsdiff_against_mksquashfs_finds_no_difference(
    feature_tree: Path, packed: Path, tmp_path: Path
) -> None:
    reference = tmp_path / "mk.squashfs"
    mksquashfs(feature_tree, reference, "-mkfs-time", "1700000000")
    result = sqfsdiff(packed, reference, "-T")
    assert result.returncode == 0, result.stdout + result.stderr


def test_listing_equals_mksquashfs_listing(
    feature_tree: Path, packed: Path, tmp_path: Path
) -> None:
    reference = tmp_path / "mk.squashfs"
    mksquashfs(feature_tree, reference)
    assert unsquashfs_listing(packed) == unsquashfs_listing(reference)


def test_rdsquashfs_unpacks_contents_and_xattrs(
    feature_tree: Path, packed: Path, tmp_path: Path
) -> None:
    out = tmp_path / "rd"
    out.mkdir()
    run("rdsquashfs", "-u", "/", "-p", out, "-X", "-T", "-C", "-O", packed)
    # rdsquashfs leaves the target directory's own time alone, and chowns after setting
    # xattrs (which drops security.capability), so xattrs are checked with --xattr.
    source = snapshot(feature_tree, xattrs=())
    unpacked = snapshot(out, xattrs=())
    del source[b"."], unpacked[b"."]
    assert diff_snapshots(source, unpacked) == []
    for path, state in snapshot(feature_tree).items():
        if state.xattrs:
            listed = run("rdsquashfs", "-x", "/" + os.fsdecode(path), packed).stdout
            for name, _ in state.xattrs:
                assert name.decode() in listed, (path, name)


def test_hardlinked_file_has_link_count_and_extended_inode(packed: Path) -> None:
    assert inode_type(packed, "/hardlink-1") == "extended file"
    stat_out = run("rdsquashfs", "-s", "/dir/small.txt", packed).stdout
    assert "Hard link count: 3" in stat_out


def test_directory_link_count_is_two_plus_subdirectories(packed: Path) -> None:
    # dir has one sub-directory (sub); the root has dir and empty.
    assert "Hard link count: 3" in run("rdsquashfs", "-s", "/dir", packed).stdout
    assert "Hard link count: 4" in run("rdsquashfs", "-s", "/", packed).stdout


def test_sparse_file_has_sparse_blocks(packed: Path) -> None:
    stat_out = run("rdsquashfs", "-s", "/sparse", packed).stdout
    assert inode_type(packed, "/sparse") == "extended file"
    # Blocks 1..3 are holes: stored with size 0 and counted as sparse bytes.
    assert "Sparse: 393216" in stat_out
    for block in (1, 2, 3):
        assert f"Block #{block} size: 0 " in stat_out


def test_xattr_sets_become_extended_inodes(packed: Path) -> None:
    assert inode_type(packed, "/fifo") == "extended named pipe"
    assert inode_type(packed, "/link-rel") == "extended symbolic link"
    assert inode_type(packed, "/dir/char") == "extended character device"
    assert inode_type(packed, "/dir") == "extended directory"
    assert inode_type(packed, "/dir/link-abs") == "symbolic link"


def test_duplicates_share_data_without_becoming_hard_links(
    feature_tree: Path, tmp_path: Path
) -> None:
    with_dedup = tmp_path / "dedup.squashfs"
    without = tmp_path / "nodedup.squashfs"
    summary = pack_directory(feature_tree, with_dedup, OPTIONS)
    pack_directory(feature_tree, without, WriterOptions(mkfs_time=0, dedup=False))
    assert summary.duplicates >= 1
    assert with_dedup.stat().st_size <= without.stat().st_size
    out = tmp_path / "out"
    unsquashfs_extract(with_dedup, out)
    assert (out / "dup-a").read_bytes() == (out / "dir/dup-b").read_bytes()
    assert os.stat(out / "dup-a").st_ino != os.stat(out / "dir/dup-b").st_ino


def test_kernel_mount_shows_the_source_tree(
    feature_tree: Path, packed: Path, tmp_path: Path
) -> None:
    with mounted(packed, tmp_path / "mnt") as mnt:
        assert diff_snapshots(snapshot(feature_tree), snapshot(mnt)) == []
        assert link_groups(mnt) == link_groups(feature_tree)
        # The kernel's i_nlink comes from the inode's link count.
        assert os.lstat(mnt / "dir").st_nlink == 3
        assert os.lstat(mnt / "hardlink-1").st_nlink == 3


@pytest.mark.parametrize("program", ["squashfuse", "squashfuse_ll"])
def test_squashfuse_shows_the_source_tree(feature_tree: Path, tmp_path: Path, program: str) -> None:
    """HPC runtimes mount images with squashfuse (Apptainer with squashfuse_ll): a zstd
    image, compile's default, read through it."""
    image = tmp_path / "tree.squashfs"
    options = WriterOptions(compression=Compression.ZSTD, level=DEFAULT_ZSTD_LEVEL,
                            mkfs_time=0, workers=2)
    pack_directory(feature_tree, image, options)
    # squashfuse 0.1.105 (Debian 12) swaps the names of the trusted. and security.
    # prefixes (vasi/squashfuse#78, fixed by #83; mksquashfs's images too), so only
    # user. attributes are compared here; the kernel and unsquashfs check them all.
    source = snapshot(feature_tree, xattrs=("user.",))
    assert any(state.xattrs for state in source.values())
    with fuse_mounted(image, tmp_path / "mnt", program) as mnt:
        assert diff_snapshots(source, snapshot(mnt, xattrs=("user.",))) == []
        assert os.lstat(mnt / "hardlink-1").st_nlink == 3
        if program == "squashfuse_ll":  # squashfuse's high-level API hides inode numbers
            assert link_groups(mnt) == link_groups(feature_tree)
