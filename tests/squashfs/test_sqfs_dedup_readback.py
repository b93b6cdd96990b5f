"""Duplicate detection hashes a file of a block or more only when an earlier file has
its size, and keys that earlier file by reading it back from the image. The image must
be byte for byte the one that hashing every file gives (a write-only output, which
cannot be read back, gets that), and unsquashfs must read every file back whole."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from ocisquash.entry import EntryMeta
from ocisquash.errors import SquashfsError
from ocisquash.squashfs import Compression, SquashfsWriter, WriterOptions
from ocisquash.squashfs import blocks as blocks_module

from ._util import unsquashfs_extract

F = EntryMeta(mode=0o644, mtime=1_000_000)
BS = 4096


class WriteOnly(io.RawIOBase):
    """A seekable output that cannot be read: the writer then hashes every file."""

    def __init__(self) -> None:
        self.inner = io.BytesIO()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        return self.inner.write(b)

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.inner.seek(pos, whence)

    def tell(self) -> int:
        return self.inner.tell()

    def truncate(self, size: int | None = None) -> int:
        return self.inner.truncate(size)


def _files(seed: int) -> list[tuple[bytes, bytes, bool]]:
    """(name, data, size given) in writing order: files of a few sizes, among them
    copies, near copies (last byte or tail differs), zero blocks, and copies that
    come long after the first of their size or right after it."""
    rng = random.Random(seed)
    sizes = [BS, 2 * BS, 3 * BS + 100, 2 * BS + 1, 5 * BS - 1]
    made: list[bytes] = []
    out = []
    for i in range(60):
        size = rng.choice(sizes)
        kind = rng.random()
        same = [d for d in made if len(d) == size]
        if same and kind < 0.3:
            data = rng.choice(same)  # a copy
        elif same and kind < 0.45:
            data = bytearray(rng.choice(same))
            data[-1] ^= 0xFF  # differs in its last byte (the tail, or a block)
            data = bytes(data)
        elif kind < 0.55:
            data = bytes(BS) + rng.randbytes(size - BS)  # a zero first block
        elif kind < 0.6:
            data = bytes(size)  # all zero
        else:
            # compressible, so blocks are stored compressed; some random, stored raw
            data = (rng.randbytes(64) * (size // 64 + 1))[:size] if kind < 0.8 \
                else rng.randbytes(size)
        made.append(data)
        out.append((f"f{i:02d}".encode(), data, rng.random() < 0.85))
        if rng.random() < 0.3:  # short files between: fragment blocks fill and flush
            short = rng.randbytes(rng.randrange(1, BS))
            out.append((f"s{i:02d}".encode(), short, True))
    return out


def _write(output: object, files: list[tuple[bytes, bytes, bool]], *, whole: bool = False,
           **settings: object) -> tuple[int, int]:
    """Write ``files`` (as streams, or ``whole`` as bytes); (duplicates, read-backs)."""
    options = WriterOptions(mkfs_time=0, block_size=BS, **settings)  # type: ignore[arg-type]
    with SquashfsWriter(output, options) as w:  # type: ignore[arg-type]
        for name, data, sized in files:
            if whole:
                w.add_file(name, F, data)
            elif sized:
                w.add_file(name, F, io.BytesIO(data), size=len(data))
            else:
                w.add_file(name, F, io.BytesIO(data))  # size known only at its end
        summary = w.finish()
        return summary.duplicates, w._data.read_backs


def _check_both_ways(tmp_path: Path, files: list[tuple[bytes, bytes, bool]],
                     **kw: object) -> None:
    """The image read back to key files equals the one that hashes every file (a
    write-only output), and unsquashfs reads every file of it back whole."""
    image = tmp_path / "i.sqfs"
    dups, read_backs = _write(image, files, **kw)
    hashed = WriteOnly()
    dups_hashed, read_backs_hashed = _write(hashed, files, **kw)
    assert read_backs > 0 and read_backs_hashed == 0
    assert dups == dups_hashed > 0
    assert image.read_bytes() == hashed.inner.getvalue()
    out = tmp_path / "out"
    unsquashfs_extract(image, out)
    for name, data, _ in files:
        assert (out / name.decode()).read_bytes() == data, name


@pytest.mark.parametrize("in_flight", ["default", "tiny"])
@pytest.mark.parametrize("fragments", [True, False])
@pytest.mark.parametrize("compression", list(Compression))
def test_reading_back_finds_the_duplicates_hashing_finds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: Compression,
        fragments: bool, in_flight: str) -> None:
    if compression is Compression.LZO:
        pytest.importorskip("lzo")
    if in_flight == "tiny":  # blocks are written soon: the first of a size is on disk
        monkeypatch.setattr(blocks_module, "IN_FLIGHT_BYTES", 0)
    files = _files(seed=len(compression.value) * 2 + fragments)
    _check_both_ways(tmp_path, files, compression=compression, fragments=fragments)


def test_a_file_of_a_new_size_is_not_hashed(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[int] = []
    real = blocks_module.hashlib.sha256

    def counting(data: bytes = b"") -> object:
        hashed.append(len(data))
        return real(data)

    monkeypatch.setattr(blocks_module.hashlib, "sha256", counting)
    with SquashfsWriter(tmp_path / "i.sqfs", WriterOptions(mkfs_time=0, block_size=BS)) as w:
        w.add_file(b"a", F, io.BytesIO(b"x" * (3 * BS)), size=3 * BS)
        w.add_file(b"b", F, io.BytesIO(b"y" * (4 * BS)), size=4 * BS)
        assert hashed == []
        w.add_file(b"c", F, io.BytesIO(b"x" * (3 * BS)), size=3 * BS)  # a's size: a copy
        assert w._data.read_backs == 1
        summary = w.finish()
    assert summary.duplicates == 1
    out = tmp_path / "out"
    unsquashfs_extract(tmp_path / "i.sqfs", out)
    assert (out / "c").read_bytes() == b"x" * (3 * BS)


class Garbled(io.BytesIO):
    """An output that does not read back what was written to it."""

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        return b"\xff" * len(data)


def test_an_output_that_reads_back_other_bytes_is_an_error_not_a_wrong_image() -> None:
    out = Garbled()
    options = WriterOptions(mkfs_time=0, block_size=BS)
    with SquashfsWriter(out, options) as w:  # type: ignore[arg-type]
        w.add_file(b"a", F, io.BytesIO(b"ab" * (2 * BS)), size=4 * BS)
        with pytest.raises(SquashfsError, match="does not decode"):
            w.add_file(b"b", F, io.BytesIO(b"ab" * (2 * BS)), size=4 * BS)


@pytest.mark.parametrize("settings", [
    {"compression": Compression.XZ, "xz_filters": ("x86", "arm")},
    {"compression": Compression.GZIP, "gzip_window": 9, "level": 1},
    {"compression": Compression.LZ4, "lz4_hc": True},
])
def test_reading_back_decodes_every_codec_setting(tmp_path: Path,
                                                  settings: dict[str, object]) -> None:
    _check_both_ways(tmp_path, _files(seed=7), whole=True, **settings)
