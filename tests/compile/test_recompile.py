"""Recompiles reuse the compressed blocks of earlier images, and write what a cold compile
writes: each case compiles v1 into a cache, then v2 into the same cache, and compares
v2's bytes with a cold compile of v2 into an empty cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import subprocess
from collections.abc import Callable
from dataclasses import astuple
from pathlib import Path

import pytest

from ocisquash.cache import IMAGE_FILE, ImageCache
from ocisquash.compile import compile_image
from ocisquash.sources.options import SourceOptions
from ocisquash.squashfs.options import Compression, WriterOptions
from ocisquash.squashfs.reuse import INDEX_FILE, read_index, settings_key

from conftest import require_or_skip
from imagebuilder import Entry, write_oci_layout

#: Small blocks, so that a few KiB of test data make many of them.
BLOCK = 4096
OPTIONS = WriterOptions(compression=Compression.ZSTD, level=5, block_size=BLOCK,
                        mkfs_time=1_700_000_000)

Layers = list[list[Entry]]


def _data(seed: int, size: int) -> bytes:
    """Half text, half random bytes: blocks that compress and blocks stored as they are."""
    rng = random.Random(seed)
    text = b" ".join(b"word%d" % rng.randrange(500) for _ in range(size // 6))[:size // 2]
    return text + rng.randbytes(size - len(text))


def _base() -> Layers:
    bottom = [Entry("usr", "dir", mode=0o755), Entry("usr/lib", "dir", mode=0o755)]
    bottom += [Entry(f"usr/lib/lib{i}.so", data=_data(i, 3 * BLOCK + 100 * i)) for i in range(8)]
    bottom += [Entry(f"usr/lib/small{i}", data=_data(100 + i, 300)) for i in range(20)]
    middle = [Entry("etc", "dir", mode=0o755),
              Entry("etc/big.conf", data=_data(50, 5 * BLOCK)),
              Entry("etc/copy.conf", data=_data(50, 5 * BLOCK)),  # a duplicate
              Entry("etc/link.conf", "hardlink", linkname="etc/big.conf"),
              Entry("etc/sparse", data=bytes(4 * BLOCK) + _data(51, BLOCK) + bytes(3 * BLOCK))]
    top = [Entry("app", "dir", mode=0o755),
           Entry("app/main", data=_data(60, 6 * BLOCK + 7), mode=0o755),
           Entry("app/README", data=b"version 1\n")]
    return [bottom, middle, top]


def _top_changed(layers: Layers) -> Layers:
    top = [Entry("app", "dir", mode=0o755),
           Entry("app/main", data=_data(61, 6 * BLOCK + 7), mode=0o755),
           Entry("app/README", data=b"version 2\n"),
           Entry("app/extra", data=_data(62, 2 * BLOCK))]
    return [*layers[:2], top]


def _bottom_changed(layers: Layers) -> Layers:
    bottom = list(layers[0])
    bottom[3] = Entry("usr/lib/lib1.so", data=_data(1001, 3 * BLOCK + 100))
    return [bottom, *layers[1:]]


def _moved_and_whiteouts(layers: Layers) -> Layers:
    top = [*layers[2],
           Entry("opt", "dir", mode=0o755),
           Entry("opt/lib3.so", data=_data(3, 3 * BLOCK + 300)),  # lib3.so, moved here
           Entry("usr/lib/.wh.lib3.so"),
           Entry("etc/.wh.copy.conf"),
           Entry("usr/lib/.wh.small4")]
    return [*layers[:2], top]


def _opaque_directory(layers: Layers) -> Layers:
    top = [*layers[2],
           Entry("etc", "dir", mode=0o755),
           Entry("etc/.wh..wh..opq"),
           Entry("etc/big.conf", data=_data(50, 5 * BLOCK)),  # the same content, alone now
           Entry("etc/new.conf", data=_data(70, 2 * BLOCK + 5))]
    return [*layers[:2], top]


def _hardlinks_and_duplicates(layers: Layers) -> Layers:
    top = [*layers[2],
           Entry("app/main-copy", data=_data(60, 6 * BLOCK + 7)),
           Entry("app/main-link", "hardlink", linkname="app/main-copy"),
           Entry("app/sparse-copy", data=bytes(4 * BLOCK) + _data(51, BLOCK) + bytes(3 * BLOCK))]
    return [*layers[:2], top]


def _layers_reordered(layers: Layers) -> Layers:
    """Same files, a different order in the image: every offset moves."""
    return [layers[1], layers[0], layers[2]]


CHANGES: dict[str, Callable[[Layers], Layers]] = {
    "top_layer_changed": _top_changed,
    "bottom_layer_changed": _bottom_changed,
    "file_moved_and_whiteouts": _moved_and_whiteouts,
    "hardlinks_and_duplicates": _hardlinks_and_duplicates,
    "opaque_directory": _opaque_directory,
    "layers_reordered": _layers_reordered,
}


def _compile(layout: Path, cache: Path, out: Path,
             options: WriterOptions = OPTIONS) -> bytes:
    compile_image(f"oci:{layout}:latest", out, writer_options=options,
                  source_options=SourceOptions(cache_dir=cache), copy=True)
    return out.read_bytes()


def _reused(caplog: pytest.LogCaptureFixture, which: int = 0) -> int:
    """The blocks (``which`` 0) or layers (2) the last compile reused, as it logged them."""
    found = [r.args for r in caplog.records if r.getMessage().startswith("reused ")]
    assert found, "the compile did not report its reused blocks"
    return int(found[-1][which])  # type: ignore[index]


#: Layers each change leaves as v1 had them, which the recompile replays from their
#: layer indexes (tests/compile/test_layer_index.py has the cases where it cannot).
REPLAYED = {"top_layer_changed": 2, "bottom_layer_changed": 2, "file_moved_and_whiteouts": 2,
            "hardlinks_and_duplicates": 2, "opaque_directory": 2, "layers_reordered": 3}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_recompile_is_byte_identical_to_a_cold_compile(
        tmp_path: Path, change: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ocisquash.compile")
    v1, v2 = _base(), CHANGES[change](_base())
    write_oci_layout(tmp_path / "v1", v1)
    write_oci_layout(tmp_path / "v2", v2)
    cold = _compile(tmp_path / "v2", tmp_path / "cold-cache", tmp_path / "cold.sqfs")
    assert _reused(caplog) == 0  # an empty cache has nothing to give
    _compile(tmp_path / "v1", tmp_path / "cache", tmp_path / "v1.sqfs")
    warm = _compile(tmp_path / "v2", tmp_path / "cache", tmp_path / "warm.sqfs")
    assert _reused(caplog) > 10
    assert _reused(caplog, 2) == REPLAYED[change]
    assert hashlib.sha256(warm).hexdigest() == hashlib.sha256(cold).hexdigest()


@pytest.mark.parametrize("copy", ["in_kernel_one_block_a_run", "read_and_written"])
def test_copied_blocks_make_the_same_image_however_they_are_copied(
        tmp_path: Path, copy: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Blocks of earlier images go from file to file in runs, by copy_file_range; where
    the kernel cannot (files on two filesystems answer EXDEV) they are read and written.
    With duplicates rewinding the output over copied blocks, the image is the same."""
    import errno
    import os

    from ocisquash.squashfs import blocks

    caplog.set_level(logging.DEBUG, logger="ocisquash.compile")
    asked: list[int] = []
    if copy == "read_and_written":
        def refused(*args: object) -> int:
            asked.append(1)
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

        monkeypatch.setattr(os, "copy_file_range", refused)
    else:
        # Each block a run of its own, and few blocks in flight: a duplicate's blocks are
        # copied before it is found to be one, and the output is rewound over them.
        monkeypatch.setattr(blocks, "COPY_RUN", 1)
        monkeypatch.setattr(blocks, "IN_FLIGHT_BYTES", 1)
    v2 = CHANGES["hardlinks_and_duplicates"](_base())
    v2[2].append(Entry("app/main-copy-2", data=_data(60, 6 * BLOCK + 7)))  # a third copy
    write_oci_layout(tmp_path / "v1", _base())
    write_oci_layout(tmp_path / "v2", v2)
    cold = _compile(tmp_path / "v2", tmp_path / "cold-cache", tmp_path / "cold.sqfs")
    _compile(tmp_path / "v1", tmp_path / "cache", tmp_path / "v1.sqfs")
    warm = _compile(tmp_path / "v2", tmp_path / "cache", tmp_path / "warm.sqfs")
    assert _reused(caplog) > 10
    assert warm == cold
    assert bool(asked) == (copy == "read_and_written")


def test_recompile_at_gzip_9_and_without_fragments(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ocisquash.compile")
    options = WriterOptions(compression=Compression.GZIP, level=9, block_size=BLOCK,
                            fragments=False, mkfs_time=1_700_000_000)
    write_oci_layout(tmp_path / "v1", _base())
    write_oci_layout(tmp_path / "v2", _top_changed(_base()))
    cold = _compile(tmp_path / "v2", tmp_path / "cold-cache", tmp_path / "cold.sqfs", options)
    _compile(tmp_path / "v1", tmp_path / "cache", tmp_path / "v1.sqfs", options)
    warm = _compile(tmp_path / "v2", tmp_path / "cache", tmp_path / "warm.sqfs", options)
    assert _reused(caplog) > 10
    assert warm == cold


def test_other_settings_reuse_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ocisquash.compile")
    write_oci_layout(tmp_path / "v1", _base())
    write_oci_layout(tmp_path / "v2", _top_changed(_base()))
    _compile(tmp_path / "v1", tmp_path / "cache", tmp_path / "v1.sqfs")
    level9 = WriterOptions(compression=Compression.ZSTD, level=9, block_size=BLOCK,
                           mkfs_time=1_700_000_000)
    warm = _compile(tmp_path / "v2", tmp_path / "cache", tmp_path / "warm.sqfs", level9)
    assert _reused(caplog) == 0
    cold = _compile(tmp_path / "v2", tmp_path / "cold-cache", tmp_path / "cold.sqfs", level9)
    assert warm == cold



#: all three are dependencies of the package
@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD, Compression.LZ4])
def test_the_settings_key_names_the_compressing_library_as_installed(
        compression: Compression) -> None:
    """The key records the version the package's metadata gives (taken from the module,
    which the compressor imports anyway): a new version of the library, which may make
    other bytes, reuses no block of an image it did not write."""
    from importlib.metadata import version

    package = {Compression.GZIP: "deflate", Compression.ZSTD: "zstandard",
               Compression.LZ4: "lz4"}[compression]
    key = json.loads(settings_key(WriterOptions(compression=compression)))
    assert key["libraries"][package] == version(package)


def _v1_entry(cache_dir: Path) -> Path:
    (entry,) = ImageCache(cache_dir).entries()
    return entry.path


def _damage_index(entry: Path) -> None:
    index = entry / INDEX_FILE
    os.chmod(index, 0o644)
    blob = bytearray(index.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    index.write_bytes(bytes(blob))


def _remove_index(entry: Path) -> None:
    (entry / INDEX_FILE).unlink()


def _rewrite_image(entry: Path) -> None:
    """The block store is the image itself: a write to it (same size) makes the entry
    unusable, so its blocks are not copied either."""
    image = entry / IMAGE_FILE
    os.chmod(image, 0o644)
    with open(image, "r+b") as f:
        f.seek(200)
        f.write(b"\xff" * 64)


@pytest.mark.parametrize("damage", [_damage_index, _remove_index, _rewrite_image],
                         ids=["index_damaged", "index_missing", "image_written_to"])
def test_a_damaged_or_missing_index_or_image_falls_back_to_compressing(
        tmp_path: Path, damage: Callable[[Path], None],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ocisquash.compile")
    write_oci_layout(tmp_path / "v1", _base())
    write_oci_layout(tmp_path / "v2", _top_changed(_base()))
    cold = _compile(tmp_path / "v2", tmp_path / "cold-cache", tmp_path / "cold.sqfs")
    _compile(tmp_path / "v1", tmp_path / "cache", tmp_path / "v1.sqfs")
    damage(_v1_entry(tmp_path / "cache"))
    warm = _compile(tmp_path / "v2", tmp_path / "cache", tmp_path / "warm.sqfs")
    assert _reused(caplog) == 0
    assert warm == cold


def test_index_is_small_and_lists_every_block(tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "v1", _base())
    _compile(tmp_path / "v1", tmp_path / "cache", tmp_path / "v1.sqfs")
    entry = _v1_entry(tmp_path / "cache")
    _, records = read_index(entry / INDEX_FILE, (entry / IMAGE_FILE).stat().st_size)
    layers = sum(len(e.data) for layer in _base() for e in layer)
    # 8 libs of 3+ blocks, big.conf (copy.conf shares it), 1 data block of sparse,
    # main's 6 blocks, fragment blocks: 24 data blocks plus the fragments.
    assert 24 < len(records) < 40
    assert len({r.offset for r in records}) == len(records)
    # 52 bytes per block: at 4 KiB blocks about 1.3 %, at the default 128 KiB 0.04 %.
    assert (entry / INDEX_FILE).stat().st_size <= 0.02 * layers


def test_verify_reports_a_damaged_index_and_repair_removes_only_it(tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "v1", _base())
    _compile(tmp_path / "v1", tmp_path / "cache", tmp_path / "v1.sqfs")
    cache = ImageCache(tmp_path / "cache")
    assert cache.verify() == []
    entry = _v1_entry(tmp_path / "cache")
    _damage_index(entry)
    problems = cache.verify(repair=True)
    assert len(problems) == 1 and "block index is damaged" in problems[0], problems
    assert not (entry / INDEX_FILE).exists()
    assert (entry / IMAGE_FILE).exists() and cache.verify() == []


def test_verify_decodes_the_indexed_blocks(tmp_path: Path) -> None:
    """An index whose checksum holds but whose records point at the wrong bytes (a bug
    that wrote it) is caught by decoding the blocks."""
    from ocisquash.squashfs.reuse import pack_index

    write_oci_layout(tmp_path / "v1", _base())
    _compile(tmp_path / "v1", tmp_path / "cache", tmp_path / "v1.sqfs")
    entry = _v1_entry(tmp_path / "cache")
    settings, records = read_index(entry / INDEX_FILE)
    wrong = [(records[1].digest, *astuple(records[0])[1:]),
             *(astuple(r) for r in records[1:])]
    os.chmod(entry / INDEX_FILE, 0o644)
    (entry / INDEX_FILE).write_bytes(pack_index(settings, wrong))
    problems = ImageCache(tmp_path / "cache").verify()
    assert len(problems) == 1 and "does not match its digest" in problems[0], problems


def test_prune_removes_the_index_with_its_image(tmp_path: Path) -> None:
    import sys
    import time

    write_oci_layout(tmp_path / "v1", _base())
    write_oci_layout(tmp_path / "v2", _top_changed(_base()))
    _compile(tmp_path / "v1", tmp_path / "cache", tmp_path / "v1.sqfs")
    v1 = _v1_entry(tmp_path / "cache")
    time.sleep(0.01)  # the newer entry must be v2's
    _compile(tmp_path / "v2", tmp_path / "cache", tmp_path / "v2.sqfs")
    cache = ImageCache(tmp_path / "cache")
    newest = max(cache.entries(), key=lambda e: e.created)
    assert newest.path != v1 and (newest.path / INDEX_FILE).is_file()
    subprocess.run([sys.executable, "-m", "ocisquash", "cache", "--cache-dir",
                    str(tmp_path / "cache"), "prune", "--max-size", str(newest.size)],
                   check=True, capture_output=True)
    assert not v1.exists()
    assert sorted((tmp_path / "cache").rglob(INDEX_FILE)) == [newest.path / INDEX_FILE]


def test_recompiled_image_reads_back_with_unsquashfs(tmp_path: Path) -> None:
    require_or_skip(subprocess.run(["which", "unsquashfs"], capture_output=True).returncode == 0,
                    "unsquashfs is not installed")
    write_oci_layout(tmp_path / "v1", _base())
    write_oci_layout(tmp_path / "v2", _moved_and_whiteouts(_base()))
    _compile(tmp_path / "v1", tmp_path / "cache", tmp_path / "v1.sqfs")
    _compile(tmp_path / "v2", tmp_path / "cache", tmp_path / "v2.sqfs")
    subprocess.run(["unsquashfs", "-no-progress", "-d", str(tmp_path / "x"),
                    str(tmp_path / "v2.sqfs")], check=True, capture_output=True)
    assert (tmp_path / "x/opt/lib3.so").read_bytes() == _data(3, 3 * BLOCK + 300)
    assert not (tmp_path / "x/usr/lib/lib3.so").exists()
    assert (tmp_path / "x/etc/sparse").read_bytes() == (
        bytes(4 * BLOCK) + _data(51, BLOCK) + bytes(3 * BLOCK))


def test_images_sharing_a_layer_are_loaded_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """With room for one earlier image's index, v1 (a layer in common, compiled first) is
    chosen over a newer image that shares none."""
    import time

    from ocisquash.squashfs import reuse

    caplog.set_level(logging.DEBUG, logger="ocisquash.compile")
    monkeypatch.setattr(reuse, "MAX_SOURCES", 1)
    write_oci_layout(tmp_path / "v1", _base())
    write_oci_layout(tmp_path / "other", [[Entry("other", data=_data(999, 3 * BLOCK))]])
    write_oci_layout(tmp_path / "v2", _top_changed(_base()))
    _compile(tmp_path / "v1", tmp_path / "cache", tmp_path / "v1.sqfs")
    time.sleep(0.01)
    _compile(tmp_path / "other", tmp_path / "cache", tmp_path / "other.sqfs")
    warm = _compile(tmp_path / "v2", tmp_path / "cache", tmp_path / "warm.sqfs")
    assert _reused(caplog) > 10
    assert warm == _compile(tmp_path / "v2", tmp_path / "cold-cache", tmp_path / "cold.sqfs")


def test_an_image_written_to_while_its_blocks_are_copied_is_built_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A write to an earlier image during the compile (through a hard link that -o put
    beside the user's files) is noticed at the end, and nothing copied from it is kept."""
    from ocisquash.squashfs import reuse

    caplog.set_level(logging.DEBUG, logger="ocisquash.compile")
    write_oci_layout(tmp_path / "v1", _base())
    write_oci_layout(tmp_path / "v2", _top_changed(_base()))
    cold = _compile(tmp_path / "v2", tmp_path / "cold-cache", tmp_path / "cold.sqfs")
    _compile(tmp_path / "v1", tmp_path / "cache", tmp_path / "v1.sqfs")
    image = _v1_entry(tmp_path / "cache") / IMAGE_FILE
    locate = reuse.BlockReuse.locate
    writes: list[int] = []

    def located_then_written(self: reuse.BlockReuse,
                             digest: bytes) -> tuple[int, int, int] | None:
        found = locate(self, digest)
        if found is not None and not writes:
            # Rewrite the earlier image's data area with other bytes, as a user writing
            # to the file would: the blocks copied from now on are not what it indexed.
            os.chmod(image, 0o644)
            with open(image, "r+b") as f:
                f.seek(96)
                writes.append(f.write(b"\xee" * (image.stat().st_size // 2)))
        return found

    monkeypatch.setattr(reuse.BlockReuse, "locate", located_then_written)
    warm = _compile(tmp_path / "v2", tmp_path / "cache", tmp_path / "warm.sqfs")
    assert writes, "no block was copied, so the write never happened"
    assert warm == cold
    assert any("written to while this compile copied" in r.getMessage() for r in caplog.records)
