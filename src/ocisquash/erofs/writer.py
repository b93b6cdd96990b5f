"""The EROFS writer: public API and the finish sequence.

File data streams into the image as files are added, from block 1 on (block 0 holds
the superblock at byte 1024). Everything else is laid out by
:meth:`ErofsWriter.finish`, after the data::

    block 0: superblock · file data · directory and symlink blocks ·
    metadata area (meta_blkaddr = xattr_blkaddr): shared xattrs, then inodes

Writing the data first keeps memory bounded without a temporary copy of the image:
only per-entry metadata (and the spooled tails, see ``data.py``) waits for the end,
and the inodes, whose nids the directories need, are laid out once the tree is
complete. The inodes come last, in breadth-first order from the root, so the root
has a small nid (the superblock's ``rootnid_2b`` holds 16 bits, so shared xattrs
beyond 2 MiB would be refused) and a directory's entries are stored near each other;
but an inode whose inline data does not fit what is left of a block starts the next
block, and later inodes that fit the rest go there (a first fit by size class), so
blocks of inline tails are not left half empty.

Rules enforced here:

* an inode is compact (32 bytes) unless it needs the extended form (64 bytes), as
  mkfs.erofs decides: a size of 4 GiB or more, a uid, gid or link count above 65535,
  or an mtime other than the superblock's epoch (compact inodes hold no time of their
  own on kernels before 6.x, so exact times need the extended form);
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

import functools
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from ..entry import EntryMeta
from ..errors import ErofsError, OutputError
from ..imagewriter import ImageWriter
from ..squashfs.format import InodeType
from ..squashfs.tree import DirNode, Node, SpecialNode, SymlinkNode, Tree
from .compress import (
    Codec,
    CompressedData,
    has_map,
    index_bytes,
    index_extra,
    largest_pcluster,
    map_header,
)
from .data import ChunkedExtent, Extent, FlatData, Spool, measured
from .directory import DirEntry, directory_size, pack_block, split_blocks
from .format import (
    BLOCK_SIZE,
    COMPACT_INODE_SIZE,
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
    SUPER_OFFSET,
    DataLayout,
    FileType,
    Superblock,
    compact_inode,
    extended_inode,
)
from .options import ErofsCompression, ErofsOptions
from .sparse import SPARSE_MIN_SIZE, SparseFiles
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
    duplicates: int
    compression: str
    block_size: int = BLOCK_SIZE
    compressed_files: int = 0
    #: files stored chunk-based, with holes
    chunked_files: int = 0
    extended_inodes: int = 0
    shared_xattrs: int = 0


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
    flattener and ``pack`` feed either one.
    """

    error = ErofsError

    def __init__(self, output: str | os.PathLike[str] | BinaryIO,
                 options: ErofsOptions | None = None) -> None:
        if options is None:
            options = ErofsOptions()
        self._options = options
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
        self._metas: dict[EntryMeta, EntryMeta] = {}
        self._tree = Tree(self._meta(options.default_dir_meta))
        self._spool = Spool()
        self._codec: Codec | None = None
        self._data: FlatData | CompressedData
        if options.compression is ErofsCompression.NONE:
            self._data = FlatData(self._out, BLOCK_SIZE, self._spool, options.dedup,
                                  options.holes)
        else:
            self._codec = Codec(options.compression, options.resolved_level(),
                                largest_pcluster(options.pcluster_size, options.fragments))
            self._data = CompressedData(
                self._out, BLOCK_SIZE, self._spool, codec=self._codec,
                pcluster_size=options.pcluster_size, dedup=options.dedup,
                workers=options.workers or os.cpu_count() or 1, fragments=options.fragments,
                ztailpacking=options.ztailpacking)
        #: with a compressor: the files that are mostly holes (see ``sparse.py``)
        self._sparse: SparseFiles | None = None
        if isinstance(self._data, CompressedData) and options.holes:
            self._sparse = SparseFiles(self._out, self._data, self._spool, options.dedup)
        self._closed = False

    # -- adding entries -------------------------------------------------------------

    def _meta(self, meta: EntryMeta) -> EntryMeta:
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
        return self._metas.setdefault(meta, meta)

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
        self._check_open()
        self._check_path(path)
        meta = self._meta(meta)
        self._tree.placeable(path)
        source: bytes | BinaryIO = data
        if isinstance(data, _BYTES_LIKE):
            source = data if type(data) is bytes else bytes(data)
            if size is not None and size != len(source):
                raise ErofsError(f"file data is {len(source)} bytes, not {size}",
                                 context=repr(path))
        if size is not None and size < 0:
            raise ErofsError(f"negative file size {size}", context=repr(path))
        # The tail goes inline if it fits in a block with the largest inode and this
        # file's xattrs all inline (sharing only makes the body smaller).
        room = BLOCK_SIZE - EXTENDED_INODE_SIZE - inline_size_bound(meta.xattrs)
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

    def add_hardlink(self, path: bytes, target: bytes) -> None:
        """Make ``path`` another name of the existing non-directory ``target``."""
        node = self._link_target(path, target)
        if path != target:
            self._tree.put(path, node)

    # -- finishing ------------------------------------------------------------------

    def _stop(self) -> None:
        if self._sparse is not None:
            self._sparse.close()
        self._data.close()
        self._spool.close()

    def _write_rest(self) -> ErofsSummary:
        """Write directories, xattrs, inodes and the superblock."""
        summary = _Finisher(self).run()
        self._stop()
        return summary


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


def _sorted_names(node: DirNode) -> list[bytes]:
    """A directory's names in on-disk order, ``.`` and ``..`` included."""
    names = list(node.children)
    names.append(b".")
    names.append(b"..")
    names.sort()
    return names


class _Finisher:
    """The finish sequence: order, count, lay out, write (see the module docstring)."""

    def __init__(self, writer: ErofsWriter) -> None:
        self.w = writer
        self.out = writer._out
        self.epoch = writer._epoch
        self.xattrs = SharedXattrs()
        self.order: list[Node] = []
        self.stats = {"files": 0, "directories": 0, "symlinks": 0, "devices": 0,
                      "hardlinks": 0, "extended": 0}
        #: first block of a directory's or symlink's out-of-line blocks, by node id
        self.blocks_at: dict[int, int] = {}
        #: whether any inode is compressed (the superblock then says how)
        self.compressed = False
        #: whether any compressed file has its last pcluster inline (ZTAILPACKING)
        self.tailpacked = False
        #: whether any file is chunk-based (CHUNKED_FILE)
        self.chunked = False
        self.algorithm = writer._codec.algorithm if writer._codec is not None else 0

    def run(self) -> ErofsSummary:
        data = self.w._data
        data.flush()
        root = self.w._tree.root
        self._order(root)
        packed = None
        if isinstance(data, CompressedData):
            extent = data.pack_fragments()
            if extent is not None:
                # The packed inode is in no directory; the superblock points at it.
                packed = FileNode(self.w._meta(EntryMeta(0o600, mtime=self.epoch)), extent)
                packed.nlink = 1
                packed.number = len(self.order) + 1
                self.order.append(packed)
                self.compressed = True
        self.xattrs.seal()
        cursor = data.position // BLOCK_SIZE

        # Blocks that directories and long symlinks need outside their inode.
        for node in self.order:
            if isinstance(node, DirNode | SymlinkNode):
                n = self._outside_blocks(node)
                if n:
                    self.blocks_at[id(node)] = cursor
                    cursor += n
        # The shared xattrs open the metadata area (xattr_blkaddr == meta_blkaddr), and
        # the inodes follow. Nid 0 stays unused: readdir() skips entries numbered 0.
        area = self.xattrs.area()
        meta_blkaddr = cursor

        # Nids: inodes in order, 32-byte aligned, tails kept within one block; a
        # record that does not fit what is left of a block starts the next, and the
        # rest of the block is kept for later records that fit it (see _Gaps).
        pos = max(len(area), INODE_SLOT)
        gaps = _Gaps()
        root.parent_number = 0
        for node in self.order:
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
            node.ref = at // INODE_SLOT
            if isinstance(node, DirNode):
                for child in node.children.values():
                    if isinstance(child, DirNode):
                        child.parent_number = node.ref
        meta_end = meta_blkaddr * BLOCK_SIZE + pos
        root.parent_number = root.ref

        # Write: out-of-line blocks, shared xattrs, inodes.
        self.out.seek(data.position)
        for node in self.order:
            if id(node) in self.blocks_at:
                self._write_outside(node)
        base = meta_blkaddr * BLOCK_SIZE
        assert self.out.tell() == base
        self.out.write(area)
        for node in sorted(self.order, key=lambda n: n.ref):
            inode = self._inode(node)
            record = self._record(node, inode)
            start = base + node.ref * INODE_SLOT
            gap = start - self.out.tell()
            if gap:
                self.out.write(bytes(gap))
            self.out.write(record)
            if inode.inline_len:
                self.out.write(self._inline(node, inode))
            if inode.block_map:
                assert isinstance(node, FileNode)
                self.out.write(self.w._spool.get(node.extent.index_at, inode.block_map))
            if inode.compressed:
                assert isinstance(node, FileNode)
                extent = node.extent
                self.out.write(bytes(-self.out.tell() % 8)
                               + map_header(extent, self.algorithm))
                if extent.index_len:
                    full = self.w._spool.get(extent.index_at, extent.index_len)
                    self.out.write(index_bytes(extent, full, self.out.tell()))
                if extent.idata_len:
                    self.out.write(self.w._spool.get(extent.idata_at, extent.idata_len))
        assert self.out.tell() == meta_end
        end = -(-meta_end // BLOCK_SIZE) * BLOCK_SIZE
        self.out.write(bytes(end - meta_end))
        # A duplicate file rewound the data area: drop bytes past the image end.
        self.out.truncate(end)

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
            self.out.seek(SUPER_OFFSET + 128)
            self.out.write(codec.config)
        if self.chunked:
            incompat |= INCOMPAT_CHUNKED_FILE
        superblock = Superblock(
            root_nid=root.ref,
            inodes=len(self.order),
            epoch=self.epoch,
            blocks=end // BLOCK_SIZE,
            meta_blkaddr=meta_blkaddr,
            xattr_blkaddr=meta_blkaddr if area else 0,
            feature_incompat=incompat,
            compr_algs=algs,
            packed_nid=packed.ref if packed is not None else 0,
            uuid=self.w._options.uuid,
        )
        self.out.seek(SUPER_OFFSET)
        self.out.write(superblock.pack())
        self.out.flush()
        s = self.stats
        return ErofsSummary(
            bytes_written=end, inodes=len(self.order), files=s["files"],
            directories=s["directories"], symlinks=s["symlinks"], devices=s["devices"],
            hardlinks=s["hardlinks"], data_bytes_in=data.bytes_in,
            duplicates=data.duplicates, compression=self.w._options.compression.value,
            extended_inodes=s["extended"], shared_xattrs=len(self.xattrs),
            compressed_files=data.compressed_files,
            chunked_files=(data.chunked_files if isinstance(data, FlatData)
                           else self.w._sparse.chunked_files if self.w._sparse is not None
                           else 0),
        )

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

    def _order(self, root: DirNode) -> None:
        """Breadth-first from the root, each directory's children by name; count links
        and xattr uses. A hard-linked node is placed where it is first met."""
        queue: deque[DirNode] = deque([root])
        root.nlink = 0
        self._visit(root)
        while queue:
            node = queue.popleft()
            subdirs = 0
            for name in sorted(node.children):
                child = node.children[name]
                assert not isinstance(child, int)  # only the squashfs writer puts ints
                if isinstance(child, DirNode):
                    subdirs += 1
                    self._visit(child)
                    queue.append(child)
                elif child.nlink:
                    child.nlink += 1
                    self.stats["hardlinks"] += 1
                else:
                    child.nlink = 1
                    self._visit(child)
            node.nlink = 2 + subdirs

    def _visit(self, node: Node) -> None:
        node.number = len(self.order) + 1
        self.order.append(node)
        self.xattrs.count(node.meta.xattrs)
        if isinstance(node, FileNode) and has_map(node.extent):
            self.compressed = True
            self.tailpacked |= node.extent.idata_len > 0
        if isinstance(node, FileNode) and isinstance(node.extent, ChunkedExtent):
            self.chunked = True
        kind = ("files" if isinstance(node, FileNode) else "directories"
                if isinstance(node, DirNode) else "symlinks"
                if isinstance(node, SymlinkNode) else "devices")
        self.stats[kind] += 1

    def _outside_blocks(self, node: DirNode | SymlinkNode) -> int:
        inode = self._inode(node)
        return (inode.size - inode.inline_len + BLOCK_SIZE - 1) // BLOCK_SIZE

    def _inode(self, node: Node) -> _Inode:
        """The fields of ``node``'s inode (nids and block addresses aside)."""
        meta = node.meta
        inode = _Inode()
        inode.mode = MODE_TYPE[_FILE_TYPE[node.type]] | meta.mode
        inode.nlink = node.nlink
        inode.xattrs = self.xattrs.body(meta.xattrs)
        if isinstance(node, FileNode):
            extent = node.extent
            inode.layout = extent.layout
            inode.size = extent.size
            inode.i_u = extent.startblk
            inode.inline_len = extent.tail_len
            inode.compressed = has_map(extent)
            if isinstance(extent, ChunkedExtent):
                # "struct erofs_inode_chunk_info": the format, chunkbits and no flags
                inode.i_u = extent.chunk_bits
                inode.block_map = extent.index_len
        elif isinstance(node, SpecialNode):
            inode.i_u = node.rdev
        else:
            if isinstance(node, DirNode):
                names = _sorted_names(node)
                inode.size = directory_size(names, split_blocks(names))
            else:
                assert isinstance(node, SymlinkNode)
                inode.size = len(node.target)
            tail = inode.size % BLOCK_SIZE
            inode.extended = self._extended(meta, inode)
            if tail and inode.isize + len(inode.xattrs) + tail <= BLOCK_SIZE:
                inode.layout = DataLayout.FLAT_INLINE
                inode.inline_len = tail
            inode.i_u = self.blocks_at.get(id(node), 0)
        inode.extended = self._extended(meta, inode)
        return inode

    def _extended(self, meta: EntryMeta, inode: _Inode) -> bool:
        return (meta.mtime != self.epoch or meta.uid > 0xFFFF or meta.gid > 0xFFFF
                or inode.nlink > 0xFFFF or inode.size > 0xFFFF_FFFF)

    def _record(self, node: Node, inode: _Inode) -> bytes:
        meta = node.meta
        count = icount(inode.xattrs)
        if inode.extended:
            self.stats["extended"] += 1
            head = extended_inode(inode.layout, count, inode.mode, inode.nlink, inode.size,
                                  inode.i_u, node.number, meta.uid, meta.gid, meta.mtime)
        else:
            head = compact_inode(inode.layout, count, inode.mode, inode.nlink, inode.size,
                                 inode.i_u, node.number, meta.uid, meta.gid)
        return head + inode.xattrs

    def _dir_blocks(self, node: DirNode) -> list[bytes]:
        """The directory's blocks, used bytes only (the last one is not padded)."""
        names = _sorted_names(node)
        entries: list[DirEntry] = []
        for name in names:
            if name == b".":
                entries.append((name, FileType.DIR, node.ref))
            elif name == b"..":
                entries.append((name, FileType.DIR, node.parent_number))
            else:
                child = node.children[name]
                assert not isinstance(child, int)
                entries.append((name, _FILE_TYPE[child.type], child.ref))
        blocks = []
        at = 0
        for n in split_blocks(names):
            blocks.append(pack_block(entries[at:at + n]))
            at += n
        return blocks

    def _content(self, node: Node) -> bytes:
        """A directory's or symlink's whole data (at most a few blocks)."""
        if isinstance(node, DirNode):
            blocks = self._dir_blocks(node)
            return b"".join(b + bytes(BLOCK_SIZE - len(b)) for b in blocks[:-1]) + blocks[-1]
        assert isinstance(node, SymlinkNode)
        return node.target

    def _write_outside(self, node: Node) -> None:
        inode = self._inode(node)
        content = self._content(node)
        outside = content[:len(content) - inode.inline_len]
        self.out.write(outside + bytes(-len(outside) % BLOCK_SIZE))

    def _inline(self, node: Node, inode: _Inode) -> bytes:
        if isinstance(node, FileNode):
            return self.w._spool.get(node.extent.tail_at, inode.inline_len)
        content = self._content(node)
        return content[len(content) - inode.inline_len:]
