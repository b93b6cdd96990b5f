"""The entries an EROFS writer has been given, kept compactly until the image is laid out.

A directory keeps its sub-directories as objects and every other entry as a record
in its log, in the order the entries came:

* the names, each followed by ``/`` (a name never holds one), in one ``bytearray``;
* ``metas``, an ``array('I')``: the entry's metadata, an index into the writer's list;
* ``data``, an ``array('q')``: a short file whose data goes beside its inode, as
  ``tail_at << 12 | size`` (its bytes are in :class:`Tails` at ``tail_at``; size
  below a block, 0 for an empty file), or ``-1 - k`` for anything else, ``nodes[k]``
  of the tree (symlinks, devices, files with blocks of data, files with several
  names); once the finish sequence resolves the directory, its sub-directories too
  (:data:`DIR_BASE`).

So a short file costs its name plus 13 bytes until the end, not objects (a million
small files are most of a large image's entries).

Rules enforced here (the squashfs tree's, ``squashfs/tree.py``, whose path checks
these are):

* entries arrive in any order; missing parents are created with default metadata and
  a later ``add_directory`` updates them;
* adding an existing path replaces it, the last add winning: a record is appended and
  the earlier ones for its name are dropped when the directory is resolved
  (:meth:`Dir.resolve`); a non-directory put where a directory is removes the
  directory and everything below it; a directory made where a non-directory is hides
  every earlier record of that name (a put after it would have removed it);
* a hard link shares the node (a short file becomes one first, in place); replacing
  one of its names leaves the others on the old node.

Looking a name up (for a hard link's target) indexes that one directory's log in a
dict, kept from then on; entries that are only added are never indexed.
"""

from __future__ import annotations

import io
import os
import tempfile
from array import array
from collections.abc import Callable
from itertools import islice

from ..entry import EntryMeta
from ..errors import ErofsError, SquashfsError
from ..squashfs.format import InodeType
from ..squashfs.tree import Node, plain_path, split_path

#: bits of a short file's size in its record (below the 4 KiB block)
SIZE_BITS = 12
SIZE_MASK = (1 << SIZE_BITS) - 1
#: a sub-directory's record in a resolved log (see :meth:`Dir.resolve`)
DIR_BASE = -(1 << 62)
#: records in a directory's log before the first compaction (see EntryTree.compact)
COMPACT_AT = 4096
_DIR = InodeType.DIR


class Dir(Node):
    """A directory: its sub-directories, its log of other entries, and what the finish
    sequence works out for it."""

    __slots__ = ("blocks_at", "data", "index", "last", "limit", "metas", "names", "nids",
                 "order", "parent_number", "size", "subdirs", "tail", "unsorted")

    def __init__(self, meta: EntryMeta) -> None:
        super().__init__(meta, _DIR)
        self.subdirs: dict[bytes, Dir] = {}
        self.names = bytearray()
        self.metas = array("I")
        self.data = array("q")
        #: name -> position of its last record, once a lookup needed it
        self.index: dict[bytes, int] | None = None
        #: the name appended last, and whether a name came that was not after the one
        #: before it (so one may be there twice): the log is then compacted each time
        #: it reaches ``limit`` records (see EntryTree.compact)
        self.last = b""
        self.unsorted = False
        self.limit = COMPACT_AT
        #: after :meth:`resolve`: the children in on-disk (byte) order, each a log
        #: position or a sub-directory (see there)
        self.order: array[int] | None = None
        #: after the layout: the nid of each short file in ``order`` (0 for others),
        #: times two, plus one if it was placed in an earlier block's gap
        self.nids: array[int] | None = None
        self.size = 0
        #: first block of the directory's out-of-line blocks (0: none)
        self.blocks_at = 0
        #: the directory's last block, once made, when it goes inline
        self.tail: bytes | None = None
        self.parent_number = 0

    def append(self, name: bytes, meta: int, data: int) -> None:
        if name <= self.last:
            self.unsorted = True
        self.last = name
        if self.index is not None:
            self.index[name] = len(self.data)
        self.names += name
        self.names += b"/"
        self.metas.append(meta)
        self.data.append(data)

    def log_names(self) -> list[bytes]:
        """The log's names, by position."""
        return bytes(self.names).split(b"/")[:-1] if self.names else []

    def lookup(self, name: bytes) -> int | None:
        """The position of ``name``'s last record, if any (it may be hidden by a
        sub-directory of that name)."""
        if self.index is None:
            self.index = {n: i for i, n in enumerate(self.log_names())}
        return self.index.get(name)

    def resolve(self, refs: list[Dir]) -> list[bytes]:
        """Fix the children in on-disk (byte) order into :attr:`order`, as positions in
        the log: the last record of each name, or the sub-directory of that name,
        which is appended to the log as ``DIR_BASE - i`` for ``refs[i]`` (and to
        ``refs``). Returns the children's names in that order. The sub-directory map
        and the index are dropped: nothing is added after this."""
        self.index = None
        log = self.log_names()
        subdirs = self.subdirs
        self.subdirs = {}
        if not self.unsorted and not subdirs:
            # Most directories: the names came sorted, none twice (a layer's tar lists
            # them so), and no sub-directory; no map of the names is made.
            self.order = array("q", range(len(log)))
            return log
        latest: dict[bytes, int] = {}
        for i, name in enumerate(log):
            latest[name] = i
        for name, sub in subdirs.items():
            latest[name] = len(self.data)
            self.append(name, 0, DIR_BASE - len(refs))
            refs.append(sub)
        names = sorted(latest)
        self.order = array("q", [latest[n] for n in names])
        return names


class EntryTree:
    """The tree of a writer's entries; see the module docstring."""

    def __init__(self, default_dir_meta: EntryMeta) -> None:
        self._default = default_dir_meta
        self.root = Dir(default_dir_meta)
        #: the entries that are not short files with one name (None: replaced, its
        #: record dropped)
        self.nodes: list[Node | None] = []
        #: the parent path found last: entries come grouped by directory
        self._last_head: bytes | None = b""
        self._last_dir = self.root

    def _parent(self, path: bytes) -> Dir:
        """The directory that holds the valid, non-root ``path``, made if missing."""
        i = path.rfind(b"/")
        head = path[:i] if i >= 0 else b""
        if head == self._last_head:
            return self._last_dir
        node = self.root
        if head:
            for part in head.split(b"/"):
                child = node.subdirs.get(part)
                if child is None:
                    child = node.subdirs[part] = Dir(self._default)
                node = child
        self._last_head, self._last_dir = head, node
        return node

    def get(self, path: bytes) -> Node | int | None:
        """The directory or node at ``path``, a short file's record (an int), or None."""
        parts = split_path(path)
        node = self.root
        for part in parts[:-1]:
            found = node.subdirs.get(part)
            if found is None:
                return None
            node = found
        if not parts:
            return node
        name = parts[-1]
        sub = node.subdirs.get(name)
        if sub is not None:
            return sub
        at = node.lookup(name)
        if at is None:
            return None
        data = node.data[at]
        if data >= 0:
            return data
        entry = self.nodes[-1 - data]
        assert entry is not None
        return entry

    def add_directory(self, path: bytes, meta: EntryMeta) -> None:
        parts = split_path(path)
        if not parts:
            self.root.meta = meta
            return
        parent = self._parent(path)
        existing = parent.subdirs.get(parts[-1])
        if existing is not None:
            existing.meta = meta
        else:
            parent.subdirs[parts[-1]] = Dir(meta)

    def _put(self, path: bytes, meta: int, data: int) -> None:
        i = path.rfind(b"/")
        # _parent's cache looked up here: one call less for most files
        parent = self._last_dir if i >= 0 and path[:i] == self._last_head else self._parent(path)
        name = path[i + 1:]
        if parent.subdirs and parent.subdirs.pop(name, None) is not None:
            self._last_head = None  # a directory left the tree: the cache may be in it
        parent.append(name, meta, data)
        if parent.unsorted and len(parent.data) >= parent.limit:
            self.compact(parent)

    def put(self, path: bytes, node: Node, *, checked: bool = False) -> None:
        """Place a non-directory ``node`` at ``path`` (already :meth:`placeable` when
        ``checked``), replacing whatever was there."""
        if not checked:
            self.placeable(path)
        self.nodes.append(node)
        self._put(path, 0, -len(self.nodes))

    def put_short(self, path: bytes, meta: int, tail_at: int, size: int) -> None:
        """Place a short file (see the module docstring) at the :meth:`placeable`
        ``path``."""
        # _put written out: most entries come here
        i = path.rfind(b"/")
        parent = self._last_dir if i >= 0 and path[:i] == self._last_head else self._parent(path)
        name = path[i + 1:]
        if parent.subdirs and parent.subdirs.pop(name, None) is not None:
            self._last_head = None  # a directory left the tree: the cache may be in it
        # Dir.append written out
        if name <= parent.last:
            parent.unsorted = True
        parent.last = name
        if parent.index is not None:
            parent.index[name] = len(parent.data)
        names = parent.names
        names += name
        names += b"/"
        parent.metas.append(meta)
        parent.data.append(tail_at << SIZE_BITS | size)
        if parent.unsorted and len(parent.data) >= parent.limit:
            self.compact(parent)

    def compact(self, d: Dir) -> None:
        """Drop the records of ``d``'s log that a later one of the same name replaced
        (and the nodes only they held), so that a path added again and again costs one
        record; the next compaction waits until the log has doubled (linear time in
        all). Positions change: the index is made again when a lookup needs it."""
        log = d.log_names()
        latest: dict[bytes, int] = {}
        for i, name in enumerate(log):
            latest[name] = i
        if len(latest) < len(log):
            data = d.data
            for i, name in enumerate(log):
                if latest[name] != i and data[i] < 0:
                    self.nodes[-1 - data[i]] = None
            keep = sorted(latest.values())
            names = [log[i] for i in keep]
            d.names = bytearray(b"/".join(names) + b"/")
            d.metas = array("I", [d.metas[i] for i in keep])
            d.data = array("q", [data[i] for i in keep])
            d.index = None
            d.unsorted = not all(map(bytes.__lt__, names, islice(names, 1, None)))
        d.limit = max(COMPACT_AT, 2 * len(d.data))

    def share(self, path: bytes, make: Callable[[int, int, int], Node]) -> Node:
        """The node at the existing non-directory ``path``; a short file's record is
        made a node first, ``make(meta index, tail_at, size)``, in place."""
        parent = self._parent(path)
        at = parent.lookup(path[path.rfind(b"/") + 1:])
        assert at is not None
        data = parent.data[at]
        if data < 0:
            found = self.nodes[-1 - data]
            assert found is not None
            return found
        node = make(parent.metas[at], data >> SIZE_BITS, data & SIZE_MASK)
        self.nodes.append(node)
        parent.data[at] = -len(self.nodes)
        return node

    def placeable(self, path: bytes) -> None:
        """Validate a path for a non-directory; raise before any file data is written
        if it can never be placed."""
        if isinstance(path, bytes) and path and plain_path(path):
            return
        if not split_path(path):
            raise SquashfsError("the root of the image must be a directory")


class Tails:
    """The short files' bytes, appended in the order they came to a temporary file
    (in the output's directory when there is one; unlinked at once, so nothing is left
    behind whatever happens) through a buffer of :attr:`FLUSH` bytes, and read back by
    offset through a window of :attr:`WINDOW` bytes.

    They are read in inode order: a directory's files in name order, which jumps back
    and forth within the stretch the directory's files were added in (the order of its
    layer). So a window starts :attr:`BEHIND` bytes before the byte that missed it:
    for the bench image of 100,000 small files, 5,890 reads where a window that halved
    after a miss and doubled after 16 hits made 53,824."""

    FLUSH = 1 << 20
    WINDOW = 64 << 10
    BEHIND = 16 << 10

    def __init__(self, directory: str | None = None) -> None:
        self._dir = directory
        self._file: io.FileIO | None = None
        #: the bytes not in the file yet, _buf[:_filled] (filled in place: a bytearray
        #: grown from empty after each write cost a reallocation every few files)
        self._buf = bytearray(self.FLUSH)
        self._filled = 0
        #: bytes in the file
        self._flushed = 0
        self._window = b""
        self._window_at = 0

    def put(self, data: bytes) -> int:
        """Store ``data``; return its offset."""
        filled = self._filled
        at = self._flushed + filled
        end = filled + len(data)
        if end <= self.FLUSH:
            self._buf[filled:end] = data
            self._filled = end
            return at
        self._flush()
        if len(data) >= self.FLUSH:
            self._write(data)
        else:
            self._buf[:len(data)] = data
            self._filled = len(data)
        return at

    def _flush(self) -> None:
        with memoryview(self._buf) as whole:
            self._write(whole[:self._filled])
        self._filled = 0

    def _write(self, data: bytes | memoryview) -> None:
        if self._file is None:
            try:
                self._file = tempfile.TemporaryFile(buffering=0, dir=self._dir,  # noqa: SIM115
                                                    prefix=".ocisquash-tails-")
            except OSError:
                if self._dir is None:
                    raise
                # The output's directory may take the output but no new file.
                self._file = tempfile.TemporaryFile(buffering=0,  # noqa: SIM115
                                                    prefix=".ocisquash-tails-")
        file = self._file
        with memoryview(data) as whole:
            done = 0
            while done < len(whole):
                done += file.write(whole[done:]) or 0
        self._flushed += len(data)

    def get(self, at: int, n: int) -> bytes:
        start = at - self._window_at
        if start >= 0 and start + n <= len(self._window):
            return self._window[start:start + n]
        if at >= self._flushed:
            at -= self._flushed
            return bytes(self._buf[at:at + n])
        assert self._file is not None
        begin = max(at - self.BEHIND, 0)
        window = os.pread(self._file.fileno(), max(self.WINDOW, at + n - begin), begin)
        if len(window) < at + n - begin:
            raise ErofsError("cannot read back the short files' data from a temporary file")
        self._window, self._window_at = window, begin
        return window[at - begin:at - begin + n]

    def close(self) -> None:
        self._buf = bytearray()
        self._window = b""
        if self._file is not None:
            self._file.close()
