"""lz4 and lz4hc EROFS images: the kernel reads them as squashfs shows the same tree;
fsck.erofs 1.5 decompresses every file; the bytes do not depend on the worker count."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ocisquash.entry import EntryMeta
from ocisquash.erofs import ErofsCompression, ErofsOptions, ErofsWriter, compress
from ocisquash.errors import UsageError
from ocisquash.pack import pack_directory
from ocisquash.squashfs import WriterOptions
from squashfs._util import build_feature_tree, diff_snapshots, link_groups, mounted, snapshot

from ._util import (
    MKFS_TIME,
    dump_inode,
    dump_super,
    erofs_mounted,
    files_of,
    fsck,
    prose,
    require_erofs_features,
    require_kernel_compressor,
    write_erofs,
)
from conftest import require_or_skip

pytestmark = pytest.mark.root

LZ4 = ErofsCompression.LZ4
LZ4HC = ErofsCompression.LZ4HC


@pytest.fixture(scope="module")
def feature_tree() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ocisquash-erofs-ztree-") as tmp:
        root = Path(tmp) / "tree"
        build_feature_tree(root, block_size=4096)
        # Text that compresses well, over many pclusters, with a tail.
        rng = random.Random(5)
        words = [bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(2, 9)))
                 for _ in range(300)]
        (root / "text").write_bytes(b" ".join(rng.choice(words) for _ in range(200_000)))
        yield root


@pytest.mark.parametrize("compression", [LZ4, LZ4HC])
def test_compressed_tree_mounts_as_squashfs_of_the_same_tree(
        feature_tree: Path, tmp_path: Path, compression: ErofsCompression) -> None:
    erofs, sqfs = tmp_path / "t.erofs", tmp_path / "t.sqfs"
    summary = pack_directory(feature_tree, erofs,
                             ErofsOptions(compression=compression, mkfs_time=MKFS_TIME))
    pack_directory(feature_tree, sqfs, WriterOptions(mkfs_time=MKFS_TIME, workers=1))
    assert summary.compressed_files >= 3  # type: ignore[union-attr]
    assert dump_super(erofs)["Filesystem features"].split() == ["0padding", "big_pcluster"]
    assert dump_inode(erofs, "/text")["Layout"] == "3"  # COMPRESSED_COMPACT
    fsck(erofs)
    with erofs_mounted(erofs, tmp_path / "e") as e, mounted(sqfs, tmp_path / "s") as s:
        assert diff_snapshots(snapshot(s), snapshot(e)) == []
        assert link_groups(e) == link_groups(s) != set()
    out = tmp_path / "x"
    fsck(erofs, f"--extract={out}")  # fsck.erofs decompresses with its own lz4
    assert (out / "text").read_bytes() == (feature_tree / "text").read_bytes()
    assert (out / "dup-a").read_bytes() == (feature_tree / "dup-a").read_bytes()


def _mixed(w: ErofsWriter) -> None:
    rng = random.Random(7)
    text = b"the quick brown fox jumps over the lazy dog " * 3000
    noise = rng.randbytes(300_000)
    m = EntryMeta(mode=0o644, mtime=MKFS_TIME)
    w.add_file(b"text", m, text)
    # Extents that shrink and extents stored raw (PLAIN lclusters) in one inode.
    w.add_file(b"mixed", m, text[:200_000] + noise + text[:70_001])
    w.add_file(b"noise", m, noise[:50_000])  # nothing shrinks: stored flat
    w.add_file(b"two-blocks", m, b"ab" * 4000)
    w.add_file(b"one-block", m, b"x" * 4096)
    w.add_file(b"small", m, b"small file")
    w.add_file(b"empty", m, b"")
    # Large enough to be written while it is read (see the in-flight bound below).
    w.add_file(b"big", m, text * 10 + noise)
    w.add_file(b"big-again", m, text * 10 + noise)  # a duplicate, found after writing
    w.add_file(b"text-again", m, text)
    w.add_file(b"with-xattrs", EntryMeta(mode=0o600, mtime=MKFS_TIME + 1, xattrs=(
        (b"user.big", b"v" * 3000),)), noise[:4000] + b"t" * 4001)


def _expected() -> dict[str, bytes]:
    return files_of(_mixed)


@pytest.mark.usefixtures("small_in_flight")
def test_mixed_extents_read_back_through_the_kernel(tmp_path: Path) -> None:
    image = tmp_path / "m.erofs"
    summary = write_erofs(image, _mixed, compression=LZ4HC, workers=2)
    assert summary.duplicates == 2
    fsck(image)
    layouts = {p: dump_inode(image, "/" + p)["Layout"] for p in
               ("text", "mixed", "noise", "two-blocks", "one-block", "small", "big")}
    # Compressed files have compact indexes (3); stored ones are flat (0, 2).
    assert layouts == {"text": "3", "mixed": "3", "noise": "2", "two-blocks": "3",
                       "one-block": "0", "small": "2", "big": "3"}
    with erofs_mounted(image, tmp_path / "m") as m:
        for name, data in _expected().items():
            got = (m / name).read_bytes()
            assert got == data, name
            # Reads that start inside an extent (the kernel looks back to its HEAD).
            with open(m / name, "rb") as f:
                f.seek(len(data) // 2 + 1)
                assert f.read(5000) == data[len(data) // 2 + 1:len(data) // 2 + 5001], name
        assert os.getxattr(m / "with-xattrs", "user.big") == b"v" * 3000


@pytest.mark.usefixtures("small_in_flight")
def test_bytes_are_the_same_for_any_worker_count_and_run(tmp_path: Path) -> None:
    digests = set()
    for i, workers in enumerate((1, 2, 4, 2)):
        image = tmp_path / f"w{i}.erofs"
        write_erofs(image, _mixed, compression=LZ4HC, workers=workers)
        digests.add(hashlib.sha256(image.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_raw_pclusters_of_a_mebibyte_between_small_ones_read_back(tmp_path: Path) -> None:
    """With 1 MiB pclusters, noise is stored raw a mebibyte at a time (a write of its
    own) between the pclusters of small files (gathered into one write)."""
    rng = random.Random(31)
    files = {f"text-{i}": prose(rng, 5_000 + 20_000 * i) for i in range(8)}
    # A file of one window that does not shrink is written raw whole.
    files |= {"noise": rng.randbytes(1 << 20), "noise-more": rng.randbytes(2_500_000),
              "noise-text": rng.randbytes(1_100_000) + prose(rng, 300_000)}

    def build(w: ErofsWriter) -> None:
        m = EntryMeta(mode=0o644, mtime=MKFS_TIME)
        for name, data in sorted(files.items()):
            w.add_file(name.encode(), m, data)

    image = tmp_path / "raw.erofs"
    write_erofs(image, build, compression=LZ4HC, pcluster_size=1 << 20, workers=2)
    fsck(image)
    _check_through_kernel(image, tmp_path / "m", files)


@pytest.mark.usefixtures("small_in_flight")
@pytest.mark.parametrize("features", [{}, {"fragments": True}, {"ztailpacking": True}],
                         ids=["plain", "fragments", "ztailpacking"])
def test_spool_past_its_memory_keeps_the_image_bytes(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      features: dict[str, bool]) -> None:
    """Tails, cluster indexes and inline pclusters wait for the end in memory, then in a
    temporary file past ``SPOOL_MEMORY``: either way the image is the same bytes."""
    kept = tmp_path / "kept.erofs"
    write_erofs(kept, _mixed, compression=LZ4HC, workers=2, **features)
    monkeypatch.setattr("ocisquash.erofs.data.SPOOL_MEMORY", 100)
    spilled = tmp_path / "spilled.erofs"
    write_erofs(spilled, _mixed, compression=LZ4HC, workers=2, **features)
    assert spilled.read_bytes() == kept.read_bytes()
    if features.get("fragments"):
        _require_fragments()
    elif features.get("ztailpacking"):
        _require_ztailpacking()
    else:
        fsck(spilled)  # erofs-utils 1.5 reads neither feature
    with erofs_mounted(spilled, tmp_path / "m") as m:
        for name, content in _expected().items():
            assert (m / name).read_bytes() == content, name


def test_help_states_the_minimum_kernel_per_compressor() -> None:
    out = subprocess.run([sys.executable, "-m", "ocisquash", "pack", "--help"],
                         capture_output=True, text=True, check=True).stdout
    flat = " ".join(out.split())
    for text in ("none (Linux 5.4+)", "lz4 (Linux 5.13+)", "lz4hc (Linux 5.13+)",
                 "deflate (Linux 6.6+)", "zstd (Linux 6.10+)", "(Linux 6.1+)",
                 "after its inode when it fits, not in a block of its own (Linux 5.17+)"):
        assert text in flat


# -- fixed-output lz4 pclusters: extents that start mid-lcluster ----------------------


def _boundaries() -> dict[str, bytes]:
    """Files at the block and pcluster boundaries, and extents that start mid-block:
    fitted pclusters, raw blocks after them (PLAIN extents shifted into the next
    lcluster), a raw end that passes into the next lcluster, pcluster-sized files."""
    rng = random.Random(23)
    text = prose(rng, 3_000_000)
    noise = rng.randbytes(400_000)
    files = {f"size-{n}": text[:n] for n in
             (0, 1, 4095, 4096, 4097, 8191, 8193, 65535, 65536, 65537, 131071, 131072,
              131073, 262145, 1_000_000, 2_500_001)}
    files |= {
        "noise-4097": noise[:4097],
        "noise-300000": noise[:300_000],
        # fitted extents, then raw blocks that start wherever the last one ended
        "text-noise-text": text[:500_000] + noise[:100_000] + text[:300_000],
        # a fitted extent and a short raw end that passes an lcluster boundary
        "text-noise-end": text[:131_072 + 2_000] + noise[:2_993],
        "text-noise-end-2": text[:200_000] + noise[:7_001],
        # a segment's last pcluster of a few bytes, then the next segment
        "zeros": bytes(700_000),
        # steady prose (aims without a guess), then zeros and prose cut by noise (aims
        # that miss), then prose again
        "steady-changing": text[:600_000] + bytes(300_000) + _cut_by(text, noise)
        + text[:700_000],
    }
    return files


def _cut_by(text: bytes, noise: bytes) -> bytes:
    """400 KB of ``text`` with a quarter of it replaced by ``noise``, 1 KB in every 4."""
    return b"".join(text[i:i + 3000] + noise[i:i + 1000] for i in range(0, 400_000, 4000))


def test_steady_data_aims_without_a_guess_until_a_fit_misses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """lz4hc aims a window at fast lz4's guess until a fit hits its aim on data as
    compressible as the pcluster's before; the next windows aim at that ratio until one
    misses (``TRUST_*``). Steady prose: a guess for the first two windows only; prose
    that turns to zeros, then to prose cut by noise: a guess again after each change.
    Every byte is in a piece either way; the kernel reads these back in
    test_fitted_pclusters_read_back_through_the_kernel."""
    codec = compress.Codec(LZ4HC, 9, 131072)
    guessed: list[int] = []
    guess = codec.guess_ratio
    monkeypatch.setattr(codec, "guess_ratio",
                        lambda window: guessed.append(len(window)) or guess(window))
    rng = random.Random(5)
    text = prose(rng, 2 << 20)
    pieces = compress.compress_segment(codec, text, 131072)
    assert sum(n for n, _ in pieces) == len(text)
    assert len(pieces) > 15 and len(guessed) == 2
    guessed.clear()
    changing = (text[:600_000] + bytes(300_000) + _cut_by(text, rng.randbytes(400_000))
                + text[:800_000])[:2 << 20]
    pieces = compress.compress_segment(codec, changing, 131072)
    assert sum(n for n, _ in pieces) == len(changing)
    # the first two, one where the zeros start, two more where the noise starts, ...
    assert len(guessed) >= 5
    for n, packed in pieces[:-1]:
        assert packed is not None
        assert compress.lz4.block.decompress(packed, uncompressed_size=n) \
            == changing[:n]
        changing = changing[n:]


def _write_boundaries(w: ErofsWriter) -> None:
    m = EntryMeta(mode=0o644, mtime=MKFS_TIME)
    for name, data in _boundaries().items():
        w.add_file(name.encode(), m, data)


def _check_through_kernel(image: Path, where: Path, files: dict[str, bytes]) -> None:
    with erofs_mounted(image, where) as m:
        for name, data in files.items():
            assert (m / name).read_bytes() == data, name
            # Reads that start inside an extent, and ones across every 60 KiB.
            with open(m / name, "rb") as f:
                for at in range(1, len(data), 61_441):
                    f.seek(at)
                    assert f.read(4099) == data[at:at + 4099], (name, at)


@pytest.mark.parametrize("options", [
    {}, {"fragments": True}, {"ztailpacking": True}, {"compression": LZ4},
    {"pcluster_size": 16384}, {"pcluster_size": 1 << 20},
], ids=["lz4hc", "fragments", "ztailpacking", "lz4", "pcluster-16k", "pcluster-1m"])
@pytest.mark.usefixtures("small_in_flight")
def test_fitted_pclusters_read_back_through_the_kernel(tmp_path: Path,
                                                       options: dict[str, object]) -> None:
    if options.get("fragments"):
        _require_fragments()
    if options.get("ztailpacking"):
        _require_ztailpacking()
    options.setdefault("compression", LZ4HC)
    digests = set()
    for workers in (1, 2):
        image = tmp_path / f"b{workers}.erofs"
        write_erofs(image, _write_boundaries, workers=workers, **options)
        digests.add(hashlib.sha256(image.read_bytes()).hexdigest())
    assert len(digests) == 1
    if not options.get("fragments"):
        fsck(image)
        out = tmp_path / "x"
        fsck(image, f"--extract={out}")  # fsck.erofs 1.5 decompresses with its own lz4
        for name, data in _boundaries().items():
            assert (out / name).read_bytes() == data, name
    _check_through_kernel(image, tmp_path / "m", _boundaries())


def test_fitted_pclusters_fill_their_blocks(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Fitted pclusters take fewer blocks than fixed-input ones, which pad each; with
    no liblz4 fixed-output call (``destsize`` finds none) the extents are fixed-input
    and the kernel reads those as well."""
    from ocisquash.compile import _writer_options_key

    fitted, fixed = tmp_path / "fitted.erofs", tmp_path / "fixed.erofs"
    write_erofs(fitted, _write_boundaries, compression=LZ4HC, workers=2)
    fitted_key = _writer_options_key(ErofsOptions(compression=LZ4HC), "erofs")
    monkeypatch.setattr(compress, "destsize", lambda: None)
    write_erofs(fixed, _write_boundaries, compression=LZ4HC, workers=2)
    # Other bytes, so another cache (and published options) key.
    assert _writer_options_key(ErofsOptions(compression=LZ4HC), "erofs") != fitted_key
    # Over 5 MB of prose and zeros: more than 40 pclusters at 128 KiB, each padded by
    # half a block on average.
    assert fitted.stat().st_size + 10 * 4096 < fixed.stat().st_size
    _check_through_kernel(fixed, tmp_path / "m", _boundaries())


def test_fitted_pclusters_checked_for_an_old_liblz4_keep_their_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A liblz4 older than ``TRUSTED_LZ4`` has each fitted block decompressed and
    compared before it is used; the check changes no byte of the image."""
    found = compress.destsize()
    require_or_skip(found is not None, "no liblz4 with LZ4_compress_HC_destSize")
    assert found is not None
    trusted, checked = tmp_path / "trusted.erofs", tmp_path / "checked.erofs"
    write_erofs(trusted, _write_boundaries, compression=LZ4HC, workers=2)
    monkeypatch.setattr(compress, "destsize", lambda: (*found[:3], True))
    write_erofs(checked, _write_boundaries, compression=LZ4HC, workers=2)
    assert checked.read_bytes() == trusted.read_bytes()


def _compact_alignments(w: ErofsWriter) -> None:
    """Compressed files whose indexes start at each 8-byte step of a 32-byte boundary
    (xattrs of different lengths move them: 0 to 6 initial 4-byte entries), with
    lcluster counts around the 2-byte packs of 16."""
    rng = random.Random(31)
    for pad in range(4):
        meta = EntryMeta(mode=0o644, mtime=MKFS_TIME,
                         xattrs=((b"user.p", b"v" * (8 * pad + 1)),) if pad else ())
        for blocks in (2, 3, 7, 8, 17, 18, 22, 23, 40, 100):
            size = blocks * 4096 - rng.randrange(0, 4000)
            w.add_file(b"p%d/b%03d" % (pad, blocks), meta, prose(rng, size))


def test_compact_indexes_at_every_alignment_read_back(tmp_path: Path) -> None:
    image = tmp_path / "c.erofs"
    write_erofs(image, _compact_alignments, compression=LZ4HC, pcluster_size=16384)
    expected = files_of(_compact_alignments)
    # (two or three blocks of this prose do not shrink by a block: stored flat)
    assert {dump_inode(image, "/" + p)["Layout"] for p in expected
            if len(expected[p]) > 6 * 4096} == {"3"}
    out = tmp_path / "x"
    fsck(image, f"--extract={out}")
    for name, data in expected.items():
        assert (out / name).read_bytes() == data, name
    _check_through_kernel(image, tmp_path / "m", expected)


# -- fragments: every file's last extent in one packed inode (Linux 6.1+) -------------
# erofs-utils 1.5 predates fragments (its dump.erofs and fsck.erofs refuse the feature),
# so the kernel alone judges these images.


def _require_fragments() -> None:
    require_erofs_features("fragments", since="6.1")


def test_fragments_tree_mounts_as_squashfs_of_the_same_tree(feature_tree: Path,
                                                            tmp_path: Path) -> None:
    _require_fragments()
    erofs, sqfs = tmp_path / "t.erofs", tmp_path / "t.sqfs"
    plain = tmp_path / "p.erofs"
    pack_directory(feature_tree, erofs, ErofsOptions(fragments=True, mkfs_time=MKFS_TIME))
    pack_directory(feature_tree, plain, ErofsOptions(mkfs_time=MKFS_TIME))
    pack_directory(feature_tree, sqfs, WriterOptions(mkfs_time=MKFS_TIME, workers=1))
    assert erofs.stat().st_size < plain.stat().st_size
    with erofs_mounted(erofs, tmp_path / "e") as e, mounted(sqfs, tmp_path / "s") as s:
        assert diff_snapshots(snapshot(s), snapshot(e)) == []
        assert link_groups(e) == link_groups(s) != set()


@pytest.mark.usefixtures("small_in_flight")
def test_fragments_read_back_and_do_not_depend_on_workers(tmp_path: Path) -> None:
    _require_fragments()
    digests = set()
    for workers in (1, 3):
        image = tmp_path / f"f{workers}.erofs"
        write_erofs(image, _mixed, compression=LZ4HC, fragments=True, workers=workers)
        digests.add(hashlib.sha256(image.read_bytes()).hexdigest())
    assert len(digests) == 1
    with erofs_mounted(image, tmp_path / "m") as m:
        for name, data in _expected().items():
            assert (m / name).read_bytes() == data, name
            with open(m / name, "rb") as f:
                f.seek(len(data) // 2 + 1)
                assert f.read(5000) == data[len(data) // 2 + 1:len(data) // 2 + 5001], name


def test_packed_inode_of_many_megabytes_reads_back(tmp_path: Path) -> None:
    """Small files filling several 1 MiB pclusters of the packed inode and more than one
    of its 4 MiB segments, each holding its whole 1 MiB (fixed-input, padded); files
    read in a shuffled order."""
    _require_fragments()
    rng = random.Random(41)
    files = {f"d{i % 7}/f{i:03d}": prose(rng, rng.randrange(1, 120_000))
             for i in range(90)}

    def build(w: ErofsWriter) -> None:
        for name, data in files.items():
            w.add_file(name.encode(), EntryMeta(mode=0o644, mtime=MKFS_TIME), data)

    image = tmp_path / "p.erofs"
    write_erofs(image, build, compression=LZ4HC, fragments=True, workers=2)
    assert sum(map(len, files.values())) > 5 << 20
    order = list(files)
    rng.shuffle(order)
    _check_through_kernel(image, tmp_path / "m", {n: files[n] for n in order})


def test_fragments_need_a_compressor() -> None:
    with pytest.raises(UsageError, match="fragments are compressed"):
        ErofsOptions(compression=ErofsCompression.NONE, fragments=True)


def test_for_kernel_gives_each_kernel_what_it_reads_and_keeps_what_is_asked() -> None:
    picked = {k: ErofsOptions.for_kernel(k) for k in ("5.13", "5.15", "5.17", "6.1")}
    assert [(o.fragments, o.ztailpacking, o.holes) for o in picked.values()] == [
        (False, False, False), (False, False, True), (False, True, True),
        (True, False, True)]
    kept = ErofsOptions.for_kernel("6.1", holes=False, level=12, workers=1)
    assert (kept.fragments, kept.holes, kept.level, kept.workers) == (True, False, 12, 1)
    plain = ErofsOptions.for_kernel("6.1", compression=ErofsCompression.NONE)
    assert (plain.fragments, plain.ztailpacking, plain.holes) == (False, False, True)
    with pytest.raises(UsageError, match=r"Linux 5\.17 cannot mount EROFS images with "
                                         r"fragments \(it needs Linux 6\.1\+\)"):
        ErofsOptions.for_kernel("5.17", fragments=True)


# -- ztailpacking: a compressed file's last pcluster inline after its inode (5.17+) -----
# erofs-utils 1.5 knows the feature: fsck.erofs judges beside the kernel.


def _require_ztailpacking() -> None:
    require_erofs_features("ztailpacking", since="5.17")


def test_ztailpacking_tree_mounts_as_squashfs_of_the_same_tree(feature_tree: Path,
                                                               tmp_path: Path) -> None:
    _require_ztailpacking()
    erofs, sqfs = tmp_path / "t.erofs", tmp_path / "t.sqfs"
    plain = tmp_path / "p.erofs"
    pack_directory(feature_tree, erofs, ErofsOptions(ztailpacking=True, mkfs_time=MKFS_TIME))
    pack_directory(feature_tree, plain, ErofsOptions(mkfs_time=MKFS_TIME))
    pack_directory(feature_tree, sqfs, WriterOptions(mkfs_time=MKFS_TIME, workers=1))
    assert erofs.stat().st_size <= plain.stat().st_size
    fsck(erofs)
    with erofs_mounted(erofs, tmp_path / "e") as e, mounted(sqfs, tmp_path / "s") as s:
        assert diff_snapshots(snapshot(s), snapshot(e)) == []
        assert link_groups(e) == link_groups(s) != set()


def _tails(w: ErofsWriter) -> None:
    """Files whose last pcluster goes inline: whole (one extent that compresses below
    a block), cut (an extent whose compressed size passes a block), after a big
    extent, beside xattrs, and ones that stay as they were."""
    rng = random.Random(5)
    words = [rng.randbytes(3).hex().encode() for _ in range(400)]

    def prose(n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
        return bytes(out[:n])

    m = EntryMeta(mode=0o644, mtime=MKFS_TIME)
    _mixed(w)
    for i, n in enumerate((4097, 9000, 20_000, 34_549, 60_000, 131_072, 200_000, 300_001)):
        w.add_file(f"prose-{i}".encode(), m, prose(n))
    w.add_file(b"prose-xattrs", EntryMeta(mode=0o600, mtime=MKFS_TIME, xattrs=(
        (b"user.big", b"w" * 3500),)), prose(30_000))


def _tails_expected() -> dict[str, bytes]:
    return files_of(_tails)


@pytest.mark.usefixtures("small_in_flight")
@pytest.mark.parametrize("compression", [LZ4HC, ErofsCompression.DEFLATE])
def test_ztailpacking_reads_back_and_does_not_depend_on_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: ErofsCompression) -> None:
    # lz4hc cuts a last pcluster by fitting its head (liblz4's fixed-output call);
    # deflate by estimating the cut and moving it back (compress.last_cuts).
    _require_ztailpacking()
    require_kernel_compressor(compression)
    cut = []
    last_cuts = compress.last_cuts

    def counted(*args: Any) -> list[compress.Cut]:
        cuts = last_cuts(*args)
        cut.append(len(cuts))
        return cuts

    monkeypatch.setattr(compress, "last_cuts", counted)
    # With lz4hc a last window is first fitted, by a guess, to leave a rest about the
    # inline room's size (compress.TAIL_AIM); only that rest is compressed whole.
    aimed = []
    compress_segment = compress.compress_segment

    def segment(codec: compress.Codec, data: bytes, step: int, fitted: bool = True,
                tail_room: int = -1) -> list[compress.Piece]:
        pieces = compress_segment(codec, data, step, fitted, tail_room)
        if tail_room >= 0 and len(data) <= step:
            aimed.append(len(pieces))
        return pieces

    monkeypatch.setattr(compress, "compress_segment", segment)
    digests = set()
    for workers in (1, 3, 2):
        image = tmp_path / f"z{workers}.erofs"
        write_erofs(image, _tails, compression=compression, ztailpacking=True,
                    workers=workers)
        digests.add(hashlib.sha256(image.read_bytes()).hexdigest())
    assert len(digests) == 1
    assert any(cut), "no last pcluster was cut"
    if compression is LZ4HC:
        assert any(n > 1 for n in aimed), "no last window was fitted before its rest"
    else:  # no fixed-output call: every last window is compressed whole
        assert aimed and set(aimed) == {1}
    plain = tmp_path / "plain.erofs"
    write_erofs(plain, _tails, compression=compression, workers=2)
    assert image.stat().st_size < plain.stat().st_size
    # The superblock says ZTAILPACKING (0x10); the plain image does not.
    incompat = int.from_bytes(image.read_bytes()[1024 + 80:1024 + 84], "little")
    plain_incompat = int.from_bytes(plain.read_bytes()[1024 + 80:1024 + 84], "little")
    assert (incompat & 0x10, plain_incompat & 0x10) == (0x10, 0)
    if compression is LZ4HC:  # erofs-utils 1.5 knows no deflate: the kernel judges
        fsck(image)
    expected = _tails_expected()
    with erofs_mounted(image, tmp_path / "m") as m:
        for name, data in expected.items():
            assert (m / name).read_bytes() == data, name
            with open(m / name, "rb") as f:
                f.seek(len(data) // 2 + 1)
                assert f.read(5000) == data[len(data) // 2 + 1:len(data) // 2 + 5001], name
        assert os.getxattr(m / "prose-xattrs", "user.big") == b"w" * 3500


def test_ztailpacking_needs_a_compressor() -> None:
    with pytest.raises(UsageError, match="tail packing of compressed data"):
        ErofsOptions(compression=ErofsCompression.NONE, ztailpacking=True)


# -- deflate (Linux 6.6+) and zstd (6.10+) ---------------------------------------------
# erofs-utils 1.5 knows neither (1.7 added them): the kernel alone judges.


@pytest.mark.parametrize("compression", [ErofsCompression.DEFLATE, ErofsCompression.ZSTD])
@pytest.mark.parametrize("fragments", [False, True])
@pytest.mark.usefixtures("small_in_flight")
def test_deflate_and_zstd_read_back_through_the_kernel(
        tmp_path: Path, compression: ErofsCompression, fragments: bool) -> None:
    require_kernel_compressor(compression)
    if fragments:
        _require_fragments()
    digests = set()
    for workers in (1, 2):
        image = tmp_path / f"z{workers}.erofs"
        summary = write_erofs(image, _mixed, compression=compression, workers=workers,
                              fragments=fragments)
        digests.add(hashlib.sha256(image.read_bytes()).hexdigest())
    assert len(digests) == 1
    assert summary.compressed_files >= 3
    with erofs_mounted(image, tmp_path / "m") as m:
        for name, data in _expected().items():
            assert (m / name).read_bytes() == data, name
            with open(m / name, "rb") as f:
                f.seek(len(data) // 2 + 1)
                assert f.read(5000) == data[len(data) // 2 + 1:len(data) // 2 + 5001], name


@pytest.mark.parametrize("compression", [ErofsCompression.DEFLATE, ErofsCompression.ZSTD])
def test_deflate_and_zstd_trees_mount_as_squashfs(feature_tree: Path, tmp_path: Path,
                                                  compression: ErofsCompression) -> None:
    require_kernel_compressor(compression)
    erofs, sqfs = tmp_path / "t.erofs", tmp_path / "t.sqfs"
    pack_directory(feature_tree, erofs, ErofsOptions(compression=compression,
                                                     mkfs_time=MKFS_TIME))
    pack_directory(feature_tree, sqfs, WriterOptions(mkfs_time=MKFS_TIME, workers=1))
    with erofs_mounted(erofs, tmp_path / "e") as e, mounted(sqfs, tmp_path / "s") as s:
        assert diff_snapshots(snapshot(s), snapshot(e)) == []


@pytest.mark.parametrize(("compression", "level", "ok"), [
    (ErofsCompression.ZSTD, 22, True), (ErofsCompression.ZSTD, 23, False),
    (ErofsCompression.DEFLATE, 9, True), (ErofsCompression.DEFLATE, 10, False),
    (ErofsCompression.LZ4, 3, False), (ErofsCompression.LZ4HC, 12, True),
])
def test_levels_each_compressor_takes(compression: ErofsCompression, level: int,
                                      ok: bool) -> None:
    if ok:
        assert ErofsOptions(compression=compression, level=level).level == level
    else:
        with pytest.raises(UsageError, match=f"{compression.value} has no level {level}"):
            ErofsOptions(compression=compression, level=level)


def _random_full_index(rng: random.Random) -> bytes:
    """A file's full cluster index as the writer makes it: compressed extents of one
    to 32 blocks, raw one-block ones, maybe a tail, each non-last starting in an
    lcluster of its own; its pclusters mostly follow each other on disk."""
    from types import SimpleNamespace

    f = SimpleNamespace(index=bytearray())
    start, blkaddr, extents = 0, rng.randrange(1, 1 << 20), rng.randrange(1, 8)
    for k in range(extents):
        last = k == extents - 1
        if last and rng.random() < 0.3:
            n = rng.randrange(1, 4097)
            compress.CompressedData._index(f, (start, 2, 0, 0), start + n, last=True)
            break
        if rng.random() < 0.25:
            kind, blocks, n = 0, 1, 4096
        else:
            n = rng.randrange(4097 if not last else 1, 131073)
            kind, blocks = 1, rng.randrange(1, max(2, min(33, n // 4096)))
        compress.CompressedData._index(f, (start, kind, blkaddr, blocks), start + n, last)
        start += n
        blkaddr += blocks if rng.random() < 0.95 else 7  # now and then not contiguous
    return bytes(f.index)


def test_compact_index_of_a_few_lclusters_is_the_same_by_either_path() -> None:
    """Indexes of fewer than 16 lclusters take a loop over their pairs
    (``zindex._pairs``); the operations over whole sections (``_sections``) give the
    same bytes, or the same refusal, at each alignment."""
    from ocisquash.erofs import zindex

    rng = random.Random(41)
    seen = refused = 0
    while seen < 2000:
        full = _random_full_index(rng)
        total = len(full) // 8
        if total >= 16:
            continue
        seen += 1
        small = zindex._pairs(full, total)
        refused += small is None
        for ebase in (0, 8, 16, 24):
            assert zindex._sections(full, total, ebase) == small, (full.hex(), ebase)
    assert 0 < refused < seen // 2


@pytest.mark.parametrize("options", [
    {"compression": LZ4HC}, {"compression": ErofsCompression.NONE},
    {"compression": LZ4HC, "fragments": True}, {"compression": LZ4HC, "ztailpacking": True},
], ids=["lz4hc", "none", "fragments", "ztailpacking"])
def test_the_digest_read_while_finishing_is_the_images(tmp_path: Path,
                                                       options: dict[str, object]) -> None:
    """With ``digest``, the writer hashes the bytes before the metadata while it writes
    the metadata; the sha256 it gives is the finished file's, also when a duplicate
    file rewound the data area (its bytes are overwritten or cut off)."""
    def build(w: ErofsWriter) -> None:
        _write_boundaries(w)
        m = EntryMeta(mode=0o644, mtime=MKFS_TIME)
        twin = prose(random.Random(3), 300_000)
        w.add_file(b"twin-a", m, twin)
        w.add_file(b"twin-b", m, twin)  # keyed now, its data written then taken back
        w.add_file(b"last", m, b"x" * 5000)

    image = tmp_path / "d.erofs"
    with ErofsWriter(image, ErofsOptions(mkfs_time=MKFS_TIME, **options),  # type: ignore[arg-type]
                     digest=True) as writer:
        build(writer)
        summary = writer.finish()
    assert summary.duplicates >= 1
    assert summary.sha256 == hashlib.sha256(image.read_bytes()).digest()
    plain = tmp_path / "p.erofs"
    assert write_erofs(plain, build, **options).sha256 is None
    assert plain.read_bytes() == image.read_bytes()
    with pytest.raises(ValueError, match="path"), open(tmp_path / "s", "wb") as f:
        ErofsWriter(f, digest=True)


def test_files_stored_whole_in_the_packed_inode_do_not_pile_up_in_the_queue(
        tmp_path: Path) -> None:
    """With fragments a small file has nothing of its own to compress, yet it waits in
    the writer's queue like any file: each queued file counts ``QUEUED_FILE_BYTES``
    toward the in-flight limit, so the queue stays bounded in files (it grew with every
    small file before: 755 MB at the peak on the million-file bench image)."""
    _require_fragments()
    rng = random.Random(9)
    words = prose(rng, 200_000)
    files = {b"f%05d" % i: words[i * 7:i * 7 + rng.randrange(16, 512)]
             for i in range(20_000)}
    longest = 0

    def build(w: ErofsWriter) -> None:
        nonlocal longest
        m = EntryMeta(mode=0o644, mtime=MKFS_TIME)
        data = w._data
        assert isinstance(data, compress.CompressedData)
        for name, body in files.items():
            w.add_file(name, m, body)
            longest = max(longest, len(data._queue))

    image = tmp_path / "q.erofs"
    write_erofs(image, build, compression=LZ4HC, fragments=True, workers=2)
    bound = compress.IN_FLIGHT_BYTES * 2 // compress.QUEUED_FILE_BYTES + 1
    assert 0 < longest <= bound < len(files)
    with erofs_mounted(image, tmp_path / "m") as m:
        for name in (b"f00000", b"f09999", b"f19999"):
            assert (m / name.decode()).read_bytes() == files[name]
