"""Metadata streams and lookup tables.

Format rules enforced here:

* a metadata stream "is chopped up into 8KiB blocks that are separately compressed";
* "every metadata block is preceded by a single, 16 bit unsigned integer ... the on-disk
  size of the block that follows. The MSB is set if the block is stored uncompressed",
  and a block is stored uncompressed when compression does not make it smaller;
* entries may cross block boundaries and the blocks follow each other without gaps;
* a lookup table is a metadata stream of fixed-size records followed by "a list of 64 bit
  unsigned integers ... holding the on-disk locations of each metadata block", "stored
  uncompressed and not preceded by a header".

Blocks are compressed synchronously as they fill, so the location of any byte already
written (and of the block being filled) is known at once: the inode and directory
writers need those locations to reference each other.
"""

from __future__ import annotations

import struct

from .compressor import Compressor
from .format import METADATA_SIZE, METADATA_UNCOMPRESSED

_U16 = struct.Struct("<H")


def pack_metadata_block(compressor: Compressor, chunk: bytes) -> bytes:
    """Return one on-disk metadata block (header + payload) for ``chunk`` (≤ 8 KiB)."""
    packed = compressor.compress(chunk)
    if len(packed) < len(chunk):
        return _U16.pack(len(packed)) + packed
    return _U16.pack(len(chunk) | METADATA_UNCOMPRESSED) + chunk


class MetadataWriter:
    """An in-memory metadata stream (inode, directory, xattr or lookup-table records)."""

    def __init__(self, compressor: Compressor) -> None:
        self._compressor = compressor
        self._pending = bytearray()
        self._blocks: list[bytes] = []
        #: on-disk size of the blocks written so far = start of the block being filled
        self._disk_size = 0
        #: on-disk start (relative to the stream) of every completed block
        self._starts: list[int] = []
        #: uncompressed bytes in completed blocks
        self._flushed = 0

    @property
    def position(self) -> int:
        """Uncompressed offset of the next byte, as if the stream were one buffer."""
        return self._flushed + len(self._pending)

    def reference(self) -> tuple[int, int]:
        """(block start relative to the stream, offset in the block) of the next byte."""
        return self._disk_size, len(self._pending)

    def block_start_of(self, position: int) -> int:
        """On-disk start (relative to the stream) of the block holding ``position``."""
        index = position // METADATA_SIZE
        if index < len(self._starts):
            return self._starts[index]
        assert index == len(self._starts), "position beyond the block being filled"
        return self._disk_size

    def append(self, record: bytes) -> int:
        """Write ``record`` and return its reference: "The lower 16 bit hold an offset
        into the uncompressed block and the upper 48 bit point to the on-disk location of
        the block" (relative to the stream)."""
        pending = self._pending
        ref = self._disk_size << 16 | len(pending)
        pending += record  # write(), without its call: one record per inode
        if len(pending) >= METADATA_SIZE:
            self.write(b"")
        return ref

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._pending += data
        while len(self._pending) >= METADATA_SIZE:
            self._emit(bytes(self._pending[:METADATA_SIZE]))
            del self._pending[:METADATA_SIZE]

    def _emit(self, chunk: bytes) -> None:
        block = pack_metadata_block(self._compressor, chunk)
        self._starts.append(self._disk_size)
        self._blocks.append(block)
        self._disk_size += len(block)
        self._flushed += len(chunk)

    def finish(self) -> list[bytes]:
        """Flush the partial last block and return all on-disk blocks in order."""
        if self._pending:
            self._emit(bytes(self._pending))
            self._pending.clear()
        return self._blocks

    @property
    def block_starts(self) -> list[int]:
        """On-disk start of each block (valid after :meth:`finish`)."""
        return self._starts


def pack_lookup_table(
    compressor: Compressor, records: bytes, table_start: int
) -> tuple[bytes, int]:
    """Lay out a lookup table at absolute offset ``table_start``.

    Returns (bytes to write, absolute offset of the location list), the value the
    superblock stores for the table.
    """
    meta = MetadataWriter(compressor)
    meta.write(records)
    blocks = meta.finish()
    body = b"".join(blocks)
    locations = struct.pack(f"<{len(blocks)}Q", *(table_start + s for s in meta.block_starts))
    return body + locations, table_start + len(body)
