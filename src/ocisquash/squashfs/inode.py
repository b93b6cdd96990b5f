"""Inode records for the inode table, basic or extended as the kernel requires.

Format rules enforced here (the extended form is chosen only when the basic one cannot
express the inode, like mksquashfs does):

* files: "Basic files can be at most 4 GiB in size (uncompressed), must be located
  within the first 4 GiB of the SquashFS image, cannot have any extended attributes and
  don't support hard-link or sparse file accounting";
* directories: "A basic directory has an entry listing of at most 64k (uncompressed)
  and no extended attributes", and only the extended one carries an index;
* symlinks, devices, FIFOs and sockets: extended only to carry an xattr index;
* "Basic File" with no tail end stores frag index ``0xFFFFFFFF``.
"""

from __future__ import annotations

import struct

from .blocks import FileData, Stored, unpack_short
from .directory import Listing
from .format import (
    DEV_INODE,
    DIR_INODE,
    EXT_DEV_INODE,
    EXT_DIR_INODE,
    EXT_FILE_INODE,
    EXT_IPC_INODE,
    FILE_INODE,
    INODE_HEADER,
    INVALID_INDEX,
    IPC_INODE,
    SYMLINK_INODE,
    InodeType,
)

_U32 = 1 << 32


def header(kind: InodeType, mode: int, uid: int, gid: int, mtime: int, number: int) -> bytes:
    """Common inode header: type, permissions, uid index, gid index, mtime, inode number."""
    return INODE_HEADER.pack(kind, mode, uid, gid, mtime, number)


def directory_body(
    listing: Listing, nlink: int, parent: int, xattr: int, large: bool
) -> tuple[InodeType, bytes]:
    """``large``: the directory counts as large by mksquashfs's rule (see directory.py)."""
    if (
        xattr == INVALID_INDEX
        and not large
        and listing.index_count == 0
        and listing.file_size <= 0xFFFF
    ):
        return InodeType.DIR, DIR_INODE.pack(
            listing.block, nlink, listing.file_size, listing.offset, parent
        )
    body = EXT_DIR_INODE.pack(
        nlink,
        listing.file_size,
        listing.block,
        parent,
        listing.index_count,
        listing.offset,
        xattr,
    )
    return InodeType.EXT_DIR, body + listing.index


#: A basic file inode whole: the common header, then the basic file body.
BASIC_FILE_INODE = struct.Struct("<" + INODE_HEADER.format.lstrip("<") + FILE_INODE.format.lstrip("<"))
#: The same cut after the modification time: type, permissions, uid and gid indexes,
#: time (what files of one metadata share), then inode number and the file body.
BASIC_FILE_HEAD = struct.Struct("<HHHHI")
BASIC_FILE_TAIL = struct.Struct("<I" + FILE_INODE.format.lstrip("<"))
assert BASIC_FILE_HEAD.size + BASIC_FILE_TAIL.size == BASIC_FILE_INODE.size


def file_inode(data: Stored, nlink: int, xattr: int, mode: int, uid: int, gid: int,
               mtime: int, number: int) -> bytes:
    """A file's whole inode record, header included (most inodes are files: one pack)."""
    if isinstance(data, int):  # a short file in a fragment, or empty
        if nlink == 1 and xattr == INVALID_INDEX:
            size, fragment, offset = unpack_short(data)
            return BASIC_FILE_INODE.pack(InodeType.FILE, mode, uid, gid, mtime, number,
                                    0, fragment, offset, size)
        data = FileData.of(data)
    start = data.start or 0
    blocks = data.block_list()
    if (
        nlink == 1
        and xattr == INVALID_INDEX
        and data.sparse == 0
        and start < _U32
        and data.size < _U32
    ):
        return BASIC_FILE_INODE.pack(
            InodeType.FILE, mode, uid, gid, mtime, number,
            start, data.fragment, data.fragment_offset, data.size,
        ) + blocks
    # mksquashfs keeps "sparse" below the file size (the kernel derives i_blocks from
    # size - sparse).
    sparse = min(data.sparse, data.size - 1) if data.sparse else 0
    body = EXT_FILE_INODE.pack(
        start, data.size, sparse, nlink, data.fragment, data.fragment_offset, xattr
    )
    return header(InodeType.EXT_FILE, mode, uid, gid, mtime, number) + body + blocks


def symlink_body(target: bytes, nlink: int, xattr: int) -> tuple[InodeType, bytes]:
    body = SYMLINK_INODE.pack(nlink, len(target)) + target
    if xattr == INVALID_INDEX:
        return InodeType.SYMLINK, body
    return InodeType.EXT_SYMLINK, body + xattr.to_bytes(4, "little")


def special_body(kind: InodeType, rdev: int, nlink: int, xattr: int) -> tuple[InodeType, bytes]:
    """Device (char/block) or IPC (fifo/socket) inode body."""
    device = kind in (InodeType.CHAR_DEV, InodeType.BLOCK_DEV)
    if xattr == INVALID_INDEX:
        return kind, DEV_INODE.pack(nlink, rdev) if device else IPC_INODE.pack(nlink)
    body = EXT_DEV_INODE.pack(nlink, rdev, xattr) if device else EXT_IPC_INODE.pack(nlink, xattr)
    return kind.extended, body
