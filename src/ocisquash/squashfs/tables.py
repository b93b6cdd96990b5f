"""The id table and the xattr table.

Format rules enforced here:

* inodes hold "a 16 bit index into this table" of unique 32-bit uids/gids, so an image
  holds at most 65536 distinct ids (the superblock's u16 count caps it at 65535);
* xattr keys carry "A prefix ID for the key name": 0 ``user.``, 1 ``trusted.``,
  2 ``security.``; any other namespace cannot be stored;
* "If two inodes have an identical attribute sets, the key/value sequence is only
  written once, there is only one lookup table entry and both inodes have the same
  index"; a value seen before is stored out of line ("the flag 0x0100 is ORed to the
  type ID") when that is shorter than repeating it;
* the xattr id table is a lookup table of (ref, count, size) records, reached through a
  header holding "kv start", "count" and the block locations, all "stored on-disk as
  is, uncompressed".

Fragment and export tables are plain lookup tables and are laid out by ``writer.py``
with :func:`~.metadata.pack_lookup_table`.
"""

from __future__ import annotations

import struct

from ..errors import SquashfsError
from .compressor import Compressor
from .format import (
    INVALID_INDEX,
    XATTR_ID_ENTRY,
    XATTR_KEY,
    XATTR_PREFIXES,
    XATTR_TABLE_HEADER,
    XATTR_VALUE,
    XATTR_VALUE_OOL,
    XattrPrefix,
    inode_ref,
)
from .metadata import MetadataWriter, pack_lookup_table

#: "the inodes themselves hold a 16 bit index into this table"; the superblock count is u16.
MAX_IDS = 0xFFFF

Xattrs = tuple[tuple[bytes, bytes], ...]


class IdTable:
    """Unique uids and gids, in order of first use."""

    def __init__(self) -> None:
        self._index: dict[int, int] = {}

    def index(self, value: int) -> int:
        found = self._index.get(value)
        if found is not None:
            return found
        if len(self._index) >= MAX_IDS:
            raise SquashfsError(f"more than {MAX_IDS} distinct uids and gids")
        found = self._index[value] = len(self._index)
        return found

    def __len__(self) -> int:
        return len(self._index)

    def records(self) -> bytes:
        return struct.pack(f"<{len(self._index)}I", *self._index)


def split_xattr_name(name: bytes) -> tuple[XattrPrefix, bytes]:
    """Split ``b"security.capability"`` into its prefix id and the stored remainder."""
    for prefix, kind in XATTR_PREFIXES:
        if name.startswith(prefix):
            return kind, name[len(prefix) :]
    raise SquashfsError(
        f"xattr {name!r} is not in a namespace squashfs can store",
        hint="squashfs stores only user.*, trusted.* and security.* attributes",
    )


def check_xattrs(xattrs: Xattrs) -> None:
    """Raise SquashfsError if any name cannot be stored."""
    for name, value in xattrs:
        split_xattr_name(name)
        if len(name) > 0xFFFF or len(value) > 0xFFFF_FFFF:
            raise SquashfsError(f"xattr {name!r} is too large")


class XattrTable:
    """Deduplicated xattr sets, written as key/value metadata blocks plus a lookup table."""

    def __init__(self, compressor: Compressor) -> None:
        self._compressor = compressor
        self._kv = MetadataWriter(compressor)
        self._sets: dict[Xattrs, int] = {}
        self._entries: list[bytes] = []
        #: value -> reference of its first, inline copy (relative to the kv start)
        self._values: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def index(self, xattrs: Xattrs) -> int:
        """Return the xattr index of this set (``0xFFFFFFFF`` for no xattrs)."""
        if not xattrs:
            return INVALID_INDEX
        found = self._sets.get(xattrs)
        if found is not None:
            return found
        start_block, start_offset = self._kv.reference()
        start = self._kv.position
        for name, value in sorted(xattrs):
            kind, rest = split_xattr_name(name)
            previous = self._values.get(value)
            if previous is not None and len(value) > 8:
                self._kv.write(XATTR_KEY.pack(kind | XATTR_VALUE_OOL, len(rest)) + rest)
                self._kv.write(XATTR_VALUE.pack(8) + struct.pack("<Q", previous))
                continue
            self._kv.write(XATTR_KEY.pack(kind, len(rest)) + rest)
            if value not in self._values:
                block, offset = self._kv.reference()
                self._values[value] = inode_ref(block, offset)
            self._kv.write(XATTR_VALUE.pack(len(value)) + value)
        size = self._kv.position - start
        found = self._sets[xattrs] = len(self._entries)
        self._entries.append(
            XATTR_ID_ENTRY.pack(inode_ref(start_block, start_offset), len(xattrs), size)
        )
        return found

    def pack(self, table_start: int) -> tuple[bytes, int]:
        """Lay out the table at ``table_start``; return (bytes, offset of the id header)."""
        kv = b"".join(self._kv.finish())
        ids, locations_at = pack_lookup_table(
            self._compressor, b"".join(self._entries), table_start + len(kv)
        )
        records_len = locations_at - (table_start + len(kv))
        header = XATTR_TABLE_HEADER.pack(table_start, len(self._entries), 0)
        # The header sits between the id records and their location list: the superblock
        # points at the header, which is immediately followed by the locations.
        body = kv + ids[:records_len] + header + ids[records_len:]
        return body, locations_at
