"""Layer indexes: a recompile replays the layers an earlier image of the cache applied
instead of decoding them, and writes what a cold compile writes. Each case compiles v1
into a cache, then v2 into the same cache, checks how many layers were replayed, and
compares v2's bytes with a cold compile of v2 into an empty cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from ocisquash.cache import IMAGE_FILE, ImageCache
from ocisquash.compile import CompiledImage, compile_image
from ocisquash.sources.options import SourceOptions
from ocisquash.squashfs.layerindex import LAYER_INDEX_GLOB, read_layer_index
from ocisquash.squashfs.options import Compression, WriterOptions
from ocisquash.squashfs.reuse import INDEX_FILE, IndexRecord, read_index

from .test_recompile import BLOCK, OPTIONS, Layers, _base, _bottom_changed, _data, _top_changed
from conftest import require_or_skip
from imagebuilder import Entry, write_oci_layout


def _compile(layout: Path, cache: Path, out: Path,
             options: WriterOptions = OPTIONS) -> tuple[bytes, CompiledImage]:
    result = compile_image(f"oci:{layout}:latest", out, writer_options=options,
                           source_options=SourceOptions(cache_dir=cache), copy=True)
    return out.read_bytes(), result


def _replayed(result: CompiledImage) -> int:
    return int(result.stats["flatten"]["replayed"])


def _recompile(tmp_path: Path, v1: Layers, v2: Layers, options: WriterOptions = OPTIONS,
               between: Callable[[Path], None] | None = None
               ) -> tuple[CompiledImage, CompiledImage]:
    """v2 cold, then v1 and v2 into one cache (``between`` gets v1's entry before v2
    is compiled); v2's two images must be the same bytes, and so must their layer
    indexes, also when v2 was built again without copying. Returns v2's results."""
    write_oci_layout(tmp_path / "v1", v1)
    write_oci_layout(tmp_path / "v2", v2)
    cold, cold_result = _compile(tmp_path / "v2", tmp_path / "cold-cache",
                                 tmp_path / "cold.sqfs", options)
    assert _replayed(cold_result) == 0
    _compile(tmp_path / "v1", tmp_path / "cache", tmp_path / "v1.sqfs", options)
    if between is not None:
        (entry,) = ImageCache(tmp_path / "cache").entries()
        between(entry.path)
    warm, warm_result = _compile(tmp_path / "v2", tmp_path / "cache", tmp_path / "warm.sqfs",
                                 options)
    assert warm == cold
    assert warm_result.fidelity == cold_result.fidelity
    # A replayed layer is recorded as decoding it records it.
    indexes = _layer_indexes(tmp_path / "cache", warm_result)
    assert indexes and indexes == _layer_indexes(tmp_path / "cold-cache", cold_result)
    (entry,) = [e for e in ImageCache(tmp_path / "cache").entries()
                if e.record.digest == warm_result.digest]
    assert (entry.path / INDEX_FILE).is_file()  # its blocks, for the compiles after it
    return cold_result, warm_result


def _layer_indexes(cache: Path, result: CompiledImage) -> dict[str, bytes]:
    (entry,) = [e for e in ImageCache(cache).entries() if e.record.digest == result.digest]
    return {p.name: p.read_bytes() for p in entry.path.glob(LAYER_INDEX_GLOB)}


def _special_layer() -> list[Entry]:
    """Entries of every kind, xattrs, and a dropped xattr (a fidelity note to replay)."""
    return [Entry("srv", "dir", mode=0o750, uid=7, gid=8),
            Entry("srv/tool", data=_data(300, 2 * BLOCK + 1), mode=0o4755,
                  xattrs={"security.capability": b"\x01\x00\x00\x02" + bytes(16),
                          "user.note": b"kept", "system.posix_acl_access": b"dropped"}),
            Entry("srv/link", "symlink", linkname="../usr/lib/lib0.so"),
            Entry("srv/null", "char", devmajor=1, devminor=3),
            Entry("srv/disk", "block", devmajor=8, devminor=1),
            Entry("srv/pipe", "fifo"),
            Entry("srv/empty", data=b""),
            Entry("srv/tool-link", "hardlink", linkname="srv/tool")]


def test_unchanged_layers_are_replayed_when_the_top_changes(tmp_path: Path) -> None:
    base = _base()
    v1 = [base[0], _special_layer(), *base[1:]]
    v2 = [base[0], _special_layer(), *_top_changed(base)[1:]]
    _, warm = _recompile(tmp_path, v1, v2)
    assert _replayed(warm) == 3
    assert any(issue.kind == "xattr-dropped" for issue in warm.fidelity)


def test_a_changed_bottom_layer_is_decoded_and_the_others_replayed(tmp_path: Path) -> None:
    base = _base()
    bottom = [*base[0], Entry("usr/lib/new.so", data=_data(400, 4 * BLOCK + 3))]
    _, warm = _recompile(tmp_path, base, [bottom, *base[1:]])
    assert _replayed(warm) == 2


def test_replay_at_gzip_9_and_without_fragments(tmp_path: Path) -> None:
    options = WriterOptions(compression=Compression.GZIP, level=9, block_size=BLOCK,
                            fragments=False, mkfs_time=1_700_000_000)
    _, warm = _recompile(tmp_path, _base(), _top_changed(_base()), options)
    assert _replayed(warm) == 2


def test_replay_without_dedup(tmp_path: Path) -> None:
    options = WriterOptions(compression=Compression.ZSTD, level=5, block_size=BLOCK,
                            dedup=False, mkfs_time=1_700_000_000)
    _, warm = _recompile(tmp_path, _base(), _top_changed(_base()), options)
    assert _replayed(warm) == 2


def _with_top(*entries: Entry) -> Layers:
    base = _base()
    return [*base[:2], [*base[2], *entries]]


def test_a_file_hidden_before_and_visible_now_makes_its_layer_decoded(tmp_path: Path) -> None:
    """v1 whites out a bottom-layer file, so v1 did not write it and the bottom layer's
    index holds no data for it: v2, without the whiteout, decodes that layer."""
    v1 = _with_top(Entry("usr/lib/.wh.small4"), Entry("usr/lib/.wh.lib2.so"))
    _, warm = _recompile(tmp_path, v1, _base())
    assert _replayed(warm) == 1  # the middle layer


def test_a_file_hidden_before_and_still_hidden_does_not_stop_the_replay(
        tmp_path: Path) -> None:
    v1 = _with_top(Entry("usr/lib/.wh.small4"))
    v2 = _with_top(Entry("usr/lib/.wh.small4"), Entry("app/more", data=_data(500, 900)))
    _, warm = _recompile(tmp_path, v1, v2)
    assert _replayed(warm) == 2


def test_an_opaque_directory_hides_files_before_and_now(tmp_path: Path) -> None:
    v1 = _with_top(Entry("usr/lib", "dir"), Entry("usr/lib/.wh..wh..opq"))
    v2 = _with_top(Entry("usr/lib", "dir"), Entry("usr/lib/.wh..wh..opq"),
                   Entry("usr/lib/only", data=b"only\n"))
    _, warm = _recompile(tmp_path, v1, v2)
    assert _replayed(warm) == 2


def test_an_unchanged_layer_of_whiteouts_only_is_replayed(tmp_path: Path) -> None:
    """A layer of markers (as a "remove the docs" step makes) holds no data: its
    markers were never written, and need not be hidden now for its replay."""
    base = _base()
    markers = [Entry("usr", "dir", mode=0o755), Entry("usr/lib", "dir", mode=0o755),
               Entry("usr/lib/.wh.small3"), Entry("usr/lib/.wh.lib5.so"),
               Entry("usr/lib/.wh.absent"), Entry("var", "dir"), Entry("var/.wh..wh..opq")]
    v1 = [*base[:2], markers, base[2]]
    v2 = [*base[:2], markers, _top_changed(base)[2]]
    _, warm = _recompile(tmp_path, v1, v2)
    assert _replayed(warm) == 3


def _linked_layer() -> list[Entry]:
    return [Entry("data", "dir"),
            Entry("data/target", data=_data(600, 3 * BLOCK + 11)),
            Entry("data/small", data=b"small file, linked\n"),
            Entry("data/link", "hardlink", linkname="data/target"),
            Entry("data/small-link", "hardlink", linkname="data/small")]


def test_hard_links_whose_target_is_hidden_now_take_a_replayed_second_pass(
        tmp_path: Path) -> None:
    """v2 whites out the link targets: their data goes under the links, fetched by a
    second pass, which replays the layer again."""
    base = _base()
    v1 = [base[0], _linked_layer(), base[2]]
    v2 = [base[0], _linked_layer(),
          [*base[2], Entry("data/.wh.target"), Entry("data/.wh.small")]]
    _, warm = _recompile(tmp_path, v1, v2)
    assert warm.stats["flatten"]["second_passes"] == 1
    assert _replayed(warm) == 2


def test_hard_links_written_by_a_second_pass_before_are_replayed(tmp_path: Path) -> None:
    """The reverse: v1 wrote the targets' data in a second pass, v2 in the first."""
    base = _base()
    v1 = [base[0], _linked_layer(),
          [*base[2], Entry("data/.wh.target"), Entry("data/.wh.small")]]
    v2 = [base[0], _linked_layer(), _top_changed(base)[2]]
    _, warm = _recompile(tmp_path, v1, v2)
    assert _replayed(warm) == 2


def test_a_hidden_file_a_link_names_makes_its_layer_decoded(tmp_path: Path) -> None:
    """v1 hides a link target and its link; v2 shows the link: the target's data was
    never written, so the layer is decoded for the second pass."""
    base = _base()
    hide_both = [Entry("data/.wh.target"), Entry("data/.wh.link")]
    v1 = [base[0], _linked_layer(), [*base[2], *hide_both]]
    v2 = [base[0], _linked_layer(), [*base[2], Entry("data/.wh.target")]]
    _, warm = _recompile(tmp_path, v1, v2)
    assert warm.stats["flatten"]["second_passes"] == 1
    assert _replayed(warm) == 1


def _many_small_files() -> Layers:
    """240 small files in one layer, packed into about 40 fragment blocks, a few of them
    copies of others; the top layer of v2 hides a stretch of them and a few more."""
    base = _base()
    files = [Entry("var", "dir", mode=0o755)]
    files += [Entry(f"var/f{i:03d}", data=_data(1000 + i % 200, 100 + (i * 37) % 1400))
              for i in range(240)]
    return [base[0], files, base[2]]


def test_duplicates_of_files_far_back_in_a_replay(tmp_path: Path) -> None:
    """Duplicates of small files written a hundred fragment blocks before, and of files
    of several blocks: a replay compares each with its first copy's bytes (in a block
    copied from the earlier image) or keys that copy by its blocks' digests, and still
    writes the cold compile's bytes."""
    base = _base()
    files = [Entry("var", "dir", mode=0o755)]
    files += [Entry(f"var/f{i:03d}", data=_data(2000 + i, 700 + (i * 53) % 900))
              for i in range(500)]
    files += [Entry(f"var/g{i:03d}", data=_data(2000 + i, 700 + (i * 53) % 900))
              for i in range(0, 40, 3)]
    files += [Entry(f"var/big{i}", data=_data(3000 + i, 3 * BLOCK + 5 + i)) for i in range(3)]
    files += [Entry(f"var/big{i}-copy", data=_data(3000 + i, 3 * BLOCK + 5 + i))
              for i in range(3)]
    _, warm = _recompile(tmp_path, [base[0], files, base[2]],
                         [base[0], files, _top_changed(base)[2]])
    assert _replayed(warm) == 2


def _with_crc32(data: bytes, target: int) -> bytes:
    """``data`` with its last 4 bytes changed so that its CRC-32 is ``target`` (the
    CRC-32 of a fixed length is affine in the bits: solved over GF(2))."""
    head = data[:-4]
    zero = zlib.crc32(head + bytes(4))
    pivots: dict[int, tuple[int, int]] = {}  # highest bit -> (CRC change, bits flipped)
    for i in range(32):
        change, flips = zlib.crc32(head + (1 << i).to_bytes(4, "little")) ^ zero, 1 << i
        for bit in reversed(range(32)):
            if change >> bit & 1:
                if bit not in pivots:
                    pivots[bit] = (change, flips)
                    break
                change ^= pivots[bit][0]
                flips ^= pivots[bit][1]
    want, flips = target ^ zero, 0
    for bit in reversed(range(32)):
        if want >> bit & 1:
            want ^= pivots[bit][0]
            flips ^= pivots[bit][1]
    forged = head + flips.to_bytes(4, "little")
    assert zlib.crc32(forged) == target
    return forged


def test_small_files_with_the_same_crc32_and_size_are_told_apart(tmp_path: Path) -> None:
    """A compile into the cache keys small files by their CRC-32 and size (a replayed
    file's key is then known without its bytes) and compares the bytes of files with
    the same key: files forged to share one, in the replayed layer and in the decoded
    top layer above it, are each stored with their own bytes, and true copies are
    still shared."""
    require_or_skip(subprocess.run(["which", "unsquashfs"], capture_output=True).returncode == 0,
                    "unsquashfs is not installed")
    base = _many_small_files()
    a = _data(7000, 900)
    twins = {"var/twin-a": a, "var/twin-b": _with_crc32(_data(7001, 900), zlib.crc32(a)),
             "var/twin-c": a}
    twins["var/twin-d"] = _with_crc32(_data(7002, 900), zlib.crc32(a))
    replayed = [*base[1], *(Entry(p, data=d) for p, d in twins.items())]
    on_top = {"app/twin-e": _with_crc32(_data(7003, 900), zlib.crc32(a)), "app/twin-f": a,
              "app/twin-g": _with_crc32(_data(7004, 900), zlib.crc32(a))}
    top = [*_top_changed(base)[2], *(Entry(p, data=d) for p, d in on_top.items())]
    _, warm = _recompile(tmp_path, [base[0], replayed, base[2]], [base[0], replayed, top])
    assert _replayed(warm) == 2
    subprocess.run(["unsquashfs", "-no-progress", "-d", str(tmp_path / "x"),
                    str(tmp_path / "warm.sqfs")], check=True, capture_output=True)
    for path, data in {**twins, **on_top}.items():
        assert (tmp_path / "x" / path).read_bytes() == data, path
    assert len({zlib.crc32(d) for d in {**twins, **on_top}.values()}) == 1


@pytest.mark.parametrize(("fragments", "ahead"),
                         [(True, (4 << 20, 8192)), (False, (4 << 20, 8192)),
                          (False, (2 * BLOCK, 5)), (False, (1, 1))],
                         ids=["fragments_placed_without_bytes", "default_lookahead",
                              "short_lookahead", "one_entry_ahead"])
def test_tails_placed_without_bytes_or_decoded_ahead_with_some_files_passed_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fragments: bool,
        ahead: tuple[int, int]) -> None:
    """With hidden files whose tails are never used, the image is still the cold
    compile's. With fragments, a replay places small files' tails without their bytes
    and fetches those of fragment blocks that are not copied whole (the hidden files
    leave holes in them); without, the blocks holding a replay's tails are decoded and
    the tails checked by another thread ahead of the writer, also with runs of tails
    longer than the look-ahead (checked by the writer's thread), and copies whose tails
    are in blocks left behind."""
    from ocisquash.squashfs import layerindex

    monkeypatch.setattr(layerindex, "_AHEAD_BYTES", ahead[0])
    monkeypatch.setattr(layerindex, "_LOOKAHEAD", ahead[1])
    options = WriterOptions(compression=Compression.ZSTD, level=5, block_size=BLOCK,
                            fragments=fragments, mkfs_time=1_700_000_000)
    v1 = _many_small_files()
    hidden = [Entry(f"var/.wh.f{i:03d}") for i in [*range(30, 90), 131, 170, 171, 239]]
    v2 = [*v1[:2], [*_top_changed(v1)[2], *hidden]]
    _, warm = _recompile(tmp_path, v1, v2, options)
    assert _replayed(warm) == 2


def _damage_layer_indexes(entry: Path) -> None:
    for path in entry.glob(LAYER_INDEX_GLOB):
        os.chmod(path, 0o644)
        blob = bytearray(path.read_bytes())
        blob[len(blob) // 2] ^= 0x01
        path.write_bytes(bytes(blob))


def _remove_layer_indexes(entry: Path) -> None:
    for path in entry.glob(LAYER_INDEX_GLOB):
        path.unlink()


def _remove_block_index(entry: Path) -> None:
    (entry / INDEX_FILE).unlink()


@pytest.mark.parametrize("damage", [_damage_layer_indexes, _remove_layer_indexes,
                                    _remove_block_index],
                         ids=["layer_indexes_damaged", "layer_indexes_missing",
                              "block_index_missing"])
def test_a_damaged_or_missing_index_falls_back_to_decoding(
        tmp_path: Path, damage: Callable[[Path], None]) -> None:
    _, warm = _recompile(tmp_path, _base(), _top_changed(_base()), between=damage)
    assert _replayed(warm) == 0


def test_a_pruned_source_image_is_not_replayed(tmp_path: Path) -> None:
    def prune(entry: Path) -> None:
        subprocess.run([sys.executable, "-m", "ocisquash", "cache", "--cache-dir",
                        str(tmp_path / "cache"), "prune", "--max-size", "0"],
                       check=True, capture_output=True)
        assert not entry.exists()

    _, warm = _recompile(tmp_path, _base(), _top_changed(_base()), between=prune)
    assert _replayed(warm) == 0


def test_a_block_that_cannot_be_fetched_builds_the_image_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A replay that cannot read what its index names (here: every read fails) is not
    finished with other bytes: the image is built again without earlier images."""
    from ocisquash.squashfs import reuse

    caplog.set_level(logging.WARNING, logger="ocisquash.compile")

    def unreadable(entry: Path) -> None:
        monkeypatch.setattr(reuse.BlockReuse, "read", lambda self, digest: None)

    _, warm = _recompile(tmp_path, _base(), _top_changed(_base()), between=unreadable)
    assert any("the cache's earlier images cannot be reused" in r.getMessage()
               for r in caplog.records)
    assert _replayed(warm) == 0  # the build that was kept replayed nothing


def _rot_tail_block(entry: Path, name: bytes = b"var/f120") -> None:
    """Change a byte of the stored block holding the tail of file ``name``, in place,
    keeping the image's size, mode and mtime (as a disk's fault would)."""
    tails = {record[2][0] for path in entry.glob(LAYER_INDEX_GLOB)
             for e, record in read_layer_index(path).joined()
             if e.path == name and record is not None and record[2] is not None}
    assert len(tails) == 1
    _, records = read_index(entry / INDEX_FILE)
    _flip_in_place(entry / IMAGE_FILE, [r for r in records if r.digest in tails])


def _flip_in_place(image: Path, records: list[IndexRecord]) -> None:
    """Change the byte in the middle of each of ``records``' stored bytes in ``image``,
    keeping the image's size, mode and mtime (as a disk's fault would)."""
    before = image.stat()
    os.chmod(image, 0o644)
    with open(image, "r+b") as f:
        for r in records:
            f.seek(r.offset + r.stored_size // 2)
            byte = f.read(1)[0]
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte ^ 0x5A]))
    os.chmod(image, before.st_mode)
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_fragment_block_copied_without_decoding_is_checked_by_its_stored_bytes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A replay copies an earlier fragment block whole without decoding it (or fetching
    its files' tails) when its files come in the same order: the CRC-32 of its stored
    bytes, which the block index keeps, is checked instead. An earlier image with such
    a block changed in place (here, the one holding the 121st small file's tail, in
    the middle of a run that is copied whole) is not copied from: the image is built
    again without reusing anything, and is the cold compile's."""
    caplog.set_level(logging.WARNING, logger="ocisquash.compile")
    _, warm = _recompile(tmp_path, _many_small_files(), _top_changed(_many_small_files()),
                         between=_rot_tail_block)
    assert any("does not match the CRC-32 its block index keeps" in r.getMessage()
               for r in caplog.records)
    assert _replayed(warm) == 0


def _rot_data_block(entry: Path, block: bytes) -> None:
    """Change a byte in the middle of the stored bytes of the data block ``block`` (not a
    fragment block) of an earlier image, in place, keeping its size, mode and mtime."""
    digest = hashlib.sha256(block).digest()
    _, records = read_index(entry / INDEX_FILE)
    (record,) = [r for r in records if r.digest == digest]
    assert record.length == BLOCK  # a whole block: a file's data block
    _flip_in_place(entry / IMAGE_FILE, [record])


@pytest.mark.parametrize(("which", "changed"), [(0, _top_changed), (2, _top_changed),
                                                (0, _bottom_changed)],
                         ids=["compressed", "stored_as_is", "decoded_layer"])
def test_a_data_block_copied_from_an_earlier_image_is_checked_by_its_stored_bytes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, which: int,
        changed: Callable[[Layers], Layers]) -> None:
    """A replay copies the data blocks of an unchanged layer's files from the earlier
    image (copy_file_range, no decoding), and so does a decoded layer for each block an
    earlier image holds (found by its digest): what lands in the new image is checked
    against the CRC-32 the earlier image's block index keeps. With one such block
    changed in place (a block of usr/lib/lib3.so), the image is built again without
    copying, is the cold compile's, and unsquashfs reads the file."""
    require_or_skip(subprocess.run(["which", "unsquashfs"], capture_output=True).returncode == 0,
                    "unsquashfs is not installed")
    caplog.set_level(logging.WARNING, logger="ocisquash.compile")
    lib3 = _data(3, 3 * BLOCK + 300)
    _, warm = _recompile(tmp_path, _base(), changed(_base()),
                         between=lambda entry: _rot_data_block(
                             entry, lib3[which * BLOCK:(which + 1) * BLOCK]))
    assert any("does not match the CRC-32 its block index keeps" in r.getMessage()
               for r in caplog.records)
    assert _replayed(warm) == 0
    subprocess.run(["unsquashfs", "-no-progress", "-d", str(tmp_path / "x"),
                    str(tmp_path / "warm.sqfs")], check=True, capture_output=True)
    assert (tmp_path / "x/usr/lib/lib3.so").read_bytes() == lib3
    assert (tmp_path / "x/etc/big.conf").read_bytes() == _data(50, 5 * BLOCK)


def test_the_recompile_keeps_its_own_layer_indexes(tmp_path: Path) -> None:
    """v2's entry indexes its layers itself (refers to its own image): with v1 removed,
    a third version still replays them."""
    base = _base()
    v3 = _with_top(Entry("app/v3", data=b"three\n"))
    _recompile(tmp_path, base, _top_changed(base))
    cache = ImageCache(tmp_path / "cache")
    (v1,) = [e for e in cache.entries() if e.record.source.endswith("/v1:latest")]
    assert cache.remove(v1.key)
    write_oci_layout(tmp_path / "v3", v3)
    cold, _ = _compile(tmp_path / "v3", tmp_path / "cold3", tmp_path / "cold3.sqfs")
    warm, result = _compile(tmp_path / "v3", tmp_path / "cache", tmp_path / "warm3.sqfs")
    assert warm == cold
    assert _replayed(result) == 2


def test_verify_reports_a_damaged_layer_index_and_repair_removes_only_it(
        tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "v1", _base())
    _compile(tmp_path / "v1", tmp_path / "cache", tmp_path / "v1.sqfs")
    cache = ImageCache(tmp_path / "cache")
    assert cache.verify() == []
    (entry,) = cache.entries()
    indexes = sorted(entry.path.glob(LAYER_INDEX_GLOB))
    assert len(indexes) == 3
    os.chmod(indexes[0], 0o644)
    blob = bytearray(indexes[0].read_bytes())
    blob[-40] ^= 0x80
    indexes[0].write_bytes(bytes(blob))
    problems = cache.verify(repair=True)
    assert len(problems) == 1 and "layer index" in problems[0], problems
    assert sorted(entry.path.glob(LAYER_INDEX_GLOB)) == indexes[1:]
    assert (entry.path / INDEX_FILE).exists() and cache.verify() == []


def test_layer_indexes_list_every_entry_and_are_small(tmp_path: Path) -> None:
    built = write_oci_layout(tmp_path / "v1", _base())
    _compile(tmp_path / "v1", tmp_path / "cache", tmp_path / "v1.sqfs")
    (entry,) = ImageCache(tmp_path / "cache").entries()
    indexes = sorted(entry.path.glob(LAYER_INDEX_GLOB))
    counts = sorted(sum(1 for _ in read_layer_index(p).entries()) for p in indexes)
    assert counts == sorted(len(layer) for layer in _base())
    blobs = sum((tmp_path / "v1" / "blobs" / "sha256" / d.split(":")[1]).stat().st_size
                for d in built.layer_digests)
    # At 4 KiB blocks of random data a file costs its entry and a digest per 4 KiB; the
    # bench measures the share at the default 128 KiB (bench/RESULTS-recompile.md).
    assert sum(p.stat().st_size for p in indexes) < 0.05 * blobs


def test_replayed_image_reads_back_with_unsquashfs(tmp_path: Path) -> None:
    require_or_skip(subprocess.run(["which", "unsquashfs"], capture_output=True).returncode == 0,
                    "unsquashfs is not installed")
    base = _base()
    v1 = [base[0], _special_layer(), *base[1:]]
    v2 = [base[0], _special_layer(), *_top_changed(base)[1:]]
    _, warm = _recompile(tmp_path, v1, v2)
    assert _replayed(warm) == 3
    listing = subprocess.run(["unsquashfs", "-lln", str(tmp_path / "warm.sqfs")], check=True,
                             capture_output=True, text=True).stdout
    assert "srv/null" in listing and "srv/tool" in listing
    subprocess.run(["unsquashfs", "-no-progress", "-d", str(tmp_path / "x"),
                    str(tmp_path / "warm.sqfs")], check=True, capture_output=True)
    assert (tmp_path / "x/usr/lib/lib5.so").read_bytes() == _data(5, 3 * BLOCK + 500)
    assert (tmp_path / "x/srv/tool").read_bytes() == _data(300, 2 * BLOCK + 1)
    assert (tmp_path / "x/etc/sparse").read_bytes() == (
        bytes(4 * BLOCK) + _data(51, BLOCK) + bytes(3 * BLOCK))


@pytest.mark.parametrize("piece", [5, 64 << 10])
def test_a_replay_yields_what_decoding_the_layer_yields(
        tmp_path: Path, piece: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each replayed member is the decoded member, and its data (read through the
    blocks its index names, as a sink other than the squashfs writer would) its bytes;
    also when the index is decoded a few bytes at a time (records split anywhere)."""
    from ocisquash.layers import read_layer
    from ocisquash.rules import DEFAULT_LIMITS
    from ocisquash.sources.open import open_source
    from ocisquash.squashfs import layerindex
    from ocisquash.squashfs.compressor import make_compressor
    from ocisquash.squashfs.layerindex import IndexedFile, Indexes
    from ocisquash.squashfs.reuse import BlockReuse, read_index

    monkeypatch.setattr(layerindex, "_PIECE", piece)
    if piece < 16:  # and the records read before the replay not kept for it either
        monkeypatch.setattr(layerindex, "_KEPT", 2)
    base = _base()
    layers = [base[0], _special_layer(), _linked_layer(), base[1]]
    write_oci_layout(tmp_path / "v1", layers)
    _compile(tmp_path / "v1", tmp_path / "cache", tmp_path / "v1.sqfs")
    (entry,) = ImageCache(tmp_path / "cache").entries()
    settings, _ = read_index(entry.path / INDEX_FILE)
    reuse = BlockReuse.load(settings, [(entry.image, entry.path / INDEX_FILE)])
    decompress = make_compressor(OPTIONS.compression, level=OPTIONS.level,
                                 block_size=BLOCK).decompress
    indexes = Indexes(reuse, settings, DEFAULT_LIMITS, decompress, BLOCK, [entry.path])
    try:
        for layer in open_source(f"oci:{tmp_path / 'v1'}:latest").resolve().layers():
            replay = indexes.replay(layer, lambda path: True)
            assert replay is not None
            decoded = list(read_layer(layer, small_files=1 << 20))
            replayed = list(replay.members(None))
            assert [e for e, _ in replayed] == [e for e, _ in decoded]
            again = list(replay.members(None))  # as a second pass reads it
            assert [e for e, _ in again] == [e for e, _ in decoded]
            for (e, data), (_, want) in zip(replayed, decoded, strict=True):
                if e.kind == "file":
                    assert isinstance(data, IndexedFile)
                    assert data.read() == want, e.path
    finally:
        indexes.close()
        reuse.close()


def _misplace_a_tail(path: Path) -> None:
    """Rewrite a layer index, checksum and all, with one small file's tail moved by a
    byte in its block: only the tail's CRC-32 can tell."""
    import hashlib
    import struct

    import zstandard

    from ocisquash.squashfs import layerindex

    blob = path.read_bytes()[:-32]
    at = len(layerindex._MAGIC)
    (n,) = struct.unpack_from("<I", blob, at)
    head, at = blob[:at + 4 + n], at + 4 + n
    sections = []
    for _ in range(2):
        (m,) = struct.unpack_from("<Q", blob, at)
        sections.append(blob[at + 8:at + 8 + m])
        at += 8 + m
    data = bytearray(zstandard.ZstdDecompressor().decompressobj().decompress(sections[1]))
    p = 0
    while True:
        parsed = layerindex._parse_data(bytes(data), p)
        assert parsed is not None, "no file with a tail given in full"
        (_, items, kind, _, offset, _), end = parsed
        if kind == layerindex._TAIL_AT and not items:
            struct.pack_into("<I", data, end - 8, offset + 1)
            break
        p = end
    sections[1] = zstandard.ZstdCompressor().compress(bytes(data))
    body = head + b"".join(struct.pack("<Q", len(s)) + s for s in sections)
    os.chmod(path, 0o644)
    path.write_bytes(body + hashlib.sha256(body).digest())


def test_a_tail_that_does_not_match_its_check_builds_the_image_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ocisquash.compile")

    def misplace(entry: Path) -> None:
        for path in entry.glob(LAYER_INDEX_GLOB):
            if read_layer_index(path).header.get("files", 0) > 10:  # the bottom layer's
                _misplace_a_tail(path)

    _, warm = _recompile(tmp_path, _base(), _top_changed(_base()), between=misplace)
    assert any("does not match the CRC-32" in r.getMessage() for r in caplog.records)
    assert _replayed(warm) == 0


def test_verify_finds_a_misplaced_tail(tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "v1", _base())
    _compile(tmp_path / "v1", tmp_path / "cache", tmp_path / "v1.sqfs")
    cache = ImageCache(tmp_path / "cache")
    (entry,) = cache.entries()
    (bottom,) = [p for p in entry.path.glob(LAYER_INDEX_GLOB)
                 if read_layer_index(p).header.get("files", 0) > 10]
    _misplace_a_tail(bottom)
    problems = cache.verify()
    assert len(problems) == 1 and "does not match its CRC-32" in problems[0], problems


def test_a_layer_of_tiny_files_is_not_indexed_past_its_budget(tmp_path: Path) -> None:
    """An index may take 2 % of its layer's blob (at least 64 KiB): 12,000 files of a
    few bytes each need more, so that layer is not indexed and a recompile decodes it,
    still writing the bytes of a cold compile."""
    base = _base()
    tiny = [Entry("var", "dir", mode=0o755)]
    tiny += [Entry(f"var/t{i // 1000}/f{i}", data=b"%d\n" % i) for i in range(12_000)]
    tiny += [Entry(f"var/t{d}", "dir", mode=0o755) for d in range(12)]
    top = _top_changed(base)[2]
    v1, v2 = [base[0], tiny, base[2]], [base[0], tiny, top]
    _, warm = _recompile(tmp_path, v1, v2)
    assert _replayed(warm) == 1  # the bottom layer; the tiny one was decoded
    tiny_digest = write_oci_layout(tmp_path / "again", v1).layer_digests[1]
    entries = ImageCache(tmp_path / "cache").entries()
    assert len(entries) == 2  # v1 and v2
    for entry in entries:
        names = [p.name for p in entry.path.glob(LAYER_INDEX_GLOB)]
        assert len(names) == 2 and not any(tiny_digest.split(":")[1] in n for n in names)


def test_a_layer_of_small_files_whose_index_will_not_fit_is_given_up_at_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """12,000 files of 300 random bytes: the layer's index would outgrow its budget only
    after 8,192 entries, but its first 4,096 already take more than their share of it
    (by the blob read for them), so it is given up then; the other layers keep theirs
    and a recompile still writes the bytes of a cold compile."""
    base = _base()
    rng = random.Random(24)
    small = [Entry("var", "dir", mode=0o755)]
    small += [Entry(f"var/s{i // 1000}/f{i}", data=rng.randbytes(300)) for i in range(12_000)]
    small += [Entry(f"var/s{d}", "dir", mode=0o755) for d in range(12)]
    top = _top_changed(base)[2]
    v1, v2 = [base[0], small, base[2]], [base[0], small, top]
    with caplog.at_level(logging.DEBUG, logger="ocisquash.squashfs.layerindex"):
        _, warm = _recompile(tmp_path, v1, v2)
    assert _replayed(warm) == 1  # the bottom layer; the small files' one was decoded
    small_digest = write_oci_layout(tmp_path / "again", v1).layer_digests[1]
    given_up = [r.getMessage() for r in caplog.records if "over its budget" in r.getMessage()]
    assert given_up and all(m.endswith(f"{small_digest}: over its budget after 4096 entries")
                            for m in given_up), given_up
    for entry in ImageCache(tmp_path / "cache").entries():
        names = [p.name for p in entry.path.glob(LAYER_INDEX_GLOB)]
        assert len(names) == 2 and not any(small_digest.split(":")[1] in n for n in names)
