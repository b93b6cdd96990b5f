"""``pack_directory`` reads ahead in a walker thread: order, bounds, changes, shutdown.

The walker hands entries to the writer in walk order whatever the thread timing, so
the image must not depend on the read-ahead budget or batch size; a file that changes
size or vanishes between its ``lstat`` and its reading must fail the pack with an
error naming it; and every way out of ``pack_directory`` must end the walker thread.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocisquash import pack
from ocisquash.errors import SquashfsError
from ocisquash.pack import pack_directory
from ocisquash.squashfs import SquashfsWriter, WriterOptions

from ._util import mksquashfs, sqfsdiff, unsquashfs_extract, unsquashfs_listing

OPTIONS = WriterOptions(mkfs_time=1_700_000_000, workers=2)
BLOCK = OPTIONS.block_size


def _walkers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ocisquash-walk"]


@pytest.fixture(scope="module")
def many_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 1500 small files in nested directories, with hard links across
    directories, duplicates, symlinks, empty files and files around the read-ahead
    and block size limits."""
    root = tmp_path_factory.mktemp("many") / "src"
    for d in range(12):
        for s in range(4):
            sub = root / f"d{d:02}" / f"s{s}"
            sub.mkdir(parents=True)
            for f in range(30):
                n = d * 1000 + s * 100 + f
                # Mostly empty, tiny and a few KiB; around one block in a quarter of the
                # directories (the tree stays a few MiB).
                size = (0, 7, 3000 + n, 100 + n % 997)[f % 4]
                if d % 4 == 0 and f < 3:
                    size = BLOCK - 1 + f
                (sub / f"f{f:03}").write_bytes(((b"%d " % n) * (size // 2 + 1))[:size])
            (sub / "dup").write_bytes(b"the same contents in every directory\n" * 40)
            os.symlink(f"../s{(s + 1) % 4}/f000", sub / "link")
    # Hard links: within a directory, across directories, and to a large file.
    os.link(root / "d00/s0/f001", root / "d00/s0/hard")
    os.link(root / "d00/s0/f001", root / "d11/s3/hard-far")
    large = root / "d05/large"
    large.write_bytes(os.urandom(1000) * (pack.READ_AHEAD_FILE // 1000 + 300))
    os.link(large, root / "d06/large-link")
    (root / "d07/exact-read-ahead").write_bytes(b"x" * pack.READ_AHEAD_FILE)
    return root


def _pack(src: Path, out: Path) -> bytes:
    pack_directory(src, out, OPTIONS)
    return out.read_bytes()


def test_image_does_not_depend_on_read_ahead_budget_or_batch_size(
    many_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = _pack(many_files, tmp_path / "default.sqfs")
    assert _pack(many_files, tmp_path / "again.sqfs") == default
    # A budget of one byte and one entry per batch: the walker waits for the writer
    # after every file, the opposite timing of the default.
    monkeypatch.setattr(pack, "READ_AHEAD_BYTES", 1)
    monkeypatch.setattr(pack, "_BATCH_ENTRIES", 1)
    assert _pack(many_files, tmp_path / "lockstep.sqfs") == default
    # Nothing read ahead at all: every file streamed by the writer thread.
    monkeypatch.setattr(pack, "READ_AHEAD_FILE", 0)
    assert _pack(many_files, tmp_path / "streamed.sqfs") == default


def test_many_small_files_list_and_compare_like_mksquashfs(
    many_files: Path, tmp_path: Path
) -> None:
    ours = tmp_path / "ours.sqfs"
    pack_directory(many_files, ours, OPTIONS)
    reference = tmp_path / "mk.sqfs"
    mksquashfs(many_files, reference, "-mkfs-time", "1700000000")
    assert _without_directory_sizes(unsquashfs_listing(ours)) == _without_directory_sizes(
        unsquashfs_listing(reference)
    )
    result = sqfsdiff(ours, reference, "-T")
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "out"
    unsquashfs_extract(ours, out)
    assert os.stat(out / "d00/s0/hard").st_ino == os.stat(out / "d11/s3/hard-far").st_ino
    assert os.stat(out / "d05/large").st_ino == os.stat(out / "d06/large-link").st_ino
    assert (out / "d05/large").read_bytes() == (many_files / "d05/large").read_bytes()


def _without_directory_sizes(listing: list[str]) -> list[str]:
    """The listing with each directory's size column blanked. The size counts the
    listing's headers, and a header starts wherever an 8 KiB inode metadata block does;
    mksquashfs numbers and places inodes in another order on trees this size (the
    same before read-ahead existed), so only directory sizes differ. sqfsdiff
    compares everything else."""
    out = []
    for line in listing:
        fields = line.split(" ")
        if fields[0].startswith("d"):
            fields[2] = "-"
        out.append(" ".join(fields))
    return out


class _ChangingScandir:
    """``os.scandir`` that lstats every entry (DirEntry caches it), then calls
    ``change`` once on the directory holding ``victim``: the walker sees the old
    size, and reads the changed file."""

    def __init__(self, victim: Path, change: Callable[[Path], None]) -> None:
        self._real = os.scandir
        self._victim = victim
        self._change = change

    def __call__(self, path: bytes) -> _Listing:
        with self._real(path) as it:
            entries = list(it)
        for entry in entries:
            entry.stat(follow_symlinks=False)
        if os.fsencode(self._victim.parent) == path:
            self._change(self._victim)
        return _Listing(entries)


class _Listing:
    def __init__(self, entries: list[os.DirEntry[bytes]]) -> None:
        self._entries = entries

    def __enter__(self) -> Iterator[os.DirEntry[bytes]]:
        return iter(self._entries)

    def __exit__(self, *exc: object) -> None:
        pass


def _shrink(p: Path) -> None:
    os.truncate(p, p.stat().st_size // 2)


def _grow(p: Path) -> None:
    with open(p, "ab") as f:
        f.write(b"more")


@pytest.mark.parametrize(
    ("size", "change", "message"),
    [
        (5000, _shrink, "changed size while being read: 5000 bytes at lstat, fewer now"),
        (5000, _grow, "changed size while being read: 5000 bytes at lstat, more now"),
        (5000, Path.unlink, "cannot read: No such file or directory"),
        (3 * BLOCK, Path.unlink, "cannot read: No such file or directory"),
        (pack.READ_AHEAD_FILE + 5, Path.unlink, "cannot read: No such file or directory"),
        # Streamed by the writer thread rather than read ahead.
        (pack.READ_AHEAD_FILE + 5, _shrink, "file data ended after"),
        (pack.READ_AHEAD_FILE + 5, _grow, f"{pack.READ_AHEAD_FILE + 5} bytes at lstat, more now"),
    ],
    ids=[
        "shrinks",
        "grows",
        "vanishes",
        "vanishes-large",
        "vanishes-streamed",
        "shrinks-streamed",
        "grows-streamed",
    ],
)
def test_file_changed_after_lstat_fails_the_pack_naming_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
    change: Callable[[Path], None],
    message: str,
) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(20):
        (src / "sub" / f"before-{i}").write_bytes(b"b" * i)
    victim = src / "sub" / "victim"
    victim.write_bytes(b"v" * size)
    (src / "z-after").write_bytes(b"after")
    monkeypatch.setattr(os, "scandir", _ChangingScandir(victim, change))
    out = tmp_path / "out.sqfs"
    with pytest.raises(SquashfsError, match=message) as caught:
        pack_directory(src, out, OPTIONS)
    assert "victim" in str(caught.value)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert _walkers() == []


def test_unlistable_directory_is_an_error_after_the_entries_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    (src / "a/file").write_bytes(b"a")
    real = os.scandir

    def scandir(path: bytes) -> object:
        if path.endswith(b"/b"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    added: list[bytes] = []
    real_add = SquashfsWriter.add_file

    def add_file(self: SquashfsWriter, path: bytes, *args: object, **kwargs: object) -> None:
        added.append(path)
        real_add(self, path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(SquashfsWriter, "add_file", add_file)
    with pytest.raises(SquashfsError, match="cannot list directory: Permission denied") as caught:
        pack_directory(src, tmp_path / "out.sqfs", OPTIONS)
    assert str(caught.value).startswith(str(src / "b"))
    assert added == [b"a/file"]  # walked before the failing directory, so written first
    assert _walkers() == []


def test_writer_error_ends_a_walker_waiting_for_room(
    many_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real_add = SquashfsWriter.add_file

    def add_file(self: SquashfsWriter, *args: object, **kwargs: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 50:
            raise SquashfsError("simulated writer failure")
        real_add(self, *args, **kwargs)  # type: ignore[arg-type]

    # A small budget, so the walker is blocked waiting for the writer when it fails.
    monkeypatch.setattr(pack, "READ_AHEAD_BYTES", 4 * BLOCK)
    monkeypatch.setattr(SquashfsWriter, "add_file", add_file)
    with pytest.raises(SquashfsError, match="simulated writer failure"):
        pack_directory(many_files, tmp_path / "out.sqfs", OPTIONS)
    assert calls == 50
    assert _walkers() == []


def test_bytes_read_ahead_stay_within_the_budget(
    many_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = 3 * BLOCK
    high = 0
    real_batches = pack._Walker.next_batch

    def next_batch(self: pack._Walker) -> list[pack._Entry] | None:
        # A slow writer: the walker reads ahead as far as it may between two calls.
        nonlocal high
        time.sleep(0.002)
        high = max(high, self._held)
        return real_batches(self)

    monkeypatch.setattr(pack, "READ_AHEAD_BYTES", budget)
    monkeypatch.setattr(pack._Walker, "next_batch", next_batch)
    pack_directory(many_files, tmp_path / "out.sqfs", OPTIONS)
    # Unbounded, the walker would hold the whole tree (several MiB); the budget may be
    # passed by at most the one file that crossed it (a 1 MiB one is in the tree).
    assert BLOCK < high <= budget + pack.READ_AHEAD_FILE
