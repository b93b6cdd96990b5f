"""The EROFS writer: public API and the finish sequence.

File data streams into the image as files are added, from block 1 on (block 0 holds
the superblock at byte 1024). Everything else is laid out by
:meth:`ErofsWriter.finish`, after the data::

    block 0: superblock · file data · directory and symlink blocks ·
    metadata area (meta_blkaddr = xattr_blkaddr): shared xattrs, then inodes

Writing the data first keeps memory bounded without a temporary copy of the image:
only per-entry metadata (and the spooled tails, see ``data.py``) waits for the end,
and the inodes, whose nids the directories need, are laid out once the tree is
complete. A file shorter than a block whose bytes fit beside its inode (most files
of most images) skips the data writers: its bytes go to the spool and it is kept as
a record in its directory's log, not as objects (``tree.py``). It is stored
FLAT_INLINE whatever the compression, but with fragments, where its bytes go whole
into the packed inode as they come and its record is its inode and a map header that
says where; with ztailpacking alone (compressed beside the inode) it is an ordinary
file. Beside its inode a copy would carry its own bytes anyway, so it is not hashed for
duplicates there; in the packed inode a copy of a recent file names the earlier one's
bytes (``CompressedData.pack_whole``).

With a metabox (``ErofsOptions.metabox``, Linux 6.17+) the inodes are not in the
metadata area but in the data of one compressed inode, written through the
compressor after the directory blocks (see ``_Finisher._run_boxed``); the metadata
area then holds the shared xattrs, the packed inode and the metabox inode. There the
records follow each other and no block ends are filled (see ``_NoGaps``).

The inodes come last, in breadth-first order from the root, so the root
has a small nid (the superblock's ``rootnid_2b`` holds 16 bits, so shared xattrs
beyond 2 MiB would be refused) and a directory's entries are stored near each other;
but an inode whose inline data does not fit what is left of a block starts the next
block, and later inodes that fit the rest go there (a first fit by size class), so
blocks of inline tails are not left half empty.

Rules enforced here:

* an inode is compact (32 bytes) unless it needs the extended form (64 bytes), as
  mkfs.erofs decides: a size of 4 GiB or more, a uid, gid or link count above 65535,
  or an mtime that its compact form cannot hold. Kernels before 6.15 give every compact
  inode the superblock's epoch, so there only the build time fits; an image with a
  metabox needs 6.17, which reads a compact inode's "i_mtime", seconds after the
  epoch (COMPAT_MTIME): the epoch is then the earliest time, and every time up to
  2^32 - 1 seconds after it fits;
* inodes are 32-byte aligned ("nid = offset / 32" from ``meta_blkaddr``), and an
  inline tail does not cross a block boundary (the inode moves to the next block);
* a directory's link count is 2 plus its sub-directories; other inodes count their
  names (hard links);
* a chunk-based file's block map follows its inode and xattrs (``chunks.py``), and
  the superblock says CHUNKED_FILE when there is one; with a compressor, a large file
  goes to ``sparse.py`` first, which stores it chunk-based or hands it on;
* the image is a whole number of 4 KiB blocks, ``blocks`` in the superblock.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import hashlib
import os
import queue
import struct
import threading
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ..entry import EntryMeta
from ..errors import ErofsError, OutputError
from ..imagewriter import ImageWriter
from ..squashfs.format import InodeType
from ..squashfs.tree import Node, SpecialNode, SymlinkNode, plain_path
from .compress import (
    MAPPED_LAYOUTS,
    WHOLE_FRAGMENT,
    Codec,
    CompressedData,
    index_bytes,
    index_extra,
    largest_pcluster,
    map_header,
)
from .data import ChunkedExtent, Extent, FlatData, Spool, measured
from .directory import DirEntry, directory_size, pack_blocks, split_blocks
from .format import (
    BLOCK_SIZE,
    COMPACT_INODE,
    COMPACT_INODE_SIZE,
    COMPAT_MTIME,
    EXTENDED_INODE_SIZE,
    INCOMPAT_BIG_PCLUSTER,
    INCOMPAT_CHUNKED_FILE,
    INCOMPAT_COMPR_CFGS,
    INCOMPAT_FRAGMENTS,
    INCOMPAT_ZERO_PADDING,
    INCOMPAT_ZTAILPACKING,
    INODE_SLOT,
    MAX_NAME_LEN,
    MODE_TYPE,
    NID_METABOX,
    SUPER_OFFSET,
    DataLayout,
    FileType,
    Superblock,
    extended_inode,
)
from .options import ErofsCompression, ErofsOptions
from .sparse import SPARSE_MIN_SIZE, SparseFiles
from .tree import DIR_BASE, SIZE_BITS, SIZE_MASK, Dir, EntryTree, Tails
from .xattr import SharedXattrs, check_xattrs, icount, inline_size_bound

_FILE_TYPE = {
    InodeType.FILE: FileType.REG_FILE,
    InodeType.DIR: FileType.DIR,
    InodeType.SYMLINK: FileType.SYMLINK,
    InodeType.CHAR_DEV: FileType.CHRDEV,
    InodeType.BLOCK_DEV: FileType.BLKDEV,
    InodeType.FIFO: FileType.FIFO,
    InodeType.SOCKET: FileType.SOCK,
}
_BYTES_LIKE = (bytes, bytearray, memoryview)
#: each node type's S_IFMT bits
_MODE = {kind: MODE_TYPE[ftype] for kind, ftype in _FILE_TYPE.items()}


@dataclass(frozen=True)
class ErofsSummary:
    """What :meth:`ErofsWriter.finish` wrote."""

    bytes_written: int
    inodes: int
    files: int
    directories: int
    symlinks: int
    devices: int  # character and block devices, FIFOs and sockets
    hardlinks: int  # directory entries beyond the first for an inode
    data_bytes_in: int
    #: files whose data is stored once for an earlier identical file (a short file
    #: stored whole beside its inode shares nothing, and is not counted; one stored
    #: whole in the packed inode is)
    duplicates: int
    compression: str
    block_size: int = BLOCK_SIZE
    compressed_files: int = 0
    #: files stored chunk-based, with holes
    chunked_files: int = 0
    extended_inodes: int = 0
    shared_xattrs: int = 0
    #: the image's sha256, when the writer was asked for it (see ErofsWriter); bytes,
    #: so not among the figures ``--json`` reports
    sha256: bytes | None = None


class FileNode(Node):
    """A regular file: its metadata and where its data is."""

    __slots__ = ("extent",)

    def __init__(self, meta: EntryMeta, extent: Extent) -> None:
        super().__init__(meta, InodeType.FILE)
        self.extent = extent


class _Inode:
    """The fields of one inode record, computed twice (layout, then writing) rather
    than kept for every inode."""

    __slots__ = ("block_map", "compressed", "extended", "i_u", "inline_len", "layout", "mode",
                 "nlink", "size", "xattrs")

    def __init__(self) -> None:
        self.layout = DataLayout.FLAT_PLAIN
        self.size = 0
        self.i_u = 0
        self.inline_len = 0
        #: bytes of a chunk-based file's block map, which follows the inode and xattrs
        self.block_map = 0
        self.compressed = False
        self.mode = 0
        self.nlink = 0
        self.extended = False
        self.xattrs = b""

    @property
    def isize(self) -> int:
        return EXTENDED_INODE_SIZE if self.extended else COMPACT_INODE_SIZE


class ErofsWriter(ImageWriter["ErofsSummary"]):
    """Writes one EROFS image; add entries in any order, then :meth:`finish`.

    ``output`` is a path (created or truncated) or a seekable, writable binary stream
    (the image starts at offset 0). The interface is that of ``SquashfsWriter``, so the
    flattener and ``pack`` feed either one. With ``digest`` (a path output only), the
    summary gives the image's sha256, read while the metadata is written instead of
    after it (what a compile records in its cache).
    """

    error = ErofsError
    _tree: EntryTree

    def __init__(self, output: str | os.PathLike[str] | BinaryIO,
                 options: ErofsOptions | None = None, digest: bool = False) -> None:
        if options is None:
            options = ErofsOptions()
        self._options = options
        #: whether finish() gives the image's sha256 (read on a thread of its own while
        #: the metadata is written: the superblock is known once the inodes are placed)
        self._digest = digest
        if digest and hasattr(output, "write"):
            raise ValueError("the image's digest needs an output given by its path")
        self._epoch = options.resolved_mkfs_time()
        self._owned = not hasattr(output, "write")
        self._path: str | bytes | None = None
        self._name = str(getattr(output, "name", "the output stream"))
        if self._owned:
            self._path = os.fspath(output)  # type: ignore[arg-type]
            self._name = os.fsdecode(self._path)
        try:
            if self._owned:
                self._out: BinaryIO = open(output, "w+b")  # type: ignore[arg-type,assignment]  # noqa: SIM115
            else:
                self._out = output  # type: ignore[assignment]
            self._out.seek(0)
            self._out.write(bytes(BLOCK_SIZE))
        except OSError as e:
            raise OutputError(f"cannot write the image: {e.strerror or e}",
                              context=self._name) from e
        #: each distinct metadata (as given, and as kept) -> its index in _meta_list
        self._meta_ids: dict[EntryMeta, int] = {}
        self._meta_list: list[EntryMeta] = []
        #: the metadata add_file was given last, and its index
        self._last_meta: EntryMeta | None = None
        self._last_index = 0
        #: by metadata index: the most bytes of a file's tail that go beside its inode
        self._rooms: list[int] = []
        self._tree = EntryTree(self._meta(options.default_dir_meta))
        self._spool = Spool()
        #: the short files' bytes, beside the output
        self._tails = Tails(os.path.dirname(os.path.abspath(os.fsdecode(self._path)))
                            if self._path is not None else None)
        #: whether a file shorter than a block that fits beside its inode is stored
        #: there whole, without the data writers (not when it is compressed: into the
        #: packed inode, or inline in compressed form)
        compressed = options.compression is not ErofsCompression.NONE
        #: with fragments, a short file's bytes go whole into the packed inode as they
        #: come (compressed with the others' there), and its record is its inode and a
        #: map header that says where
        self._short_fragments = compressed and options.fragments
        self._short_files = (not compressed or options.fragments or options.metabox
                             or not options.ztailpacking)
        #: with holes, an uncompressed file of zeros is stored chunk-based
        self._zero_holes = options.compression is ErofsCompression.NONE and options.holes
        #: bytes of the files stored that way
        self._short_bytes = 0
        self._codec: Codec | None = None
        self._data: FlatData | CompressedData
        if options.compression is ErofsCompression.NONE:
            self._data = FlatData(self._out, BLOCK_SIZE, self._spool, options.dedup,
                                  options.holes)
        else:
            self._codec = Codec(options.compression, options.resolved_level(),
                                largest_pcluster(options.pcluster_size, options.fragments,
                                                 options.metabox))
            self._data = CompressedData(
                self._out, BLOCK_SIZE, self._spool, codec=self._codec,
                pcluster_size=options.pcluster_size, dedup=options.dedup,
                workers=options.workers or os.cpu_count() or 1, fragments=options.fragments,
                ztailpacking=options.ztailpacking, metabox=options.metabox)
        #: with a compressor: the files that are mostly holes (see ``sparse.py``)
        self._sparse: SparseFiles | None = None
        if isinstance(self._data, CompressedData) and options.holes:
            self._sparse = SparseFiles(self._out, self._data, self._spool, options.dedup)
        self._closed = False

    # -- adding entries -------------------------------------------------------------

    def _meta(self, meta: EntryMeta) -> EntryMeta:
        return self._meta_list[self._meta_index(meta)]

    def _meta_index(self, meta: EntryMeta) -> int:
        """The index of ``meta`` as the image keeps it (checked once per distinct value)."""
        found = self._meta_ids.get(meta)
        if found is not None:
            return found
        given = meta
        if not self._options.xattrs and meta.xattrs:
            meta = EntryMeta(meta.mode, meta.uid, meta.gid, meta.mtime, ())
        if self._options.all_root and (meta.uid or meta.gid):
            meta = EntryMeta(meta.mode, 0, 0, meta.mtime, meta.xattrs)
        if meta.xattrs:
            check_xattrs(meta.xattrs)
        if not 0 <= meta.mtime < 2**63:
            meta = EntryMeta(meta.mode, meta.uid, meta.gid,
                             min(max(meta.mtime, 0), 2**63 - 1), meta.xattrs)
        # Many entries share owner, mode and time: keep one object for each.
        found = self._meta_ids.get(meta)
        if found is None:
            found = self._meta_ids[meta] = len(self._meta_list)
            self._meta_list.append(meta)
            # The tail goes inline if it fits in a block with the largest inode and
            # this file's xattrs all inline (sharing only makes the body smaller).
            self._rooms.append(BLOCK_SIZE - EXTENDED_INODE_SIZE - inline_size_bound(meta.xattrs))
        self._meta_ids[given] = found
        return found

    def _check_path(self, path: bytes) -> None:
        # The shared tree allows squashfs's 256-byte names; EROFS allows 255.
        if len(path) > MAX_NAME_LEN and isinstance(path, bytes):
            for part in path.split(b"/"):
                if len(part) > MAX_NAME_LEN:
                    raise ErofsError(f"name {part[:32]!r}… is {len(part)} bytes; "
                                     f"EROFS allows {MAX_NAME_LEN}", context=repr(path))

    def add_file(self, path: bytes, meta: EntryMeta, data: BinaryIO | bytes,
                 size: int | None = None) -> None:
        """Add a regular file, streaming ``data`` (exactly ``size`` bytes if given, else
        to EOF) into the image."""
        # The layer reader hands the same object to entries of the same metadata:
        # looked up by identity first (EntryMeta's hash is Python code).
        if meta is self._last_meta:
            index: int | None = self._last_index
        else:
            index = self._meta_ids.get(meta)
            if index is not None:
                self._last_meta, self._last_index = meta, index
        # Most files: short (see the module docstring), given as bytes, under a plain
        # path; the checks of the general path below, at once.
        if (index is not None and type(data) is bytes and len(data) <= self._rooms[index]
                and (size is None or size == len(data)) and self._short_files
                and not self._closed and type(path) is bytes and 0 < len(path) <= MAX_NAME_LEN
                and plain_path(path) and (not self._zero_holes or not data
                                          or data.count(0) != len(data))):
            self._add_short(path, index, data)
            return
        self._check_open()
        self._check_path(path)
        index = self._meta_index(meta)
        self._tree.placeable(path)
        source: bytes | BinaryIO = data
        if isinstance(data, _BYTES_LIKE):
            source = data if type(data) is bytes else bytes(data)
            if size is not None and size != len(source):
                raise ErofsError(f"file data is {len(source)} bytes, not {size}",
                                 context=repr(path))
        if size is not None and size < 0:
            raise ErofsError(f"negative file size {size}", context=repr(path))
        room = self._rooms[index]
        if isinstance(source, bytes) and len(source) <= room and self._short_files and (
                not self._zero_holes or not source or source.count(0) != len(source)):
            self._add_short(path, index, source)
            return
        meta = self._meta_list[index]
        try:
            if isinstance(source, bytes):
                size = len(source)
            elif self._sparse is not None and size is None:
                source, size = measured(source)
            if self._sparse is not None and size is not None and size >= SPARSE_MIN_SIZE:
                extent = self._sparse.write(source, size, room)
            else:
                extent = self._data.write(source, size, room)
        except ErofsError as e:
            raise e.with_context(repr(path)) from None
        except OSError as e:
            raise self._write_error(e, path) from e
        self._tree.put(path, FileNode(meta, extent), checked=True)

    def _add_short(self, path: bytes, meta: int, data: bytes) -> None:
        """A short file: FLAT_INLINE (FLAT_PLAIN when empty) whatever the data writer,
        and a copy would still carry its own bytes, so nothing is shared."""
        n = len(data)
        try:
            if not n:
                at = 0
            elif self._short_fragments:
                assert isinstance(self._data, CompressedData)
                at = self._data.pack_whole(data)
            else:
                at = self._tails.put(data)
        except OSError as e:
            raise self._write_error(e, path) from e
        self._tree.put_short(path, meta, at, n)
        self._short_bytes += n

    def add_hardlink(self, path: bytes, target: bytes) -> None:
        """Make ``path`` another name of the existing non-directory ``target``."""
        self._link_target(path, target)
        node = self._tree.share(target, self._short_node)
        if path != target:
            self._tree.put(path, node)

    def _short_node(self, meta: int, tail_at: int, size: int) -> FileNode:
        """A short file's record as a node (it gets a second name)."""
        if not size:
            return FileNode(self._meta_list[meta], Extent(DataLayout.FLAT_PLAIN, 0, 0, -1))
        if self._short_fragments:  # tail_at is its offset in the packed inode
            extent = Extent(DataLayout.COMPRESSED_FULL, size, 0, -1)
            extent.fragment_at = tail_at
            return FileNode(self._meta_list[meta], extent)
        return FileNode(self._meta_list[meta], Extent(DataLayout.FLAT_INLINE, size, 0,
                                                      self._spool.put(self._tails.get(tail_at, size))))

    # -- finishing ------------------------------------------------------------------

    def _stop(self) -> None:
        if self._sparse is not None:
            self._sparse.close()
        self._data.close()
        self._spool.close()
        self._tails.close()

    def _write_rest(self) -> ErofsSummary:
        """Write directories, xattrs, inodes and the superblock."""
        summary = _Finisher(self).run()
        self._stop()
        return summary


class _Hasher:
    """The sha256 of an image being finished: the bytes up to ``upto`` (final, in the
    file through the output's descriptor), then each stretch that :meth:`advance` says
    is final, read on a thread of its own; the rest when :meth:`finish` is called.
    hashlib releases the GIL, so the reading overlaps the metadata's Python on a
    second core. Meanwhile another thread syncs the file: the cache syncs each entry's
    files as it publishes them, and most of the image's bytes are on disk by then (as
    when the finished image was hashed while it synced)."""

    def __init__(self, out: BinaryIO, upto: int) -> None:
        out.flush()
        self._fd = os.dup(out.fileno())
        self._hash = hashlib.sha256()
        self._at = 0
        #: the bytes known to be final; -1 once stopped (see close)
        self._upto = upto
        self._done = False  # finish() has the rest
        self._more = threading.Condition()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._guarded, name="ocisquash-digest",
                                        daemon=True)
        self._thread.start()
        self._syncer = threading.Thread(target=self._sync, name="ocisquash-fsync",
                                        daemon=True)
        self._syncer.start()

    def _sync(self) -> None:
        with contextlib.suppress(OSError):  # publishing syncs again, and says so
            os.fsync(self._fd)

    def advance(self, upto: int) -> None:
        """The image's first ``upto`` bytes are final, in the file."""
        with self._more:
            if upto > self._upto >= 0:
                self._upto = upto
                self._more.notify()

    def _guarded(self) -> None:
        try:
            while True:
                with self._more:
                    while self._upto == self._at and not self._done:
                        self._more.wait()
                    if self._upto < 0 or (self._done and self._upto == self._at):
                        return
                self._read()
        except BaseException as e:  # handed to finish()
            self._error = e

    def _read(self) -> None:
        """Hash up to ``_upto`` (as it is when each chunk is read)."""
        while 0 <= self._at < self._upto:
            chunk = os.pread(self._fd, min(1 << 20, self._upto - self._at), self._at)
            if not chunk:
                raise ErofsError("the image ended before its bytes were all hashed")
            self._hash.update(chunk)
            self._at += len(chunk)

    def finish(self, end: int) -> bytes:
        """The digest of the image's ``end`` bytes (the output flushed)."""
        with self._more:
            self._done = True
            self._more.notify()
        self._thread.join()
        try:
            if self._error is not None:
                raise self._error
            self._upto = end
            self._read()
        finally:
            self.close()
        return self._hash.digest()

    def close(self) -> None:
        """Stop (the image is not finished after all) and let go of the descriptor."""
        with self._more:
            self._upto = -1
            self._more.notify()
        self._thread.join()
        self._syncer.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _NoGaps:
    """No gaps kept: in the metabox, the zeros a block's end is left as cost next to
    nothing once compressed, and records placed in order cost no bookkeeping."""

    def add(self, start: int, end: int) -> None:
        pass

    def take(self, place: Callable[[int, int], tuple[int, int] | None]) -> int | None:
        return None

    def take_len(self, n: int) -> int | None:
        return None


class _Gaps:
    """The unused ends of metadata blocks, for records placed later: kept by size
    class, the newest of each class tried first, from the smallest class that may
    hold the record up. Bounded work per record (one try per class) and memory (a
    gap is a pair of ints; gaps under :data:`MIN_GAP` are dropped)."""

    MIN_GAP = 64
    CLASS = 256

    def __init__(self) -> None:
        self._by_class: list[list[tuple[int, int]]] = [
            [] for _ in range(BLOCK_SIZE // self.CLASS)]

    def add(self, start: int, end: int) -> None:
        if end - start >= self.MIN_GAP:
            self._by_class[(end - start) // self.CLASS].append((start, end))

    def take(self, place: Callable[[int, int], tuple[int, int] | None]) -> int | None:
        """Place a record with ``place(start, end)`` (where it would start and end in
        that gap, or None) in the first gap that holds it; returns where it starts."""
        for bucket in self._by_class:
            if not bucket:
                continue
            start, end = bucket[-1]
            span = place(start, end)
            if span is not None:
                bucket.pop()
                self.add(span[1], end)
                return span[0]
        return None

    def take_len(self, n: int) -> int | None:
        """:meth:`take` for a record of ``n`` bytes, 32-byte aligned, that is not
        compressed: every gap ends at a block's end, so it fits iff it ends there or
        before (its tail then stays in the block). Classes whose gaps are all shorter
        than ``n`` are not tried."""
        by_class = self._by_class
        for c in range(n // self.CLASS, len(by_class)):
            bucket = by_class[c]
            if bucket:
                start, end = bucket[-1]
                start = -(-start // INODE_SLOT) * INODE_SLOT
                if start + n <= end:
                    bucket.pop()
                    self.add(start + n, end)
                    return start
        return None


#: "struct erofs_inode_compact", packed here without ``format.compact_inode``'s call
_COMPACT = COMPACT_INODE
_REG = MODE_TYPE[FileType.REG_FILE]
_U64 = struct.Struct("<Q")
#: the parts of ``_COMPACT``: before i_size, i_size to i_ino (i_u 0), after
_PRE = struct.Struct("<HHHH")
_SIZE_INO = struct.Struct("<II4xI")
_POST = struct.Struct("<HH4x")
#: a short file's dirent type
_REG_FILE = int(FileType.REG_FILE)
#: metadata records written at once
_WRITE_BATCH = 1 << 20
#: the metabox's writes (of about _WRITE_BATCH bytes each) that may wait to be read
_BOX_PIECES = 2


class _Times:
    """The mtimes that compact inodes hold: the build time alone (their i_mtime 0, which
    every kernel reads as the superblock's epoch), or with ``mtimes`` (an image for
    Linux 6.15+) any up to 2^32 - 1 seconds after ``base``: the earliest of them and the
    build time (the build time stays within that many seconds after it, in the
    superblock's u32 "build_time")."""

    __slots__ = ("base", "relative")

    def __init__(self, build_time: int, mtimes: list[int] | None) -> None:
        #: the superblock's epoch
        self.base = build_time
        self.relative = mtimes is not None
        if mtimes:
            self.base = max(min(build_time, min(mtimes)), build_time - 0xFFFF_FFFF, 0)

    def fits(self, mtime: int) -> bool:
        if self.relative:
            return 0 <= mtime - self.base <= 0xFFFF_FFFF
        return mtime == self.base


class _Short:
    """What a short file's inode takes from its metadata, worked out once per value."""

    __slots__ = ("body", "count", "extended", "head", "layout", "meta", "mode", "pad", "post",
                 "pre", "time")

    def __init__(self, meta: EntryMeta, body: bytes, times: _Times, fragment: bool) -> None:
        self.meta = meta
        #: FLAT_INLINE, or with its bytes in the packed inode a compressed inode whose map
        #: header says so (unless it is empty: FLAT_PLAIN either way)
        self.layout = DataLayout.COMPRESSED_FULL if fragment else DataLayout.FLAT_INLINE
        self.mode = _REG | meta.mode
        self.body = body
        self.count = icount(body)
        # A short file has one name and fewer than 4 GiB: only these make it extended.
        self.extended = not times.fits(meta.mtime) or meta.uid > 0xFFFF or meta.gid > 0xFFFF
        #: its compact inode's i_mtime
        self.time = meta.mtime - times.base
        #: the inode and its xattrs, before the inline tail
        self.head = (EXTENDED_INODE_SIZE if self.extended else COMPACT_INODE_SIZE) + len(body)
        #: the zeros before a map header ("8-byte aligned" after the inode and xattrs)
        self.pad = bytes(-self.head % 8)
        if not self.extended:
            # A compact record around its i_size, i_mtime, i_u and i_ino (_SIZE_INO):
            # i_format, i_xattr_icount, i_mode, i_nlink before; i_uid, i_gid, the
            # reserved field and the xattrs after.
            self.pre = _PRE.pack(self.layout << 1, self.count, self.mode, 1)
            self.post = _POST.pack(meta.uid, meta.gid) + body


class _Finisher:
    """The finish sequence: order, count, lay out, write (see the module docstring).

    Each pass walks the entries in the order of their numbers: the root, then each
    directory's children by name (a hard-linked node where it is first met), the
    directories in that order; the packed inode last. Short files are records in
    their directories' logs (``tree.py``), so a pass holds no object per file: their
    nids are kept in ``Dir.nids``, and those placed in an earlier block's gap are
    listed to be written in nid order among the others."""

    def __init__(self, writer: ErofsWriter) -> None:
        self.w = writer
        self.out = writer._out
        self.epoch = writer._epoch
        self.nodes = writer._tree.nodes
        self.root = writer._tree.root
        self.xattrs = SharedXattrs()
        #: the directories in breadth-first order (that of their numbers)
        self.dirs: list[Dir] = []
        #: the directories by their records' handles (see Dir.resolve)
        self.refs: list[Dir] = []
        #: the directories and symlinks in the order of their numbers (their blocks
        #: outside the inode go in that order)
        self.outside: list[Node] = []
        #: the packed inode (fragments), numbered last
        self.packed: FileNode | None = None
        #: the image's digest, read behind the metadata as it is written (None: none asked)
        self.hasher: _Hasher | None = None
        self.inodes = 0
        self.stats = {"files": 0, "directories": 0, "symlinks": 0, "devices": 0,
                      "hardlinks": 0, "extended": 0}
        #: first block of a symlink's out-of-line blocks, by node id
        self.blocks_at: dict[int, int] = {}
        #: whether any inode is compressed (the superblock then says how)
        self.compressed = False
        #: whether any compressed file has its last pcluster inline (ZTAILPACKING)
        self.tailpacked = False
        #: whether any file is chunk-based (CHUNKED_FILE)
        self.chunked = False
        self.algorithm = writer._codec.algorithm if writer._codec is not None else 0
        #: whether the inodes go in the metabox (see _run_boxed)
        self.boxed = writer._options.metabox and isinstance(writer._data, CompressedData)
        #: the times compact inodes can hold
        self.times = _Times(self.epoch, [m.mtime for m in writer._meta_list] if self.boxed
                            else None)
        #: what a directory entry's nid carries besides the inode's slot: the metabox
        #: bit when every inode a directory names is in the metabox
        self.nid_bit = NID_METABOX if self.boxed else 0
        #: by metadata index, once the shared xattrs are sealed
        self.shorts: list[_Short] = []
        #: records placed in an earlier block's gap: nid, number and where the record
        #: is (a short file: its directory's index in ``dirs`` << 32 | log position;
        #: else ``-1 - i`` for ``gap_nodes[i]``)
        self.gap_nids = array("Q")
        self.gap_numbers = array("Q")
        self.gap_where = array("q")
        self.gap_nodes: list[Node] = []

    def run(self) -> ErofsSummary:
        data = self.w._data
        data.flush()
        self._order()
        packed = None
        if isinstance(data, CompressedData):
            extent = data.pack_fragments()
            if extent is not None:
                # The packed inode is in no directory; the superblock points at it.
                packed = FileNode(self.w._meta(EntryMeta(0o600, mtime=self.epoch)), extent)
                packed.nlink = 1
                self.inodes += 1
                packed.number = self.inodes
                self.packed = packed
                self.compressed = True
        self.xattrs.seal()
        self.shorts = [_Short(m, self.xattrs.body(m.xattrs), self.times,
                              self.w._short_fragments) for m in self.w._meta_list]

        # Blocks that directories and long symlinks need outside their inode.
        cursor = data.position // BLOCK_SIZE
        for node in self.outside:
            n = self._outside_blocks(node)
            if n:
                if isinstance(node, Dir):
                    node.blocks_at = cursor
                else:
                    self.blocks_at[id(node)] = cursor
                cursor += n
        # The shared xattrs open the metadata area (xattr_blkaddr == meta_blkaddr), and
        # the inodes follow. Nid 0 stays unused: readdir() skips entries numbered 0.
        area = self.xattrs.area()
        if self.boxed:
            assert isinstance(data, CompressedData)
            return self._run_boxed(data, cursor, area)
        meta_blkaddr = cursor
        meta_end = meta_blkaddr * BLOCK_SIZE + self._layout(max(len(area), INODE_SLOT))

        end = -(-meta_end // BLOCK_SIZE) * BLOCK_SIZE
        self._write_superblock(end, meta_blkaddr, bool(area), packed)
        # Everything before the metadata is final now: hash it while the rest is written.
        hasher = self.hasher = _Hasher(self.out, data.position) if self.w._digest else None
        try:
            self._write_metadata(data.position, meta_blkaddr * BLOCK_SIZE, area, meta_end)
            self.out.write(bytes(end - meta_end))
            # A duplicate file rewound the data area: drop bytes past the image end.
            self.out.truncate(end)
            self.out.flush()
        except BaseException:
            if hasher is not None:
                hasher.close()
            raise
        sha256 = hasher.finish(end) if hasher is not None else None
        return self._summary(data, end, sha256)

    def _summary(self, data: FlatData | CompressedData, end: int, sha256: bytes | None
                 ) -> ErofsSummary:
        s = self.stats
        return ErofsSummary(
            bytes_written=end, inodes=self.inodes, files=s["files"],
            directories=s["directories"], symlinks=s["symlinks"], devices=s["devices"],
            hardlinks=s["hardlinks"], data_bytes_in=data.bytes_in + self.w._short_bytes,
            duplicates=data.duplicates, compression=self.w._options.compression.value,
            extended_inodes=s["extended"], shared_xattrs=len(self.xattrs),
            compressed_files=data.compressed_files, sha256=sha256,
            chunked_files=(data.chunked_files if isinstance(data, FlatData)
                           else self.w._sparse.chunked_files if self.w._sparse is not None
                           else 0),
        )

    def _run_boxed(self, data: CompressedData, cursor: int, area: bytes) -> ErofsSummary:
        """The finish with a metabox: the inodes are laid out from the metabox's byte 0
        (their nids carry the metabox bit, so none is 0) and written through the
        compressor, as the data of the metabox inode, after the out-of-line blocks::

            file data · directory and symlink blocks · the metabox's pclusters ·
            metadata area: shared xattrs, the packed inode, the metabox inode

        The superblock, which points at the metabox inode, is written last."""
        packed, self.packed = self.packed, None  # in the metadata area, not in the box
        box_end = self._layout(0)
        self.out.seek(data.position)
        self._write_outside_blocks()
        data.skip_to(cursor * BLOCK_SIZE)
        stream = _BoxStream(functools.partial(self._write_inodes, 0))
        try:
            extent = data.write_alone(stream, box_end)  # type: ignore[arg-type]
            data.flush()
            stream.finish()
        finally:
            stream.close()
        box = FileNode(self.w._meta(EntryMeta(0o600, mtime=self.epoch)), extent)
        box.nlink = 1
        self.inodes += 1
        box.number = self.inodes
        self.compressed = True  # the metabox is: the superblock says how
        meta_blkaddr = data.position // BLOCK_SIZE
        base = meta_blkaddr * BLOCK_SIZE
        gaps = _Gaps()
        pos = max(len(area), INODE_SLOT)
        for node in (packed, box):
            if node is not None:
                pos = self._place(node, pos, gaps)  # neither has an inline tail
        meta_end = base + pos
        end = -(-meta_end // BLOCK_SIZE) * BLOCK_SIZE
        self.out.seek(base)
        self.out.write(area)
        records = _Records(self.out, base)
        for node in (packed, box):
            if node is not None:
                records.put(node.ref, self._record(node, base + node.ref * INODE_SLOT))
        records.close()
        assert self.out.tell() == meta_end
        self.out.write(bytes(end - meta_end))
        self.out.truncate(end)
        self._write_superblock(end, meta_blkaddr, bool(area), packed, box)
        self.out.flush()
        sha256 = _Hasher(self.out, end).finish(end) if self.w._digest else None
        return self._summary(data, end, sha256)

    def _write_outside_blocks(self) -> None:
        """The blocks of directories and symlinks that do not go inline, in order."""
        for node in self.outside:
            if isinstance(node, Dir):
                if node.blocks_at:
                    self._write_outside(node)
            elif id(node) in self.blocks_at:
                self._write_outside(node)

    def _write_metadata(self, at: int, base: int, area: bytes, meta_end: int) -> None:
        """Out-of-line blocks from ``at``, then the shared xattrs and the inodes from
        ``base``, up to ``meta_end``."""
        self.out.seek(at)
        self._write_outside_blocks()
        assert self.out.tell() == base
        self.out.write(area)
        self._write_inodes(base)
        assert self.out.tell() == meta_end

    def _write_superblock(self, end: int, meta_blkaddr: int, xattrs: bool,
                          packed: FileNode | None, box: FileNode | None = None) -> None:
        """The superblock (and the compressor's record after it), once the inodes are
        placed: nothing in it depends on their bytes."""
        incompat = algs = 0
        codec = self.w._codec
        if self.compressed and codec is not None:
            # Data padded at the front, multi-block pclusters, the algorithm's record.
            incompat = INCOMPAT_ZERO_PADDING | INCOMPAT_BIG_PCLUSTER | INCOMPAT_COMPR_CFGS
            if packed is not None:
                incompat |= INCOMPAT_FRAGMENTS
            if self.tailpacked:
                incompat |= INCOMPAT_ZTAILPACKING
            algs = 1 << codec.algorithm
        if self.chunked:
            incompat |= INCOMPAT_CHUNKED_FILE
        superblock = Superblock(
            root_nid=self.root.ref | self.nid_bit,
            inodes=self.inodes,
            epoch=self.times.base,
            build_time=self.epoch - self.times.base,
            feature_compat=COMPAT_MTIME if self.times.relative else 0,
            blocks=end // BLOCK_SIZE,
            meta_blkaddr=meta_blkaddr,
            xattr_blkaddr=meta_blkaddr if xattrs else 0,
            feature_incompat=incompat,
            compr_algs=algs,
            packed_nid=packed.ref if packed is not None else 0,
            metabox_nid=box.ref if box is not None else 0,
            uuid=self.w._options.uuid,
        )
        head = superblock.pack()
        self.out.seek(SUPER_OFFSET)
        self.out.write(head)
        if self.compressed and codec is not None:
            self.out.write(codec.config)  # the algorithm's record follows the superblock

    # -- numbering --------------------------------------------------------------------

    def _order(self) -> None:
        """Number the entries breadth-first from the root, each directory's children by
        name; count links and xattr uses. A hard-linked node is numbered where it is
        first met."""
        root = self.root
        root.nlink = 0
        self._visit(root)
        dirs = self.dirs
        dirs.append(root)
        outside = self.outside
        outside.append(root)
        metas = self.w._meta_list
        nodes = self.nodes
        refs = self.refs
        count = self.xattrs.count
        stats = self.stats
        i = 0
        while i < len(dirs):
            node = dirs[i]
            i += 1
            names = node.resolve(refs)
            # "." and ".." among the names, in byte order
            bisect.insort(names, b".")
            bisect.insort(names, b"..")
            node.size = directory_size(names, split_blocks(names))
            subdirs = shorts = 0
            data = node.data
            node_metas = node.metas
            assert node.order is not None
            for at in node.order:
                v = data[at]
                if v >= 0:
                    shorts += 1
                    self.inodes += 1
                    xattrs = metas[node_metas[at]].xattrs
                    if xattrs:
                        count(xattrs)
                elif v <= DIR_BASE:
                    sub = refs[DIR_BASE - v]
                    subdirs += 1
                    self._visit(sub)
                    dirs.append(sub)
                    outside.append(sub)
                else:
                    child = nodes[-1 - v]
                    assert child is not None
                    if child.nlink:
                        child.nlink += 1
                        stats["hardlinks"] += 1
                    else:
                        child.nlink = 1
                        self._visit(child)
                        if isinstance(child, SymlinkNode):
                            outside.append(child)
            stats["files"] += shorts
            node.nlink = 2 + subdirs
            node.nids = array("Q", bytes(8 * len(node.order)))

    def _visit(self, node: Node) -> None:
        self.inodes += 1
        node.number = self.inodes
        xattrs = node.meta.xattrs
        if xattrs:
            self.xattrs.count(xattrs)
        if isinstance(node, FileNode):
            extent = node.extent
            if extent.layout in MAPPED_LAYOUTS:
                self.compressed = True
                self.tailpacked |= extent.idata_len > 0
            elif isinstance(extent, ChunkedExtent):
                self.chunked = True
            kind = "files"
        else:
            kind = ("directories" if isinstance(node, Dir) else "symlinks"
                    if isinstance(node, SymlinkNode) else "devices")
        self.stats[kind] += 1

    # -- layout -----------------------------------------------------------------------

    def _layout(self, pos: int) -> int:
        """Give every inode its nid: in the order of their numbers, 32-byte aligned,
        tails kept within one block; a record that does not fit what is left of a
        block starts the next, and the rest of the block is kept for later records
        that fit it (see _Gaps). Returns the end of the metadata area (from its
        start)."""
        gaps: _Gaps | _NoGaps = _NoGaps() if self.boxed else _Gaps()
        take = gaps.take_len
        heads = [short.head for short in self.shorts]
        fragment = self.w._short_fragments
        #: with fragments, a short file's record: the inode, xattrs and map header
        framed = [head + -head % 8 + 8 for head in heads]
        nodes = self.nodes
        refs = self.refs
        root = self.root
        root.parent_number = 0
        pos = self._place(root, pos, gaps)
        number = 1
        for index, d in enumerate(self.dirs):
            data = d.data
            metas = d.metas
            nids = d.nids
            order = d.order
            assert order is not None and nids is not None
            for j, at in enumerate(order):
                v = data[at]
                if v >= 0:
                    number += 1
                    size = v & SIZE_MASK
                    if fragment:
                        length = framed[metas[at]] if size else heads[metas[at]]
                        size = 0  # nothing inline
                    else:
                        length = heads[metas[at]] + size
                    start = take(length)
                    if start is not None:
                        nids[j] = start // INODE_SLOT * 2 + 1
                        self.gap_nids.append(start // INODE_SLOT)
                        self.gap_numbers.append(number)
                        self.gap_where.append(index << 32 | at)
                        continue
                    start = -(-pos // INODE_SLOT) * INODE_SLOT
                    if size and (start + length - size) % BLOCK_SIZE + size > BLOCK_SIZE:
                        # the tail would cross into the next block
                        gaps.add(pos, -(-pos // BLOCK_SIZE) * BLOCK_SIZE)
                        start = -(-pos // BLOCK_SIZE) * BLOCK_SIZE
                    nids[j] = start // INODE_SLOT * 2
                    pos = start + length
                elif v <= DIR_BASE:
                    number += 1
                    sub = refs[DIR_BASE - v]
                    sub.parent_number = d.ref
                    pos = self._place(sub, pos, gaps)
                else:
                    child = nodes[-1 - v]
                    assert child is not None
                    if child.ref < 0:
                        number += 1
                        pos = self._place(child, pos, gaps)
        if self.packed is not None:
            pos = self._place(self.packed, pos, gaps)
        root.parent_number = root.ref
        return pos

    def _place(self, node: Node, pos: int, gaps: _Gaps | _NoGaps) -> int:
        """Give ``node`` its nid (its ``ref``); returns the new end of the area."""
        inode = self._inode(node)
        at = gaps.take(functools.partial(self._span, node, inode))
        if at is None:
            span = self._span(node, inode, pos, None)
            if span is None:  # its tail would cross into the next block
                gaps.add(pos, -(-pos // BLOCK_SIZE) * BLOCK_SIZE)
                pos = -(-pos // BLOCK_SIZE) * BLOCK_SIZE
                span = self._span(node, inode, pos, None)
                assert span is not None
            at, pos = span
        else:
            self.gap_nids.append(at // INODE_SLOT)
            self.gap_numbers.append(node.number)
            self.gap_where.append(-1 - len(self.gap_nodes))
            self.gap_nodes.append(node)
        node.ref = at // INODE_SLOT
        return pos

    @staticmethod
    def _span(node: Node, inode: _Inode, pos: int, limit: int | None
              ) -> tuple[int, int] | None:
        """Where ``node``'s record starts and ends if placed from ``pos`` on (32-byte
        aligned): its inline tail or pcluster may not cross a block boundary, nor the
        record pass ``limit``. None when it cannot go there."""
        start = -(-pos // INODE_SLOT) * INODE_SLOT
        head = start + inode.isize + len(inode.xattrs)
        if inode.compressed:
            assert isinstance(node, FileNode)
            extent = node.extent
            end = head + index_extra(head, extent)
            inline = extent.idata_len
        else:
            end, inline = head, inode.inline_len
        if inline and end % BLOCK_SIZE + inline > BLOCK_SIZE:
            return None
        end += inline + inode.block_map  # a chunk-based inode's block map follows
        if limit is not None and end > limit:
            return None
        return start, end

    # -- the inodes -------------------------------------------------------------------

    def _outside_blocks(self, node: Node) -> int:
        inode = self._inode(node)
        return (inode.size - inode.inline_len + BLOCK_SIZE - 1) // BLOCK_SIZE

    def _inode(self, node: Node) -> _Inode:
        """The fields of ``node``'s inode (nids and block addresses aside)."""
        meta = node.meta
        inode = _Inode()
        inode.mode = _MODE[node.type] | meta.mode
        inode.nlink = node.nlink
        if meta.xattrs:
            inode.xattrs = self.xattrs.body(meta.xattrs)
        if isinstance(node, FileNode):
            # Most nodes (every file with blocks of data), without calls.
            extent = node.extent
            inode.layout = layout = extent.layout
            inode.size = size = extent.size
            inode.i_u = extent.startblk
            if extent.tail_at >= 0:  # Extent.tail_len
                inode.inline_len = size % BLOCK_SIZE
            inode.compressed = layout in MAPPED_LAYOUTS
            if isinstance(extent, ChunkedExtent):
                # "struct erofs_inode_chunk_info": the format, chunkbits and no flags
                inode.i_u = extent.chunk_bits
                inode.block_map = extent.index_len
            # _extended, written out
            inode.extended = (not self.times.fits(meta.mtime) or meta.uid > 0xFFFF
                              or meta.gid > 0xFFFF or inode.nlink > 0xFFFF
                              or size > 0xFFFF_FFFF)
            return inode
        if isinstance(node, SpecialNode):
            inode.i_u = node.rdev
        else:
            if isinstance(node, Dir):
                inode.size = node.size
                inode.i_u = node.blocks_at
            else:
                assert isinstance(node, SymlinkNode)
                inode.size = len(node.target)
                inode.i_u = self.blocks_at.get(id(node), 0)
            tail = inode.size % BLOCK_SIZE
            inode.extended = self._extended(meta, inode)
            if tail and inode.isize + len(inode.xattrs) + tail <= BLOCK_SIZE:
                inode.layout = DataLayout.FLAT_INLINE
                inode.inline_len = tail
        inode.extended = self._extended(meta, inode)
        return inode

    def _extended(self, meta: EntryMeta, inode: _Inode) -> bool:
        return (not self.times.fits(meta.mtime) or meta.uid > 0xFFFF or meta.gid > 0xFFFF
                or inode.nlink > 0xFFFF or inode.size > 0xFFFF_FFFF)

    def _record(self, node: Node, start: int) -> bytes:
        """``node``'s whole record as it is stored from the image offset ``start``: the
        inode, its xattrs and what follows them (inline tail, block map, cluster
        index)."""
        inode = self._inode(node)
        meta = node.meta
        xattrs = inode.xattrs
        count = icount(xattrs) if xattrs else 0
        if inode.extended:
            self.stats["extended"] += 1
            head = extended_inode(inode.layout, count, inode.mode, inode.nlink, inode.size,
                                  inode.i_u, node.number, meta.uid, meta.gid, meta.mtime)
        else:  # format.compact_inode, its struct at hand
            head = _COMPACT.pack(inode.layout << 1, count, inode.mode, inode.nlink,
                                 inode.size, meta.mtime - self.times.base, inode.i_u,
                                 node.number, meta.uid, meta.gid, 0)
        record = bytearray(head)
        if xattrs:
            record += xattrs
        spool = self.w._spool
        if inode.inline_len:
            record += (spool.get(node.extent.tail_at, inode.inline_len)
                       if isinstance(node, FileNode) else self._inline(node, inode))
        if inode.block_map:
            assert isinstance(node, FileNode)
            record += spool.get(node.extent.index_at, inode.block_map)
        if inode.compressed:
            assert isinstance(node, FileNode)
            extent = node.extent
            record += bytes(-(start + len(record)) % 8) + map_header(extent, self.algorithm)
            if extent.index_len:
                full = spool.get(extent.index_at, extent.index_len)
                record += index_bytes(extent, full, start + len(record))
            if extent.idata_len:
                record += spool.get(extent.idata_at, extent.idata_len)
        return bytes(record)

    def _short_record(self, short: _Short, size: int, tail_at: int, number: int) -> bytes:
        """A short file's record: its inode, xattrs and whole data (or the map header
        that says where in the packed inode it is)."""
        meta = short.meta
        layout = short.layout if size else DataLayout.FLAT_PLAIN
        if short.extended:
            self.stats["extended"] += 1
            head = extended_inode(layout, short.count, short.mode, 1, size, 0, number,
                                  meta.uid, meta.gid, meta.mtime)
        else:
            head = _COMPACT.pack(layout << 1, short.count, short.mode, 1, size, short.time, 0,
                                 number, meta.uid, meta.gid, 0)
        if not size:
            return head + short.body
        if short.layout == DataLayout.COMPRESSED_FULL:
            return head + short.body + short.pad + _U64.pack(WHOLE_FRAGMENT | tail_at)
        return head + short.body + self.w._tails.get(tail_at, size)

    # -- writing ----------------------------------------------------------------------

    def _write_inodes(self, base: int, out: BinaryIO | _BoxStream | None = None) -> None:
        """Every record at its nid, in nid order: those placed as the numbers go (their
        nids grow), merged with the ones placed in gaps, sorted by nid; to ``out``
        (the image by default) from ``base``, where nid 0 is."""
        # The image's records are hashed behind their writing (see _Hasher).
        written = self.hasher.advance if out is None and self.hasher is not None else None
        records = _Records(self.out if out is None else out, base, written)
        put = records.put
        buf = records.buf
        gap_nids = self.gap_nids
        gaps = sorted(range(len(gap_nids)), key=gap_nids.__getitem__)
        gaps.append(-1)
        gap_nids.append(1 << 63)  # after every nid
        g = 0
        next_gap = gap_nids[gaps[0]]
        in_gaps = {id(node) for node in self.gap_nodes}
        shorts = self.shorts
        tails_get = self.w._tails.get
        fragment = self.w._short_fragments
        u64 = _U64.pack
        size_ino = _SIZE_INO.pack
        nodes = self.nodes
        refs = self.refs
        number = 1
        root = self.root
        # The root is placed first, but records may fill the gap it left before it (its
        # inline tail did not fit the rest of the block after the shared xattrs).
        while next_gap < root.ref:
            self._write_gap(gaps[g], records)
            g += 1
            next_gap = gap_nids[gaps[g]]
        put(root.ref, self._record(root, base + root.ref * INODE_SLOT))
        for d in self.dirs:
            data = d.data
            metas = d.metas
            nids = d.nids
            order = d.order
            assert order is not None and nids is not None
            for j, at in enumerate(order):
                v = data[at]
                if v >= 0:
                    number += 1
                    nid = nids[j]
                    if nid & 1:
                        continue
                    nid >>= 1
                    while next_gap < nid:
                        self._write_gap(gaps[g], records)
                        g += 1
                        next_gap = gap_nids[gaps[g]]
                    size = v & SIZE_MASK
                    short = shorts[metas[at]]
                    if short.extended or not size:
                        put(nid, self._short_record(short, size, v >> SIZE_BITS, number))
                        continue
                    # the compact inode of most files, and records.put(), written out here
                    gap = base + nid * INODE_SLOT - records.start - len(buf)
                    if gap:
                        buf += bytes(gap)
                    buf += short.pre
                    buf += size_ino(size, short.time, number)
                    buf += short.post
                    if fragment:
                        buf += short.pad
                        buf += u64(WHOLE_FRAGMENT | v >> SIZE_BITS)
                    else:
                        buf += tails_get(v >> SIZE_BITS, size)
                    if len(buf) >= _WRITE_BATCH:
                        records.flush()
                    continue
                found = refs[DIR_BASE - v] if v <= DIR_BASE else nodes[-1 - v]
                assert found is not None
                node: Node = found
                if node.number != number + 1:
                    continue  # another name of a node written already
                number += 1
                if id(node) not in in_gaps:
                    while next_gap < node.ref:
                        self._write_gap(gaps[g], records)
                        g += 1
                        next_gap = gap_nids[gaps[g]]
                    put(node.ref, self._record(node, base + node.ref * INODE_SLOT))
        packed = self.packed
        if packed is not None and id(packed) not in in_gaps:
            while next_gap < packed.ref:
                self._write_gap(gaps[g], records)
                g += 1
                next_gap = gap_nids[gaps[g]]
            put(packed.ref, self._record(packed, base + packed.ref * INODE_SLOT))
        while gaps[g] >= 0:
            self._write_gap(gaps[g], records)
            g += 1
        records.close()

    def _write_gap(self, k: int, records: _Records) -> None:
        """Write the ``k``-th record placed in a gap."""
        nid = self.gap_nids[k]
        where = self.gap_where[k]
        if where < 0:
            node = self.gap_nodes[-1 - where]
            records.put(nid, self._record(node, records.base + nid * INODE_SLOT))
            return
        d = self.dirs[where >> 32]
        at = where & 0xFFFF_FFFF
        v = d.data[at]
        records.put(nid, self._short_record(self.shorts[d.metas[at]], v & SIZE_MASK,
                                            v >> SIZE_BITS, self.gap_numbers[k]))

    def _dir_blocks(self, node: Dir) -> Iterator[bytes]:
        """The directory's blocks in order, used bytes only (the last one is not
        padded), made one at a time (a directory may hold a million names)."""
        return pack_blocks(self._dir_entries(node))

    def _dir_entries(self, node: Dir) -> Iterator[DirEntry]:
        """The directory's entries in byte order, "." and ".." among them."""
        log = node.log_names()
        data = node.data
        nids = node.nids
        order = node.order
        assert order is not None and nids is not None
        bit = self.nid_bit
        dots = [(b"..", node.parent_number | bit), (b".", node.ref | bit)]  # popped from the end
        for j, at in enumerate(order):
            name = log[at]
            while dots and dots[-1][0] < name:
                dot, nid = dots.pop()
                yield dot, FileType.DIR, nid
            v = data[at]
            if v >= 0:
                yield name, _REG_FILE, nids[j] >> 1 | bit
            else:
                child = self.refs[DIR_BASE - v] if v <= DIR_BASE else self.nodes[-1 - v]
                assert child is not None
                yield name, _FILE_TYPE[child.type], child.ref | bit
        for dot, nid in reversed(dots):
            yield dot, FileType.DIR, nid

    def _write_outside(self, node: Node) -> None:
        """Write the blocks of a directory or symlink that do not go inline; keep a
        directory's inline tail (its last block) for its inode."""
        inode = self._inode(node)
        if isinstance(node, Dir):
            last = b""
            for block in self._dir_blocks(node):
                if last:
                    self.out.write(last + bytes(BLOCK_SIZE - len(last)))
                last = block
            if inode.inline_len:
                assert len(last) == inode.inline_len
                node.tail = last
            else:
                self.out.write(last + bytes(-len(last) % BLOCK_SIZE))
            return
        assert isinstance(node, SymlinkNode)
        outside = node.target[:len(node.target) - inode.inline_len]
        self.out.write(outside + bytes(-len(outside) % BLOCK_SIZE))

    def _inline(self, node: Node, inode: _Inode) -> bytes:
        if isinstance(node, FileNode):
            return self.w._spool.get(node.extent.tail_at, inode.inline_len)
        if isinstance(node, Dir):
            tail, node.tail = node.tail, None  # kept by _write_outside until here only
            if tail is None:  # all of it inline: one block
                blocks = list(self._dir_blocks(node))
                assert len(blocks) == 1
                tail = blocks[0]
            assert len(tail) == inode.inline_len
            return tail
        assert isinstance(node, SymlinkNode)
        return node.target[len(node.target) - inode.inline_len:]


class _BoxStopped(Exception):
    """The reader of a :class:`_BoxStream` went away."""


class _BoxStream:
    """The metabox's bytes as a file the data writer reads: ``produce`` writes them
    (``write``, ``tell``) on a thread of its own, so that the records' Python runs while
    the compressing threads work; at most :data:`_BOX_PIECES` writes wait."""

    def __init__(self, produce: Callable[[_BoxStream], None]) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(_BOX_PIECES)
        self._written = 0
        self._piece = memoryview(b"")
        self._stopped = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(produce,),
                                        name="ocisquash-metabox", daemon=True)
        self._thread.start()

    # -- the producing thread's side --

    def _run(self, produce: Callable[[_BoxStream], None]) -> None:
        try:
            produce(self)
        except _BoxStopped:
            return
        except BaseException as e:  # raised to the reader
            self._error = e
        with contextlib.suppress(_BoxStopped):
            self._put(None)

    def _put(self, item: bytes | None) -> None:
        while True:
            if self._stopped:
                raise _BoxStopped
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                pass

    def tell(self) -> int:
        return self._written

    def write(self, data: bytes | bytearray) -> None:
        piece = bytes(data)
        self._written += len(piece)
        self._put(piece)

    # -- the reader's side --

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes: fewer only at the end."""
        out = bytearray()
        while len(out) < n:
            if not self._piece:
                item = self._queue.get()
                if item is None:
                    self._queue.put(None)  # the end stays the end
                    if self._error is not None:
                        raise self._error
                    break
                self._piece = memoryview(item)
            take = self._piece[:n - len(out)]
            out += take
            self._piece = self._piece[len(take):]
        return bytes(out)

    def finish(self) -> None:
        """Check that the producer ended, and well, once its bytes are read."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._piece or self._queue.get() is not None:
            raise ErofsError("the metabox is longer than its layout")

    def close(self) -> None:
        self._stopped = True
        self._thread.join()


class _Records:
    """Writes records at their nids, in nid order, zeros between, in batches."""

    def __init__(self, out: BinaryIO | _BoxStream, base: int,
                 written: Callable[[int], None] | None = None) -> None:
        self.out = out
        #: told the image offset up to which records are in the file, after each batch
        self.written = written
        #: where the metadata area starts in the image
        self.base = base
        self.buf = bytearray()
        #: the image offset of ``buf``'s first byte
        self.start = out.tell()

    def put(self, nid: int, record: bytes) -> None:
        at = self.base + nid * INODE_SLOT
        gap = at - self.start - len(self.buf)
        assert gap >= 0
        if gap:
            self.buf += bytes(gap)
        self.buf += record
        if len(self.buf) >= _WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered (``buf`` stays the same object)."""
        self.out.write(self.buf)
        self.start += len(self.buf)
        self.buf.clear()
        if self.written is not None:
            out = self.out
            assert not isinstance(out, _BoxStream)  # only the image's records are hashed
            out.flush()
            self.written(self.start)

    def close(self) -> None:
        self.out.write(self.buf)
        self.buf.clear()
