"""Every compressor, with default and non-default options, read back by external readers."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from ocisquash.entry import EntryMeta
from ocisquash.errors import MissingExtraError, UsageError
from ocisquash.squashfs import Compression, SquashfsWriter, WriterOptions

from ._util import mounted, run, unsquashfs_extract, write_image

F = EntryMeta(mode=0o644, mtime=1)
HAVE_LZO = importlib.util.find_spec("lzo") is not None


def _payload() -> dict[bytes, bytes]:
    text = b"".join(b"line %d of a compressible text file\n" % i for i in range(20000))
    files = {b"text": text, b"random": os.urandom(200_000), b"zeros": bytes(300_000)}
    # Many small files: several metadata blocks of inodes and directory entries.
    for i in range(400):
        files[b"many/f%04d" % i] = text[i * 50 : i * 50 + 700]
    return files


PAYLOAD = _payload()

# (compression, options, expected lines in "unsquashfs -s" output)
CASES = [
    (Compression.GZIP, {}, ["Compression gzip"]),
    (
        Compression.GZIP,
        {"level": 4, "gzip_window": 10},
        ["Compression gzip", "compression-level 4", "window-size 10"],
    ),
    (Compression.XZ, {}, ["Compression xz"]),
    (
        Compression.XZ,
        {"level": 2, "xz_filters": ("x86", "armthumb")},
        ["Compression xz", "Dictionary size 131072", "Filters selected: x86, armthumb"],
    ),
    (Compression.ZSTD, {}, ["Compression zstd"]),
    (Compression.ZSTD, {"level": 19}, ["Compression zstd", "compression-level 19"]),
    (Compression.LZ4, {}, ["Compression lz4"]),
    (Compression.LZ4, {"lz4_hc": True}, ["Compression lz4", "High Compression option"]),
    pytest.param(
        Compression.LZO,
        {},
        ["Compression lzo"],
        marks=pytest.mark.skipif(not HAVE_LZO, reason="python-lzo not installed"),
    ),
    pytest.param(
        Compression.LZO,
        {"level": 1},
        ["Compression lzo", "algorithm lzo1x_1"],
        marks=pytest.mark.skipif(not HAVE_LZO, reason="python-lzo not installed"),
    ),
]


def _build(w: SquashfsWriter) -> None:
    for name, data in PAYLOAD.items():
        w.add_file(name, F, data)


@pytest.mark.parametrize(("compression", "options", "expected"), CASES)
def test_compressor_round_trips_through_unsquashfs(
    tmp_path: Path, compression: Compression, options: dict[str, object], expected: list[str]
) -> None:
    image = tmp_path / "i.sqfs"
    write_image(image, _build, compression=compression, **options)
    described = run("unsquashfs", "-s", image).stdout
    for line in expected:
        assert line in described
    out = tmp_path / "out"
    unsquashfs_extract(image, out)
    for name, data in PAYLOAD.items():
        assert (out / name.decode()).read_bytes() == data


@pytest.mark.root
@pytest.mark.parametrize(("compression", "options", "expected"), CASES)
def test_kernel_reads_every_compressor(
    tmp_path: Path, compression: Compression, options: dict[str, object], expected: list[str]
) -> None:
    image = tmp_path / "i.sqfs"
    write_image(image, _build, compression=compression, **options)
    with mounted(image, tmp_path / "mnt") as mnt:
        for name in (b"text", b"random", b"zeros", b"many/f0399"):
            assert (mnt / name.decode()).read_bytes() == PAYLOAD[name]


def test_default_gzip_image_has_no_options_block(tmp_path: Path) -> None:
    image = tmp_path / "i.sqfs"
    write_image(image, _build)
    flags = int.from_bytes(image.read_bytes()[24:26], "little")
    assert not flags & 0x0400


def test_lz4_always_has_options_block(tmp_path: Path) -> None:
    image = tmp_path / "i.sqfs"
    write_image(image, _build, compression=Compression.LZ4)
    data = image.read_bytes()
    assert int.from_bytes(data[24:26], "little") & 0x0400
    # uncompressed metadata block of 8 bytes: version 1, flags 0
    assert data[96:106] == (8 | 0x8000).to_bytes(2, "little") + bytes([1, 0, 0, 0, 0, 0, 0, 0])


def test_lzo_without_python_lzo_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "lzo", None)  # makes "import lzo" raise ImportError
    with pytest.raises(MissingExtraError) as info:
        SquashfsWriter(tmp_path / "i.sqfs", WriterOptions(compression=Compression.LZO))
    assert "pip install ocisquash[lzo]" in info.value.hint


@pytest.mark.parametrize(
    "options",
    [
        {"compression": Compression.GZIP, "level": 10},
        {"compression": Compression.GZIP, "gzip_window": 16},
        {"compression": Compression.GZIP, "gzip_window": 7},
        {"compression": Compression.ZSTD, "level": 23},
        {"compression": Compression.XZ, "level": 10},
        {"compression": Compression.XZ, "xz_filters": ("arm64",)},
        {"compression": Compression.LZ4, "lz4_hc": True, "level": 13},
    ],
)
def test_impossible_compressor_settings_are_usage_errors(
    tmp_path: Path, options: dict[str, object]
) -> None:
    with pytest.raises(UsageError):
        SquashfsWriter(tmp_path / "i.sqfs", WriterOptions(**options))  # type: ignore[arg-type]
