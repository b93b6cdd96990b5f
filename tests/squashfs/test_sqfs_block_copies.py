"""Blocks of earlier images copied into the output by a thread of their own (the
writer's ``_Copier``): what lands where, what a read-back waits for, the fallback
where the kernel does not copy between the two files, and the check of what was
copied against the CRC-32 of each block's stored bytes."""

from __future__ import annotations

import errno
import os
import random
import zlib
from pathlib import Path

import pytest

from ocisquash.squashfs import blocks


def _earlier(tmp_path: Path, size: int = 3 << 20) -> tuple[Path, bytes]:
    data = random.Random(7).randbytes(size)
    path = tmp_path / "earlier"
    path.write_bytes(data)
    return path, data


def _not_mapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """An output that cannot be mapped (as on a filesystem without mmap): what was
    copied is read back in pieces that do not fall on the blocks' ends."""
    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))

    monkeypatch.setattr(blocks.mmap, "mmap", refused)
    monkeypatch.setattr(blocks, "_CHECK_CHUNK", 3000)


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "read_back"])
@pytest.mark.parametrize("kernel", [True, False], ids=["copy_file_range", "read_and_written"])
def test_runs_land_at_their_offsets_whatever_the_order_of_other_writes(
        tmp_path: Path, kernel: bool, mapped: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not kernel:
        def refused(*args: object) -> int:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

        monkeypatch.setattr(os, "copy_file_range", refused)
    monkeypatch.setattr(blocks, "COPY_RUN", 1 << 20)
    if not mapped:
        _not_mapped(monkeypatch)
    source, data = _earlier(tmp_path)
    out = tmp_path / "out"
    with open(source, "rb") as s, open(out, "w+b") as o:
        copier = blocks._Copier(o.fileno())
        try:
            # Contiguous in both files: one run until COPY_RUN, then another.
            for i in range(3):
                copier.add((s.fileno(), i << 19), 64 + (i << 19), 1 << 19,
                           zlib.crc32(data[i << 19:(i + 1) << 19]))
            # Elsewhere in the source, written after a gap the writer fills itself.
            copier.add((s.fileno(), 2 << 20), 64 + (3 << 19) + 10, 4096,
                       zlib.crc32(data[2 << 20:(2 << 20) + 4096]))
            os.pwrite(o.fileno(), b"\xaa" * 10, 64 + (3 << 19))
            os.pwrite(o.fileno(), b"\xbb" * 64, 0)
        finally:
            copier.close()
        written = out.read_bytes()
    assert written[:64] == b"\xbb" * 64
    assert written[64:64 + (3 << 19)] == data[:3 << 19]
    assert written[64 + (3 << 19):64 + (3 << 19) + 10] == b"\xaa" * 10
    assert written[64 + (3 << 19) + 10:] == data[2 << 20:(2 << 20) + 4096]


def test_a_read_back_waits_for_the_copies_it_overlaps(tmp_path: Path) -> None:
    source, data = _earlier(tmp_path)
    with open(source, "rb") as s, open(tmp_path / "out", "w+b") as o:
        copier = blocks._Copier(o.fileno())
        try:
            copier.add((s.fileno(), 0), 0, 1 << 20, zlib.crc32(data[:1 << 20]))
            copier.add((s.fileno(), 2 << 20), 1 << 20, 4096,  # a run of its own
                       zlib.crc32(data[2 << 20:(2 << 20) + 4096]))
            # The second run was not handed over yet: reading it back hands it over.
            copier.wait_for((1 << 20) + 100, (1 << 20) + 200)
            assert os.pread(o.fileno(), 100, (1 << 20) + 100) == data[(2 << 20) + 100:
                                                                     (2 << 20) + 200]
            assert os.pread(o.fileno(), 100, 0) == data[:100]  # copied before it
        finally:
            copier.close()


def test_a_source_shorter_than_its_blocks_is_a_replay_error(tmp_path: Path) -> None:
    from ocisquash.squashfs.layerindex import ReplayError

    source, _ = _earlier(tmp_path, 4096)
    with open(source, "rb") as s, open(tmp_path / "out", "w+b") as o:
        copier = blocks._Copier(o.fileno())
        copier.add((s.fileno(), 0), 0, 8192, 0)
        with pytest.raises(ReplayError, match="ends before a block"):
            copier.wait()
        copier.close(cancel=True)


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "read_back"])
@pytest.mark.parametrize("kernel", [True, False], ids=["copy_file_range", "read_and_written"])
def test_a_block_whose_bytes_do_not_match_its_crc32_is_a_replay_error(
        tmp_path: Path, kernel: bool, mapped: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three blocks in one run, the middle one changed since its CRC-32 was taken."""
    from ocisquash.squashfs.layerindex import ReplayError

    if not mapped:
        _not_mapped(monkeypatch)

    if not kernel:
        def refused(*args: object) -> int:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

        monkeypatch.setattr(os, "copy_file_range", refused)
    source, data = _earlier(tmp_path)
    indexed = bytearray(data)
    indexed[5000] ^= 1  # what the block index saw
    with open(source, "rb") as s, open(tmp_path / "out", "w+b") as o:
        copier = blocks._Copier(o.fileno())
        for i in range(3):
            copier.add((s.fileno(), i * 4096), 64 + i * 4096, 4096,
                       zlib.crc32(indexed[i * 4096:(i + 1) * 4096]))
        with pytest.raises(ReplayError, match="does not match the CRC-32"):
            copier.wait()
        copier.close(cancel=True)
