"""``pack`` skips the holes of a sparse file (``lseek(SEEK_DATA)``) instead of reading
their zeros, and the image is the one the same bytes written in full give."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from ocisquash.erofs import ErofsCompression, ErofsOptions
from ocisquash.pack import pack_directory
from ocisquash.squashfs import WriterOptions

from ._util import require_tool, run

MKFS_TIME = 1_700_000_000
#: (offset, length) of the data regions of the sparse files; the rest is holes
REGIONS = ((0, 5000), (5 << 20, 70_000), ((5 << 20) + 3 * 4096 + 70_000, 100),
           (33 << 20, 300_000))

OPTIONS = {
    "squashfs": WriterOptions(mkfs_time=MKFS_TIME),
    "erofs": ErofsOptions(mkfs_time=MKFS_TIME),
    "erofs-none": ErofsOptions(compression=ErofsCompression.NONE, mkfs_time=MKFS_TIME),
}


def _write_sparse(path: Path, size: int) -> bytes:
    """A file of ``size`` bytes with data in ``REGIONS`` only; its bytes."""
    rng = random.Random(3)
    content = bytearray()
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in REGIONS:
            data = rng.randbytes(length // 2) + b"text " * (length // 10)
            f.seek(offset)
            f.write(data[:length])
            content += data[:length]
    return bytes(content)


def _has_holes(path: Path) -> bool:
    st = path.stat()
    return st.st_blocks * 512 < st.st_size


@pytest.mark.parametrize("name", OPTIONS)
def test_a_sparse_file_gives_the_image_of_its_bytes_in_full(tmp_path: Path,
                                                            name: str) -> None:
    sparse, dense = tmp_path / "sparse", tmp_path / "dense"
    sparse.mkdir()
    dense.mkdir()
    _write_sparse(sparse / "f", 40 << 20)
    if not _has_holes(sparse / "f"):
        pytest.skip("the filesystem of the test's temporary directory keeps no holes "
                    "(a missing kernel feature)")
    (dense / "f").write_bytes((sparse / "f").read_bytes())
    assert not _has_holes(dense / "f")
    for d in (sparse, dense):
        os.utime(d / "f", (MKFS_TIME, MKFS_TIME))
        os.utime(d, (MKFS_TIME, MKFS_TIME))
    pack_directory(sparse, tmp_path / "sparse.img", OPTIONS[name])
    pack_directory(dense, tmp_path / "dense.img", OPTIONS[name])
    assert (tmp_path / "sparse.img").read_bytes() == (tmp_path / "dense.img").read_bytes()
    if name == "squashfs":
        out = tmp_path / "out"
        run(require_tool("unsquashfs"), "-d", out, tmp_path / "sparse.img")
        assert (out / "f").read_bytes() == (sparse / "f").read_bytes()


def _bytes_read() -> int:
    """Bytes this process has read by read() and its kind (``rchar``, proc(5))."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.parametrize("name", ["squashfs", "erofs"])
def test_a_sparse_file_costs_its_data_not_its_size(tmp_path: Path, name: str) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    size = 16 << 30
    _write_sparse(tree / "huge", size)
    if not _has_holes(tree / "huge"):
        pytest.skip("the filesystem of the test's temporary directory keeps no holes "
                    "(a missing kernel feature)")
    before = _bytes_read()
    pack_directory(tree, tmp_path / "huge.img", OPTIONS[name])
    read = _bytes_read() - before
    # Reading the holes would be 16 GiB; the data is about 380 KB.
    assert read < 64 << 20, read
    assert (tmp_path / "huge.img").stat().st_size < 8 << 20
