"""``ErofsReader`` (the path lookup a runtime config reads user names with) reads every
file of every layout the EROFS writer makes, and of mkfs.erofs's images: what was
packed, and what the kernel's EROFS driver reads out of the same image."""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocisquash.erofs import ErofsCompression, ErofsOptions
from ocisquash.erofs.reader import ErofsReader
from ocisquash.errors import ErofsError, LimitExceededError
from ocisquash.imagereader import image_format
from ocisquash.pack import pack_directory
from ocisquash.squashfs import WriterOptions

from ._util import MKFS_TIME, erofs_mounted, require_tool, run

#: Option sets that between them give every data layout and index form: FLAT_PLAIN and
#: FLAT_INLINE (none), CHUNK_BASED (a file with a zero chunk), full and compact indexes
#: (the packed inode keeps full ones), 2-byte compact packs (files of 16+ lclusters),
#: PLAIN lclusters (random data), big pclusters, inline tails, the packed inode, and
#: the four compressors.
OPTIONS = {
    "lz4hc": {},
    "none": {"compression": ErofsCompression.NONE},
    "none-no-holes": {"compression": ErofsCompression.NONE, "holes": False},
    "lz4": {"compression": ErofsCompression.LZ4},
    "deflate": {"compression": ErofsCompression.DEFLATE},
    "zstd": {"compression": ErofsCompression.ZSTD},
    "fragments": {"fragments": True},
    "ztailpacking": {"ztailpacking": True},
    "zstd-fragments-ztailpacking": {"compression": ErofsCompression.ZSTD, "fragments": True,
                                    "ztailpacking": True},
    "lz4hc-1M": {"pcluster_size": 1 << 20},
}


def _text(rng: random.Random, n: int) -> bytes:
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(3, 9)))
             for _ in range(300)]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def _tree(root: Path) -> None:
    rng = random.Random(7)
    (root / "etc").mkdir(parents=True)
    (root / "d" / "sub").mkdir(parents=True)
    (root / "etc" / "passwd").write_bytes(b"root:x:0:0:root:/root:/bin/sh\n" + b"".join(
        b"u%d:x:%d:%d::/home/u%d:/bin/sh\n" % (i, 1000 + i, 1000 + i, i) for i in range(300)))
    for size in (0, 1, 4095, 4096, 4097, 65536, 131071, 131073, 300_000, 1_200_000):
        (root / "d" / f"text{size}").write_bytes(_text(rng, size))
        (root / "d" / f"random{size}").write_bytes(rng.randbytes(size))
        (root / "d" / f"mixed{size}").write_bytes(b"".join(
            _text(rng, 3000) + rng.randbytes(1000) for _ in range(size // 4000 + 1))[:size])
    sparse = bytearray(1 << 20)
    sparse[500_000:510_000] = _text(rng, 10_000)
    (root / "d" / "sparse").write_bytes(sparse)
    for i in range(400):  # more entries than one directory block holds
        (root / "d" / "sub" / f"small-file-with-a-long-name-{i:04}").write_bytes(
            _text(rng, rng.randint(1, 3000)))
    os.symlink("../../etc/passwd", root / "d" / "sub" / "relative")
    os.symlink("/etc/../d/text4097", root / "d" / "absolute")
    os.symlink("loop", root / "d" / "loop")
    os.chmod(root / "d" / "sub", 0o750)


@pytest.fixture(scope="module")
def tree() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ocisquash-erofs-reader-") as tmp:
        _tree(Path(tmp) / "tree")
        yield Path(tmp) / "tree"


def _files(root: Path) -> list[str]:
    return sorted("/" + str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not p.is_symlink())


@pytest.mark.parametrize("name", OPTIONS)
def test_reader_reads_back_every_file_as_packed(tree: Path, tmp_path: Path, name: str) -> None:
    image = tmp_path / "t.erofs"
    pack_directory(tree, image, ErofsOptions(mkfs_time=MKFS_TIME, **OPTIONS[name]))
    assert image_format(image) == "erofs"
    with ErofsReader(image) as r:
        files = _files(tree)
        assert len(files) > 400
        for path in files:
            assert r.read_file(path) == (tree / path[1:]).read_bytes(), path
        # symlinks are followed inside the image, as a runtime resolves them
        assert r.read_file("/d/sub/relative") == (tree / "etc" / "passwd").read_bytes()
        assert r.read_file("/d/absolute") == (tree / "d" / "text4097").read_bytes()
        assert r.read_file("/absent") is None
        assert r.read_file("/etc/passwd/x") is None
        assert r.is_dir("/d/sub") and r.is_dir("/") and not r.is_dir("/etc/passwd")
        st = r.stat("/d/sub")
        source = (tree / "d" / "sub").stat()
        assert st is not None
        assert (st.mode, st.uid, st.gid) == (0o750, source.st_uid, source.st_gid)


#: mkfs.erofs's layouts (Debian 12's erofs-utils 1.5): one-block pclusters (their
#: compact indexes counted without big pclusters), big ones with -C, PLAIN tails inline,
#: and lz4 data at the start of its pcluster, without zero padding (legacy-compress)
MKFS_EROFS = {
    "uncompressed": [],
    "lz4hc": ["-zlz4hc"],
    "lz4": ["-zlz4"],
    "lz4hc-big": ["-zlz4hc", "-C65536"],
    "lz4hc-ztailpacking": ["-zlz4hc", "-Eztailpacking"],
    "lz4-legacy": ["-zlz4", "-Elegacy-compress"],
}


@pytest.mark.parametrize("name", MKFS_EROFS)
def test_reader_reads_mkfs_erofs_images(tree: Path, tmp_path: Path, name: str) -> None:
    image = tmp_path / "m.erofs"
    run(require_tool("mkfs.erofs"), *MKFS_EROFS[name], image, tree)
    with ErofsReader(image) as r:
        for path in _files(tree):
            assert r.read_file(path) == (tree / path[1:]).read_bytes(), path
        assert r.read_file("/d/sub/relative") == (tree / "etc" / "passwd").read_bytes()


@pytest.mark.root
@pytest.mark.parametrize("name", ["lz4hc", "zstd-fragments-ztailpacking"])
def test_reader_agrees_with_the_kernel(tree: Path, tmp_path: Path, name: str) -> None:
    image = tmp_path / "t.erofs"
    pack_directory(tree, image, ErofsOptions(mkfs_time=MKFS_TIME, **OPTIONS[name]))
    with erofs_mounted(image, tmp_path / "m") as m, ErofsReader(image) as r:
        for path in _files(m):
            assert r.read_file(path) == (m / path[1:]).read_bytes(), path
            st, seen = r.stat(path), (m / path[1:]).stat()
            assert st is not None
            assert (st.mode, st.uid, st.gid) == (seen.st_mode & 0o7777, seen.st_uid,
                                                 seen.st_gid), path


def test_reader_refuses_damage_loops_and_large_files(tree: Path, tmp_path: Path) -> None:
    image = tmp_path / "t.erofs"
    pack_directory(tree, image, ErofsOptions(mkfs_time=MKFS_TIME))
    with ErofsReader(image) as r:
        with pytest.raises(ErofsError, match="too many levels of symlinks"):
            r.read_file("/d/loop")
        with pytest.raises(LimitExceededError, match="more than 1000"):
            r.read_file("/d/text4097", limit=1000)
        with pytest.raises(ErofsError, match="not a regular file"):
            r.read_file("/d")
    data = image.read_bytes()
    (tmp_path / "short.erofs").write_bytes(data[: len(data) // 3])
    with ErofsReader(tmp_path / "short.erofs") as r, \
            pytest.raises(ErofsError, match="damaged"):
        for path in _files(tree):
            r.read_file(path)
    (tmp_path / "zeros").write_bytes(bytes(8192))
    assert image_format(tmp_path / "zeros") is None
    pack_directory(tree / "etc", tmp_path / "etc.squashfs", WriterOptions())
    assert image_format(tmp_path / "etc.squashfs") == "squashfs"
    with pytest.raises(ErofsError, match="not an EROFS image"):
        ErofsReader(tmp_path / "zeros")
