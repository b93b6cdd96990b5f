"""Read one small file out of a squashfs image by its path: the lookup a runtime config
needs (``/etc/passwd``, ``/etc/group``, whether a volume's directory exists) without
mounting the image.

It reads what the writer in this package writes and what mksquashfs writes: the
superblock, metadata blocks ("The MSB is set if the block is stored uncompressed"),
directory listings (headers of "at most 256" entries, names stored off by one),
directory, file and symlink inodes, data blocks ("bit 24 ... set if the block is stored
uncompressed", size 0 for a sparse block) and the fragment table (a metadata stream of
16-byte entries behind a list of block locations). It walks one path at a time and
reads no more of the image than that path touches, so its memory is bounded by the
size limit a caller passes.

Every inconsistency (a reference outside the image, a block that does not decode, a
loop of symlinks) is a :class:`~ocisquash.errors.SquashfsError`: the image is damaged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import SquashfsError
from ..imagereader import MAX_SYMLINKS, ImageReader, Stat
from .compressor import Compressor
from .format import (
    DATA_UNCOMPRESSED,
    DIR_ENTRY,
    DIR_HEADER,
    DIR_INODE,
    EXT_DIR_INODE,
    EXT_FILE_INODE,
    FILE_INODE,
    FRAGMENT_ENTRY,
    INODE_HEADER,
    INVALID_INDEX,
    MAGIC,
    METADATA_SIZE,
    METADATA_UNCOMPRESSED,
    SYMLINK_INODE,
    CompressorId,
    InodeType,
    Superblock,
    SuperFlags,
)
from .limits import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE
from .options import Compression

_KIND = {
    CompressorId.GZIP: Compression.GZIP,
    CompressorId.XZ: Compression.XZ,
    CompressorId.LZ4: Compression.LZ4,
    CompressorId.ZSTD: Compression.ZSTD,
    CompressorId.LZO: Compression.LZO,
}
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class _Inode:
    kind: InodeType  # the basic type
    mode: int
    uid_index: int
    gid_index: int
    #: directory: (listing block relative to the directory table, offset, listing size)
    listing: tuple[int, int, int] = (0, 0, 0)
    #: regular file: size, first block, fragment index, offset in the fragment, block sizes
    size: int = 0
    blocks_start: int = 0
    fragment: int = INVALID_INDEX
    fragment_offset: int = 0
    block_sizes: tuple[int, ...] = ()
    target: bytes = b""


class SquashfsReader(ImageReader[_Inode]):
    """A squashfs 4.0 image opened for path lookups.

    >>> with SquashfsReader("app.squashfs") as image:
    ...     passwd = image.read_file("/etc/passwd")   # None when the path is absent
    """

    error = SquashfsError
    _DIR = InodeType.DIR
    _FILE = InodeType.FILE

    def _open(self) -> None:
        self._sb = self._superblock()
        self._compressor = self._make_compressor()

    @property
    def superblock(self) -> Superblock:
        return self._sb

    # -- the entries as the base class asks for them --------------------------------

    def _owner(self, inode: _Inode) -> tuple[int, int, int]:
        return inode.mode, self._id(inode.uid_index), self._id(inode.gid_index)

    def _id(self, index: int) -> int:
        """Entry ``index`` of the id table: "a list of 64 bit unsigned integers ...
        holding the on-disk locations" of metadata blocks of 32 bit ids."""
        if index >= self._sb.id_count:
            raise self._damaged(f"id {index} of {self._sb.id_count}")
        per_block = METADATA_SIZE // 4
        (location,) = _U64.unpack(self._read_at(self._sb.id_table + 8 * (index // per_block), 8))
        raw, _, _ = self._metadata(location, (index % per_block) * 4, 4)
        return int.from_bytes(raw, "little")

    # -- structure -----------------------------------------------------------------

    def _superblock(self) -> Superblock:
        if self._size < Superblock.SIZE:
            raise self._damaged("shorter than a superblock")
        fields = Superblock.STRUCT.unpack(self._read_at(0, Superblock.SIZE))
        (magic, inodes, mtime, block_size, frag_count, comp, block_log, flags, id_count,
         major, minor, root, used, id_table, xattr_table, inode_table, dir_table,
         frag_table, export_table) = fields
        if magic != MAGIC:
            raise SquashfsError(f"{self.path} is not a squashfs image (no 'hsqs' magic)")
        if (major, minor) != (4, 0):
            raise SquashfsError(f"{self.path} is squashfs {major}.{minor}; only 4.0 is read")
        if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE or 1 << block_log != block_size:
            raise self._damaged(f"block size {block_size} with block log {block_log}")
        if used > self._size:
            raise self._damaged(f"it claims {used} bytes but the file has {self._size}")
        try:
            compressor = CompressorId(comp)
        except ValueError:
            raise self._damaged(f"unknown compressor id {comp}") from None
        return Superblock(inodes, mtime, block_size, frag_count, compressor, SuperFlags(flags),
                          id_count,
                          root, used, id_table, xattr_table, inode_table, dir_table,
                          frag_table, export_table)

    def _make_compressor(self) -> Compressor:
        kind = _KIND.get(self._sb.compressor)
        if kind is None:
            raise SquashfsError(f"{self.path} uses the lzma compressor, which is not read")
        # Only decompress() is used; the options block does not change decoding.
        return Compressor(kind, self._sb.compressor, lambda data: data, None)

    def _decompress(self, data: bytes, size: int) -> bytes:
        try:
            out = self._compressor.decompress(data, size)
        except ImportError:
            raise
        except Exception as e:  # each codec raises its own kind of error
            raise self._damaged(f"a {self._compressor.kind.value} block does not decode "
                                f"({e})") from e
        if len(out) > size:
            raise self._damaged("a block decodes to more than a block")
        return out

    def _metadata_block(self, position: int) -> tuple[bytes, int]:
        """The decoded metadata block at ``position`` and the position of the next one."""
        (header,) = _U16.unpack(self._read_at(position, 2))
        size = header & ~METADATA_UNCOMPRESSED
        if size == 0 or size > METADATA_SIZE:
            raise self._damaged(f"a metadata block at {position} claims {size} bytes")
        raw = self._read_at(position + 2, size)
        data = raw if header & METADATA_UNCOMPRESSED else self._decompress(raw, METADATA_SIZE)
        return data, position + 2 + size

    def _metadata(self, position: int, offset: int, n: int) -> tuple[bytes, int, int]:
        """``n`` bytes of a metadata stream from (block ``position``, ``offset``), and the
        reference just after them."""
        out = bytearray()
        while True:
            block, following = self._metadata_block(position)
            if offset > len(block):
                raise self._damaged(f"an offset {offset} beyond a metadata block")
            take = block[offset:offset + n - len(out)]
            out += take
            offset += len(take)
            if len(out) == n:
                return bytes(out), position, offset
            position, offset = following, 0

    # -- inodes and directories ----------------------------------------------------

    def _inode(self, ref: int) -> _Inode:
        block, offset = self._sb.inode_table + (ref >> 16), ref & 0xFFFF
        head, block, offset = self._metadata(block, offset, INODE_HEADER.size)
        type_, mode, uid_index, gid_index = INODE_HEADER.unpack(head)[:4]
        try:
            kind = InodeType(type_)
        except ValueError:
            raise self._damaged(f"an inode of unknown type {type_}") from None
        basic = kind.basic
        if kind is InodeType.DIR:
            raw, _, _ = self._metadata(block, offset, DIR_INODE.size)
            start, _nlink, size, dir_offset, _parent = DIR_INODE.unpack(raw)
            return _Inode(basic, mode, uid_index, gid_index, listing=(start, dir_offset, size))
        if kind is InodeType.EXT_DIR:
            raw, _, _ = self._metadata(block, offset, EXT_DIR_INODE.size)
            _nlink, size, start, _parent, _count, dir_offset, _xattr = EXT_DIR_INODE.unpack(raw)
            return _Inode(basic, mode, uid_index, gid_index, listing=(start, dir_offset, size))
        if kind in (InodeType.FILE, InodeType.EXT_FILE):
            if kind is InodeType.FILE:
                raw, block, offset = self._metadata(block, offset, FILE_INODE.size)
                start, frag, frag_offset, size = FILE_INODE.unpack(raw)
            else:
                raw, block, offset = self._metadata(block, offset, EXT_FILE_INODE.size)
                start, size, _sparse, _nlink, frag, frag_offset, _xattr = \
                    EXT_FILE_INODE.unpack(raw)
            bs = self._sb.block_size
            # "If the file has a fragment, the last block is stored in it", so a file
            # with a fragment has floor(size / block size) full blocks, else ceil.
            count = size // bs if frag != INVALID_INDEX else -(-size // bs)
            if count > self._size // 4:
                raise self._damaged(f"a file of {size} bytes in an image of {self._size}")
            sizes, _, _ = self._metadata(block, offset, 4 * count)
            return _Inode(basic, mode, uid_index, gid_index, size=size, blocks_start=start, fragment=frag,
                          fragment_offset=frag_offset,
                          block_sizes=struct.unpack(f"<{count}I", sizes))
        if kind in (InodeType.SYMLINK, InodeType.EXT_SYMLINK):
            raw, block, offset = self._metadata(block, offset, SYMLINK_INODE.size)
            _nlink, length = SYMLINK_INODE.unpack(raw)
            if length > 4096:
                raise self._damaged(f"a symlink target of {length} bytes")
            target, _, _ = self._metadata(block, offset, length)
            return _Inode(basic, mode, uid_index, gid_index, target=target)
        return _Inode(basic, mode, uid_index, gid_index)

    def _lookup(self, directory: _Inode, name: bytes) -> int | None:
        """The inode reference of ``name`` in ``directory``, or None."""
        start, offset, size = directory.listing
        # "the file size ... is 3 bytes larger than the real listing" (for "." and "..").
        remaining = size - 3
        if remaining <= 0:
            return None
        block = self._sb.directory_table + start
        while remaining > 0:
            raw, block, offset = self._metadata(block, offset, DIR_HEADER.size)
            remaining -= DIR_HEADER.size
            count, inode_block, _number = DIR_HEADER.unpack(raw)
            for _ in range(count + 1):
                raw, block, offset = self._metadata(block, offset, DIR_ENTRY.size)
                entry_offset, _delta, _type, name_size = DIR_ENTRY.unpack(raw)
                entry_name, block, offset = self._metadata(block, offset, name_size + 1)
                remaining -= DIR_ENTRY.size + name_size + 1
                if entry_name == name:
                    return int(inode_block) << 16 | int(entry_offset)
            if remaining < 0:
                raise self._damaged("a directory listing overruns its size")
        return None

    def _root(self) -> _Inode:
        return self._inode(self._sb.root_inode)

    def _child(self, directory: _Inode, name: bytes) -> _Inode | None:
        ref = self._lookup(directory, name)
        return None if ref is None else self._inode(ref)

    def _target(self, inode: _Inode) -> bytes | None:
        return inode.target if inode.kind is InodeType.SYMLINK else None

    # -- file data -----------------------------------------------------------------

    def _file_data(self, inode: _Inode) -> bytes:
        bs = self._sb.block_size
        out = bytearray()
        position = inode.blocks_start
        for word in inode.block_sizes:
            on_disk = word & ~DATA_UNCOMPRESSED
            want = min(bs, inode.size - len(out))
            if on_disk == 0:  # a sparse block: "a block size of 0 ... is a sparse block"
                out += bytes(want)
                continue
            raw = self._read_at(position, on_disk)
            position += on_disk
            out += raw if word & DATA_UNCOMPRESSED else self._decompress(raw, bs)
        if inode.fragment != INVALID_INDEX:
            out += self._fragment(inode.fragment)[
                inode.fragment_offset:inode.fragment_offset + inode.size - len(out)]
        if len(out) != inode.size:
            raise self._damaged(f"a file of {inode.size} bytes reads as {len(out)}")
        return bytes(out)

    def _fragment(self, index: int) -> bytes:
        if index >= self._sb.fragment_count:
            raise self._damaged(f"fragment {index} of {self._sb.fragment_count}")
        per_block = METADATA_SIZE // FRAGMENT_ENTRY.size
        (location,) = _U64.unpack(
            self._read_at(self._sb.fragment_table + 8 * (index // per_block), 8))
        raw, _, _ = self._metadata(location, (index % per_block) * FRAGMENT_ENTRY.size,
                                   FRAGMENT_ENTRY.size)
        start, word, _unused = FRAGMENT_ENTRY.unpack(raw)
        on_disk = word & ~DATA_UNCOMPRESSED
        if on_disk > self._sb.block_size:
            raise self._damaged(f"a fragment block of {on_disk} bytes")
        data = self._read_at(start, on_disk)
        return data if word & DATA_UNCOMPRESSED else self._decompress(data, self._sb.block_size)


__all__ = ["MAX_SYMLINKS", "SquashfsReader", "Stat"]
