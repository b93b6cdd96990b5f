"""Every compressor, with default and non-default options, read back by external readers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
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


def _mixed(size: int) -> bytes:
    """Each 64 KiB: 16 KiB of random bytes, then 48 KiB of text (as ELF code beside its
    strings, or packed data beside text): the case zstd's single table set pays for."""
    words = [b"%x" % (i * 7919) for i in range(3000)]
    parts = []
    for i in range(size // 65536):
        text = b" ".join(words[(i * 131 + j * 17) % 3000] for j in range(12000))
        parts.append(os.urandom(16384) + text[:49152])
    return b"".join(parts)


def test_zstd_codes_each_32k_part_of_a_block_with_its_own_tables() -> None:
    import zstandard

    from ocisquash.squashfs.compressor import make_compressor

    ours = make_compressor(Compression.ZSTD, level=6, block_size=131072)
    whole = zstandard.ZstdCompressor(level=6)
    data = _mixed(1 << 20)
    split = unsplit = 0
    for start in range(0, len(data), 131072):
        block = data[start : start + 131072]
        out = ours.compress(block)
        assert zstandard.ZstdDecompressor().decompress(out) == block
        split += len(out)
        unsplit += len(whole.compress(block))
    # One frame of 4 zstd blocks per 128 KiB: the 16 KiB runs of random bytes no
    # longer share their tables with the text.
    assert split < 0.97 * unsplit, (split, unsplit)


@pytest.mark.parametrize("level", [1, 5, 19])
def test_zstd_in_one_call_writes_the_bytes_of_the_parts(level: int) -> None:
    """One C call per block (libzstd's maxBlockSize) must give exactly the frames the
    flush after each part gives, so the image does not depend on which path ran."""
    from ocisquash.squashfs.compressor import ZSTD_PART, _zstd_in_one_call, _zstd_in_parts

    one_call = _zstd_in_one_call(level)
    # cffi is a dependency and python-zstandard ships the bindings: the fast path must
    # be the one that runs, or this test would compare the parts with themselves.
    assert one_call is not None
    in_parts = _zstd_in_parts(level)
    data = _mixed(1 << 20) + os.urandom(5000) + b"metadata " * 1000
    sizes = [1, 100, 8192, ZSTD_PART - 1, ZSTD_PART, ZSTD_PART + 1, 100_000, 131072, 1 << 20]
    for size in sizes:
        block = data[-size:]
        assert one_call(block) == in_parts(block), size
    # The per-thread output buffer grows, then serves smaller blocks again.
    assert one_call(data[:1000]) == in_parts(data[:1000])


@pytest.mark.parametrize("lacking", ["bindings", "libzstd 1.5.6", "parameter"])
def test_zstd_without_one_call_compresses_in_parts(
    monkeypatch: pytest.MonkeyPatch, lacking: str
) -> None:
    import types

    from ocisquash.squashfs import compressor
    from ocisquash.squashfs.compressor import _zstd_in_one_call, make_compressor

    block = _mixed(131072)
    with_one_call = make_compressor(Compression.ZSTD, level=5, block_size=131072)
    if lacking == "bindings":
        monkeypatch.setitem(sys.modules, "zstandard._cffi", None)  # import fails
    elif lacking == "libzstd 1.5.6":
        monkeypatch.setattr(compressor, "_MAX_BLOCK_SIZE_SINCE", 10 ** 9)
    else:  # bindings of a libzstd new enough, built without ZSTD_c_maxBlockSize
        from zstandard._cffi import ffi, lib

        older = types.SimpleNamespace(ZSTD_versionNumber=lib.ZSTD_versionNumber)
        monkeypatch.setitem(sys.modules, "zstandard._cffi",
                            types.SimpleNamespace(ffi=ffi, lib=older))
    assert _zstd_in_one_call(5) is None
    in_parts = make_compressor(Compression.ZSTD, level=5, block_size=131072)
    assert in_parts.compress(block) == with_one_call.compress(block)


MIXED = _mixed(3 << 20) + b"tail" * 9000


def _write_mixed(image: Path, block_size: int) -> None:
    def build(w: SquashfsWriter) -> None:
        w.add_file(b"mixed", F, MIXED)
        w.add_file(b"small", F, MIXED[:40000])  # a fragment of more than one part

    write_image(image, build, compression=Compression.ZSTD, level=6, block_size=block_size)


@pytest.mark.parametrize("block_size", [131072, 1 << 20])
def test_zstd_parts_are_read_by_unsquashfs_and_rdsquashfs(tmp_path: Path, block_size: int) -> None:
    image = tmp_path / "i.sqfs"
    _write_mixed(image, block_size)
    out = tmp_path / "out"
    unsquashfs_extract(image, out)
    assert (out / "mixed").read_bytes() == MIXED
    assert (out / "small").read_bytes() == MIXED[:40000]
    cat = subprocess.run(["rdsquashfs", "-c", "/mixed", image], capture_output=True, check=True)
    assert cat.stdout == MIXED


@pytest.mark.root
@pytest.mark.parametrize("block_size", [131072, 1 << 20])
def test_kernel_reads_zstd_parts(tmp_path: Path, block_size: int) -> None:
    image = tmp_path / "i.sqfs"
    _write_mixed(image, block_size)
    with mounted(image, tmp_path / "mnt") as mnt:
        assert (mnt / "mixed").read_bytes() == MIXED
        assert (mnt / "small").read_bytes() == MIXED[:40000]


@pytest.mark.parametrize("window", [9, 12, 14])
def test_gzip_with_a_small_window_is_deflated_by_the_standard_zlib(window: int) -> None:
    """libdeflate has no small windows; those blocks are the standard library's zlib
    output, whose window the header states (no zlib-ng dependency)."""
    import zlib

    from ocisquash.squashfs.compressor import make_compressor

    block = _mixed(128 * 1024)
    c = make_compressor(Compression.GZIP, level=9, block_size=128 * 1024, gzip_window=window)
    out = c.compress(block)
    assert out == zlib.compress(block, 9, window)
    assert out[0] >> 4 == window - 8  # CINFO: log2(window) - 8
    assert "zlib_ng" not in sys.modules


def test_a_small_gzip_window_has_a_cache_key_of_its_own() -> None:
    """Images of a small gzip window changed bytes with the switch to zlib: their key says
    so, and every other key stays as it was (the cache keeps those images)."""
    from ocisquash.compile import _writer_options_key

    small = _writer_options_key(WriterOptions(compression=Compression.GZIP, gzip_window=12))
    assert small["gzip_deflate"] == "zlib"
    for options in (None, WriterOptions(compression=Compression.GZIP),
                    WriterOptions(compression=Compression.ZSTD, gzip_window=12)):
        assert "gzip_deflate" not in _writer_options_key(options)
