"""Sparse files in a compressed image: stored chunk-based, their holes not compressed.

A compressed inode has no holes on the kernels this writer targets: 1 TiB of zeros
would be compressed, 128 KiB at a time, into pclusters of a few bytes each, with an
8-byte index per 4 KiB lcluster (2 GiB of indexes), and compressing it takes hours.
So in a compressed image, a file that is mostly holes is stored as in an uncompressed
one (``chunks.py``): chunk-based, its all-zero chunks holes, its other chunks
uncompressed. The rule, again a function of the file's bytes alone:

* a file of at least :data:`SPARSE_MIN_SIZE` bytes whose all-zero chunks (the chunk
  size of ``chunks.py``) hold at least half of its bytes is stored chunk-based;
* any other file is compressed as before, its zeros included (they compress to
  almost nothing).

Half, because such a file loses at most as much by leaving its data uncompressed as
its holes save; below the size, compressing the zeros costs little.

Whether a file qualifies is known only at its end, and a compressed file streams into
the image as it is read. So a file of at least :data:`SPARSE_MIN_SIZE` bytes is first
read into a temporary file, its holes skipped (a sparse tar member's holes are never
read): temporary space is at most the largest such file's data. Then its data chunks
are copied into the image, or the file, its holes read back as zeros, goes to the
compressor like any other. Identical chunk-based files share their chunks.
"""

from __future__ import annotations

import hashlib
import tempfile
from typing import BinaryIO

from .chunks import Split, chunk_bits, split
from .compress import CompressedData
from .data import CHUNK, SPOOL_MEMORY, ChunkedExtent, Extent, Spool
from .format import BLOCK_SIZE

#: Files smaller than this are compressed whole, zeros and all.
SPARSE_MIN_SIZE = 16 << 20


class _Expanded:
    """A file read back from its data chunks in a temporary file, holes as zeros."""

    def __init__(self, data: BinaryIO, cut: Split) -> None:
        self._data = data
        self._cut = cut
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        cut = self._cut
        left = cut.size - self._pos
        if n < 0 or n > left:
            n = left
        out = bytearray()
        while len(out) < n:
            k = self._pos // cut.chunk
            end = min((k + 1) * cut.chunk, cut.size)
            take = min(n - len(out), end - self._pos)
            if cut.flags[k]:
                piece = self._data.read(take)
                if len(piece) != take:
                    raise OSError("a temporary file came back short")
                out += piece
            else:
                out += bytes(take)
            self._pos += take
        return bytes(out)


class SparseFiles:
    """The files of a compressed image that are mostly holes (see the module
    docstring); the others go on to ``compressed``."""

    def __init__(self, out: BinaryIO, compressed: CompressedData, spool: Spool) -> None:
        self._out = out
        self._compressed = compressed
        self._spool = spool
        self._seen: dict[tuple[bytes, bytes, int], ChunkedExtent] = {}
        self.chunked_files = 0

    def write(self, source: BinaryIO | bytes, size: int, inline_room: int) -> Extent:
        """Add one file of at least :data:`SPARSE_MIN_SIZE` bytes."""
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as aside:
            digest = hashlib.sha256()

            def emit(view: bytes | memoryview) -> None:
                aside.write(view)
                digest.update(view)

            bits = chunk_bits(size)
            cut = split(source, size, bits, emit)
            tail = cut.tail
            aside.write(tail)
            digest.update(tail)
            aside.seek(0)
            if cut.data_len * 2 > size:
                return self._compressed.write(_Expanded(aside, cut), size,  # type: ignore[arg-type]
                                              inline_room)
            return self._chunked(aside, cut, bits, digest.digest())  # type: ignore[arg-type]

    def _chunked(self, aside: BinaryIO, cut: Split, bits: int, digest: bytes) -> Extent:
        data = self._compressed
        data.bytes_in += cut.size
        holes_key = hashlib.sha256(cut.flags).digest()
        key = (digest, holes_key, cut.size)
        found = self._seen.get(key)
        if found is not None:
            data.duplicates += 1
            return found
        # After every file added before this one, so the image keeps their order.
        data.flush()
        start = data.position
        self._out.seek(start)
        while piece := aside.read(CHUNK):
            self._out.write(piece)
        self._out.write(bytes(-cut.data_len % BLOCK_SIZE))
        data.position = self._out.tell()
        extent = ChunkedExtent(cut.size, start // BLOCK_SIZE, bits, holes_key, cut.data_len)
        index = cut.block_map(extent.startblk)
        extent.index_at = self._spool.put(index)
        extent.index_len = len(index)
        self._seen[key] = extent
        self.chunked_files += 1
        return extent

    def close(self) -> None:
        self._seen.clear()
