"""Helpers for the squashfs tests: external readers, tree builders and tree snapshots.

Images are judged only by external readers (unsquashfs, sqfsdiff, rdsquashfs, the
kernel), never by ocisquash itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import tracemalloc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from ocisquash.squashfs import SquashfsWriter, WriterOptions, WriteSummary


def require_or_skip(condition: bool, reason: str) -> None:
    """Skip the test when ``condition`` is false; under ``CI=true`` fail instead, so CI
    never passes by skipping a root or mount test."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)


def is_root() -> bool:
    return os.geteuid() == 0


def require_root() -> None:
    require_or_skip(is_root(), "needs root (chown, mknod, trusted.* xattrs)")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require_or_skip(path is not None, f"{name} is not installed")
    assert path is not None
    return path


def run(*argv: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [os.fspath(a) for a in argv], capture_output=True, text=True, errors="replace"
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{argv[0]} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def unsquashfs_extract(image: Path, dest: Path) -> None:
    require_tool("unsquashfs")
    run("unsquashfs", "-no-progress", "-d", dest, image)


def unsquashfs_listing(image: Path) -> list[str]:
    """``unsquashfs -lln`` lines without the mkfs-specific first column width noise."""
    out = run("unsquashfs", "-lln", image).stdout
    return [" ".join(line.split()) for line in out.splitlines() if line.strip()]


def sqfsdiff(a: Path, b: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    require_tool("sqfsdiff")
    return run("sqfsdiff", *flags, "-a", a, "-b", b, check=False)


def mksquashfs(src: Path, image: Path, *flags: str) -> None:
    require_tool("mksquashfs")
    run("mksquashfs", src, image, "-noappend", "-quiet", "-no-progress", *flags)


def inode_type(image: Path, path: str) -> str:
    """The "Inode type" line of ``rdsquashfs --stat`` (e.g. "extended file")."""
    require_tool("rdsquashfs")
    out = run("rdsquashfs", "-s", path, image).stdout
    for line in out.splitlines():
        if line.startswith("Inode type:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no inode type in:\n{out}")


@contextlib.contextmanager
def mounted(image: Path, where: Path) -> Iterator[Path]:
    """Loop-mount ``image`` read-only with the kernel's squashfs driver; skip (fail under
    CI=true) when that is impossible here."""
    require_or_skip(is_root(), "mounting needs root")
    with _mount(["mount", "-t", "squashfs", "-o", "loop,ro", str(image), str(where)],
                where, "mount -t squashfs -o loop") as mnt:
        yield mnt


@contextlib.contextmanager
def fuse_mounted(image: Path, where: Path, program: str = "squashfuse") -> Iterator[Path]:
    """Mount ``image`` with ``program`` (squashfuse or squashfuse_ll, as HPC runtimes
    do); skip (fail under CI=true) when FUSE is not usable here."""
    exe = require_tool(program)
    require_or_skip(os.path.exists("/dev/fuse"), "/dev/fuse is missing")
    with _mount([exe, str(image), str(where)], where, program) as mnt:
        yield mnt


@contextlib.contextmanager
def _mount(command: list[str], where: Path, what: str) -> Iterator[Path]:
    """Run ``command`` to mount on the new directory ``where``; unmount at the end."""
    where.mkdir()
    proc = subprocess.run(command, capture_output=True, text=True)
    require_or_skip(proc.returncode == 0, f"{what} failed: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def write_image(path: Path, build: object, **options: object) -> WriteSummary:
    """Run ``build(writer)`` on a fresh writer and finish it; fixed mkfs time."""
    options.setdefault("mkfs_time", 1_700_000_000)
    with SquashfsWriter(path, WriterOptions(**options)) as writer:  # type: ignore[arg-type]
        build(writer)  # type: ignore[operator]
        return writer.finish()


# -- snapshots of a directory tree, for comparing source and extraction ---------------


@dataclass(frozen=True)
class EntryState:
    kind: str
    mode: int
    uid: int
    gid: int
    mtime: int
    content: str | None  # regular files: sha256 of the contents
    target: bytes | None  # symlinks
    rdev: int | None  # devices
    xattrs: tuple[tuple[bytes, bytes], ...]


#: The xattr namespaces squashfs stores.
ALL_XATTRS = ("user.", "trusted.", "security.")


def _xattrs(path: bytes, namespaces: tuple[str, ...]) -> tuple[tuple[bytes, bytes], ...]:
    names = os.listxattr(path, follow_symlinks=False)
    kept = [
        (os.fsencode(n), os.getxattr(path, n, follow_symlinks=False))
        for n in names
        if n.startswith(namespaces)
    ]
    return tuple(sorted(kept))


def snapshot(
    root: Path, *, times: bool = True, owners: bool = True,
    xattrs: tuple[str, ...] = ALL_XATTRS,
) -> dict[bytes, EntryState]:
    """Map every path below ``root`` to its type, metadata, content and the extended
    attributes in the namespaces ``xattrs`` (``()`` for none)."""
    result: dict[bytes, EntryState] = {}
    base = os.fsencode(root)
    paths: list[tuple[bytes, bytes]] = [(base, b".")]
    for dirpath, dirnames, filenames in os.walk(base):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            paths.append((path, os.path.relpath(path, base)))
    for path, rel in paths:
        st = os.lstat(path)
        kind = stat.S_IFMT(st.st_mode)
        content = target = rdev = None
        if stat.S_ISREG(kind):
            with open(path, "rb") as f:
                content = hashlib.file_digest(f, "sha256").hexdigest()
        elif stat.S_ISLNK(kind):
            target = os.readlink(path)
        elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
            rdev = st.st_rdev
        result[rel] = EntryState(
            kind=stat.filemode(kind)[0],
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid if owners else 0,
            gid=st.st_gid if owners else 0,
            mtime=int(st.st_mtime) if times and not stat.S_ISLNK(kind) else 0,
            content=content,
            target=target,
            rdev=rdev,
            xattrs=_xattrs(path, xattrs) if xattrs else (),
        )
    return result


def link_groups(root: Path) -> set[frozenset[bytes]]:
    """Sets of paths that share an inode (only groups of two or more)."""
    groups: dict[tuple[int, int], set[bytes]] = {}
    base = os.fsencode(root)
    for dirpath, _, filenames in os.walk(base):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            groups.setdefault((st.st_dev, st.st_ino), set()).add(os.path.relpath(path, base))
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def diff_snapshots(a: dict[bytes, EntryState], b: dict[bytes, EntryState]) -> list[str]:
    problems = []
    for path in sorted(set(a) | set(b)):
        if path not in a or path not in b:
            problems.append(f"{path!r}: only in {'source' if path in a else 'extraction'}")
        elif a[path] != b[path]:
            problems.append(f"{path!r}: {a[path]} != {b[path]}")
    return problems


# -- a source tree with every feature ----------------------------------------------------


def build_feature_tree(root: Path, *, block_size: int = 131072) -> None:
    """Create a tree using every inode type and metadata feature (needs root)."""
    root.mkdir()
    b = os.fsencode(root)

    def p(rel: bytes) -> bytes:
        return os.path.join(b, rel)

    os.makedirs(p(b"dir/sub/deeper"))
    os.makedirs(p(b"empty"))
    with open(p(b"dir/small.txt"), "wb") as f:
        f.write(b"hello squashfs\n")
    with open(p(b"dir/empty-file"), "wb"):
        pass
    with open(p(b"exact-blocks"), "wb") as f:
        f.write(os.urandom(block_size) * 2)
    with open(p(b"multi-with-tail"), "wb") as f:
        f.write(bytes(range(256)) * (block_size * 3 // 256) + b"tail end bytes")
    with open(p(b"random-incompressible"), "wb") as f:
        f.write(os.urandom(block_size + 1000))
    # A real sparse file: a hole in the middle, data on both sides.
    with open(p(b"sparse"), "wb") as f:
        f.write(b"start")
        f.seek(block_size * 4)
        f.write(b"end")
    # Identical contents: dedup must share blocks without making hard links.
    for name in (b"dup-a", b"dir/dup-b"):
        with open(p(name), "wb") as f:
            f.write(b"duplicate " * 50000)
    # A non-UTF-8 name and a long one.
    with open(p(b"caf\xe9-\xff"), "wb") as f:
        f.write(b"latin-1 name\n")
    with open(p(b"n" * 255), "wb") as f:
        f.write(b"long name\n")
    os.symlink(b"dir/small.txt", p(b"link-rel"))
    os.symlink(b"/nonexistent/absolute", p(b"dir/link-abs"))
    os.link(p(b"dir/small.txt"), p(b"hardlink-1"))
    os.link(p(b"dir/small.txt"), p(b"dir/sub/hardlink-2"))
    os.mknod(p(b"dir/char"), 0o620 | stat.S_IFCHR, os.makedev(4, 64))
    os.mknod(p(b"dir/block"), 0o660 | stat.S_IFBLK, os.makedev(259, 70000))
    os.mkfifo(p(b"fifo"), 0o640)
    import socket

    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(os.fsdecode(p(b"sock")))
    finally:
        sock.close()
    # Special permission bits.
    os.chmod(p(b"dir/small.txt"), 0o4755)
    os.chmod(p(b"dir/sub"), 0o2775)
    os.chmod(p(b"empty"), 0o1777)
    # Owners across the 32-bit range.
    os.chown(p(b"dir/sub/deeper"), 4_000_000_000, 12345)
    os.chown(p(b"multi-with-tail"), 1000, 1000)
    os.lchown(p(b"link-rel"), 65534, 65534)
    # xattrs in every namespace squashfs stores, including file capabilities.
    capability = bytes.fromhex("0100000200200000000000000000000000000000")
    os.setxattr(p(b"exact-blocks"), b"security.capability", capability)
    os.setxattr(p(b"dir"), b"user.comment", b"a directory")
    os.setxattr(p(b"dir"), b"trusted.overlay.opaque", b"y")
    os.setxattr(p(b"dup-a"), b"user.same", b"shared value longer than eight bytes")
    os.setxattr(p(b"dir/dup-b"), b"user.same", b"shared value longer than eight bytes")
    # A different set sharing a long value: stored out of line, pointing at the first copy.
    os.setxattr(p(b"dir/sub/deeper"), b"user.same", b"shared value longer than eight bytes")
    os.setxattr(p(b"dir/sub/deeper"), b"user.more", b"m")
    os.setxattr(p(b"fifo"), b"trusted.on-fifo", b"")
    os.setxattr(p(b"link-rel"), b"trusted.on-symlink", b"1", follow_symlinks=False)
    os.setxattr(p(b"dir/char"), b"trusted.on-device", b"x")
    # Fixed times, including the root (last, as writing entries changes it).
    for i, (dirpath, dirnames, filenames) in enumerate(os.walk(b)):
        for name in [*dirnames, *filenames]:
            os.utime(
                os.path.join(dirpath, name),
                ns=(0, (1_600_000_000 + i) * 10**9),
                follow_symlinks=False,
            )
    os.utime(b, (1_500_000_000, 1_500_000_000))


def bytes_held_per_file(writer: object, files: Sequence[tuple[bytes, bytes]],
                        meta: object, warm: int = 100) -> float:
    """Bytes ``writer`` holds per file for ``files[warm:]`` (tracemalloc), added by
    ``add_file(name, meta, data)`` after the first ``warm`` made the directories and
    the maps' first sizes; the writer is not finished here."""
    add = writer.add_file  # type: ignore[attr-defined]
    for name, data in files[:warm]:
        add(name, meta, data)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for name, data in files[warm:]:
            add(name, meta, data)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return held / (len(files) - warm)
