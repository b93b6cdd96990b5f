"""Canonical views of a filesystem tree, for comparing our flattening with other tools.

A tree is ``{path: Record}``; paths are bytes relative to the root (root is ``b""``).
Directories that were only created implicitly get the defaults umoci and the squashfs
writer share (0755, root) and no mtime (each tool picks its own); hard links are
compared as groups of names.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ocisquash.flatten import IMPLICIT_DIR_META

from .layerkit import RecordingSink


@dataclass(frozen=True)
class Record:
    kind: str
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime: int | None = None
    size: int = 0
    sha256: str = ""
    target: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    xattrs: tuple[tuple[bytes, bytes], ...] = ()


@dataclass
class Tree:
    records: dict[bytes, Record]
    #: sets of names that share one inode (only groups of two or more)
    links: set[frozenset[bytes]]


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    raise AssertionError(f"unknown file type {mode:o}")


def tree_from_dir(root: Path) -> Tree:
    """Read an unpacked tree with lstat and listxattr; symlinks are never followed."""
    records: dict[bytes, Record] = {}
    inodes: dict[tuple[int, int], set[bytes]] = {}
    base = os.fsencode(root)

    def visit(rel: bytes) -> None:
        full = os.path.join(base, rel) if rel else base
        st = os.lstat(full)
        kind = _kind(st.st_mode)
        names = os.listxattr(full, follow_symlinks=False)
        xattrs = tuple(sorted((n.encode(), os.getxattr(full, n, follow_symlinks=False))
                              for n in names))
        sha = ""
        if kind == "file":
            with open(full, "rb") as f:
                sha = hashlib.file_digest(f, "sha256").hexdigest()
        records[rel] = Record(
            kind,
            None if kind == "symlink" else stat.S_IMODE(st.st_mode),
            st.st_uid, st.st_gid, int(st.st_mtime),
            st.st_size if kind == "file" else 0, sha,
            os.readlink(full) if kind == "symlink" else b"",
            (os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("char", "block") else (0, 0),
            xattrs,
        )
        if kind != "dir":
            inodes.setdefault((st.st_dev, st.st_ino), set()).add(rel)
        if kind == "dir":
            for name in os.listdir(full):
                visit(os.path.join(rel, name) if rel else name)

    visit(b"")
    return Tree(records, {frozenset(v) for v in inodes.values() if len(v) > 1})


def tree_from_sink(sink: RecordingSink) -> Tree:
    records: dict[bytes, Record] = {}
    inodes: dict[int, set[bytes]] = {}
    for path, n in sink.nodes.items():
        m = None if n.meta == IMPLICIT_DIR_META and n.kind == "dir" else n.meta
        records[path] = Record(
            n.kind,
            0o755 if m is None else None if n.kind == "symlink" else m.mode,
            m.uid if m else 0, m.gid if m else 0, m.mtime if m else None,
            len(n.data), hashlib.sha256(n.data).hexdigest() if n.kind == "file" else "",
            n.target, n.rdev, m.xattrs if m else (),
        )
        if n.kind != "dir":
            inodes.setdefault(n.inode, set()).add(path)
    return Tree(records, {frozenset(v) for v in inodes.values() if len(v) > 1})


def differences(expected: Tree, actual: Tree, *, root_meta: bool = False,
                ignore_mtime: frozenset[bytes] = frozenset()) -> list[str]:
    """Human-readable differences; fields that are ``None`` in ``actual`` (implicit
    directories' mtimes) are not compared, nor are the mtimes of ``ignore_mtime`` paths,
    nor the root's metadata unless asked."""
    out = []
    for path in sorted(set(expected.records) | set(actual.records)):
        e, a = expected.records.get(path), actual.records.get(path)
        if e is None or a is None:
            out.append(f"{path!r}: only in {'actual' if e is None else 'expected'}: {e or a}")
            continue
        for name in Record.__dataclass_fields__:
            ev, av = getattr(e, name), getattr(a, name)
            if av is None or (path == b"" and not root_meta and name != "kind"):
                continue
            if name == "mtime" and path in ignore_mtime:
                continue
            if a.kind == "dir" and a.mtime is None and name == "xattrs":
                continue
            if ev != av:
                out.append(f"{path!r}: {name} expected {ev!r}, got {av!r}")
    if expected.links != actual.links:
        out.append(f"hard-link groups: expected {sorted(map(sorted, expected.links))}, "
                   f"got {sorted(map(sorted, actual.links))}")
    return out


def implicit_dirs(sink: RecordingSink) -> frozenset[bytes]:
    """Directories the flattening created only as parents (each tool dates them itself)."""
    return frozenset(p for p, n in sink.nodes.items()
                     if n.kind == "dir" and n.meta in (None, IMPLICIT_DIR_META))


def umoci_unpack(layout: Path, bundle: Path, tag: str = "latest") -> Path:
    """``umoci unpack`` the image (as root it keeps owners and devices); the rootfs path."""
    r = subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)],
                       capture_output=True)
    assert r.returncode == 0, f"umoci unpack failed: {r.stderr.decode(errors='replace')}"
    return bundle / "rootfs"
