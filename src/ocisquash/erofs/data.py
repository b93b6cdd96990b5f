"""File data of uncompressed inodes: FLAT_PLAIN blocks and FLAT_INLINE tails, or, for a
file with an all-zero chunk, CHUNK_BASED (the rule is in ``chunks.py``).

Format rules enforced here (``erofs.rst``, "Inode data layouts"):

* FLAT_PLAIN: the data is in consecutive blocks from ``startblk``; the last block is
  padded with zeros;
* FLAT_INLINE: the whole blocks are consecutive from ``startblk`` and the tail (size
  modulo the block size) is stored right after the inode and its xattrs, in the
  metadata area; "the inline data must not cross a block boundary", so a tail that
  cannot share a block with its inode (even at the start of a fresh block) is written
  FLAT_PLAIN instead.

Whole blocks stream straight to the output as a file is added. A tail can only be
placed once the inodes are laid out, at the end; it is held in a spool (a temporary
file once it outgrows :data:`SPOOL_MEMORY`), so memory does not grow with the number
of small files.

Identical files share their data: a sha256 over the contents finds them; the
duplicate's blocks, already streamed, are overwritten by the next file (the writer
truncates the image at the end) and its tail is not spooled again. As in the squashfs
writer, a file of more than a block is hashed only when an earlier file has its size:
the first file of each size is written unhashed, and when a second comes, the first is
keyed by reading its blocks back from the image (once per size). The keys, and so the
image, are those of hashing every file; large files, which rarely repeat, are rarely
hashed. An output that cannot be read back has every file hashed.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from typing import BinaryIO

from ..errors import ErofsError
from ..imagewriter import readable
from .chunks import chunk_bits, split
from .format import BLOCK_SIZE, DataLayout

#: Read size for streamed files: whole blocks, so only the last read holds a tail.
CHUNK = 64 * BLOCK_SIZE
#: Spooled tails stay in memory up to this many bytes, then go to a temporary file.
SPOOL_MEMORY = 8 << 20


class Extent:
    """Where one regular file's data is (small: one per file is kept until the end)."""

    __slots__ = ("fragment_at", "idata_at", "idata_len", "index_at", "index_len",
                 "layout", "room", "size", "startblk", "tail_at")

    def __init__(self, layout: DataLayout, size: int, startblk: int, tail_at: int) -> None:
        self.layout = layout
        self.size = size
        #: first whole block (0 when there is none); for compressed data, the block count
        self.startblk = startblk
        #: offset of the inline tail in the spool, -1 when there is none
        self.tail_at = tail_at
        #: the most tail bytes that fit beside the inode (compressed files decide late)
        self.room = 0
        #: offset and length of a compressed file's cluster index in the spool
        self.index_at = -1
        self.index_len = 0
        #: where the file's last extent is in the packed inode, -1 when it is not
        self.fragment_at = -1
        #: offset and length in the spool of a compressed last pcluster stored inline
        #: after the cluster index (ztailpacking), -1 and 0 when there is none
        self.idata_at = -1
        self.idata_len = 0

    @property
    def tail_len(self) -> int:
        return self.size % BLOCK_SIZE if self.tail_at >= 0 else 0


class ChunkedExtent(Extent):
    """A chunk-based file's data (see ``chunks.py``): its data chunks, consecutive from
    ``startblk``, and its block map in the spool (``index_at``, ``index_len``)."""

    __slots__ = ("chunk_bits", "data_len", "holes_key")

    def __init__(self, size: int, startblk: int, chunk_bits: int, holes_key: bytes,
                 data_len: int) -> None:
        super().__init__(DataLayout.CHUNK_BASED, size, startblk, -1)
        #: "chunk blkbits": the inode's ``i_u`` (the block map format, no flags)
        self.chunk_bits = chunk_bits
        #: a sha256 of which chunks are holes (the dedup key's part for them)
        self.holes_key = holes_key
        #: bytes of the data chunks (the last one unpadded)
        self.data_len = data_len


def measured(source: BinaryIO) -> tuple[BinaryIO, int]:
    """A stream of unknown size copied aside (the chunk size depends on the size)."""
    copy = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
    shutil.copyfileobj(source, copy, CHUNK)
    size = copy.tell()
    copy.seek(0)
    return copy, size  # type: ignore[return-value]


class Spool:
    """Bytes that wait for the end (tails, cluster indexes): in memory up to
    :data:`SPOOL_MEMORY`, then in a temporary file. A ``bytearray`` and a file read and
    written where it is: each put and get of a compile's thousands costs no seek
    (``SpooledTemporaryFile`` adds a Python call or two to each)."""

    def __init__(self) -> None:
        self._buf: bytearray | None = bytearray()
        self._file: BinaryIO | None = None
        self._end = 0
        #: the file's position
        self._at = 0

    def put(self, data: bytes) -> int:
        """Store ``data``; return its offset."""
        at = self._end
        self._end = end = at + len(data)
        buf = self._buf
        if buf is not None:
            buf += data
            if end > SPOOL_MEMORY:
                spill = self._file = tempfile.TemporaryFile()  # noqa: SIM115
                spill.write(buf)
                self._at = end
                self._buf = None
            return at
        file = self._file
        assert file is not None
        if self._at != at:
            file.seek(at)
        file.write(data)
        self._at = end
        return at

    def get(self, at: int, n: int) -> bytes:
        buf = self._buf
        if buf is not None:
            return bytes(buf[at:at + n])
        file = self._file
        assert file is not None
        if self._at != at:
            file.seek(at)
        data = file.read(n)
        self._at = at + len(data)
        return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._buf = bytearray()


class FlatData:
    """Streams files into the data area (which starts on a block boundary)."""

    def __init__(self, out: BinaryIO, position: int, spool: Spool, dedup: bool,
                 holes: bool = True) -> None:
        assert position % BLOCK_SIZE == 0
        self._out = out
        #: whether all-zero chunks become holes (``ErofsOptions.holes``)
        self._holes = holes
        #: where the next block goes
        self.position = position
        self._dedup = dedup
        self._seen: dict[tuple[bytes, bytes, int, bool], Extent] = {}
        #: the first file of each size of more than a block, written unhashed (None
        #: once keyed by reading it back): see the module docstring
        self._firsts: dict[int, Extent | None] | None = (
            {} if dedup and readable(out) else None)
        self.read_backs = 0
        self._spool = spool
        self.bytes_in = 0
        self.duplicates = 0
        self.compressed_files = 0
        self.chunked_files = 0

    def write(self, source: BinaryIO | bytes, size: int | None, inline_room: int) -> Extent:
        """Add one file's data; its tail goes inline if it is at most ``inline_room``.
        A file with an all-zero chunk is stored chunk-based (see ``chunks.py``)."""
        if isinstance(source, bytes):
            size = len(source)
        elif size is None:
            source, size = measured(source)
        start = self.position
        hashing = self._dedup
        firsts = self._firsts
        first = False
        if firsts is not None and size > BLOCK_SIZE and size not in firsts:
            # No earlier file has this size: none can be a copy of this one.
            first, hashing = True, False
        digest = hashlib.sha256() if hashing else None

        def emit(view: bytes | memoryview) -> None:
            self._put(view)
            if digest is not None:
                digest.update(view)

        bits = chunk_bits(size)
        cut = None
        if isinstance(source, bytes) and size < BLOCK_SIZE and (
                not self._holes or source.count(0) != size):
            # Most files: one short chunk, not all zeros, nothing but a tail.
            tail = source
            holes = 0
        else:
            cut = split(source, size, bits, emit, self._holes)
            tail = cut.tail
            holes = cut.holes
        self.bytes_in += size
        if digest is not None:
            digest.update(tail)
        inline = not holes and 0 < len(tail) <= inline_room
        holes_key = hashlib.sha256(cut.flags).digest() if cut is not None and holes else b""
        key = None
        if digest is not None and size:
            key = (digest.digest(), holes_key, size, inline)
            if firsts is not None and size > BLOCK_SIZE:
                earlier = firsts.get(size)
                firsts[size] = None
                if earlier is not None:
                    self._seen.setdefault(self._key_of(earlier), earlier)
            found = self._seen.get(key)
            if found is not None:
                self.position = start
                self.duplicates += 1
                return found
        extent: Extent
        if cut is not None and holes:
            if tail:
                self._put(tail + bytes(BLOCK_SIZE - len(tail)))
            chunked = ChunkedExtent(size, start // BLOCK_SIZE, bits, holes_key,
                                    cut.data_len)
            index = cut.block_map(chunked.startblk)
            chunked.index_at = self._spool.put(index)
            chunked.index_len = len(index)
            self.chunked_files += 1
            extent = chunked
        elif inline:
            startblk = start // BLOCK_SIZE if size >= BLOCK_SIZE else 0
            extent = Extent(DataLayout.FLAT_INLINE, size, startblk, self._spool.put(tail))
        else:
            if tail:
                self._put(tail + bytes(BLOCK_SIZE - len(tail)))
            extent = Extent(DataLayout.FLAT_PLAIN, size, start // BLOCK_SIZE if size else 0,
                            -1)
        if key is not None:
            self._seen[key] = extent
        if first:
            assert firsts is not None
            firsts[size] = extent
        return extent

    def _key_of(self, extent: Extent) -> tuple[bytes, bytes, int, bool]:
        """The dedup key of a file written unhashed, from the image and the spool."""
        self.read_backs += 1
        if isinstance(extent, ChunkedExtent):
            # The data chunks are consecutive; the holes are in the key already.
            digest = hashlib.sha256()
            at, left = extent.startblk * BLOCK_SIZE, extent.data_len
            while left:
                data = self._read(at, min(left, CHUNK))
                digest.update(data)
                at += len(data)
                left -= len(data)
            return digest.digest(), extent.holes_key, extent.size, False
        whole = extent.size - extent.tail_len
        digest = hashlib.sha256(self._read(extent.startblk * BLOCK_SIZE, whole))
        if extent.tail_len:
            digest.update(self._spool.get(extent.tail_at, extent.tail_len))
        return (digest.digest(), b"", extent.size,
                extent.layout == DataLayout.FLAT_INLINE)

    def _read(self, at: int, n: int) -> bytes:
        self._out.seek(at)
        data = self._out.read(n)
        if len(data) != n:
            raise ErofsError("cannot read back the image being written")
        return data

    def _put(self, data: bytes | memoryview) -> None:
        self._out.seek(self.position)
        self._out.write(data)
        self.position += len(data)

    def flush(self) -> None:
        """Nothing waits: blocks are written as files are added."""

    def close(self) -> None:
        self._seen.clear()
        if self._firsts is not None:
            self._firsts.clear()
