"""Duplicate files: a file of more than a block is hashed only when an earlier file has
its size; the first of each size is keyed late, from its segments while it is still
queued for compression, else by reading it back from the image. The
image is the one hashing every file gives (an output that cannot be read back), and
the kernel reads every copy."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from ocisquash.entry import EntryMeta
from ocisquash.erofs import ErofsCompression, ErofsOptions, ErofsWriter, compress

from ._util import MKFS_TIME, erofs_mounted, fsck, require_erofs_features, write_erofs

pytestmark = pytest.mark.root

_RNG = random.Random(11)
_TEXT = b"pack my box with five dozen liquor jugs " * 20_000
_NOISE = _RNG.randbytes(400_000)
#: (name, data): twins of the same size come after other files, some identical
FILES = [
    ("a", _TEXT[:300_000]),
    ("noise", _NOISE[:50_000]),            # stored flat, tail inline
    # Sizes of their own, 360 KB of fragments: with fragments, "big" writes the packed
    # inode's first segment before "a" is read back from it.
    *((f"filler-{i}", _TEXT[i:120_001 + 2 * i]) for i in range(3)),
    ("big", _TEXT + _NOISE),               # streamed while read (small in-flight bound)
    ("small", b"tiny"),
    ("b", _TEXT[1:300_001]),               # a's size, other bytes: a is read back
    ("noise-other", _NOISE[1:50_001]),
    ("c", _TEXT[:300_000]),                # a copy of a
    ("noise-again", _NOISE[:50_000]),      # a copy of noise
    ("big-again", _TEXT + _NOISE),         # a copy of big
    ("mixed", _TEXT[:100_000] + _NOISE[:100_000] + _TEXT[:5_000]),
    ("mixed-again", _TEXT[:100_000] + _NOISE[:100_000] + _TEXT[:5_000]),
    ("small-again", b"tiny"),              # a copy too, but see DUPLICATES
]
#: The copies found: "small-again" is one only where short files' data is shared
#: (compressed beside the inode); otherwise each short file's bytes go beside its own
#: inode, unlooked at (a copy would carry its own bytes anyway), or whole into the
#: packed inode (fragments), where a file of 4 bytes is not looked up (see
#: test_short_copies_in_the_packed_inode_name_the_bytes_stored_first).
DUPLICATES = {"ztailpacking": 5}
CASES = {
    "none": dict(compression=ErofsCompression.NONE),
    "lz4hc": dict(compression=ErofsCompression.LZ4HC),
    "fragments": dict(compression=ErofsCompression.LZ4HC, fragments=True),
    "zstd": dict(compression=ErofsCompression.ZSTD),
    "ztailpacking": dict(compression=ErofsCompression.LZ4HC, ztailpacking=True),
}


def _write(out: object, files: list[tuple[str, bytes]] = FILES,
           **options: object) -> tuple[int, int, int]:
    """The image's duplicates, the files read back to be keyed and the files keyed
    from their queued segments."""
    opts = ErofsOptions(mkfs_time=MKFS_TIME, workers=2, **options)  # type: ignore[arg-type]
    with ErofsWriter(out, opts) as w:  # type: ignore[arg-type]
        m = EntryMeta(mode=0o644, mtime=MKFS_TIME)
        for name, data in files:
            w.add_file(name.encode(), m, data)
        # Uncompressed data is written as it comes: nothing is queued.
        read_backs, queued = w._data.read_backs, getattr(w._data, "keyed_queued", 0)
        return w.finish().duplicates, read_backs, queued


@pytest.fixture(autouse=True)
def small_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compress, "IN_FLIGHT_BYTES", 200_000)
    # Segments of 256 KiB: big files span several, each with its own padded end.
    monkeypatch.setattr(compress, "SEGMENT_BYTES", 256 << 10)
    # The packed inode in 256 KiB segments too: fragments are read back from
    # pclusters already written as well as from the bytes still queued.
    monkeypatch.setattr(compress, "PACKED_PCLUSTER_BYTES", 128 << 10)
    monkeypatch.setattr(compress, "PACKED_SEGMENT_PCLUSTERS", 1)


@pytest.mark.parametrize("case", CASES)
def test_first_of_a_size_is_keyed_late_and_the_image_is_unchanged(
        case: str, tmp_path: Path) -> None:
    late, every = tmp_path / "late.erofs", tmp_path / "every.erofs"
    duplicates, read_backs, queued = _write(late, **CASES[case])
    with open(every, "wb") as f:  # write-only: every file is hashed as it is read
        all_duplicates, no_read_backs, _ = _write(f, **CASES[case])
    copies = DUPLICATES.get(case, 4)
    # One first file is still queued when its twin comes (compressed data waits for
    # its pclusters; uncompressed data is written at once): it is keyed from its
    # segments.
    # With fragments, "noise" goes whole into the packed inode: it is hashed as it
    # comes rather than read back (which would decompress a whole packed pcluster).
    read = {"none": 4, "fragments": 2}.get(case, 3)
    assert (duplicates, read_backs, queued) == (copies, read, 0 if case == "none" else 1)
    assert (all_duplicates, no_read_backs) == (copies, 0)
    assert late.read_bytes() == every.read_bytes()
    if case in ("none", "lz4hc", "ztailpacking"):
        fsck(late, "--extract")
    if case != "zstd":
        with erofs_mounted(late, tmp_path / "m") as mnt:
            for name, data in FILES:
                assert (mnt / name).read_bytes() == data, name


#: Twins that come while the first of their size is still queued (under the in-flight
#: bound): it is keyed from its segments, not written and read back.
QUEUED = [
    ("p", _TEXT[:30_000]),
    ("q", _TEXT[5:30_005]),                # p's size, other bytes
    ("r", _TEXT[:30_000]),                 # a copy of p
    ("s", _NOISE[:20_000]),
    ("s-again", _NOISE[:20_000]),          # a copy of s
]


@pytest.mark.parametrize("case", CASES)
def test_first_of_a_size_still_queued_is_keyed_from_its_segments(
        case: str, tmp_path: Path) -> None:
    late, every = tmp_path / "late.erofs", tmp_path / "every.erofs"
    # With fragments these files go whole into the packed inode, hashed as they come:
    # nothing is keyed late.
    keyed = {"none": (2, 2, 0), "fragments": (2, 0, 0)}.get(case, (2, 0, 2))
    assert _write(late, QUEUED, **CASES[case]) == keyed
    with open(every, "wb") as f:  # write-only: every file is hashed as it is read
        assert _write(f, QUEUED, **CASES[case]) == (2, 0, 0)
    assert late.read_bytes() == every.read_bytes()
    if case != "zstd":
        with erofs_mounted(late, tmp_path / "m") as mnt:
            for name, data in QUEUED:
                assert (mnt / name).read_bytes() == data, name


@pytest.mark.parametrize(("bound", "metabox"), [("files", False), ("bytes", False),
                                               ("files", True)])
def test_short_copies_in_the_packed_inode_name_the_bytes_stored_first(
        bound: str, metabox: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With fragments a short file goes whole into the packed inode. A copy of one of
    the last distinct short files (SHORT_KEYS of them, SHORT_KEY_BYTES of their bytes)
    is not stored again: its inode names the first one's bytes (here further back than
    lz4's 64 KiB window, so a stored copy would cost its size). A copy of one further
    back is stored again: what is held stays bounded. Files under SHORT_DEDUP_MIN bytes
    are not looked up. With a metabox the shared offsets are in its records."""
    require_erofs_features("fragments", since="6.1")
    if metabox:
        require_erofs_features("metabox", "48bit", since="6.17")
    if bound == "files":
        monkeypatch.setattr(compress, "SHORT_KEYS", 30)
    else:
        monkeypatch.setattr(compress, "SHORT_KEY_BYTES", 30 * 3000)
    rng = random.Random(17)
    uniques = [(f"u{i:02d}", rng.randbytes(3000)) for i in range(40)]
    blob = dict(uniques)
    files = [*uniques,
             ("c15", blob["u15"]),      # 75 KB back, among the last 30 keys: shared
             ("c12", blob["u12"]),      # shared
             ("c00", blob["u00"]),      # no longer remembered: stored again
             ("t0", blob["u01"][:compress.SHORT_DEDUP_MIN - 1]),
             ("t1", blob["u01"][:compress.SHORT_DEDUP_MIN - 1])]  # too short to look up

    def build(w: ErofsWriter) -> None:
        m = EntryMeta(mode=0o644, mtime=MKFS_TIME)
        for name, data in files:
            w.add_file(name.encode(), m, data)
        w.add_hardlink(b"link-c15", b"c15")

    images = {}
    for dedup, workers in ((True, 1), (True, 2), (False, 2)):
        image = images[dedup, workers] = tmp_path / f"{dedup}-{workers}.erofs"
        summary = write_erofs(image, build, compression=ErofsCompression.LZ4HC,
                              fragments=True, metabox=metabox, dedup=dedup,
                              workers=workers)
        assert summary.duplicates == (2 if dedup else 0)
    shared, plain = images[True, 2], images[False, 2]
    assert shared.read_bytes() == images[True, 1].read_bytes()
    # Two copies of 3,000 random bytes not stored: at least a block less.
    assert plain.stat().st_size - shared.stat().st_size >= 4096
    with erofs_mounted(shared, tmp_path / "m") as mnt:
        for name, data in [*files, ("link-c15", blob["u15"])]:
            assert (mnt / name).read_bytes() == data, name
        assert (mnt / "c15").stat().st_ino == (mnt / "link-c15").stat().st_ino
        assert (mnt / "c15").stat().st_ino != (mnt / "u15").stat().st_ino
