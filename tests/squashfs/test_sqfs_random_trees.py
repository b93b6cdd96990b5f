"""Random entry sequences against a simple model of the writer's rules, judged by unsquashfs.

The model: parents are created implicitly, the last add of a path wins, a directory
added over a directory keeps its children, anything else replaces the path and its
subtree, and a hard link shares its target's inode even after the target is replaced.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocisquash.entry import EntryMeta
from ocisquash.squashfs import SquashfsWriter, WriterOptions

from ._util import require_root, run


@dataclass
class Inode:
    kind: str  # "d", "-", "l", "p"
    mode: int
    uid: int
    gid: int
    mtime: int
    data: bytes = b""


@dataclass
class Model:
    default: Inode
    entries: dict[tuple[bytes, ...], Inode] = field(default_factory=dict)

    def _drop(self, path: tuple[bytes, ...]) -> None:
        for key in [k for k in self.entries if k[: len(path)] == path]:
            del self.entries[key]

    def _parents(self, path: tuple[bytes, ...]) -> None:
        for i in range(1, len(path)):
            prefix = path[:i]
            if prefix not in self.entries or self.entries[prefix].kind != "d":
                self._drop(prefix)
                self.entries[prefix] = Inode("d", **_meta_of(self.default))

    def add(self, path: tuple[bytes, ...], inode: Inode) -> None:
        self._parents(path)
        old = self.entries.get(path)
        if inode.kind == "d" and old is not None and old.kind == "d":
            old.mode, old.uid, old.gid, old.mtime = inode.mode, inode.uid, inode.gid, inode.mtime
            return
        self._drop(path)
        self.entries[path] = inode


def _meta_of(inode: Inode) -> dict[str, int]:
    return {"mode": inode.mode, "uid": inode.uid, "gid": inode.gid, "mtime": inode.mtime}


names = st.binary(min_size=1, max_size=12).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")
)
metas = st.builds(
    EntryMeta,
    mode=st.integers(0, 0o7777),
    uid=st.sampled_from([0, 1, 1000, 65534, 2**32 - 2]),
    gid=st.sampled_from([0, 7, 100, 4_000_000_000]),
    mtime=st.integers(0, 2**32 - 1),
)


def _patterned(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest() * (n // 32) + b"x" * (n % 32)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[tuple[object, ...]], dict[str, object]]:
    pool = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    paths = st.lists(st.sampled_from(pool), min_size=1, max_size=3).map(tuple)
    data = st.one_of(
        st.binary(max_size=3000),
        st.integers(0, 3 * 4096 + 10).map(_patterned),
        st.integers(1, 3).map(lambda n: bytes(4096 * n)),
    )
    op = st.one_of(
        st.tuples(st.just("file"), paths, metas, data, st.integers(1, 5000)),
        st.tuples(st.just("dir"), paths, metas),
        st.tuples(st.just("symlink"), paths, metas, names),
        st.tuples(st.just("fifo"), paths, metas),
        st.tuples(st.just("hardlink"), paths, paths),
    )
    ops = draw(st.lists(op, min_size=1, max_size=25))
    options = draw(
        st.fixed_dictionaries(
            {
                "fragments": st.booleans(),
                "dedup": st.booleans(),
                "workers": st.integers(1, 3),
            }
        )
    )
    return ops, options


@pytest.mark.root
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios())
def test_random_trees_extract_as_the_model_predicts(
    scenario: tuple[list[tuple[object, ...]], dict[str, object]],
) -> None:
    require_root()  # unsquashfs restores owners only as root
    ops, options = scenario
    default = Inode("d", 0o755, 0, 0, 0)
    model = Model(default)
    with tempfile.TemporaryDirectory(prefix="ocisquash-hyp-") as tmp:
        image = Path(tmp) / "i.sqfs"
        writer_options = WriterOptions(mkfs_time=0, block_size=4096, **options)  # type: ignore[arg-type]
        with SquashfsWriter(image, writer_options) as w:
            for op in ops:
                kind, path = op[0], op[1]
                assert isinstance(path, tuple)
                joined = b"/".join(path)
                if kind == "file":
                    _, _, meta, data, step = op
                    assert isinstance(meta, EntryMeta) and isinstance(data, bytes)
                    w.add_file(joined, meta, _Trickle(data, int(step)))  # type: ignore[arg-type]
                    model.add(path, Inode("-", data=data, **_meta(meta)))
                elif kind == "dir":
                    meta = op[2]
                    assert isinstance(meta, EntryMeta)
                    w.add_directory(joined, meta)
                    model.add(path, Inode("d", **_meta(meta)))
                elif kind == "symlink":
                    meta, target = op[2], op[3]
                    assert isinstance(meta, EntryMeta) and isinstance(target, bytes)
                    w.add_symlink(joined, meta, target)
                    model.add(path, Inode("l", data=target, **_meta(meta)))
                elif kind == "fifo":
                    meta = op[2]
                    assert isinstance(meta, EntryMeta)
                    w.add_fifo(joined, meta)
                    model.add(path, Inode("p", **_meta(meta)))
                else:
                    target_path = op[2]
                    assert isinstance(target_path, tuple)
                    existing = model.entries.get(target_path)
                    if existing is None or existing.kind == "d":
                        continue  # the error cases are covered in test_sqfs_writer_rules
                    w.add_hardlink(joined, b"/".join(target_path))
                    if joined != b"/".join(target_path):
                        model.add(path, existing)
        out = Path(tmp) / "out"
        run("unsquashfs", "-no-progress", "-d", out, image)
        assert _extracted(out) == _expected(model)


def _meta(meta: EntryMeta) -> dict[str, int]:
    return {"mode": meta.mode, "uid": meta.uid, "gid": meta.gid, "mtime": meta.mtime}


class _Trickle(io.RawIOBase):
    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._step, len(self._data))
        buffer[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


Observed = dict[bytes, tuple[str, int, int, int, int | None, bytes]]


def _expected(model: Model) -> tuple[Observed, set[frozenset[bytes]]]:
    seen: dict[int, set[bytes]] = {}
    result: Observed = {}
    for path, inode in model.entries.items():
        joined = b"/".join(path)
        # unsquashfs does not set times on symlinks, and their mode is always 0777.
        mtime = None if inode.kind == "l" else inode.mtime
        mode = 0o777 if inode.kind == "l" else inode.mode
        result[joined] = (inode.kind, mode, inode.uid, inode.gid, mtime, inode.data)
        if inode.kind != "d":
            seen.setdefault(id(inode), set()).add(joined)
    return result, {frozenset(g) for g in seen.values() if len(g) > 1}


def _extracted(root: Path) -> tuple[Observed, set[frozenset[bytes]]]:
    base = os.fsencode(root)
    result: Observed = {}
    groups: dict[tuple[int, int], set[bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, base)
            st_ = os.lstat(path)
            kind = stat.filemode(st_.st_mode)[0]
            data = b""
            if kind == "-":
                with open(path, "rb") as f:
                    data = f.read()
            elif kind == "l":
                data = os.readlink(path)
            mtime = None if kind == "l" else int(st_.st_mtime)
            mode = stat.S_IMODE(st_.st_mode)
            result[rel] = (kind, mode, st_.st_uid, st_.st_gid, mtime, data)
            if kind != "d":
                groups.setdefault((st_.st_dev, st_.st_ino), set()).add(rel)
    return result, {frozenset(g) for g in groups.values() if len(g) > 1}
