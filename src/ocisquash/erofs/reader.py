"""Read one small file out of an EROFS image by its path: the lookup a runtime config
needs (``/etc/passwd``, ``/etc/group``, whether a volume's directory exists) without
mounting the image, as ``squashfs/reader.py`` does for squashfs.

It reads what the writer in this package writes and what mkfs.erofs writes
(``erofs.rst``; ``erofs_fs.h``; the kernel's ``inode.c``, ``namei.c``, ``data.c`` and
``zmap.c``):

* the superblock at byte 1024 (4 KiB blocks only, as this writer makes them) and the
  inodes at ``meta_blkaddr`` in 32-byte slots: compact (32 bytes) and extended
  (64 bytes), each followed by its xattrs ("12 + 4 * (i_xattr_icount - 1)" bytes);
* directories: blocks of "erofs_dirent" records and their names ("the number of
  dirents in a block is nameoff[0] / 12"; a block's last name runs to the first NUL or
  the end of the data);
* data: FLAT_PLAIN, FLAT_INLINE (the tail after the inode and its xattrs), CHUNK_BASED
  (a block map of ``__le32``, EROFS_NULL_ADDR a hole), and compressed inodes with full
  or compact cluster indexes, big pclusters, an inline last pcluster (ztailpacking)
  or a last extent in the packed inode (fragments), one-block pclusters (mkfs.erofs
  without ``-C``: a compact pack counts its blocks another way); lz4, deflate and zstd
  pclusters, their data at the pcluster's end after zero padding, or, without
  ``LZ4_0PADDING``, lz4 data from its start, decoded only as far as the extent;
* the metabox (METABOX, with 48BIT's "rootnid_8b"): a nid with bit 63 set is the
  inode's slot in the metabox inode's data, and whatever follows that inode (xattrs,
  inline tail, block map, cluster index) is read from there too.

It walks one path at a time and decompresses only the pclusters the file's bytes are
in, so its memory is bounded by the size limit a caller passes. Every inconsistency (a
reference outside the image, a pcluster that does not decode, a loop of symlinks) is an
:class:`~ocisquash.errors.ErofsError`: the image is damaged.
"""

from __future__ import annotations

import contextlib
import functools
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from ..errors import ErofsError
from ..imagereader import MAX_SYMLINKS, ImageReader, Stat
from .compress import (
    ADVISE_BIG_PCLUSTER_1,
    ADVISE_FRAGMENT_PCLUSTER,
    ADVISE_INLINE_PCLUSTER,
    D0_CBLKCNT,
    LCLUSTER_INDEX,
    LCLUSTER_NONHEAD,
    LCLUSTER_PLAIN,
    MAP_HEADER,
    WHOLE_FRAGMENT,
    liblz4,
)
from .format import (
    BLOCK_BITS,
    BLOCK_SIZE,
    COMPACT_INODE,
    DIRENT,
    EXTENDED_INODE,
    FEATURE_INCOMPAT_AT,
    INCOMPAT_48BIT,
    INCOMPAT_METABOX,
    INCOMPAT_ZERO_PADDING,
    INODE_SLOT,
    MODE_TYPE,
    NID_METABOX,
    NULL_ADDR,
    SUPER_OFFSET,
    DataLayout,
    FileType,
    has_magic,
)
from .zindex import blocks_before, entry, one_block_blocks_before, sections

#: The most bytes one extent of a compressed file may decompress to here: the writer's
#: largest pcluster holds 1 MiB of a file (the packed inode's).
MAX_EXTENT = 4 << 20

_S_IFMT = 0o170000
_KIND_OF_MODE = {mode: kind for kind, mode in MODE_TYPE.items()}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class _Inode:
    nid: int
    kind: FileType
    mode: int
    uid: int
    gid: int
    size: int
    layout: int
    i_u: int
    #: where the inode's data area starts: after the inode and its xattrs
    tail_at: int
    #: whether the inode, and so ``tail_at``, is in the metabox
    boxed: bool = False


class ErofsReader(ImageReader[_Inode]):
    """An EROFS image opened for path lookups.

    >>> with ErofsReader("app.erofs") as image:
    ...     passwd = image.read_file("/etc/passwd")   # None when the path is absent
    """

    error = ErofsError
    _DIR = FileType.DIR
    _FILE = FileType.REG_FILE

    def _open(self) -> None:
        self._superblock()

    # -- the entries as the base class asks for them --------------------------------

    def _owner(self, inode: _Inode) -> tuple[int, int, int]:
        return inode.mode & ~_S_IFMT, inode.uid, inode.gid

    # -- structure -----------------------------------------------------------------

    def _superblock(self) -> None:
        if self._size < SUPER_OFFSET + 128:
            raise ErofsError(f"{self.path} is not an EROFS image (shorter than a superblock)")
        head = self._read_at(0, SUPER_OFFSET + 128)
        sb = head[SUPER_OFFSET:]
        if not has_magic(head):
            raise ErofsError(f"{self.path} is not an EROFS image (no magic at byte 1024)")
        if sb[12] != BLOCK_BITS:
            raise ErofsError(f"{self.path} has blocks of {1 << sb[12]} bytes; only "
                             f"{BLOCK_SIZE} are read")
        incompat = _U32.unpack_from(sb, FEATURE_INCOMPAT_AT)[0]
        # "rootnid_2b", "meta_blkaddr", "packed_nid"; with 48BIT, "rootnid_8b" if set
        self._root_nid = struct.unpack_from("<H", sb, 14)[0]
        if incompat & INCOMPAT_48BIT and _U64.unpack_from(sb, 112)[0]:
            self._root_nid = _U64.unpack_from(sb, 112)[0]
        self._meta = _U32.unpack_from(sb, 40)[0] << BLOCK_BITS
        self._packed_nid = _U64.unpack_from(sb, 96)[0]
        #: "metabox_nid", in the superblock's first extension slot (sb_extslots)
        self._box_nid = 0
        if incompat & INCOMPAT_METABOX:
            if sb[13] < 1 or self._size < SUPER_OFFSET + 144:
                raise self._damaged("a metabox but no room for its nid in the superblock")
            self._box_nid = _U64.unpack_from(self._read_at(SUPER_OFFSET + 128, 8))[0]
            if not self._box_nid or self._box_nid & NID_METABOX:
                raise self._damaged("the metabox inode is in the metabox")
        self._box: _Inode | None = None
        #: the metabox's extents decoded last, by their start (see _compressed)
        self._box_extents: dict[int, bytes] = {}
        #: "EROFS_FEATURE_INCOMPAT_LZ4_0PADDING": compressed data ends at its pcluster's
        #: end; without it (mkfs.erofs -E legacy-compress) it starts at the first block
        #: and what follows it is not part of it
        self._zero_padding = bool(incompat & INCOMPAT_ZERO_PADDING)
        self._packed: _Inode | None = None
        #: the packed inode's cluster index, decoded once: (types, values, first
        #: blocks, where the index ends)
        self._maps: dict[int, tuple[list[int], list[int], list[int], int]] = {}

    def _inode(self, nid: int) -> _Inode:
        boxed = bool(nid & NID_METABOX)
        if boxed:
            if not self._box_nid:
                raise self._damaged(f"inode {nid & ~NID_METABOX} is in a metabox the image "
                                    "does not have")
            at = (nid & ~NID_METABOX) * INODE_SLOT
        else:
            at = self._meta + nid * INODE_SLOT
        head = self._meta_at(boxed, at, COMPACT_INODE.size)
        i_format = head[0] | head[1] << 8
        if i_format & 1:  # "extended inode"
            (_, icount, mode, _, size, i_u, _, uid, gid, _, _, _) = \
                EXTENDED_INODE.unpack(self._meta_at(boxed, at, EXTENDED_INODE.size))
            isize = EXTENDED_INODE.size
        else:
            (_, icount, mode, _, size, _, i_u, _, uid, gid, _) = COMPACT_INODE.unpack(head)
            isize = COMPACT_INODE.size
        if i_format >> 5:
            raise self._damaged(f"inode {nid} has unknown format bits {i_format:#x}")
        kind = _KIND_OF_MODE.get(mode & _S_IFMT)
        if kind is None:
            raise self._damaged(f"inode {nid} has mode {mode:#o}")
        # "xattr_isize = sizeof(struct erofs_xattr_ibody_header) + 4 * (icount - 1)"
        xattrs = 12 + 4 * (icount - 1) if icount else 0
        return _Inode(nid, kind, mode, uid, gid, size, (i_format >> 1) & 7, i_u,
                      at + isize + xattrs, boxed)

    def _meta_at(self, boxed: bool, at: int, n: int) -> bytes:
        """``n`` bytes of metadata at ``at``: in the metabox's data, or in the image."""
        if not boxed:
            return self._read_at(at, n)
        if self._box is None:
            self._box = self._inode(self._box_nid)
        box = self._box
        if at + n > box.size:
            raise self._damaged(f"metadata past the metabox's {box.size} bytes")
        return self._data(box, at, n)

    def _entries(self, directory: _Inode) -> list[tuple[bytes, int]]:
        """The (name, nid) of every entry of ``directory``."""
        if directory.size > 256 << 20:
            raise self._damaged(f"a directory of {directory.size} bytes")
        data = self._data(directory, 0, directory.size)
        out = []
        for start in range(0, len(data), BLOCK_SIZE):
            block = data[start:start + BLOCK_SIZE]
            if len(block) < DIRENT.size:
                raise self._damaged(f"directory inode {directory.nid} has a short block")
            first = DIRENT.unpack_from(block, 0)[1]
            count = first // DIRENT.size
            if not count or first % DIRENT.size or first > len(block):
                raise self._damaged(f"directory inode {directory.nid} has a bad block")
            heads = [DIRENT.unpack_from(block, i * DIRENT.size) for i in range(count)]
            for i, (nid, nameoff, _type, _) in enumerate(heads):
                end = heads[i + 1][1] if i + 1 < count else len(block)
                if not first <= nameoff <= end <= len(block):
                    raise self._damaged(f"directory inode {directory.nid} has a bad name")
                out.append((block[nameoff:end].split(b"\0", 1)[0], nid))
        return out

    def _root(self) -> _Inode:
        return self._inode(self._root_nid)

    def _child(self, directory: _Inode, name: bytes) -> _Inode | None:
        nid = next((n for entry, n in self._entries(directory) if entry == name), None)
        return None if nid is None else self._inode(nid)

    def _target(self, inode: _Inode) -> bytes | None:
        if inode.kind is not FileType.SYMLINK:
            return None
        if inode.size > BLOCK_SIZE:
            raise self._damaged(f"a symlink target of {inode.size} bytes")
        return self._data(inode, 0, inode.size)

    def _file_data(self, inode: _Inode) -> bytes:
        return self._data(inode, 0, inode.size)

    # -- file data -----------------------------------------------------------------

    def _data(self, inode: _Inode, start: int, length: int) -> bytes:
        """Bytes ``start`` to ``start + length`` of the inode's data."""
        layout = inode.layout
        if layout == DataLayout.FLAT_PLAIN:
            return self._read_at((inode.i_u << BLOCK_BITS) + start, length)
        if layout == DataLayout.FLAT_INLINE:
            # "the inline data ... right after the inode and its xattrs": the last
            # size % 4 KiB bytes; the whole blocks before it from i_u
            whole = inode.size - inode.size % BLOCK_SIZE
            out = b""
            if start < whole:
                n = min(length, whole - start)
                out = self._read_at((inode.i_u << BLOCK_BITS) + start, n)
                start, length = start + n, length - n
            if length:
                out += self._meta_at(inode.boxed, inode.tail_at + start - whole, length)
            return out
        if layout == DataLayout.CHUNK_BASED:
            return self._chunked(inode, start, length)
        if layout in (DataLayout.COMPRESSED_FULL, DataLayout.COMPRESSED_COMPACT):
            return self._compressed(inode, start, length)
        raise self._damaged(f"inode {inode.nid} has data layout {layout}")

    def _chunked(self, inode: _Inode, start: int, length: int) -> bytes:
        bits = BLOCK_BITS + (inode.i_u & 0x1F)
        if inode.i_u & 0x20:  # EROFS_CHUNK_FORMAT_INDEXES: not what this writer makes
            raise ErofsError(f"{self.path}: chunk indexes (not a block map) are not read")
        out = bytearray()
        while length:
            chunk = start >> bits
            (blkaddr,) = _U32.unpack(self._meta_at(inode.boxed, inode.tail_at + 4 * chunk, 4))
            n = min(length, ((chunk + 1) << bits) - start)
            if blkaddr == NULL_ADDR:
                out += bytes(n)
            else:
                out += self._read_at((blkaddr << BLOCK_BITS) + start - (chunk << bits), n)
            start, length = start + n, length - n
        return bytes(out)

    def _compressed(self, inode: _Inode, start: int, length: int) -> bytes:
        """Bytes of a compressed inode: the extents they are in, each decompressed."""
        header_at = inode.tail_at + -inode.tail_at % 8
        header = self._meta_at(inode.boxed, header_at, 8)
        (word,) = _U64.unpack(header)
        if word & WHOLE_FRAGMENT:  # "the whole file is stored in the packed inode"
            return self._fragment(word & ~WHOLE_FRAGMENT, start, length)
        fragmentoff, advise, algorithm, clusterbits = MAP_HEADER.unpack(header)
        if clusterbits:
            raise ErofsError(f"{self.path}: lclusters of more than a block are not read")
        count = -(-inode.size // BLOCK_SIZE)
        if count > self._size // 2:
            raise self._damaged(f"a file of {inode.size} bytes")
        known = self._maps.get(inode.nid)
        if known is not None:  # the packed inode's, read for each fragment
            kinds, values, addrs, end_of_index = known
        elif inode.layout == DataLayout.COMPRESSED_FULL:
            ebase = header_at + 16  # the map header and its 8 reserved bytes
            raw = self._meta_at(inode.boxed, ebase, count * LCLUSTER_INDEX.size)
            entries = [LCLUSTER_INDEX.unpack_from(raw, i * 8) for i in range(count)]
            kinds = [e[0] & 3 for e in entries]
            values = [e[2] & 0xFFFF if kind == LCLUSTER_NONHEAD else e[1]
                      for e, kind in zip(entries, kinds, strict=True)]
            addrs = [e[2] for e in entries]
            end_of_index = ebase + len(raw)
        else:
            ebase = header_at + 8
            kinds, values, addrs, end_of_index = self._compact(
                inode.boxed, ebase, count, big=bool(advise & ADVISE_BIG_PCLUSTER_1))
        if inode.nid in (self._packed_nid, self._box_nid):
            self._maps[inode.nid] = kinds, values, addrs, end_of_index
        # Extents start at the HEADs and PLAINs, clusterofs bytes into their lcluster.
        heads = [i for i in range(count) if kinds[i] != LCLUSTER_NONHEAD]
        if not heads or heads[0] != 0 or values[0]:
            raise self._damaged(f"inode {inode.nid} has no extent at its start")
        starts = [(i << BLOCK_BITS) + values[i] for i in heads]
        starts.append(inode.size)
        tail = len(heads) - 1  # the extent holding the last byte
        while tail and starts[tail] >= inode.size:
            tail -= 1
        out = bytearray()
        for n, i in enumerate(heads):
            lo, hi = starts[n], starts[n + 1]
            if hi <= start or lo >= start + length or n > tail:
                continue
            if hi - lo > MAX_EXTENT or hi < lo:
                raise self._damaged(f"an extent of {hi - lo} bytes in inode {inode.nid}")
            if n == tail and advise & ADVISE_FRAGMENT_PCLUSTER:
                data = self._fragment(fragmentoff, 0, hi - lo)
            elif n == tail and advise & ADVISE_INLINE_PCLUSTER:
                # "h_idata_size": the last pcluster right after the cluster index, its
                # bytes as they are when its lcluster is PLAIN
                packed = self._meta_at(inode.boxed, end_of_index, header[2] | header[3] << 8)
                data = packed[:hi - lo] if kinds[i] == LCLUSTER_PLAIN else \
                    self._decode(packed, algorithm & 0xF, hi - lo)
            elif addrs[i] < 0:
                raise self._damaged(f"inode {inode.nid}'s compact index does not count "
                                    "its blocks")
            elif kinds[i] == LCLUSTER_PLAIN:
                if hi - lo > BLOCK_SIZE:
                    raise self._damaged(f"a raw extent of {hi - lo} bytes in inode "
                                        f"{inode.nid}")
                data = self._read_at(addrs[i] << BLOCK_BITS, hi - lo)
            elif inode.nid == self._box_nid and not inode.boxed and lo in self._box_extents:
                data = self._box_extents[lo]  # the next few inodes are in it too
            else:
                blocks = 1
                if i + 1 < count and kinds[i + 1] == LCLUSTER_NONHEAD \
                        and values[i + 1] & D0_CBLKCNT:
                    blocks = values[i + 1] & ~D0_CBLKCNT
                packed = self._read_at(addrs[i] << BLOCK_BITS, blocks << BLOCK_BITS)
                data = self._decode(packed, algorithm & 0xF, hi - lo)
                if inode.nid == self._box_nid and not inode.boxed:
                    if len(self._box_extents) >= 2:
                        self._box_extents.pop(next(iter(self._box_extents)))
                    self._box_extents[lo] = data
            out += data[max(0, start - lo):start + length - lo]
        if len(out) != length:
            raise self._damaged(f"inode {inode.nid} reads as {len(out)} bytes, not {length}")
        return bytes(out)

    def _compact(self, boxed: bool, ebase: int, count: int, big: bool
                 ) -> tuple[list[int], list[int], list[int], int]:
        """A compact index decoded: per lcluster its type, its value (clusterofs, or a
        NONHEAD's delta or block count) and, for a HEAD or PLAIN, its first block. The
        kernel counts the blocks of a pack's pclusters before a HEAD from its 32-bit
        base in two ways (``unpack_compacted_index``): with big pclusters (``big``, the
        inode's ``Z_EROFS_ADVISE_BIG_PCLUSTER_1``) as ``zindex.blocks_before``; without
        (mkfs.erofs's one-block pclusters), one block for each pcluster before it, plus
        one."""
        initial, two, rest = sections(count, ebase)
        kinds: list[int] = []
        values: list[int] = []
        addrs: list[int] = []
        at = ebase
        for n, per, size in ((initial, 2, 8), (two, 16, 32), (rest, 2, 8)):
            for _ in range(-(-n // per)):
                raw = self._meta_at(boxed, at, size)
                at += size
                if per == 2:
                    group = list(struct.unpack_from("<HH", raw))
                else:
                    bits = int.from_bytes(raw[:28], "little")
                    group = [bits >> (14 * j) & 0x3FFF for j in range(16)]
                (base,) = _U32.unpack_from(raw, size - 4)
                for j, value in enumerate(group[:count - len(kinds)]):
                    kind, lo = entry(value)
                    kinds.append(kind)
                    values.append(lo)
                    addr = -1  # a NONHEAD, or a HEAD whose pack cannot be counted
                    if kind != LCLUSTER_NONHEAD and big:
                        with contextlib.suppress(ValueError):
                            addr = base + blocks_before(group, j)
                    elif kind != LCLUSTER_NONHEAD:
                        addr = base + one_block_blocks_before(group, j)
                    addrs.append(addr)
        return kinds, values, addrs, at

    def _fragment(self, offset: int, start: int, length: int) -> bytes:
        """Bytes of a file stored in the packed inode from ``offset`` in it."""
        if not self._packed_nid:
            raise self._damaged("a file in the packed inode, but the image has none")
        if self._packed is None:
            self._packed = self._inode(self._packed_nid)
        packed = self._packed
        if offset + start + length > packed.size:
            raise self._damaged(f"a fragment past the packed inode's {packed.size} bytes")
        return self._data(packed, offset + start, length)

    def _decode(self, packed: bytes, algorithm: int, size: int) -> bytes:
        """One pcluster decompressed to ``size`` bytes: its data follows the zeros that
        pad it to whole blocks (the kernel skips them within the first block), or, in an
        image without zero padding, starts at its first byte."""
        out: bytes
        first = packed[:BLOCK_SIZE]
        data = packed[len(first) - len(first.lstrip(b"\0")):] if self._zero_padding \
            else packed
        try:
            if algorithm == 0 and not self._zero_padding:
                out = _lz4_partial(data, size)
            elif algorithm == 0:
                import lz4.block

                out = lz4.block.decompress(data, uncompressed_size=size)
            elif algorithm == 2:
                out = zlib.decompressobj(-15).decompress(data, size)
            elif algorithm == 3:
                import zstandard

                with zstandard.ZstdDecompressor().stream_reader(data) as stream:
                    out = stream.read(size)
            else:
                raise ErofsError(f"{self.path} uses compression algorithm {algorithm}, "
                                 "which is not read")
        except ErofsError:
            raise
        except Exception as e:  # each codec raises its own kind
            raise self._damaged(f"a pcluster does not decode ({e})") from None
        if len(out) != size:
            raise self._damaged(f"a pcluster decodes to {len(out)} bytes, not {size}")
        return out


def _lz4_partial(data: bytes, size: int) -> bytes:
    """The first ``size`` bytes an lz4 block at the start of ``data`` decodes to, what
    follows it in ``data`` not read (liblz4's ``LZ4_decompress_safe_partial``)."""
    import ctypes

    out = ctypes.create_string_buffer(size)
    n = _partial_call()(data, out, len(data), size, size)
    if n < 0:
        raise ValueError(f"lz4 error {n}")
    return out.raw[:n]


@functools.cache
def _partial_call() -> Any:
    import ctypes

    lib = liblz4()
    if lib is None:
        raise ValueError("no liblz4 to decode a pcluster without zero padding")
    # int LZ4_decompress_safe_partial(const char* src, char* dst, int srcSize,
    #                                 int targetOutputSize, int dstCapacity);
    call = lib.LZ4_decompress_safe_partial
    size = ctypes.c_int
    call.argtypes = (ctypes.c_char_p, ctypes.c_char_p, size, size, size)
    call.restype = size
    return call


__all__ = ["MAX_SYMLINKS", "ErofsReader", "Stat"]
