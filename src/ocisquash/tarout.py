"""A ``TreeSink`` that writes the flattened tree as one tar stream (``--format tar``).

The output is a PAX tar (long and non-UTF-8 names, large ids, fractional-free
mtimes, ``SCHILY.xattr.*`` attributes), written strictly forward so it can go to a
pipe: file data is copied from the layer straight into the tar as it arrives, never
held whole in memory or spooled.

Entries reach a sink in flattening order, not tree order, and a directory's metadata
may be settled only after its children (a directory an upper layer creates
implicitly takes a lower layer's metadata later). A tar written forward cannot go
back, so the tree is flattened twice: first into a :class:`TreeShape`, which keeps
only the final tree's metadata (no file data is read), then into the :class:`TarSink`,
which looks every directory up in that shape. So:

* each directory is written once, when it is first needed, with its final metadata:
  every parent precedes its children, and no placeholder is written;
* a path added twice (a layer listing a name twice: the last entry wins) is simply
  written twice, in that order; a hard link is written after its target. When a
  layer replaces a non-empty directory by a file this way (the spec forbids
  duplicate names in a layer), GNU tar needs ``--recursive-unlink`` to apply it; and
  GNU tar creates absolute symlinks after everything else, so a symlink that such a
  layer replaces by a file may still win when GNU tar unpacks the stream.

A ``TarSink`` made without a shape cannot know a directory's final metadata when it
first needs it; it then writes a changed directory again at the end (extractors
apply the later entry, as they do for every duplicate name in a tar).

Sockets cannot be stored in tar and are left out (layers, being tar, never hold any).

A sparse file of a layer (``entry.SparseSource``) stays sparse: it is written as
GNU tar's PAX sparse format 1.0, as ``tar --sparse --format=pax`` writes it, which
GNU tar, libarchive, Go's archive/tar (umoci) and Python's tarfile read. The PAX
header holds ``GNU.sparse.major=1``, ``GNU.sparse.minor=0``, ``GNU.sparse.name`` (the
real path) and ``GNU.sparse.realsize``, the ustar name is
``DIR/GNUSparseFile.0/NAME``, and the member's data is the map (the number of regions,
then each region's offset and length, in decimal, one a line, padded with NULs to
512 bytes) followed by the regions' data. The map is the layer's, each region
widened to 512-byte boundaries (GNU tar reads each region in whole 512-byte blocks;
Go reads the regions back to back: with boundaries at 512, both agree) and a final
empty region at the size when the file ends in a hole. Holes are never read, so a
layer declaring a 1 TiB file gives a tar of a few KiB. A file whose zeros the layer
stored in full stays in full: its zeros would have to be found before its header is
written, which a stream written forward cannot do.
"""

from __future__ import annotations

import io
import tarfile
from array import array
from collections.abc import Sequence
from typing import BinaryIO, Literal

from .entry import EntryMeta, SparseSource
from .errors import OutputError

#: tar's block: sparse regions are widened to it
_BLOCK = 512

_DEFAULT_DIR_META = EntryMeta(mode=0o755)


def _name(path: bytes) -> str:
    return path.decode("utf-8", "surrogateescape")


class _Leaf:
    """A non-directory of a :class:`TreeShape`; hard links share one."""

    __slots__ = ()


class _Dir:
    __slots__ = ("children", "meta")

    def __init__(self, meta: EntryMeta) -> None:
        self.meta = meta
        self.children: dict[bytes, _Dir | _Leaf] = {}


class TreeShape:
    """A ``TreeSink`` that keeps only the final tree's shape and directory metadata.

    It follows the sink rules of ``flatten.TreeSink`` (missing parents made with the
    default metadata, ``add_directory`` updating an existing directory, any other add
    replacing what was there) and reads no file data, so flattening into it costs
    one read of each layer's headers and memory for the paths only.
    """

    def __init__(self, *, default_dir_meta: EntryMeta = _DEFAULT_DIR_META) -> None:
        self._default = default_dir_meta
        self.root = _Dir(default_dir_meta)
        #: whether a layer listed the root itself ("./")
        self.root_listed = False

    def _parent(self, path: bytes) -> tuple[_Dir, bytes]:
        node = self.root
        *heads, name = path.split(b"/")
        for part in heads:
            child = node.children.get(part)
            if not isinstance(child, _Dir):
                child = node.children[part] = _Dir(self._default)
            node = child
        return node, name

    def _put(self, path: bytes, leaf: _Leaf) -> None:
        if not path:
            raise OutputError("the root of the tree must be a directory")
        parent, name = self._parent(path)
        parent.children[name] = leaf

    def add_directory(self, path: bytes, meta: EntryMeta) -> None:
        if not path:
            self.root.meta, self.root_listed = meta, True
            return
        parent, name = self._parent(path)
        node = parent.children.get(name)
        if isinstance(node, _Dir):
            node.meta = meta
        else:
            parent.children[name] = _Dir(meta)

    def add_file(self, path: bytes, meta: EntryMeta, data: BinaryIO | bytes,
                 size: int | None = None) -> None:
        self._put(path, _Leaf())

    def add_symlink(self, path: bytes, meta: EntryMeta, target: bytes) -> None:
        self._put(path, _Leaf())

    def add_device(self, path: bytes, meta: EntryMeta, kind: Literal["char", "block"],
                   major: int, minor: int) -> None:
        self._put(path, _Leaf())

    def add_fifo(self, path: bytes, meta: EntryMeta) -> None:
        self._put(path, _Leaf())

    def add_socket(self, path: bytes, meta: EntryMeta) -> None:
        """Sockets have no tar representation: the shape leaves them out, as the tar does."""

    def add_hardlink(self, path: bytes, target: bytes) -> None:
        leaf = self._get(target)
        if not isinstance(leaf, _Leaf):
            raise OutputError(f"hard link target {_name(target)!r} was not added",
                              context=_name(path))
        self._put(path, leaf)

    def exists(self, path: bytes) -> bool:
        return self._get(path) is not None

    def _get(self, path: bytes) -> _Dir | _Leaf | None:
        node: _Dir | _Leaf = self.root
        if not path:
            return node
        for part in path.split(b"/"):
            if not isinstance(node, _Dir):
                return None
            found = node.children.get(part)
            if found is None:
                return None
            node = found
        return node

    def directory_meta(self, path: bytes) -> EntryMeta | None:
        """The final metadata of the directory ``path``; None if it ends as no directory."""
        node = self._get(path)
        return node.meta if isinstance(node, _Dir) else None

    def inodes(self) -> int:
        """Inodes of the final tree, counted as squashfs counts them: the root and every
        directory, and each non-directory once however many names link to it."""
        dirs, leaves = 0, set()
        stack = [self.root]
        while stack:
            node = stack.pop()
            dirs += 1
            for child in node.children.values():
                if isinstance(child, _Dir):
                    stack.append(child)
                else:
                    leaves.add(id(child))
        return dirs + len(leaves)


def _sparse_plan(regions: Sequence[int], size: int) -> array[int] | None:
    """The regions to store (offset, length, …): the layer's, widened to 512-byte
    boundaries and merged, plus an empty one at ``size`` when the file ends in a
    hole; None when no hole is left."""
    plan = array("q")
    for i in range(0, len(regions) - 1, 2):
        off, length = regions[i], regions[i + 1]
        if length <= 0:
            continue
        start = off - off % _BLOCK
        end = min(off + length + -(off + length) % _BLOCK, size)
        if plan and start <= plan[-2] + plan[-1]:
            plan[-1] = max(plan[-2] + plan[-1], end) - plan[-2]
        else:
            plan.extend((start, end - start))
    if len(plan) == 2 and plan[0] == 0 and plan[1] == size:
        return None  # all data after all
    if not plan or plan[-2] + plan[-1] < size:
        plan.extend((size, 0))
    return plan


class _SparseData:
    """A sparse member's stored bytes: the map, then each region's data, its holes
    skipped in the source (``tarfile`` reads this as the member's data)."""

    def __init__(self, source: SparseSource, head: bytes, plan: array[int]) -> None:
        self._source = source
        self._head = memoryview(head)
        self._plan = plan
        self._at = 0  # index in plan of the next region's offset
        self._left = 0  # bytes of the current region still to read
        self._pos = 0  # position in the file

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            want = n - len(out) if n >= 0 else 1 << 20
            if self._head:
                out += self._head[:want]
                self._head = self._head[want:]
            elif self._left:
                piece = self._source.read(min(want, self._left))
                if not piece:
                    break
                out += piece
                self._left -= len(piece)
                self._pos += len(piece)
            elif self._at < len(self._plan):
                off, length = self._plan[self._at], self._plan[self._at + 1]
                self._at += 2
                if length:
                    self._source.skip_zeros(off - self._pos)
                    self._pos, self._left = off, length
            else:
                break
        return bytes(out)


class TarSink:
    """Writes added entries to ``output`` (a writable binary stream) as a PAX tar.

    ``shape``, the same tree flattened into a :class:`TreeShape` before, gives each
    directory its final metadata the first time it is written, so none is written
    twice. Call :meth:`finish` once everything is added; it writes the end-of-archive
    blocks (and, without a shape, the directories whose metadata changed), and leaves
    ``output`` open.
    """

    def __init__(self, output: BinaryIO, *, default_dir_meta: EntryMeta = _DEFAULT_DIR_META,
                 shape: TreeShape | None = None) -> None:
        self._out = output
        self._default = default_dir_meta
        self._shape = shape
        try:
            self._tf = tarfile.open(  # noqa: SIM115 - closed by finish()
                fileobj=output, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                errors="surrogateescape")
        except OSError as e:
            raise OutputError(f"cannot write the tar stream: {e}") from e
        #: directory → (current metadata, whether the last written entry shows it)
        self._dirs: dict[bytes, tuple[EntryMeta, bool]] = {}
        self._others: set[bytes] = set()
        self._finished = False
        if shape is not None and shape.root_listed:
            self._write_dir(b"", shape.root.meta)

    # -- TreeSink ----------------------------------------------------------------

    def add_directory(self, path: bytes, meta: EntryMeta) -> None:
        if path:
            self._parents(path)
        old = self._dirs.get(path)
        if old is not None:
            if self._shape is None and old[0] != meta:
                self._dirs[path] = (meta, False)
            return
        self._others.discard(path)
        self._write_dir(path, self._final(path, meta))

    def add_file(self, path: bytes, meta: EntryMeta, data: BinaryIO | bytes,
                 size: int | None = None) -> None:
        stream: BinaryIO = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
        if size is None:
            # tar needs the size before the data: only in-memory data may omit it.
            if not isinstance(data, bytes | bytearray):
                raise OutputError("TarSink.add_file needs the size of a streamed file",
                                  context=_name(path))
            size = len(data)
        if isinstance(stream, SparseSource):
            regions = stream.regions()
            plan = _sparse_plan(regions, size) if regions is not None else None
            if plan is not None:
                self._add_sparse(path, meta, stream, size, plan)
                return
        ti = self._info(path, tarfile.REGTYPE, meta)
        ti.size = size
        self._add(path, ti, stream)

    def _add_sparse(self, path: bytes, meta: EntryMeta, stream: SparseSource, size: int,
                    plan: array[int]) -> None:
        """A sparse file as PAX sparse format 1.0 (see the module docstring)."""
        head = bytearray(b"%d\n" % (len(plan) // 2))
        for value in plan:
            head += b"%d\n" % value
        head += bytes(-len(head) % _BLOCK)
        parent, _, base = path.rpartition(b"/")
        ti = self._info(path, tarfile.REGTYPE, meta)
        ti.name = _name((parent or b".") + b"/GNUSparseFile.0/" + base)
        ti.size = len(head) + sum(plan[1::2])
        ti.pax_headers = {**ti.pax_headers, "GNU.sparse.major": "1",
                          "GNU.sparse.minor": "0", "GNU.sparse.name": _name(path),
                          "GNU.sparse.realsize": str(size)}
        self._add(path, ti, _SparseData(stream, bytes(head), plan))  # type: ignore[arg-type]

    def add_symlink(self, path: bytes, meta: EntryMeta, target: bytes) -> None:
        ti = self._info(path, tarfile.SYMTYPE, meta)
        ti.linkname = _name(target)
        self._add(path, ti)

    def add_device(self, path: bytes, meta: EntryMeta, kind: Literal["char", "block"],
                   major: int, minor: int) -> None:
        ti = self._info(path, tarfile.CHRTYPE if kind == "char" else tarfile.BLKTYPE, meta)
        ti.devmajor, ti.devminor = major, minor
        self._add(path, ti)

    def add_fifo(self, path: bytes, meta: EntryMeta) -> None:
        self._add(path, self._info(path, tarfile.FIFOTYPE, meta))

    def add_socket(self, path: bytes, meta: EntryMeta) -> None:
        """Sockets have no tar representation; nothing is written."""

    def add_hardlink(self, path: bytes, target: bytes) -> None:
        if target not in self._others:
            raise OutputError(f"hard link target {_name(target)!r} was not added",
                              context=_name(path))
        ti = self._info(path, tarfile.LNKTYPE, EntryMeta())
        ti.linkname = _name(target)
        self._add(path, ti)

    def exists(self, path: bytes) -> bool:
        return path in self._dirs or path in self._others or not path

    # -- finishing -----------------------------------------------------------------

    def finish(self) -> None:
        """Write directories whose metadata changed, then the end of the archive."""
        if self._finished:
            return
        for path in sorted(p for p, (_, current) in self._dirs.items() if not current):
            self._write_dir(path, self._dirs[path][0])
        self._finished = True
        try:
            self._tf.close()
            self._out.flush()
        except OSError as e:
            self._abandon()
            raise OutputError(f"cannot write the tar stream: {e.strerror or e}") from e

    # -- helpers ---------------------------------------------------------------------

    def _parents(self, path: bytes) -> None:
        parts = path.split(b"/")
        for i in range(1, len(parts)):
            parent = b"/".join(parts[:i])
            if parent not in self._dirs:
                self._others.discard(parent)
                self._write_dir(parent, self._final(parent, self._default))

    def _final(self, path: bytes, meta: EntryMeta) -> EntryMeta:
        """The metadata directory ``path`` ends with, when the shape knows it."""
        final = self._shape.directory_meta(path) if self._shape is not None else None
        return meta if final is None else final

    def _info(self, path: bytes, kind: bytes, meta: EntryMeta) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(_name(path) if path else "./")
        ti.type = kind
        ti.mode = meta.mode
        ti.uid, ti.gid = meta.uid, meta.gid
        ti.uname = ti.gname = ""
        ti.mtime = meta.mtime
        if meta.xattrs:
            ti.pax_headers = {
                "SCHILY.xattr." + _name(k): v.decode("utf-8", "surrogateescape")
                for k, v in meta.xattrs
            }
        return ti

    def _write_dir(self, path: bytes, meta: EntryMeta) -> None:
        ti = self._info(path, tarfile.DIRTYPE, meta)
        if path:
            ti.name += "/"
        self._write(ti)
        self._dirs[path] = (meta, True)

    def _add(self, path: bytes, ti: tarfile.TarInfo, data: BinaryIO | None = None) -> None:
        if not path:
            raise OutputError("the root of the tree must be a directory")
        self._parents(path)
        self._dirs.pop(path, None)
        self._write(ti, data)
        self._others.add(path)

    def _write(self, ti: tarfile.TarInfo, data: BinaryIO | None = None) -> None:
        if self._finished:
            raise OutputError("the tar stream is already finished")
        try:
            self._tf.addfile(ti, data)
        except OSError as e:
            self._abandon()
            raise OutputError(f"cannot write the tar stream: {e.strerror or e}",
                              context=ti.name) from e

    def _abandon(self) -> None:
        """After a failed write: never touch the output again (tarfile would flush on GC)."""
        self._finished = True
        self._tf.closed = True  # type: ignore[attr-defined]
        stream = getattr(self._tf, "fileobj", None)
        if stream is not None and hasattr(stream, "closed"):
            stream.closed = True
