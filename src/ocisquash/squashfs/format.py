"""On-disk constants and fixed-size structures of the squashfs 4.0 format.

Everything here is little endian, as the format requires ("SquashFS always stores
integers in little endian format", ``doc/format.adoc`` of squashfs-tools-ng). Field
comments quote that document so the code can be checked against it line by line.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

#: "Must be set to 0x73717368 ("hsqs" on disk)."
MAGIC = 0x73717368
VERSION_MAJOR = 4
VERSION_MINOR = 0


def has_magic(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a squashfs image: the superblock's
    magic in its first 4 bytes."""
    return head[:4] == MAGIC.to_bytes(4, "little")


#: "Metadata ... is chopped up into 8KiB blocks that are separately compressed."
METADATA_SIZE = 8192
#: "The MSB is set if the block is stored uncompressed" (metadata block header).
METADATA_UNCOMPRESSED = 0x8000
#: "A 32 bit integer is used with bit 24 (i.e. 1 << 24) set if the block is stored
#: uncompressed" (data block sizes and fragment table entries).
DATA_UNCOMPRESSED = 1 << 24

#: "must be set to 0xFFFFFFFFFFFFFFFF" for an omitted optional table.
INVALID_TABLE = 0xFFFF_FFFF_FFFF_FFFF
#: fragment index / xattr index meaning "none".
INVALID_INDEX = 0xFFFF_FFFF
# The block size bounds are in limits.py.

#: "the kernel implementation currently imposes an arbitrary limit of 255 on the name
#: size field. Since the field is off-by-one, ... a file name ... can be at most 256".
MAX_NAME_LEN = 256
#: "A header must be followed by *AT MOST* 256 entries."
MAX_DIR_ENTRIES_PER_HEADER = 256
#: The kernel pads the image to its device block size; user space tools use 4 KiB.
DEVICE_BLOCK_SIZE = 4096


class CompressorId(IntEnum):
    """Superblock "compressor" field.

    format.adoc's table swaps LZO and LZMA; these are the values of the kernel's
    ``squashfs_fs.h`` (``LZMA_COMPRESSION 2``, ``LZO_COMPRESSION 3``), which squashfs-tools
    use too and which an image must carry to be read.
    """

    GZIP = 1
    LZMA = 2
    LZO = 3
    XZ = 4
    LZ4 = 5
    ZSTD = 6


class SuperFlags(IntFlag):
    """Superblock "flags" field; only COMPRESSOR_OPTIONS is read by the kernel."""

    UNCOMPRESSED_INODES = 0x0001
    UNCOMPRESSED_DATA = 0x0002
    UNCOMPRESSED_FRAGMENTS = 0x0008
    NO_FRAGMENTS = 0x0010
    ALWAYS_FRAGMENTS = 0x0020
    DUPLICATES = 0x0040
    EXPORTABLE = 0x0080
    UNCOMPRESSED_XATTRS = 0x0100
    NO_XATTRS = 0x0200
    COMPRESSOR_OPTIONS = 0x0400
    UNCOMPRESSED_IDS = 0x0800


class InodeType(IntEnum):
    """Common inode header "type"; the extended type is the basic type + 7."""

    DIR = 1
    FILE = 2
    SYMLINK = 3
    BLOCK_DEV = 4
    CHAR_DEV = 5
    FIFO = 6
    SOCKET = 7
    EXT_DIR = 8
    EXT_FILE = 9
    EXT_SYMLINK = 10
    EXT_BLOCK_DEV = 11
    EXT_CHAR_DEV = 12
    EXT_FIFO = 13
    EXT_SOCKET = 14

    @property
    def basic(self) -> InodeType:
        """The basic type: "The inode type is stored in the entry, but always as the
        corresponding basic type."."""
        return InodeType(self - 7) if self >= 8 else self

    @property
    def extended(self) -> InodeType:
        return InodeType(self + 7) if self < 8 else self


class XattrPrefix(IntEnum):
    """Xattr key "type": "A prefix ID for the key name"."""

    USER = 0
    TRUSTED = 1
    SECURITY = 2


#: "If the value that follows is stored out-of-line, the flag 0x0100 is ORed to the type ID."
XATTR_VALUE_OOL = 0x0100

XATTR_PREFIXES: tuple[tuple[bytes, XattrPrefix], ...] = (
    (b"user.", XattrPrefix.USER),
    (b"trusted.", XattrPrefix.TRUSTED),
    (b"security.", XattrPrefix.SECURITY),
)


@dataclass(frozen=True, slots=True)
class Superblock:
    """The 96-byte superblock at offset 0."""

    inode_count: int  # u32 "The number of inodes stored in the archive."
    mod_time: int  # u32 "Last modification time of the archive."
    block_size: int  # u32 "Must be a power of two between 4096 (4k) and 1048576 (1 MiB)."
    fragment_count: int  # u32 "The number of entries in the fragment table."
    compressor: CompressorId  # u16 "An ID designating the compressor used"
    flags: SuperFlags  # u16 "Bit wise OR of the flag bits"
    id_count: int  # u16 "The number of entries in the ID lookup table."
    root_inode: int  # u64 "A reference to the inode of the root directory."
    bytes_used: int  # u64 "The number of bytes used by the archive."
    id_table: int  # u64 "The byte offset at which the id table starts."
    xattr_table: int  # u64 "The byte offset at which the xattr id table starts."
    inode_table: int  # u64 "The byte offset at which the inode table starts."
    directory_table: int  # u64 "The byte offset at which the directory table starts."
    fragment_table: int  # u64 "The byte offset at which the fragment table starts."
    export_table: int  # u64 "The byte offset at which the export table starts."

    STRUCT = struct.Struct("<IIIIIHHHHHHQQQQQQQQ")
    SIZE = 96

    def pack(self) -> bytes:
        return self.STRUCT.pack(
            MAGIC,
            self.inode_count,
            self.mod_time,
            self.block_size,
            self.fragment_count,
            self.compressor,
            # "block log: The log2 of the block size. If the two fields do not agree,
            # the archive is considered corrupted."
            self.block_size.bit_length() - 1,
            self.flags,
            self.id_count,
            VERSION_MAJOR,
            VERSION_MINOR,
            self.root_inode,
            self.bytes_used,
            self.id_table,
            self.xattr_table,
            self.inode_table,
            self.directory_table,
            self.fragment_table,
            self.export_table,
        )


assert Superblock.STRUCT.size == Superblock.SIZE

#: Common inode header: u16 type, u16 permissions, u16 uid index, u16 gid index,
#: u32 mtime, u32 "inode number: Unique node number. Must be at least 1".
INODE_HEADER = struct.Struct("<HHHHII")
#: Basic directory: u32 block index, u32 link count, u16 file size, u16 block offset,
#: u32 parent inode.
DIR_INODE = struct.Struct("<IIHHI")
#: Extended directory: u32 link count, u32 file size, u32 block index, u32 parent inode,
#: u16 index count, u16 block offset, u32 xattr index.
EXT_DIR_INODE = struct.Struct("<IIIIHHI")
#: Directory index entry: u32 index, u32 start, u32 name size (minus one), then name.
DIR_INDEX = struct.Struct("<III")
#: Basic file: u32 blocks start, u32 frag index, u32 block offset, u32 file size.
FILE_INODE = struct.Struct("<IIII")
#: Extended file: u64 blocks start, u64 file size, u64 sparse, u32 link count,
#: u32 frag index, u32 block offset, u32 xattr index.
EXT_FILE_INODE = struct.Struct("<QQQIIII")
#: Symlink: u32 link count, u32 target size, then the target (extended: then u32 xattr).
SYMLINK_INODE = struct.Struct("<II")
#: Device: u32 link count, u32 device number (extended: then u32 xattr index).
DEV_INODE = struct.Struct("<II")
EXT_DEV_INODE = struct.Struct("<III")
#: IPC (fifo, socket): u32 link count (extended: then u32 xattr index).
IPC_INODE = struct.Struct("<I")
EXT_IPC_INODE = struct.Struct("<II")

#: Directory header: u32 count (off by one), u32 start (inode metadata block),
#: s32 inode number (reference for the entries' deltas).
DIR_HEADER = struct.Struct("<IIi")
#: Directory entry: u16 offset, s16 inode offset, u16 type, u16 name size (minus one).
DIR_ENTRY = struct.Struct("<HhHH")

#: Fragment table entry: u64 start, u32 size (bit 24 = uncompressed), u32 unused (0).
FRAGMENT_ENTRY = struct.Struct("<QII")
#: Xattr lookup entry: u64 xattr ref, u32 count, u32 size.
XATTR_ID_ENTRY = struct.Struct("<QII")
#: Xattr id table header: u64 kv start, u32 count, u32 unused.
XATTR_TABLE_HEADER = struct.Struct("<QII")
#: Xattr key: u16 type, u16 name size; the value: u32 value size.
XATTR_KEY = struct.Struct("<HH")
XATTR_VALUE = struct.Struct("<I")


def inode_ref(block_start: int, offset: int) -> int:
    """Pack a metadata reference: "The lower 16 bit hold an offset into the uncompressed
    block and the upper 48 bit point to the on-disk location of the block"."""
    return (block_start << 16) | offset


def encode_device(major: int, minor: int) -> int:
    """Linux ``new_encode_dev``, the inverse of the spec's
    ``major = (dev & 0xFFF00) >> 8; minor = (dev & 0x000FF) | ((dev >> 12) & 0xFFF00)``."""
    return (minor & 0xFF) | ((major & 0xFFF) << 8) | ((minor & ~0xFF) << 12)
