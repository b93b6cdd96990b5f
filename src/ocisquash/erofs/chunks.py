"""Holes: chunk-based files, whose all-zero chunks take no blocks.

Format rules enforced here (``erofs_fs.h``; the kernel's ``fs/erofs/data.c``,
``erofs_map_blocks``; ``erofs.rst``, "Inode data layouts"):

* datalayout ``EROFS_INODE_CHUNK_BASED`` (4): the file is cut into chunks of
  ``4 KiB << chunkbits`` bytes, the last one shorter; ``i_u`` is
  "struct erofs_inode_chunk_info": ``format`` (u16, "chunk blkbits" in bits 0-4, and
  ``EROFS_CHUNK_FORMAT_INDEXES`` 0x20 unset: a block map, not 8-byte chunk indexes)
  and a reserved u16;
* the block map, one ``__le32`` per chunk (``EROFS_BLOCK_MAP_ENTRY_SIZE``), follows
  the inode and its xattrs at the next 4-byte boundary ("roundup(iloc + inode_isize +
  xattr_isize, unit)"; inodes and xattr bodies end 4-aligned, so right after them):
  each entry is the first block of its chunk, whose blocks are consecutive, or
  ``EROFS_NULL_ADDR``, a hole the kernel reads as zeros;
* ``EROFS_FEATURE_INCOMPAT_CHUNKED_FILE`` (0x4) in the superblock: Linux reads
  chunk-based files from 5.15 on, and an older kernel refuses the image (an unknown
  incompatible feature) instead of misreading it. erofs-utils reads them from 1.4 on.

The rule, a function of the file's bytes alone, so that a hole declared by a sparse
tar member and zeros stored in full give the same image:

* a file's chunk size is the smallest power of two of at least 4 KiB that cuts it
  into at most :data:`MAX_CHUNKS` chunks (4 KiB for files up to 4 GiB; 1 MiB for
  1 TiB), so its block map is at most 4 MiB, a thousandth of the file;
* a chunk whose bytes are all zero is a hole; a file with at least one hole is stored
  CHUNK_BASED, its other chunks stored whole (their zeros included), one after the
  other, the last padded to a block; a file without holes is stored as before
  (FLAT_PLAIN or FLAT_INLINE: see ``data.py``), byte for byte.

A chunk-based file has no inline tail, so a small file with one zero block gains a
block and may lose its inline tail: about even. A large file with a few zero blocks
grows by its block map, at most a thousandth of it; deciding by size would need the
whole file before its first block is written, which streaming cannot afford.

Holes cost no reading: a source that knows its holes (``entry.HoleReader``, a sparse
tar member) skips them, so a 1 TiB sparse file costs its data and its block map, not
1 TiB of zeros. Other sources are read and their zero chunks found by comparing:
a search for a run of 512 zeros first, so that the chunks before it are data written
in one piece, and a run of zero chunks counted by doubling and bisecting, so that a
sparse member's data regions (a few KiB of data in each 64 KiB, say, its holes read
as zeros in between) cost a few compares each, not one per chunk.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable
from typing import BinaryIO

from ..entry import HoleReader
from ..errors import ErofsError
from .format import BLOCK_BITS, BLOCK_SIZE, NULL_ADDR

#: At most this many chunks per file: the block map of 4-byte entries stays <= 4 MiB.
MAX_CHUNKS = 1 << 20
#: "#define EROFS_CHUNK_FORMAT_BLKBITS_MASK 0x001F": chunkbits beyond the block's.
MAX_CHUNK_BITS = 0x1F
#: Read size for streamed files (whole blocks).
READ = 64 * BLOCK_SIZE
#: What the search for a possible zero chunk looks for: any chunk of zeros starts with
#: it, and a needle this short is cheap to search for (a 4 KiB one costs ~10 µs a call)
_ZERO_RUN = bytes(512)
_ZEROS = memoryview(bytes(READ))


def _all_zero(buf: bytes, at: int, n: int) -> bool:
    """Whether ``buf[at:at + n]`` is all zeros (``startswith`` compares in place)."""
    step = len(_ZEROS)
    return all(buf.startswith(_ZEROS[:min(step, at + n - k)], k)
               for k in range(at, at + n, step))


def _zero_chunks(buf: bytes, at: int, chunk: int, most: int) -> int:
    """How many whole chunks of zeros ``buf`` has from ``at`` on, at most ``most``:
    doubling, then bisecting (a run of k chunks costs about 2 log k compares)."""
    good, k = 0, 1
    while k <= most and _all_zero(buf, at, k * chunk):
        good, k = k, 2 * k
    bad = min(k, most + 1)
    while bad - good > 1:
        mid = (good + bad) // 2
        if _all_zero(buf, at, mid * chunk):
            good = mid
        else:
            bad = mid
    return good


def chunk_bits(size: int) -> int:
    """``chunkbits`` of a file of ``size`` bytes: chunks of ``4 KiB << chunkbits``."""
    bits = 0
    while (size + (BLOCK_SIZE << bits) - 1) >> (BLOCK_BITS + bits) > MAX_CHUNKS:
        bits += 1
    if bits > MAX_CHUNK_BITS:
        raise ErofsError(f"a file of {size} bytes is too large for EROFS")
    return bits


class Split:
    """A file cut into chunks as it streams: data chunks go to ``emit`` in order, a
    hole chunk's zeros go nowhere. ``flags`` has a byte per chunk, 1 for data, 0 for a
    hole. Zeros at the start of a chunk are held back until a non-zero byte says the
    chunk is data."""

    def __init__(self, size: int, bits: int, emit: Callable[[bytes | memoryview], None],
                 holes: bool = True) -> None:
        self.size = size
        #: False: every byte is emitted, no chunk is a hole (``ErofsOptions.holes``)
        self._holes = holes
        self.chunk = BLOCK_SIZE << bits
        self.flags = bytearray()
        self._emit = emit
        self._pos = 0  # bytes of the file fed so far
        self._held = 0  # zeros at the start of the current chunk, not emitted yet
        self._started = False  # whether the current chunk has emitted data
        #: bytes of the data chunks, zeros and the tail included
        self.data_len = 0
        #: where the last whole block ends: the bytes past it are held, not emitted
        self._whole = size - size % BLOCK_SIZE
        self._tail = bytearray()

    @property
    def tail(self) -> bytes:
        """The file's bytes past its last whole block when its last chunk is data: not
        emitted (a flat file may store them inline)."""
        return bytes(self._tail)

    def _out(self, view: bytes | memoryview, at: int) -> None:
        """Emit ``view``, the file's bytes from ``at`` on."""
        self.data_len += len(view)
        cut = self._whole - at
        if cut >= len(view):
            self._emit(view)
            return
        if cut > 0:
            self._emit(view[:cut])
        self._tail += view[max(cut, 0):]

    @property
    def holes(self) -> int:
        return self.flags.count(0)

    @property
    def closed(self) -> int:
        """Where the current chunk starts: the chunks before it are decided."""
        return min(len(self.flags) * self.chunk, self.size)

    @property
    def started(self) -> bool:
        """Whether the current chunk is data (its bytes so far were emitted)."""
        return self._started

    @property
    def whole(self) -> int:
        """Where the last whole block ends (the bytes after it go to :attr:`tail`)."""
        return self._whole

    def _chunk_end(self) -> int:
        return min(self._pos - self._pos % self.chunk + self.chunk, self.size)

    def _close_chunk(self) -> None:
        self.flags.append(1 if self._started else 0)
        self._started = False
        self._held = 0

    def _zeros(self, n: int, at: int) -> None:
        while n:
            k = min(n, len(_ZEROS))
            self._out(_ZEROS[:k], at)
            at += k
            n -= k

    def feed_zeros(self, n: int) -> None:
        """``n`` bytes of a hole, not read."""
        if not self._holes:
            self._zeros(n, self._pos)
            self._pos += n
            return
        chunk = self.chunk
        while n:
            if not self._pos % chunk and not self._started:
                # Whole chunks of the hole, at once (a 1 TiB hole is a million).
                k = n // chunk
                if self._pos + n >= self.size:
                    k = -(-(self.size - self._pos) // chunk)
                if k:
                    self.flags += bytes(k)
                    step = min(k * chunk, self.size - self._pos)
                    self._pos += step
                    n -= step
                    continue
            stop = self._chunk_end()
            take = min(n, stop - self._pos)
            if self._started:
                self._zeros(take, self._pos)
            else:
                self._held += take
            self._pos += take
            n -= take
            if self._pos == stop:
                self._close_chunk()

    def feed(self, buf: bytes) -> None:
        """The next bytes of the file, as read."""
        view = memoryview(buf)
        if not self._holes:
            self._out(view, self._pos)
            self._pos += len(buf)
            return
        chunk = self.chunk
        i = 0
        end = len(buf)
        while i < end:
            if not self._started and not self._pos % chunk:
                # Full chunks that start before the next run of zeros are data: a chunk
                # of zeros starts with one. Written in one piece.
                z = buf.find(_ZERO_RUN, i)
                if z < 0:
                    z = end
                k = min(-(-(z - i) // chunk), (end - i) // chunk,
                        (self.size - self._pos) // chunk)
                if k:
                    self._out(view[i:i + k * chunk], self._pos)
                    self.flags += b"\1" * k
                    self._pos += k * chunk
                    i += k * chunk
                    continue
                if z == i:
                    # Zeros here: the whole chunks of them are holes, at once.
                    k = _zero_chunks(buf, i, chunk,
                                     min((end - i) // chunk, (self.size - self._pos) // chunk))
                    if k:
                        self.flags += bytes(k)
                        self._pos += k * chunk
                        i += k * chunk
                        continue
            stop = self._chunk_end()
            take = min(end - i, stop - self._pos)
            if self._started:
                self._out(view[i:i + take], self._pos)
            elif _all_zero(buf, i, take):
                self._held += take
            else:
                self._zeros(self._held, self._pos - self._held)
                self._held = 0
                self._started = True
                self._out(view[i:i + take], self._pos)
            self._pos += take
            i += take
            if self._pos == stop:
                self._close_chunk()

    def block_map(self, startblk: int) -> bytes:
        """The block map, the data chunks stored consecutively from ``startblk``."""
        flags = self.flags
        per = self.chunk // BLOCK_SIZE
        entries = array("I")
        addr = startblk
        i, n = 0, len(flags)
        while i < n:
            j = flags.find(0 if flags[i] else 1, i)
            if j < 0:
                j = n
            if flags[i]:
                entries.extend(range(addr, addr + (j - i) * per, per))
                addr += (j - i) * per
            else:
                entries.extend(array("I", [NULL_ADDR]) * (j - i))
            i = j
        if addr > NULL_ADDR:
            raise ErofsError("the image passes the 16 TiB that 32-bit block numbers reach")
        if sys.byteorder != "little":
            entries.byteswap()
        return entries.tobytes()


def split(source: BinaryIO | bytes, size: int, bits: int,
          emit: Callable[[bytes | memoryview], None], holes: bool = True) -> Split:
    """Read exactly ``size`` bytes of ``source`` into a :class:`Split` (with ``holes``
    False, every byte is emitted: the file is flat)."""
    s = Split(size, bits, emit, holes)
    if isinstance(source, bytes):
        s.feed(source)
    else:
        feed(source, size, s)
    return s


def feed(source: BinaryIO, size: int, s: Split, data_limit: int | None = None) -> int:
    """Feed ``s`` from ``source`` until ``size`` bytes are read, or, with ``data_limit``,
    until ``s`` holds more data than that; returns the bytes read. A source that knows its
    holes skips them (fed as zeros)."""
    reader = source if isinstance(source, HoleReader) else None
    done = 0
    while done < size and (data_limit is None or s.data_len <= data_limit):
        if reader is not None:
            zeros = min(reader.zeros_ahead(), size - done)
            if zeros:
                reader.skip_zeros(zeros)
                s.feed_zeros(zeros)
                done += zeros
                continue
        piece = source.read(min(READ, size - done))
        if not piece:
            raise ErofsError(f"file data ended after {done} of {size} bytes")
        s.feed(piece)
        done += len(piece)
    return done
