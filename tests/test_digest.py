"""Digests of files agree with coreutils' sha256sum/sha512sum."""

from __future__ import annotations

import gc
import hashlib
import io
import os
import random
import subprocess
import threading
from collections.abc import Set
from pathlib import Path

import pytest

import ocisquash.digest as digest_module
from ocisquash.digest import Digest, HashBehind, VerifyingReader
from ocisquash.errors import DigestMismatchError


@pytest.mark.parametrize(("algorithm", "tool"), [("sha256", "sha256sum"), ("sha512", "sha512sum")])
def test_file_digest_matches_coreutils(algorithm: str, tool: str, tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3 << 20) + b"tail")  # more than one 1 MiB read
    expected = subprocess.run([tool, str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0]
    digest = Digest.of_file(path, algorithm)
    assert digest == Digest(algorithm, expected)
    assert digest.matches_file(path)
    with open(path, "r+b") as f:
        f.seek(2 << 20)
        byte = f.read(1)[0]
        f.seek(2 << 20)  # the read moved on: change the byte it read, not the next one
        f.write(bytes([byte ^ 0xFF]))
    assert not digest.matches_file(path)


def _hash_threads(before: Set[threading.Thread] = frozenset()) -> set[threading.Thread]:
    """The hashing threads alive now that are not in ``before`` (other tests may leave
    one to a later garbage collection)."""
    return {t for t in threading.enumerate() if t.name == "ocisquash-hash"} - before


@pytest.mark.parametrize("behind", [True, False])
def test_a_hash_behind_agrees_with_coreutils(behind: bool, tmp_path: Path) -> None:
    """Pieces of every size, across batch boundaries, with a digest asked for half-way."""
    before = _hash_threads()
    rnd = random.Random(5)
    pieces = [rnd.randbytes(rnd.choice([1, 100, 4096, 65536, 300_000, 1 << 20]))
              for _ in range(40)]
    h = HashBehind("sha256", behind=behind)
    for i, piece in enumerate(pieces):
        h.update(piece)
        if i == 20:
            assert h.hexdigest() == hashlib.sha256(b"".join(pieces[:21])).hexdigest()
    assert bool(_hash_threads(before)) == behind
    whole = b"".join(pieces)
    assert len(whole) > 4 * HashBehind.BATCH
    (tmp_path / "stream").write_bytes(whole)
    expected = subprocess.run(["sha256sum", str(tmp_path / "stream")], capture_output=True,
                              text=True, check=True).stdout.split()[0]
    assert h.hexdigest() == expected
    h.close()
    assert h.hexdigest() == expected
    more = bytes(2 * HashBehind.BATCH)
    h.update(more)  # hashed at once: the thread has ended
    assert h.hexdigest() == hashlib.sha256(whole + more).hexdigest()
    assert not _hash_threads(before)


def test_a_short_stream_is_hashed_without_a_thread() -> None:
    before = _hash_threads()
    h = HashBehind("sha512", behind=True)
    h.update(b"x" * (HashBehind.BATCH - 1))
    assert not _hash_threads(before)
    assert h.hexdigest() == hashlib.sha512(b"x" * (HashBehind.BATCH - 1)).hexdigest()
    assert not _hash_threads(before)


def test_a_hash_behind_that_is_dropped_ends_its_thread() -> None:
    before = _hash_threads()
    h = HashBehind("sha256", behind=True)
    h.update(bytes(3 * HashBehind.BATCH))
    assert len(_hash_threads(before)) == 1
    del h
    gc.collect()
    assert not _hash_threads(before)


def test_a_verifying_reader_hashing_behind_still_refuses_a_changed_byte(
        monkeypatch: pytest.MonkeyPatch) -> None:
    before = _hash_threads()
    monkeypatch.setattr(digest_module, "HASH_BEHIND", True)
    blob = random.Random(6).randbytes(5 << 20)
    digest = Digest.of(blob)
    changed = blob[:3 << 20] + bytes([blob[3 << 20] ^ 1]) + blob[(3 << 20) + 1:]
    for data, ok in ((blob, True), (changed, False)):
        reader = VerifyingReader(io.BytesIO(data), digest, len(data))
        try:
            reader.read(2 << 20)
            assert len(_hash_threads(before)) == 1
            if ok:
                reader.drain()
                assert reader.verified
            else:
                with pytest.raises(DigestMismatchError):
                    reader.drain()
                assert not reader.verified
        finally:
            reader.close()
    assert not _hash_threads(before)


def test_a_failure_on_the_hashing_thread_is_raised_by_hexdigest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The feeder is never left waiting on a dead thread, and never gets a digest of
    part of the stream."""
    before = _hash_threads()

    class Failing:
        name = "sha256"
        calls = 0

        def update(self, data: bytes) -> None:
            Failing.calls += 1
            if Failing.calls == 2:
                raise MemoryError("no room")

        def hexdigest(self) -> str:
            raise AssertionError("a failed hash gives no digest")

    monkeypatch.setattr(hashlib, "new", lambda name: Failing())
    h = HashBehind("sha256", behind=True)
    for _ in range(3 * HashBehind.QUEUED):  # more batches than the queue holds
        h.update(bytes(HashBehind.BATCH))
    with pytest.raises(MemoryError, match="no room"):
        h.hexdigest()
    h.close()
    assert Failing.calls == 2
    assert not _hash_threads(before)
