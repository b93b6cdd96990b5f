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

The inode and directory writers need the locations of each other's blocks: a block's
on-disk start is the sum of the compressed sizes of the blocks before it. With a thread
pool, full blocks are compressed on it while the next ones fill; :meth:`append` then
returns a reference by block *number*, which :meth:`resolve` turns into the format's
(by block start) once the blocks before it are compressed, and :meth:`reference` waits
for them. Without a pool each block is compressed as it fills. The bytes are the same
either way.
"""

from __future__ import annotations

import struct
from collections import deque
from concurrent.futures import Executor, Future

from .compressor import Compressor
from .format import METADATA_SIZE, METADATA_UNCOMPRESSED

_U16 = struct.Struct("<H")

#: Blocks of one stream handed to the pool and not compressed yet, at most: the
#: uncompressed bytes waiting stay small whatever the compressor's speed.
_WAITING = 64


def pack_metadata_block(compressor: Compressor, chunk: bytes) -> bytes:
    """Return one on-disk metadata block (header + payload) for ``chunk`` (≤ 8 KiB)."""
    packed = compressor.compress(chunk)
    if len(packed) < len(chunk):
        return _U16.pack(len(packed)) + packed
    return _U16.pack(len(chunk) | METADATA_UNCOMPRESSED) + chunk


class MetadataWriter:
    """An in-memory metadata stream (inode, directory, xattr or lookup-table records)."""

    def __init__(self, compressor: Compressor, pool: Executor | None = None) -> None:
        self._compressor = compressor
        #: compresses full blocks while the next ones fill (see the module docstring)
        self._pool = pool
        self._pending = bytearray()
        #: the blocks compressed so far, and those still being compressed after them
        self._blocks: list[bytes] = []
        self._waiting: deque[Future[bytes]] = deque()
        #: on-disk size of the compressed blocks = start of the first one not compressed
        self._disk_size = 0
        #: on-disk start (relative to the stream) of every compressed block
        self._starts: list[int] = []
        #: completed blocks (compressed or not), and their uncompressed bytes
        self._emitted = 0
        self._flushed = 0

    @property
    def position(self) -> int:
        """Uncompressed offset of the next byte, as if the stream were one buffer."""
        return self._flushed + len(self._pending)

    def reference(self) -> tuple[int, int]:
        """(block start relative to the stream, offset in the block) of the next byte."""
        self._settle(self._emitted)
        return self._disk_size, len(self._pending)

    def block_start(self, index: int) -> int:
        """On-disk start (relative to the stream) of block number ``index`` (a completed
        block, or the one being filled)."""
        self._settle(index)
        return self._starts[index] if index < len(self._starts) else self._disk_size

    def block_start_of(self, position: int) -> int:
        """On-disk start (relative to the stream) of the block holding ``position``."""
        index = position // METADATA_SIZE
        assert index <= self._emitted, "position beyond the block being filled"
        return self.block_start(index)

    def append(self, record: bytes) -> int:
        """Write ``record`` and return where it starts as the block's number << 16 |
        the offset in the block; :meth:`resolve` makes it the format's reference."""
        pending = self._pending
        ref = self._emitted << 16 | len(pending)
        pending += record  # write(), without its call: one record per inode
        if len(pending) >= METADATA_SIZE:
            self.write(b"")
        return ref

    def resolve(self, ref: int) -> int:
        """The reference of an :meth:`append` result: "The lower 16 bit hold an offset
        into the uncompressed block and the upper 48 bit point to the on-disk location of
        the block" (relative to the stream)."""
        return self.block_start(ref >> 16) << 16 | (ref & 0xFFFF)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._pending += data
        while len(self._pending) >= METADATA_SIZE:
            self._emit(bytes(self._pending[:METADATA_SIZE]))
            del self._pending[:METADATA_SIZE]

    def _emit(self, chunk: bytes) -> None:
        if self._pool is None:
            self._place(pack_metadata_block(self._compressor, chunk))
        else:
            if len(self._waiting) >= _WAITING:  # a slow compressor: hold the layout back
                self._place(self._waiting.popleft().result())
            self._waiting.append(self._pool.submit(pack_metadata_block, self._compressor, chunk))
        self._emitted += 1
        self._flushed += len(chunk)

    def _place(self, block: bytes) -> None:
        self._starts.append(self._disk_size)
        self._blocks.append(block)
        self._disk_size += len(block)

    def _settle(self, count: int) -> None:
        """Wait until the first ``count`` completed blocks are compressed."""
        while len(self._blocks) < count:
            self._place(self._waiting.popleft().result())

    def finish(self) -> list[bytes]:
        """Flush the partial last block and return all on-disk blocks in order."""
        if self._pending:
            self._emit(bytes(self._pending))
            self._pending.clear()
        self._settle(self._emitted)
        return self._blocks

    @property
    def block_starts(self) -> list[int]:
        """On-disk start of each block (valid after :meth:`finish`)."""
        return self._starts


def pack_lookup_table(
    compressor: Compressor, records: bytes, table_start: int, pool: Executor | None = None
) -> tuple[bytes, int]:
    """Lay out a lookup table at absolute offset ``table_start`` (its blocks compressed
    on ``pool`` when given).

    Returns (bytes to write, absolute offset of the location list), the value the
    superblock stores for the table.
    """
    meta = MetadataWriter(compressor, pool)
    meta.write(records)
    blocks = meta.finish()
    body = b"".join(blocks)
    locations = struct.pack(f"<{len(blocks)}Q", *(table_start + s for s in meta.block_starts))
    return body + locations, table_start + len(body)
