"""On-disk constants and fixed-size structures of EROFS, as Linux mounts it.

Everything is little endian. Field comments quote erofs-utils' ``include/erofs_fs.h``
(the MIT-licensed format header) and the kernel's
``Documentation/filesystems/erofs.rst`` so the code can be checked against them.

Only the parts this writer emits are here: 4 KiB blocks, one device, compact and
extended inodes, FLAT_PLAIN, FLAT_INLINE and CHUNK_BASED data, inline and shared
xattrs with the short name prefixes, and the compressed-inode structures of
``compress.py``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

#: "#define EROFS_SUPER_MAGIC_V1 0xE0F5E1E2"
MAGIC = 0xE0F5E1E2
#: "to allow for x86 boot sectors and other oddities": the superblock is at byte 1024.
SUPER_OFFSET = 1024
#: The block size this writer uses (``blkszbits`` 12): the page size of the machines
#: that mount images, and what mkfs.erofs picks there.
BLOCK_BITS = 12
BLOCK_SIZE = 1 << BLOCK_BITS
#: "#define EROFS_NAME_LEN 255"
MAX_NAME_LEN = 255
#: Inodes are addressed by nid, "the offset of the inode from meta_blkaddr" in
#: 32-byte slots.
INODE_SLOT = 32
COMPACT_INODE_SIZE = 32
EXTENDED_INODE_SIZE = 64
#: "struct erofs_dirent": nid (u64), nameoff (u16), file_type (u8), reserved (u8).
DIRENT = struct.Struct("<QHBB")
#: "struct erofs_xattr_ibody_header": h_name_filter (u32), h_shared_count (u8),
#: h_reserved2[7]; followed by h_shared_xattrs[] (u32 each).
XATTR_IBODY_HEADER = struct.Struct("<IB7x")
#: "struct erofs_xattr_entry": e_name_len (u8), e_name_index (u8), e_value_size (u16),
#: "followed by e_name and e_value", the whole padded to 4 bytes (EROFS_XATTR_ALIGN).
XATTR_ENTRY = struct.Struct("<BBH")
#: "a data block address of 0xFFFFFFFF" means no block (mkfs.erofs' NULL_ADDR).
NULL_ADDR = 0xFFFF_FFFF

#: "EROFS_FEATURE_COMPAT_MTIME": compact inodes hold their own mtime, in seconds after
#: the superblock's epoch (Linux 6.15+ reads it whatever this flag says, older kernels
#: take the epoch for every compact inode)
COMPAT_MTIME = 0x0002
#: "#define EROFS_FEATURE_INCOMPAT_LZ4_0PADDING 0x00000001": compressed data is
#: aligned to the end of its physical cluster, zeros first.
INCOMPAT_ZERO_PADDING = 0x0001
#: "#define EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER 0x00000002" (also COMPR_CFGS: the
#: superblock's ``available_compr_algs`` and the per-algorithm config records).
INCOMPAT_BIG_PCLUSTER = 0x0002
INCOMPAT_COMPR_CFGS = 0x0002
#: "#define EROFS_FEATURE_INCOMPAT_CHUNKED_FILE 0x00000004": chunk-based files
INCOMPAT_CHUNKED_FILE = 0x0004
#: "#define EROFS_FEATURE_INCOMPAT_ZTAILPACKING 0x00000010": compressed tails inline
INCOMPAT_ZTAILPACKING = 0x0010
#: "#define EROFS_FEATURE_INCOMPAT_FRAGMENTS 0x00000020": file tails in a packed inode
INCOMPAT_FRAGMENTS = 0x0020
#: "#define EROFS_FEATURE_INCOMPAT_48BIT 0x00000080": among other things the root's nid
#: is "rootnid_8b" (64 bits), which an inode in the metabox needs
INCOMPAT_48BIT = 0x0080
#: "#define EROFS_FEATURE_INCOMPAT_METABOX 0x00000100": inodes in a compressed
#: "metabox" inode, whose nid is the superblock's ``metabox_nid`` (Linux 6.17+)
INCOMPAT_METABOX = 0x0100
#: Where "feature_incompat" is in the superblock.
FEATURE_INCOMPAT_AT = 80
#: "#define EROFS_DIRENT_NID_METABOX_BIT 63": a nid with this bit is the offset of the
#: inode in the metabox inode's data (in 32-byte slots), not from ``meta_blkaddr``
NID_METABOX = 1 << 63


class DataLayout(IntEnum):
    """"EROFS inode datalayout (i_format in on-disk inode)"."""

    #: "uncompressed flat inode without tail-packing inline data"
    FLAT_PLAIN = 0
    #: "compressed inode with non-compact indexes"
    COMPRESSED_FULL = 1
    #: "uncompressed flat inode with tail-packing inline data"
    FLAT_INLINE = 2
    #: "compressed inode with compact indexes" (see ``zindex.py``)
    COMPRESSED_COMPACT = 3
    #: "chunk-based inode": a block map after the inode (see ``chunks.py``)
    CHUNK_BASED = 4


class FileType(IntEnum):
    """Directory entry "file_type" (EROFS_FT_*)."""

    REG_FILE = 1
    DIR = 2
    CHRDEV = 3
    BLKDEV = 4
    FIFO = 5
    SOCK = 6
    SYMLINK = 7


#: The S_IF* type bits of ``i_mode`` for each file type.
MODE_TYPE = {
    FileType.REG_FILE: 0o100000,
    FileType.DIR: 0o040000,
    FileType.CHRDEV: 0o020000,
    FileType.BLKDEV: 0o060000,
    FileType.FIFO: 0o010000,
    FileType.SOCK: 0o140000,
    FileType.SYMLINK: 0o120000,
}

#: "Name indexes" (EROFS_XATTR_INDEX_*): the stored name is what follows the prefix.
#: The two POSIX ACL names are whole names with an empty remainder.
XATTR_PREFIXES: tuple[tuple[bytes, int], ...] = (
    (b"user.", 1),
    (b"system.posix_acl_access", 2),
    (b"system.posix_acl_default", 3),
    (b"trusted.", 4),
    (b"lustre.", 5),
    (b"security.", 6),
)


#: "struct erofs_inode_compact" and "struct erofs_inode_extended", as
#: :func:`compact_inode` and :func:`extended_inode` fill them
COMPACT_INODE = struct.Struct("<HHHHIIIIHHI")
EXTENDED_INODE = struct.Struct("<HHHHQIIIIQII16x")


def has_magic(head: bytes) -> bool:
    """Whether a file starting with ``head`` (at least its first 1028 bytes) is an EROFS
    image: the superblock's magic at byte 1024."""
    return head[SUPER_OFFSET:SUPER_OFFSET + 4] == MAGIC.to_bytes(4, "little")


def compact_inode(
    layout: int, xattr_icount: int, mode: int, nlink: int, size: int, i_u: int, ino: int,
    uid: int, gid: int, mtime: int = 0,
) -> bytes:
    """"32-byte reduced form of an ondisk inode": i_format (version 0 in bit 0, the
    datalayout in bits 1-3), i_xattr_icount, i_mode, i_nlink, i_size (u32), i_mtime
    (u32, seconds after the superblock's epoch; kernels before 6.15 do not read it, so
    it is 0 unless the image needs a later kernel anyway), i_u, i_ino, i_uid (u16),
    i_gid (u16), reserved."""
    return COMPACT_INODE.pack(layout << 1, xattr_icount, mode, nlink, size, mtime, i_u, ino,
                              uid, gid, 0)


def extended_inode(
    layout: int, xattr_icount: int, mode: int, nlink: int, size: int, i_u: int, ino: int,
    uid: int, gid: int, mtime: int,
) -> bytes:
    """"64-byte complete form of an ondisk inode": i_format (version 1), i_xattr_icount,
    i_mode, i_nb (0), i_size (u64), i_u, i_ino, i_uid (u32), i_gid (u32), i_mtime (u64,
    absolute seconds), i_mtime_nsec, i_nlink (u32), reserved[16]."""
    return EXTENDED_INODE.pack(1 | layout << 1, xattr_icount, mode, 0, size, i_u, ino, uid,
                               gid, mtime, 0, nlink)


@dataclass(frozen=True)
class Superblock:
    """"erofs on-disk super block", 128 bytes with ``sb_extslots`` 0.

    ``epoch`` is the "base seconds used for compact inodes" (the build time where
    compact inodes store a relative time of 0; else at most the earliest time they
    hold, with ``build_time`` the build time after it and COMPAT_MTIME in
    ``feature_compat``); ``root_nid`` goes to
    ``rootnid_2b``, so the root must have one of the first 65536 nids.

    With a ``metabox_nid`` (the feature METABOX) it is 144 bytes, ``sb_extslots`` 1
    ("superblock size = 128 + sb_extslots * 16"), which holds "metabox_nid"; the root
    is then in the metabox and its nid, the metabox bit set, goes to "rootnid_8b"
    (48BIT, with "blocks_hi" 0 where rootnid_2b was).
    """

    root_nid: int
    inodes: int
    epoch: int
    blocks: int
    meta_blkaddr: int
    xattr_blkaddr: int
    feature_incompat: int = 0
    #: "bitmap for available compression algorithms" (with COMPR_CFGS), else
    #: "lz4_max_distance" (0: the 64 KiB default)
    compr_algs: int = 0
    uuid: bytes = bytes(16)
    volume_name: bytes = b""
    #: "nid of the special packed inode" (with fragments), else 0
    packed_nid: int = 0
    #: "nid of the metabox inode" (METABOX), else 0
    metabox_nid: int = 0
    #: "seconds added to epoch for mkfs time"
    build_time: int = 0
    feature_compat: int = 0

    def pack(self) -> bytes:
        """The superblock's bytes: 128, or 144 with a metabox."""
        box = self.metabox_nid != 0
        if box:
            if self.metabox_nid & NID_METABOX or not self.root_nid & NID_METABOX:
                raise ValueError("with a metabox, the root is in it and the metabox "
                                 "inode is not")
        elif not 0 <= self.root_nid < 1 << 16:
            raise ValueError(f"root nid {self.root_nid} does not fit rootnid_2b")
        incompat = self.feature_incompat | (INCOMPAT_48BIT | INCOMPAT_METABOX if box else 0)
        packed = struct.pack(
            "<IIIBBHQQIIII16s16sIHHHBBIQBB2xIQ8xQ8x",
            MAGIC,
            0,  # checksum: only read with EROFS_FEATURE_COMPAT_SB_CHKSUM, not set
            self.feature_compat,
            BLOCK_BITS,
            1 if box else 0,  # sb_extslots
            0 if box else self.root_nid,  # blocks_hi (48BIT) or rootnid_2b
            self.inodes,
            self.epoch,
            0,  # fixed_nsec
            self.blocks,
            self.meta_blkaddr,
            self.xattr_blkaddr,
            self.uuid,
            self.volume_name,
            incompat,
            self.compr_algs,
            0,  # extra_devices
            0,  # devt_slotoff
            0,  # dirblkbits: directory blocks are file system blocks
            0,  # xattr_prefix_count: no long prefixes
            0,  # xattr_prefix_start
            self.packed_nid,
            0,  # xattr_filter_reserved
            0,  # ishare_xattr_prefix_id
            self.build_time,
            self.root_nid if box else 0,  # rootnid_8b (48BIT)
            self.metabox_nid,
        )
        return packed[:144 if box else 128]
