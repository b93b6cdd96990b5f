"""A million small files must fit in bounded memory: a short file with one name is one
int in its directory, and its duplicate key a short int checked by reading the stored
file back. The images must be those full records and whole sha256 keys give (a
write-only output, which cannot be read back, still keys by the whole sha256)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from ocisquash.entry import EntryMeta
from ocisquash.squashfs import SquashfsWriter, WriterOptions
from ocisquash.squashfs import blocks as blocks_module

from ._util import bytes_held_per_file, unsquashfs_extract
from .test_sqfs_dedup_readback import WriteOnly

BS = 4096
F = EntryMeta(mode=0o644, mtime=1_000_000)
G = EntryMeta(mode=0o600, uid=5, gid=7, mtime=2_000_000)

#: Two different files of one size; under :func:`_colliding_hash` they share a short
#: dedup key, as any two files may by chance.
SAME_SHORT_KEY = (b"ocisquash-00075494", b"ocisquash-02796900")


def _colliding_hash(data: bytes) -> int:
    """A short hash under which every two files of one size share a short key."""
    return 0


def _files(seed: int) -> list[tuple[bytes, bytes, EntryMeta]]:
    """Short files in many fragment blocks, with copies of earlier ones (near and far),
    the two files of one short key and their copies, empty files and a few long ones."""
    rng = random.Random(seed)
    a, b = SAME_SHORT_KEY
    made: list[bytes] = [a]
    out = [(b"d0/a", a, F)]
    for i in range(400):
        kind = rng.random()
        if kind < 0.25:
            data = rng.choice(made)
        elif kind < 0.3:
            data = b""
        elif kind < 0.32:
            data = rng.randbytes(2 * BS + 7)
        else:
            data = rng.randbytes(rng.randrange(1, 600))
        made.append(data)
        out.append((f"d{i % 7}/f{i:03d}".encode(), data, G if i % 3 else F))
        if i == 150:
            out.append((b"d1/b", b, F))
        if i in (200, 390):
            out += [(f"d2/b{i}".encode(), b, G), (f"d3/a{i}".encode(), a, F)]
    return out


def _write(output: object, files: list[tuple[bytes, bytes, EntryMeta]]) -> int:
    options = WriterOptions(mkfs_time=0, block_size=BS)
    with SquashfsWriter(output, options) as w:  # type: ignore[arg-type]
        for name, data, meta in files:
            w.add_file(name, meta, data)
        w.add_hardlink(b"d0/linked", b"d0/a")  # a short file's int becomes a node
        return w.finish().duplicates


@pytest.mark.parametrize("in_flight", ["default", "tiny"])
def test_short_files_sharing_a_short_key_are_told_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_flight: str) -> None:
    a, b = SAME_SHORT_KEY
    assert a != b and len(a) == len(b)
    monkeypatch.setattr(blocks_module, "short_hash", _colliding_hash)
    if in_flight == "tiny":  # fragment blocks are written soon, and read back from disk
        monkeypatch.setattr(blocks_module, "IN_FLIGHT_BYTES", 0)
    files = _files(seed=len(in_flight))
    image = tmp_path / "i.sqfs"
    dups = _write(image, files)
    whole_keys = WriteOnly()
    assert dups == _write(whole_keys, files) > 0
    assert image.read_bytes() == whole_keys.inner.getvalue()
    out = tmp_path / "out"
    unsquashfs_extract(image, out)
    for name, data, _ in files:
        assert (out / name.decode()).read_bytes() == data, name
    assert (out / "d0/linked").stat().st_ino == (out / "d0/a").stat().st_ino
    assert (out / "d0/a").stat().st_nlink == 2


def test_a_short_file_costs_under_300_bytes_in_the_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory the writer holds per short file of its own name and data (tracemalloc:
    the node, the data record, the name, the dedup key and the map slots)."""
    monkeypatch.setattr(blocks_module, "IN_FLIGHT_BYTES", 0)
    rng = random.Random(3)
    n = 20_000
    files = [(f"d{i % 100:02d}/file-{i:06d}".encode(), rng.randbytes(rng.randrange(16, 512)))
             for i in range(n)]
    options = WriterOptions(mkfs_time=0, block_size=1 << 17, workers=1)
    with SquashfsWriter(tmp_path / "i.sqfs", options) as w:
        per_file = bytes_held_per_file(w, files, F)
        w.finish()
    assert per_file < 300, per_file
