"""Helpers for the EROFS tests: the kernel and erofs-utils judge the images.

Debian 12's erofs-utils (1.5) has ``fsck.erofs`` and ``dump.erofs``; the kernel's
EROFS driver mounts with ``mount -t erofs -o loop,ro``.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocisquash.erofs import ErofsCompression, ErofsOptions, ErofsSummary, ErofsWriter
from ocisquash.erofs.options import MIN_KERNEL
from squashfs._util import (
    _mount,
    diff_snapshots,
    is_root,
    link_groups,
    require_or_skip,
    require_tool,
    run,
    snapshot,
)

MKFS_TIME = 1_700_000_000


@contextlib.contextmanager
def erofs_mounted(image: Path, where: Path) -> Iterator[Path]:
    """Loop-mount ``image`` read-only with the kernel's EROFS driver."""
    require_or_skip(is_root(), "mounting needs root")
    require_or_skip(Path("/sys/fs/erofs").exists(),
                    "this kernel has no EROFS driver (a missing kernel feature)")
    with _mount(["mount", "-t", "erofs", "-o", "loop,ro", str(image), str(where)],
                where, "mount -t erofs -o loop") as mnt:
        yield mnt


def assert_mounts_alike(erofs: Path, squashfs: Path, at_least: int,
                        nlink_paths: tuple[str, ...]) -> None:
    """The kernel's two mounted trees agree: every entry (types, modes, owners,
    mtimes, xattrs, devices, targets, contents), the hard-link groups, and the link
    counts of ``nlink_paths`` (a directory has 2 + its subdirectories)."""
    expected, actual = snapshot(squashfs), snapshot(erofs)
    assert len(actual) > at_least
    assert diff_snapshots(expected, actual) == []
    assert link_groups(erofs) == link_groups(squashfs) != set()
    for rel in nlink_paths:
        assert os.lstat(erofs / rel).st_nlink == os.lstat(squashfs / rel).st_nlink, rel


def fsck(image: Path, *flags: str) -> str:
    """Run fsck.erofs (it checks the layout and decompresses every file)."""
    exe = require_tool("fsck.erofs")
    return run(exe, *flags, image).stdout


def fsck_extracts_holes() -> bool:
    """Whether ``fsck.erofs --extract`` writes a chunk-based file's holes: from
    erofs-utils 1.8 (b063ea3, "fsck: extract chunk-based file with hole correctly");
    1.5 writes the data chunks one after the other, the holes left out."""
    exe = require_tool("fsck.erofs")
    proc = run(exe, "-V", check=False)
    out = proc.stdout + proc.stderr
    found = re.search(r"(\d+)\.(\d+)", out)
    return found is not None and (int(found[1]), int(found[2])) >= (1, 8)


def dump_inode(image: Path, path: str) -> dict[str, str]:
    """dump.erofs's fields for the inode at ``path``: NID, Links, Layout, Inode size, …"""
    exe = require_tool("dump.erofs")
    out = run(exe, f"--path={path}", image).stdout
    fields = dict(re.findall(r"([A-Z][A-Za-z ]*?):\s+(\S+)", out))
    assert "Inode size" in fields, out
    return fields


def dump_super(image: Path) -> dict[str, str]:
    exe = require_tool("dump.erofs")
    out = run(exe, "-s", image).stdout
    return {k.strip(): v.strip() for k, v in
            (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def write_erofs(path: Path, build: Callable[[ErofsWriter], None],
                **options: object) -> ErofsSummary:
    """Run ``build(writer)`` on a fresh writer and finish it; fixed mkfs time."""
    options.setdefault("mkfs_time", MKFS_TIME)
    with ErofsWriter(path, ErofsOptions(**options)) as writer:  # type: ignore[arg-type]
        build(writer)
        return writer.finish()


def require_erofs_features(*names: str, since: str) -> None:
    """Skip (even in CI: a missing kernel feature) unless this kernel's EROFS lists each
    of ``names`` in /sys/fs/erofs/features; ``since`` is the Linux that brought them."""
    features = Path("/sys/fs/erofs/features")
    have = set(os.listdir(features)) if features.is_dir() else set()
    require_or_skip(have.issuperset(names), "missing kernel feature: this kernel's EROFS "
                    f"has no {names[0]} ({since}+)")


def require_kernel_compressor(compression: ErofsCompression) -> None:
    """Skip (even in CI: a missing kernel feature) when this kernel cannot mount
    ``compression``: older than ``MIN_KERNEL`` or built without the decompressor."""
    import gzip
    import platform

    want = tuple(int(x) for x in MIN_KERNEL[compression].split("."))
    have = tuple(int(x) for x in re.findall(r"\d+", platform.release())[:2])
    if have < want:
        pytest.skip(f"missing kernel feature: EROFS {compression.value} needs Linux "
                    f"{MIN_KERNEL[compression]}+, this is {platform.release()}")
    option = {ErofsCompression.DEFLATE: "CONFIG_EROFS_FS_ZIP_DEFLATE",
              ErofsCompression.ZSTD: "CONFIG_EROFS_FS_ZIP_ZSTD"}.get(compression)
    config = Path("/proc/config.gz")
    if option and config.exists():
        with gzip.open(config, "rt") as f:
            if f"{option}=y" not in f.read():
                pytest.skip(f"missing kernel feature: this kernel is built without {option}")


def files_of(build: Callable[[ErofsWriter], None]) -> dict[str, bytes]:
    """What ``build`` gives a writer, as the bytes each path should read back: its files
    by name, a hard link as its target's bytes (symlinks and the rest left out)."""
    files: dict[str, bytes] = {}

    class Recorder:
        def add_file(self, path: bytes, meta: object, data: bytes) -> None:
            files[path.decode()] = data

        def add_hardlink(self, path: bytes, target: bytes) -> None:
            files[path.decode()] = files[target.decode()]

        def __getattr__(self, name: str) -> Callable[..., None]:
            return lambda *args: None

    build(Recorder())  # type: ignore[arg-type]
    return files


def prose(rng: random.Random, n: int) -> bytes:
    """``n`` bytes of lines of hex words that compress like text."""
    words = [rng.randbytes(3).hex().encode() for _ in range(400)]
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
    return bytes(out[:n])
