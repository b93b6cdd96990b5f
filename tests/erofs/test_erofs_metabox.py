"""The metabox (METABOX with 48BIT, Linux 6.17+): every inode, with what follows it
(xattrs, inline tails and directories, block maps, cluster indexes), in the data of one
compressed inode. erofs-utils 1.5 predates it (its fsck.erofs and dump.erofs refuse the
feature), so the kernel judges these images, against squashfs of the same tree."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ocisquash import mount
from ocisquash.entry import EntryMeta
from ocisquash.erofs import ErofsCompression, ErofsOptions, ErofsWriter, compress, writer
from ocisquash.erofs.format import INCOMPAT_48BIT, INCOMPAT_METABOX, NID_METABOX
from ocisquash.erofs.reader import ErofsReader
from ocisquash.errors import OutputError, UsageError
from ocisquash.imagereader import image_format
from ocisquash.pack import pack_directory
from ocisquash.squashfs import WriterOptions
from squashfs._util import build_feature_tree, mounted

from ._util import (
    MKFS_TIME,
    assert_mounts_alike,
    erofs_mounted,
    files_of,
    prose,
    require_erofs_features,
    write_erofs,
)

LZ4HC = ErofsCompression.LZ4HC


def _require_metabox() -> None:
    require_erofs_features("metabox", "48bit", since="6.17")


@pytest.fixture(scope="module")
def feature_tree() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ocisquash-erofs-mbox-") as tmp:
        root = Path(tmp) / "tree"
        build_feature_tree(root, block_size=4096)
        rng = random.Random(3)
        # A directory of more than a block (its blocks outside the metabox) and a file
        # compressed into several pclusters.
        many = root / "many"
        many.mkdir()
        for i in range(400):
            (many / f"entry-{i:04d}").write_bytes(b"%d\n" % i)
        (root / "text").write_bytes(b" ".join(rng.randbytes(2).hex().encode()
                                              for _ in range(150_000)))
        yield root


def _superblock(image: Path) -> tuple[int, int, int, int]:
    """feature_incompat, sb_extslots, rootnid_8b and metabox_nid, as erofs_fs.h places
    them."""
    with open(image, "rb") as f:
        f.seek(1024)
        sb = f.read(144)
    return (struct.unpack_from("<I", sb, 80)[0], sb[13], struct.unpack_from("<Q", sb, 112)[0],
            struct.unpack_from("<Q", sb, 128)[0])


@pytest.mark.root
@pytest.mark.parametrize("features", [{}, {"fragments": True}, {"ztailpacking": True}],
                         ids=["metabox", "with-fragments", "with-ztailpacking"])
def test_metabox_tree_mounts_as_squashfs_of_the_same_tree(
        feature_tree: Path, tmp_path: Path, features: dict[str, Any]) -> None:
    _require_metabox()
    boxed, plain, sqfs = tmp_path / "b.erofs", tmp_path / "p.erofs", tmp_path / "t.sqfs"
    pack_directory(feature_tree, boxed, ErofsOptions(metabox=True, mkfs_time=MKFS_TIME,
                                                     **features))
    pack_directory(feature_tree, plain, ErofsOptions(mkfs_time=MKFS_TIME, **features))
    pack_directory(feature_tree, sqfs, WriterOptions(mkfs_time=MKFS_TIME, workers=1))
    assert boxed.stat().st_size < plain.stat().st_size
    incompat, extslots, root_nid, box_nid = _superblock(boxed)
    assert incompat & INCOMPAT_METABOX and incompat & INCOMPAT_48BIT and extslots == 1
    assert root_nid & NID_METABOX and box_nid and not box_nid & NID_METABOX
    with erofs_mounted(boxed, tmp_path / "e") as e, mounted(sqfs, tmp_path / "s") as s:
        assert_mounts_alike(e, s, 400, ("dir/small.txt", "dir", "dir/sub", "many", ""))


def _many_small(w: ErofsWriter) -> None:
    """Enough small files for a metabox of several 1 MiB pclusters: some with times
    before and after the build time (which compact inodes hold with a metabox), one
    with a time too far after the earliest and some with an owner that only extended
    inodes hold, one sparse, one hard-linked."""
    rng = random.Random(11)
    for i in range(6000):
        mtime = MKFS_TIME + i if i % 7 == 0 else MKFS_TIME - 1000 * i if i % 11 == 0 \
            else MKFS_TIME
        meta = EntryMeta(mode=0o644, mtime=mtime, uid=70_000 if i % 500 == 0 else 0)
        w.add_file(b"d%02d/f%05d" % (i % 40, i), meta, prose(rng, rng.randrange(0, 900)))
    w.add_file(b"far", EntryMeta(mode=0o644, mtime=MKFS_TIME - 11_000 + (1 << 32)), b"far")
    m = EntryMeta(mode=0o644, mtime=MKFS_TIME)
    w.add_file(b"sparse", m, bytes(1 << 20) + b"end")
    w.add_file(b"large", m, prose(rng, 700_000))
    w.add_hardlink(b"d00/again", b"d00/f00000")
    w.add_symlink(b"link", EntryMeta(mode=0o777, mtime=MKFS_TIME), b"d01/f00001")


@pytest.mark.usefixtures("small_in_flight")
@pytest.mark.root
@pytest.mark.parametrize("fragments", [False, True], ids=["inline", "fragments"])
def test_many_files_read_back_through_the_kernel_and_the_reader(tmp_path: Path,
                                                                fragments: bool) -> None:
    """Small files inline in the metabox, or whole in the packed inode (their records a
    map header each), read back by the kernel and by ErofsReader."""
    _require_metabox()
    digests = set()
    for workers in (1, 3):
        image = tmp_path / f"b{workers}.erofs"
        summary = write_erofs(image, _many_small, compression=LZ4HC, metabox=True,
                              fragments=fragments, workers=workers)
        digests.add(hashlib.sha256(image.read_bytes()).hexdigest())
    assert len(digests) == 1  # the bytes do not depend on the threads
    # Extended: the 12 files owned by uid 70000 and "far", 2^32 s after the earliest.
    assert summary.files == 6003 and summary.extended_inodes == 13
    files = files_of(_many_small)
    with erofs_mounted(image, tmp_path / "m") as m:
        for name, data in files.items():
            assert (m / name).read_bytes() == data, name
        assert os.readlink(m / "link") == "d01/f00001"
        assert os.lstat(m / "d00/again").st_nlink == 2
        assert os.lstat(m / "d20/f00500").st_uid == 70_000
        assert os.lstat(m / "d07/f00007").st_mtime == MKFS_TIME + 7
        assert os.lstat(m / "d14/f00014").st_mtime == MKFS_TIME + 14
        assert os.lstat(m / "d11/f00011").st_mtime == MKFS_TIME - 11_000
        assert os.lstat(m / "d13/f05973").st_mtime == MKFS_TIME - 5_973_000
        assert os.lstat(m / "far").st_mtime == MKFS_TIME - 11_000 + (1 << 32)
        assert os.lstat(m / "d00/f00000").st_mtime == MKFS_TIME + 0
    assert image_format(image) == "erofs"
    with ErofsReader(image) as r:
        for name in ("d00/f00000", "d39/f05999", "large", "sparse", "d00/again"):
            assert r.read_file("/" + name) == files[name], name
        assert r.read_file("/link") == files["d01/f00001"]
        assert r.read_file("/d00/missing") is None


def test_a_failure_while_the_metabox_is_written_is_raised_not_hung(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The records are made on a thread of their own: its error reaches finish(), and
    the data writer reading them is not left waiting."""
    real = writer._Records.flush
    calls = 0

    def failing(self: writer._Records) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(28, "No space left on device")
        real(self)

    monkeypatch.setattr(writer._Records, "flush", failing)
    monkeypatch.setattr(compress, "IN_FLIGHT_BYTES", 100_000)
    with pytest.raises(OSError, match="No space left"):
        write_erofs(tmp_path / "x.erofs", _many_small, compression=LZ4HC, metabox=True,
                    workers=2)
    assert calls == 2


def test_the_metabox_needs_a_compressor_and_linux_6_17() -> None:
    with pytest.raises(UsageError, match="metabox is compressed"):
        ErofsOptions(compression=ErofsCompression.NONE, metabox=True)
    with pytest.raises(UsageError, match=r"Linux 6\.12 cannot mount EROFS images with "
                                         r"metabox \(it needs Linux 6\.17\+\)"):
        ErofsOptions.for_kernel("6.12", metabox=True)
    assert ErofsOptions.for_kernel("6.17", metabox=True).metabox
    # Linux calls it experimental: a kernel version alone does not switch it on.
    assert not ErofsOptions.for_kernel("6.18").metabox


def test_help_names_the_flag_and_its_kernel() -> None:
    out = subprocess.run([sys.executable, "-m", "ocisquash", "compile", "--help"],
                         capture_output=True, text=True, check=True).stdout
    flat = " ".join(out.split())
    assert "--erofs-metabox" in flat and "Linux 6.17+" in flat


@pytest.mark.parametrize("listed, hint", [
    (("zero_padding", "big_pcluster", "compr_cfgs", "fragments"),
     "this kernel's EROFS lacks 48bit, metabox (Linux 6.17+): mount the image on a newer "
     "kernel, or build it without the feature (--erofs-kernel VERSION)"),
    (("zero_padding", "big_pcluster", "compr_cfgs", "fragments", "48bit", "metabox"), ""),
], ids=["older-kernel", "kernel-with-both"])
def test_a_refused_mount_names_the_features_the_kernel_lacks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listed: tuple[str, ...],
        hint: str) -> None:
    """The kernel here reads the metabox, so an older one is played by its features
    list and a refusing ``mount``; the hint compares the image's superblock bits with
    the list."""
    image = tmp_path / "b.erofs"
    write_erofs(image, lambda w: w.add_file(b"f", EntryMeta(mode=0o644, mtime=MKFS_TIME),
                                            b"x" * 100),
                compression=LZ4HC, metabox=True)
    features = tmp_path / "features"
    features.mkdir()
    for name in listed:
        (features / name).write_text("1\n")
    monkeypatch.setattr(mount, "EROFS_FEATURES", features)
    monkeypatch.setattr(mount, "_is_root", lambda: True)

    def refuse(argv: list[str], what: str) -> None:
        raise OutputError(f"{what}: {argv[0]} failed: wrong fs type, bad option, bad "
                          "superblock")

    monkeypatch.setattr(mount, "_run", refuse)
    (tmp_path / "m").mkdir()
    with pytest.raises(OutputError, match="wrong fs type") as raised:
        mount.mount_image(image, tmp_path / "m")
    assert raised.value.hint == hint
