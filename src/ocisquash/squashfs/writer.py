"""The squashfs writer: public API and the finish sequence.

Data blocks are streamed into the image as files are added; everything else is
metadata kept in memory and laid out by :meth:`SquashfsWriter.finish`, in the order
the kernel insists on ("most implementations, including the one in the Linux kernel,
insist on this exact order"):

    superblock · compressor options · data and fragment blocks · inode table ·
    directory table · fragment table · export table · id table · xattr table

The kernel checks that each lookup table's location list ends exactly where the next
table begins (and the last one at "bytes used"), so the tables are written back to
back. The image is then padded to a multiple of 4 KiB, "the device block size".
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from ..entry import EntryMeta
from ..errors import OutputError, SquashfsError
from ..imagewriter import ImageWriter, readable
from ..rules import clamp_mtime
from .blocks import _SHORT_BITS, _SHORT_MASK, BlockPipeline, DataWriter, Stored
from .compressor import Compressor, make_compressor
from .directory import DirEntry, needs_extended, write_listing
from .format import (
    DEVICE_BLOCK_SIZE,
    INVALID_INDEX,
    INVALID_TABLE,
    MAX_NAME_LEN,
    METADATA_SIZE,
    METADATA_UNCOMPRESSED,
    InodeType,
    Superblock,
    SuperFlags,
)
from .inode import (
    BASIC_FILE_HEAD,
    BASIC_FILE_INODE,
    BASIC_FILE_TAIL,
    directory_body,
    file_inode,
    header,
    special_body,
    symlink_body,
)
from .layerindex import IndexedFile
from .metadata import MetadataWriter, pack_lookup_table
from .options import Compression
from .options import WriterOptions as WriterOptions
from .reuse import BlockReuse
from .tables import IdTable, XattrTable, check_xattrs
from .tree import (
    DATA_MASK,
    META_SHIFT,
    DirNode,
    FileNode,
    Node,
    SpecialNode,
    SymlinkNode,
    Tree,
)

#: The cache key of the bytes written; kept in version.py so that reading it is cheap.
from .version import FORMAT_VERSION as FORMAT_VERSION


@dataclass(frozen=True)
class WriteSummary:
    """What :meth:`SquashfsWriter.finish` wrote."""

    bytes_written: int  # image size, padded to 4 KiB
    inodes: int
    files: int  # regular-file inodes
    directories: int
    symlinks: int
    devices: int  # character and block devices, FIFOs and sockets
    hardlinks: int  # directory entries beyond the first for an inode
    data_bytes_in: int  # file bytes read, duplicates included
    duplicates: int  # files whose data was shared with an identical earlier file
    fragments: int  # fragment blocks
    compression: str
    block_size: int
    #: the image's sha256 when the writer gives it (as the EROFS writer can); this one
    #: does not: a compile reads the finished image
    sha256: bytes | None = None


_BYTES_LIKE = (bytes, bytearray, memoryview)

_FILE = InodeType.FILE

_BASIC_FILE_SIZE = BASIC_FILE_INODE.size

#: Where a short file's fragment index is in its int (``blocks.pack_short``).
_FRAGMENT_SHIFT = 2 * _SHORT_BITS
_FRAGMENT_MASK = (1 << (META_SHIFT - _FRAGMENT_SHIFT)) - 1


class SquashfsWriter(ImageWriter["WriteSummary"]):
    """Writes one squashfs 4.0 image; add entries in any order, then :meth:`finish`.

    ``output`` is a path (created or truncated) or a seekable, writable binary stream
    positioned anywhere (the image starts at offset 0). File data is compressed and
    written as it is added; the rest is written by :meth:`finish`. Use as a context
    manager to have an exception abort the writer.
    """

    error = SquashfsError
    _tree: Tree

    def __init__(
        self,
        output: str | os.PathLike[str] | BinaryIO,
        options: WriterOptions | None = None,
        *,
        reuse: BlockReuse | None = None,
    ) -> None:
        """``reuse`` copies blocks that earlier images hold and keeps this image's block
        index (see :mod:`ocisquash.squashfs.reuse`); its settings must be those of
        ``options``."""
        if options is None:
            options = WriterOptions()
        options.check()
        self._options = options
        self._compressor = make_compressor(
            options.compression,
            level=options.level,
            block_size=options.block_size,
            gzip_window=options.gzip_window,
            xz_filters=options.xz_filters,
            lz4_hc=options.lz4_hc,
        )
        self._mkfs_time = options.resolved_mkfs_time()
        self._owned = not hasattr(output, "write")
        self._path: str | bytes | None = None
        if self._owned:
            self._path = os.fspath(output)  # type: ignore[arg-type]
        #: what error messages call the output: its path, or the stream's name
        self._name = (
            os.fspath(output)  # type: ignore[arg-type]
            if self._owned
            else str(getattr(output, "name", "the output stream"))
        )
        try:
            if self._owned:
                self._out: BinaryIO = open(output, "w+b")  # type: ignore[arg-type,assignment]  # noqa: SIM115
            else:
                self._out = output  # type: ignore[assignment]
            self._out.seek(0)
            self._out.write(self._header_placeholder())
        except OSError as e:
            raise OutputError(
                f"cannot write the image: {e.strerror or e}", context=str(output)
            ) from e
        self._metas: dict[EntryMeta, EntryMeta] = {}
        self._meta_ids: dict[int, tuple[EntryMeta, EntryMeta]] = {}
        #: the kept metadata objects in order, and each one's index there (by identity),
        #: which a short file's int in the tree holds (see ``tree.py``)
        self._meta_list: list[EntryMeta] = []
        self._meta_index: dict[int, int] = {}
        #: a source's EntryMeta (kept alive here) -> its kept value's index there, by id
        self._meta_at_ids: dict[int, tuple[EntryMeta, int]] = {}
        #: files shorter than this take add_file's short path
        self._short = options.block_size
        self._tree = Tree(self._meta(options.default_dir_meta))
        workers = options.workers or os.cpu_count() or 1
        self._pipeline = BlockPipeline(self._out, self._out.tell(), self._compressor, workers,
                                       options.block_size, reuse,
                                       self._out.fileno() if self._owned else None)
        self._data = DataWriter(
            self._pipeline,
            options.block_size,
            fragments=options.fragments,
            dedup=options.dedup,
            # Duplicate detection reads a few files back when the output allows it.
            decompress=self._compressor.decompress if readable(self._out) else None,
            # A compile that reuses blocks records layer indexes, which check tails by
            # their CRC-32.
            check_tails=reuse is not None,
        )
        #: its ``tail_check`` is :attr:`last_tail_check` (read there once per file)
        self.tails = self._data
        self._closed = False
        #: where the last file added went (for the layer indexes, see ``layerindex.py``)
        self.last_stored: Stored | None = None

    def _header_placeholder(self) -> bytes:
        """Room for the superblock, then the compressor options: "a single metadata
        block, which is always uncompressed"."""
        placeholder = bytes(Superblock.SIZE)
        options = self._compressor.options
        if options is not None:
            placeholder += (len(options) | METADATA_UNCOMPRESSED).to_bytes(2, "little") + options
        return placeholder

    # -- adding entries -------------------------------------------------------------

    def _meta(self, meta: EntryMeta) -> EntryMeta:
        # Sources hand the same EntryMeta object to many entries; by identity first
        # (the value keeps the object alive, so its id cannot be reused).
        known = self._meta_ids.get(id(meta))
        if known is not None:
            return known[1]
        kept = self._meta_value(meta)
        if len(self._meta_ids) >= 1 << 16:
            self._meta_ids.clear()  # a source that makes a new object per entry
        self._meta_ids[id(meta)] = (meta, kept)
        return kept

    def _meta_value(self, meta: EntryMeta) -> EntryMeta:
        if not self._options.xattrs and meta.xattrs:
            meta = EntryMeta(meta.mode, meta.uid, meta.gid, meta.mtime, ())
        if self._options.all_root and (meta.uid or meta.gid):
            meta = EntryMeta(meta.mode, 0, 0, meta.mtime, meta.xattrs)
        if meta.xattrs:
            check_xattrs(meta.xattrs)
        if clamp_mtime(meta.mtime) != meta.mtime:
            # The format stores an unsigned 32-bit time; clamp rather than wrap.
            meta = EntryMeta(meta.mode, meta.uid, meta.gid, clamp_mtime(meta.mtime), meta.xattrs)
        # Many entries share owner, mode and time: keep one object for each.
        return self._metas.setdefault(meta, meta)

    def _meta_at(self, meta: EntryMeta) -> int:
        """The index in ``_meta_list`` of ``meta`` as the format keeps it (what a short
        file's int in the tree holds); by identity first, as :meth:`_meta` does."""
        known = self._meta_at_ids.get(id(meta))
        if known is not None:
            return known[1]
        kept = self._meta(meta)
        index = self._meta_index.get(id(kept))
        if index is None:
            index = self._meta_index[id(kept)] = len(self._meta_list)
            self._meta_list.append(kept)
        if len(self._meta_at_ids) >= 1 << 16:
            self._meta_at_ids.clear()  # a source that makes a new object per entry
        self._meta_at_ids[id(meta)] = (meta, index)
        return index

    def add_file(
        self, path: bytes, meta: EntryMeta, data: BinaryIO | bytes, size: int | None = None
    ) -> None:
        """Add a regular file, reading ``data`` block by block (exactly ``size`` bytes if
        given, else to EOF); the contents are never held in memory as a whole."""
        if (type(data) is bytes and len(data) < self._short and not self._closed
                and (size is None or size == len(data)) and path
                # plain_path(path), written out
                and len(path) <= MAX_NAME_LEN and path[0] not in b"/." and path[-1] != 0x2F
                and path.find(b"//") < 0 and path.find(b"/.") < 0 and path.find(b"\0") < 0):
            # Most files: shorter than a block, handed whole by a layer reader. The
            # steps of the general path below in fewer calls (the path check and
            # Tree.put written out): an image of many small files is bound by the main
            # thread's time per file (bench/README.md).
            known = self._meta_at_ids.get(id(meta))
            at = known[1] if known is not None else self._meta_at(meta)
            try:
                stored = self._data.store_short(data)
            except SquashfsError as e:
                raise e.with_context(repr(path)) from None
            except OSError as e:
                raise self._write_error(e, path) from e
            self.last_stored = stored
            tree = self._tree
            i = path.rfind(b"/")
            children = (tree.last_dir if i >= 0 and path[:i] == tree.last_head
                        else tree.parent(path)).children
            name = path[i + 1:]
            if type(children.get(name)) is DirNode:
                tree.last_head = None  # a directory leaves the tree: see Tree.put
            children[name] = (at << META_SHIFT | stored if type(stored) is int
                              else FileNode(self._meta_list[at], stored))
            return
        self._check_open()
        meta = self._meta(meta)
        self._tree.placeable(path)
        source: bytes | BinaryIO = data
        if isinstance(data, _BYTES_LIKE):  # most files: layer readers hand small ones whole
            source = data if type(data) is bytes else bytes(data)
            if size is not None and size != len(source):
                raise SquashfsError(f"file data is {len(source)} bytes, not {size}",
                                    context=repr(path))
        if size is not None and size < 0:
            raise SquashfsError(f"negative file size {size}", context=repr(path))
        try:
            if isinstance(source, bytes):
                written = self._data.write_bytes(source)
            elif isinstance(source, IndexedFile) and self._pipeline.reuses:
                if size is not None and size != source.size:
                    raise SquashfsError(f"file data is {source.size} bytes, not {size}")
                tail = source.tail
                written = self._data.write_indexed(
                    source.size, source.items, source.tail_piece,
                    tail[3] if tail is not None else 0,
                    (tail[0], tail[1]) if tail is not None else None)
            else:
                written = self._data.write_file(source, size)
        except SquashfsError as e:
            raise e.with_context(repr(path)) from None
        except OSError as e:
            raise self._write_error(e, path) from e
        self.last_stored = written
        if isinstance(written, int):
            index = self._meta_index.get(id(meta))
            if index is None:
                index = self._meta_index[id(meta)] = len(self._meta_list)
                self._meta_list.append(meta)
            self._tree.put(path, index << META_SHIFT | written, checked=True)
        else:
            self._tree.put(path, FileNode(meta, written), checked=True)

    def add_hardlink(self, path: bytes, target: bytes) -> None:
        """Make ``path`` another name of the existing non-directory ``target``."""
        node = self._link_target(path, target)
        if isinstance(node, int):  # a short file gets a node, which its names share
            node = FileNode(self._meta_list[node >> META_SHIFT], node & DATA_MASK)
            self._tree.put(target, node, checked=True)
        if path != target:
            self._tree.put(path, node)

    @property
    def lazy_tails(self) -> bool:
        """Whether replayed files shorter than a block are placed without fetching their
        bytes (see ``DataWriter.write_indexed``)."""
        return self._data.lazy_tails and self._pipeline.reuses

    @property
    def last_tail_check(self) -> int:
        """The CRC-32 of the last file's last partial block (0: none), when blocks are
        reused (see ``layerindex.py``)."""
        return self._data.tail_check

    @property
    def fragment_table(self) -> list[bytes]:
        """The fragment table's entries (complete once the image is finished)."""
        return self._data.fragment_table

    @property
    def decompress(self) -> Callable[[bytes, int], bytes]:
        return self._compressor.decompress

    # -- finishing ------------------------------------------------------------------

    def _stop(self) -> None:
        self._pipeline.close(cancel=True)

    @contextlib.contextmanager
    def _table_pool(self) -> Iterator[Executor | None]:
        """Threads that compress the tables' metadata blocks while the main thread lays
        out the next ones (see ``metadata.py``): at gzip level 9 compressing them took
        most of the tables' time (figures: bench/README.md). None with one worker."""
        workers = self._options.workers or os.cpu_count() or 1
        if workers < 2:
            yield None
            return
        with ThreadPoolExecutor(max_workers=workers,
                                thread_name_prefix="ocisquash-tables") as pool:
            yield pool

    def _write_rest(self) -> WriteSummary:
        """Write all tables and the superblock, pad to 4 KiB, flush."""
        opts = self._options
        self._data.close()
        out = self._out

        with self._table_pool() as pool:
            # The inodes and listings are laid out while the last data blocks are
            # compressed: only a file inode with blocks needs to know where they went
            # (a short file's place in its fragment is known), and it waits for them.
            layout = _Layout(self._tree.root, self._compressor, self._meta_list, pool,
                             self._pipeline.drain)
            root_ref = layout.build()
            self._pipeline.drain()
            self._pipeline.close()
            position = self._pipeline.position
            out.seek(position)

            inode_table = position
            inode_bytes = b"".join(layout.inodes.finish())
            directory_table = inode_table + len(inode_bytes)
            dir_bytes = b"".join(layout.dirs.finish())
            end = directory_table + len(dir_bytes)
            chunks = [inode_bytes, dir_bytes]

            # With no fragments, unsquashfs reads the directory table up to the fragment
            # table start, so that start must be the end of the directory table.
            fragment_table = end
            if self._data.fragment_count:
                table, fragment_table = pack_lookup_table(
                    self._compressor, b"".join(self._data.fragment_table), end, pool
                )
                chunks.append(table)
                end += len(table)

            export_table = INVALID_TABLE
            if opts.exportable:
                export = layout.inode_refs()
                table, export_table = pack_lookup_table(
                    self._compressor, struct.pack(f"<{len(export)}Q", *export), end, pool
                )
                chunks.append(table)
                end += len(table)

            table, id_table = pack_lookup_table(self._compressor, layout.ids.records(), end)
            chunks.append(table)
            end += len(table)

        xattr_table = INVALID_TABLE
        if len(layout.xattrs):
            table, xattr_table = layout.xattrs.pack(end)
            chunks.append(table)
            end += len(table)

        for chunk in chunks:
            out.write(chunk)
        bytes_used = end
        padded = -(-bytes_used // DEVICE_BLOCK_SIZE) * DEVICE_BLOCK_SIZE
        out.write(bytes(padded - bytes_used))
        # A duplicate file rewound the data area: drop bytes past the image end.
        out.truncate(padded)

        flags = SuperFlags(0)
        if self._compressor.options is not None:
            flags |= SuperFlags.COMPRESSOR_OPTIONS
        if not opts.fragments:
            flags |= SuperFlags.NO_FRAGMENTS
        if opts.dedup:
            flags |= SuperFlags.DUPLICATES
        if opts.exportable:
            flags |= SuperFlags.EXPORTABLE
        if xattr_table == INVALID_TABLE:
            flags |= SuperFlags.NO_XATTRS
        superblock = Superblock(
            inode_count=layout.count,
            mod_time=self._mkfs_time,
            block_size=opts.block_size,
            fragment_count=self._data.fragment_count,
            compressor=self._compressor.id,
            flags=flags,
            id_count=len(layout.ids),
            root_inode=root_ref,
            bytes_used=bytes_used,
            id_table=id_table,
            xattr_table=xattr_table,
            inode_table=inode_table,
            directory_table=directory_table,
            fragment_table=fragment_table,
            export_table=export_table,
        )
        out.seek(0)
        out.write(superblock.pack())
        out.flush()
        stats = layout.stats
        return WriteSummary(
            bytes_written=padded,
            inodes=layout.count,
            files=stats["files"],
            directories=stats["directories"],
            symlinks=stats["symlinks"],
            devices=stats["devices"],
            hardlinks=stats["hardlinks"],
            data_bytes_in=self._data.bytes_in,
            duplicates=self._data.duplicates,
            fragments=self._data.fragment_count,
            compression="lz4hc" if opts.lz4_hc and opts.compression is Compression.LZ4
            else opts.compression.value,
            block_size=opts.block_size,
        )


def _sorted_children(node: DirNode) -> list[tuple[bytes, Node | int]]:
    """``node``'s children by name (names sort as bytes, faster than the pairs)."""
    children = node.children
    names = sorted(children)
    if names == list(children):  # added in order, as most tars list them: no lookups
        return list(children.items())
    return [(name, children[name]) for name in names]


class _Layout:
    """Numbers the inodes and writes the inode and directory tables.

    Order (like mksquashfs): directories in post-order, sub-directories first; within a
    directory its other children's inodes in name order, then its listing, then its own
    inode. So every inode a listing references is already written, and the root inode
    comes last with the highest number.
    """

    def __init__(self, root: DirNode, compressor: Compressor, metas: list[EntryMeta],
                 pool: Executor | None = None,
                 data_written: Callable[[], None] | None = None) -> None:
        self.root = root
        #: called before the first inode of a file with blocks is written: their places
        #: are known once the blocks queued are written (None: they are)
        self._data_written = data_written
        #: what a short file's int in the tree indexes (see ``tree.py``)
        self.metas = metas
        self.inodes = MetadataWriter(compressor, pool)
        self.dirs = MetadataWriter(compressor, pool)
        self.ids = IdTable()
        self.xattrs = XattrTable(compressor)
        #: each inode number's inode, as ``MetadataWriter.append`` gave it
        self.export: list[int] = []
        self.count = 0
        self._meta_fields: dict[int, tuple[int, int, int, int, int]] = {}
        self.stats = {"files": 0, "directories": 0, "symlinks": 0, "devices": 0, "hardlinks": 0}

    def _postorder(self) -> list[tuple[DirNode, list[tuple[bytes, Node | int]]]]:
        """Directories in post-order, each with its children sorted by name."""
        order: list[tuple[DirNode, list[tuple[bytes, Node | int]]]] = []
        stack: list[tuple[DirNode, list[tuple[bytes, Node | int]], int]] = []
        stack.append((self.root, _sorted_children(self.root), 0))
        while stack:
            node, children, i = stack.pop()
            while i < len(children) and not isinstance(children[i][1], DirNode):
                i += 1
            if i < len(children):
                stack.append((node, children, i + 1))
                sub = children[i][1]
                assert isinstance(sub, DirNode)
                stack.append((sub, _sorted_children(sub), 0))
            else:
                order.append((node, children))
        return order

    def build(self) -> int:
        """Write every inode and listing; return the root inode reference."""
        order = self._postorder()
        # Pass 1: link counts and inode numbers (a directory's children need its number).
        # Nodes come from the tree with number 0, nlink 0 and no reference.
        hardlinks = number = 0
        for node, children in order:
            subdirs = []
            for _, child in children:
                if isinstance(child, int):  # a short file with one name
                    number += 1
                elif isinstance(child, DirNode):
                    subdirs.append(child)
                elif child.nlink:
                    hardlinks += 1
                    child.nlink += 1
                else:
                    number += 1
                    child.number = number
                    child.nlink = 1
            # "a directory with N entries has at least N + 2 link count" in the spec; the
            # kernel and mksquashfs count 2 + sub-directories, as Linux filesystems do.
            node.nlink = 2 + len(subdirs)
            number += 1
            node.number = number
            for sub in subdirs:
                sub.parent_number = number
        self.stats["hardlinks"] = hardlinks
        self.count = number
        # mksquashfs gives the root the parent number inode_count + 1.
        self.root.parent_number = number + 1
        self.export = [0] * number

        # Pass 2: write inodes and listings in the same order. A short file's int has no
        # number: ``number`` counts again as pass 1 did, to give it its own.
        number = 0
        metas = self.metas
        fields = self._fields
        append = self.inodes.append
        export = self.export
        files = 0
        #: by a short file's metadata index: the head of its basic inode (what files of
        #: one metadata share), or b"" when its xattrs need an extended one
        heads: list[bytes | None] = [None] * len(metas)
        basic_tail = BASIC_FILE_TAIL.pack
        inodes = self.inodes
        for node, children in order:
            entries: list[DirEntry] = []
            add = entries.append
            #: short files' basic inodes not handed to ``inodes`` yet, and where the next
            #: one starts in its stream: they are written in one go, and each one's
            #: reference is what ``MetadataWriter.append`` would have returned
            run: list[bytes] = []
            at_byte = inodes.position
            for name, child in children:
                if isinstance(child, int):
                    number += 1
                    at = child >> META_SHIFT
                    head = heads[at]
                    if head is None:
                        head = heads[at] = self._basic_head(metas[at])
                    if head:  # file_inode's case for it, without the call
                        # The int's fields (blocks.pack_short): size, offset, fragment.
                        run.append(head + basic_tail(
                            number, 0, child >> _FRAGMENT_SHIFT & _FRAGMENT_MASK,
                            child >> _SHORT_BITS & _SHORT_MASK, child & _SHORT_MASK))
                        ref = (at_byte // METADATA_SIZE) << 16 | at_byte % METADATA_SIZE
                        at_byte += _BASIC_FILE_SIZE
                    else:
                        if run:
                            inodes.write(b"".join(run))
                            run.clear()
                        mode, uid, gid, mtime, xattr = fields(metas[at])
                        ref = append(file_inode(child & DATA_MASK, 1, xattr, mode, uid, gid,
                                                mtime, number))
                        at_byte = inodes.position
                    export[number - 1] = ref
                    files += 1
                    add((name, _FILE, number, ref))
                    continue
                if child.ref < 0:  # not a directory (written already), nor a hard link
                    if run:
                        inodes.write(b"".join(run))
                        run.clear()
                    self._write_inode(child)
                    number = child.number
                    at_byte = inodes.position
                # A node's type is the basic one, as entries store it.
                add((name, child.type, child.number, child.ref))
            if run:
                inodes.write(b"".join(run))
            listing = write_listing(self.dirs, entries, inodes.block_start)
            mode, uid, gid, mtime, xattr = self._fields(node.meta)
            kind, body = directory_body(
                listing, node.nlink, node.parent_number, xattr, needs_extended(entries)
            )
            self._place(node, header(kind, mode, uid, gid, mtime, node.number) + body)
            number = node.number
            self.stats["directories"] += 1
        self.stats["files"] += files
        return self.inodes.resolve(self.root.ref)

    def inode_refs(self) -> list[int]:
        """The inode reference of each inode number (the export table's records)."""
        starts = self.inodes.block_starts
        return [starts[ref >> 16] << 16 | (ref & 0xFFFF) for ref in self.export]

    def _basic_head(self, meta: EntryMeta) -> bytes:
        """The head of a basic file inode of ``meta`` (b"": it needs an extended one)."""
        mode, uid, gid, mtime, xattr = self._fields(meta)
        if xattr != INVALID_INDEX:
            return b""
        return BASIC_FILE_HEAD.pack(_FILE, mode, uid, gid, mtime)

    def _fields(self, meta: EntryMeta) -> tuple[int, int, int, int, int]:
        """(mode, uid index, gid index, mtime, xattr index) of an inode's ``meta``. The
        writer gives many inodes one EntryMeta object (alive while the tree is), so each
        is looked up once, by identity; the tables still see ids and xattr sets in order
        of first use."""
        found = self._meta_fields.get(id(meta))
        if found is None:
            xattr = self.xattrs.index(meta.xattrs)
            found = (meta.mode, self.ids.index(meta.uid), self.ids.index(meta.gid),
                     meta.mtime, xattr)
            self._meta_fields[id(meta)] = found
        return found

    def _write_inode(self, node: Node) -> None:
        mode, uid, gid, mtime, xattr = self._fields(node.meta)
        if isinstance(node, FileNode):
            if self._data_written is not None and not isinstance(node.data, int):
                self._data_written()
                self._data_written = None
            record = file_inode(node.data, node.nlink, xattr, mode, uid, gid, mtime, node.number)
            self.stats["files"] += 1
        else:
            if isinstance(node, SymlinkNode):
                kind, body = symlink_body(node.target, node.nlink, xattr)
                self.stats["symlinks"] += 1
            else:
                assert isinstance(node, SpecialNode)
                kind, body = special_body(node.type, node.rdev, node.nlink, xattr)
                self.stats["devices"] += 1
            record = header(kind, mode, uid, gid, mtime, node.number) + body
        self._place(node, record)

    def _place(self, node: Node, record: bytes) -> None:
        """Append ``node``'s inode ``record``; its reference is where it starts."""
        node.ref = self.export[node.number - 1] = self.inodes.append(record)
