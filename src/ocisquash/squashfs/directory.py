"""Directory listings in the directory table, and their index.

Format rules enforced here:

* "The entry list itself is sorted ASCIIbetically by entry name" (bytewise here);
* "Every time, the inode block changes or the difference of the inode number to the
  reference in the header cannot be encoded in 16 bits anymore, a new header is emitted",
  and "A header must be followed by AT MOST 256 entries";
* "a new header should be emitted every time the entry list crosses a metadata block
  boundary", and each such header gets an index entry (u32 byte offset from the first
  header, u32 metadata block start, name of the first entry after it) so the kernel
  can seek in large directories; the kernel resumes reading at that block and at
  offset ``(index + block offset) % 8192``, so the header must start in that block;
* the header "count" and the entry "name size" are stored off by one, the entry "type"
  is always the basic type, and the inode's "file size" is the listing size plus 3
  ("The Linux kernel creates "." and ".." entries for offsets 0 and 1").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .format import (
    DIR_ENTRY,
    DIR_HEADER,
    DIR_INDEX,
    MAX_DIR_ENTRIES_PER_HEADER,
    METADATA_SIZE,
)
from .metadata import MetadataWriter

#: One name in a listing: (name, basic inode type, inode number, where its inode is: the
#: inode table's block number << 16 | offset, see ``MetadataWriter.append``). A plain
#: tuple: one is built for every entry of the image.
DirEntry = tuple[bytes, int, int, int]


@dataclass(frozen=True, slots=True)
class Listing:
    """Where a directory's listing went: what its inode records."""

    block: int  # "block index": metadata block start relative to the directory table
    offset: int  # "block offset" within that uncompressed block
    file_size: int  # listing size + 3
    index: bytes  # packed directory index entries
    index_count: int


def write_listing(table: MetadataWriter, entries: list[DirEntry],
                  inode_start: Callable[[int], int]) -> Listing:
    """Append the listing of ``entries`` (sorted by name) to ``table``;
    ``inode_start(number)`` is the on-disk start of the inode table's block ``number``.

    Like mksquashfs, a header is indexed when the entries since the previous indexed
    point would exceed one metadata block (counted within the listing), and the index
    entry records the directory-table block the header actually starts in.
    """
    block, offset = table.reference()
    start = table.position
    listing = bytearray()
    headers: list[tuple[int, bytes]] = []  # (listing offset, first name) of indexed headers
    indexed_from = 0
    header_at = -1
    count = 0
    base_number = 0
    #: no inode block is -1: the first entry starts a header
    base_block = -1
    entry_struct = DIR_ENTRY.size
    #: where an entry crossing the indexed metadata block would end (see ``crosses``)
    limit = METADATA_SIZE - entry_struct
    pack = DIR_ENTRY.pack
    for name, kind, number, ref in entries:
        delta = number - base_number
        # Most entries start no header: the tests below in one condition, the cheap ones
        # first (an entry crosses when len(listing) + its size - indexed_from > 8 KiB).
        if (
            ref >> 16 != base_block
            or count == MAX_DIR_ENTRIES_PER_HEADER
            or len(listing) + len(name) > limit
            or not -0x8000 <= delta <= 0x7FFF
        ):
            entry_block = ref >> 16
            crosses = (header_at >= 0
                       and len(listing) + entry_struct + len(name) - indexed_from > METADATA_SIZE)
            if header_at >= 0:
                DIR_HEADER.pack_into(listing, header_at, count - 1, inode_start(base_block),
                                     base_number)
                if crosses:
                    headers.append((len(listing), name))
                    indexed_from = len(listing)
                    limit = indexed_from + METADATA_SIZE - entry_struct
            header_at = len(listing)
            listing += bytes(DIR_HEADER.size)
            count = 0
            base_number = number
            base_block = entry_block
            delta = 0
        listing += pack(ref & 0xFFFF, delta, kind, len(name) - 1)
        listing += name
        count += 1
    if header_at >= 0:
        DIR_HEADER.pack_into(listing, header_at, count - 1, inode_start(base_block),
                             base_number)
    table.write(listing)
    index = bytearray()
    for at, name in headers:
        index += DIR_INDEX.pack(at, table.block_start_of(start + at), len(name) - 1) + name
    return Listing(block, offset, len(listing) + 3, bytes(index), len(headers))


def needs_extended(entries: list[DirEntry]) -> bool:
    """mksquashfs's rule for a "large" directory: 257 entries or more, or entries whose
    names plus entry structs reach one metadata block. Such directories get the extended
    inode even when no index entry was needed."""
    size = DIR_ENTRY.size * len(entries) + sum(len(e[0]) for e in entries)
    return len(entries) > MAX_DIR_ENTRIES_PER_HEADER or size >= METADATA_SIZE
