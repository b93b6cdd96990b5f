"""Sparse files in a compressed image: stored chunk-based, their holes not compressed.

A compressed inode has no holes on the kernels this writer targets: 1 TiB of zeros
would be compressed, 128 KiB at a time, into pclusters of a few bytes each, with an
8-byte index per 4 KiB lcluster (2 GiB of indexes), and compressing it takes hours.
So in a compressed image, a file that is mostly holes is stored as in an uncompressed
one (``chunks.py``): chunk-based, its all-zero chunks holes, its other chunks
uncompressed. The rule, again a function of the file's bytes alone:

* a file of at least :data:`SPARSE_MIN_SIZE` bytes whose all-zero chunks (the chunk
  size of ``chunks.py``) hold at least half of its bytes, and whose other chunks hold
  at most :data:`SPARSE_MAX_DATA` bytes, is stored chunk-based;
* any other file is compressed as before, its zeros included (they compress to
  almost nothing).

Half, because such a file would spend most of its compression time on zeros (and
its index on them: each 128 KiB of zeros still takes a block and its lclusters); its
data stays uncompressed instead, which can cost space: a 4 GiB file with a 4 KiB data
region every 64 KiB is 273 MB chunk-based in 5 s, 136 MB compressed in 14 s (squashfs:
5 MB, compressed blocks with the zeros). Below the size, compressing the zeros costs
little.

Whether a file qualifies is known only once its data passes half its size or
:data:`SPARSE_MAX_DATA`, or at its end, and a compressed file streams into the image
as it is read. So a file of at least :data:`SPARSE_MIN_SIZE` bytes is compressed while
it is read, its chunks counted, until it is known; most are decided compressed on the
way. If holes come in first, the file is taken back and its bytes so far are read
back from the image (decompressed) into a temporary file, its data chunks only; then
it is read on into that file, its holes skipped (a sparse tar member's holes are never
read), until it is known: temporary space is at most :data:`SPARSE_MAX_DATA`, however
many data regions a hostile sparse map spreads over a file. Then its data chunks are
copied into the image, or the file, the part read so far replayed (holes as zeros) and
the rest read on, goes to the compressor like any other. (With an output that cannot
be read, the data chunks go to the temporary file as the file streams.) Identical
chunk-based files share their chunks.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from typing import BinaryIO

from ..entry import HoleReader
from ..errors import ErofsError
from ..imagewriter import readable
from .chunks import Split, chunk_bits, feed
from .compress import CompressedData, Withdrawn
from .data import CHUNK, SPOOL_MEMORY, ChunkedExtent, Extent, Spool
from .format import BLOCK_SIZE

#: Files smaller than this are compressed whole, zeros and all.
SPARSE_MIN_SIZE = 16 << 20
#: A file with more data than this (its data chunks) is compressed whole: the bound on
#: the temporary space a file takes.
SPARSE_MAX_DATA = 256 << 20


class _Replay:
    """A file's bytes again, for the compressor: the part ``cut`` has seen rebuilt from
    the data it emitted (in ``aside``) and its holes, then the rest from ``source``."""

    def __init__(self, aside: BinaryIO, cut: Split, source: BinaryIO | bytes,
                 seen: int) -> None:
        self._aside = aside
        self._cut = cut
        self._source = source if not isinstance(source, bytes) else io.BytesIO(source)
        if isinstance(source, bytes):
            self._source.seek(seen)
        self._seen = seen  # bytes of the file the cut has seen
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        cut = self._cut
        left = cut.size - self._pos
        if n < 0 or n > left:
            n = left
        out: list[bytes] = []
        got = 0
        while got < n:
            want = n - got
            pos = self._pos
            if pos >= self._seen:
                piece = self._source.read(want)
                if not piece:
                    raise ErofsError(f"file data ended after {pos} of {cut.size} bytes")
            elif pos < cut.closed:
                # The run of data (or hole) chunks from here, at once.
                k = pos // cut.chunk
                data = cut.flags[k]
                j = cut.flags.find(0 if data else 1, k)
                end = cut.closed if j < 0 else min(j * cut.chunk, cut.closed)
                take = min(want, end - pos)
                piece = self._stored(pos, take) if data else bytes(take)
            else:  # the current chunk, data emitted or zeros held
                take = min(want, self._seen - pos)
                piece = self._stored(pos, take) if cut.started else bytes(take)
            out.append(piece)
            got += len(piece)
            self._pos += len(piece)
        return out[0] if len(out) == 1 else b"".join(out)

    def _stored(self, pos: int, n: int) -> bytes:
        """Emitted bytes at ``pos`` (in order): from the file aside, or the tail."""
        whole = self._cut.whole
        if pos >= whole:
            return self._cut.tail[pos - whole:pos - whole + n]
        piece = self._aside.read(min(n, whole - pos))
        if not piece:
            raise OSError("a temporary file came back short")
        return piece


class _Holes(Withdrawn):
    """Raised by :class:`_Tee` when the file may be stored chunk-based after all."""


class _Tee:
    """A file's bytes for the compressor, each also given to ``cut`` (which counts its
    chunks, and may set its data chunks aside) until the file is known to be
    compressed: then they only pass through. Raises :class:`_Holes` instead, before
    the compressor has more zeros than data, when the file has a declared hole ahead,
    or when it ends undecided; the bytes read for that last call are then ``unread``.
    Until then a read returns ``n`` bytes unless the file ends, so that the compressor
    holds no part of a segment when a read is refused."""

    def __init__(self, source: BinaryIO, cut: Split, limit: int) -> None:
        self._source = source
        self._reader = source if isinstance(source, HoleReader) else None
        self._cut = cut
        self._limit = limit
        self.pos = 0  # bytes read and given to the cut
        self.decided = False
        self.unread: list[bytes] = []

    def read(self, n: int) -> bytes:
        if self.decided:
            return self._source.read(n)
        cut = self._cut
        parts: list[bytes] = []
        got = 0
        while got < n:
            if self._reader is not None and self._reader.zeros_ahead():
                self.unread = parts
                raise _Holes
            data = self._source.read(n - got)
            if not data:
                break
            cut.feed(data)
            self.pos += len(data)
            parts.append(data)
            got += len(data)
            if cut.data_len > self._limit:
                self.decided = True  # no refusal ahead: a short read may stay short
                break
            if cut.holes * cut.chunk > cut.data_len or self.pos >= cut.size:
                self.unread = parts
                raise _Holes
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _drop(view: bytes | memoryview) -> None:
    """Where the chunks of a file counted while it is compressed go: nowhere."""


class SparseFiles:
    """The files of a compressed image that are mostly holes (see the module
    docstring); the others go on to ``compressed``."""

    def __init__(self, out: BinaryIO, compressed: CompressedData, spool: Spool,
                 dedup: bool = True) -> None:
        self._out = out
        self._dedup = dedup
        self._compressed = compressed
        self._spool = spool
        self._seen: dict[tuple[bytes, bytes, int], ChunkedExtent] = {}
        self.chunked_files = 0

    def write(self, source: BinaryIO | bytes, size: int, inline_room: int) -> Extent:
        """Add one file of at least :data:`SPARSE_MIN_SIZE` bytes."""
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as aside:
            def emit(view: bytes | memoryview) -> None:
                aside.write(view)

            bits = chunk_bits(size)
            cut = Split(size, bits, emit)
            if isinstance(source, bytes):
                source = io.BytesIO(source)
            # Most such files have no holes: compressed while they are read (their
            # chunks counted), which stops (leaving nothing written) if holes come in;
            # the bytes read so far then come back from the image into ``cut``. An
            # output that cannot be read has them set aside as they pass.
            back = readable(self._out)
            counted = Split(size, bits, _drop) if back else cut
            tee = _Tee(source, counted, min(size // 2, SPARSE_MAX_DATA))
            try:
                return self._compressed.write(tee, size, inline_room,  # type: ignore[arg-type]
                                              cut.feed if back else None)
            except _Holes:
                pass
            if back:
                for piece in tee.unread:
                    cut.feed(piece)
            seen = tee.pos + feed(source, size - tee.pos, cut, min(size // 2, SPARSE_MAX_DATA))
            aside.seek(0)
            if seen < size or cut.data_len * 2 > size or cut.data_len > SPARSE_MAX_DATA:
                replay = _Replay(aside, cut, source, seen)  # type: ignore[arg-type]
                return self._compressed.write(replay, size, inline_room)  # type: ignore[arg-type]
            # Hashed only now that it is chunk-based: most files this large are not.
            aside.seek(0, 2)
            aside.write(cut.tail)
            aside.seek(0)
            digest = hashlib.sha256()
            while piece := aside.read(CHUNK):
                digest.update(piece)
            aside.seek(0)
            return self._chunked(aside, cut, bits, digest.digest())  # type: ignore[arg-type]

    def _chunked(self, aside: BinaryIO, cut: Split, bits: int, digest: bytes) -> Extent:
        data = self._compressed
        data.bytes_in += cut.size
        holes_key = hashlib.sha256(cut.flags).digest()
        key = (digest, holes_key, cut.size)
        found = self._seen.get(key) if self._dedup else None
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
        if self._dedup:
            self._seen[key] = extent
        self.chunked_files += 1
        return extent

    def close(self) -> None:
        self._seen.clear()
