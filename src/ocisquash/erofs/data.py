"""File data of uncompressed inodes: FLAT_PLAIN blocks and FLAT_INLINE tails.

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
import tempfile
from typing import BinaryIO

from ..errors import ErofsError
from ..imagewriter import readable
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


class Spool:
    """Bytes that wait for the end (tails, cluster indexes): in memory up to
    :data:`SPOOL_MEMORY`, then in a temporary file."""

    def __init__(self) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
        self._end = 0

    def put(self, data: bytes) -> int:
        """Store ``data``; return its offset."""
        at = self._end
        self._file.seek(at)
        self._file.write(data)
        self._end += len(data)
        return at

    def get(self, at: int, n: int) -> bytes:
        self._file.seek(at)
        return self._file.read(n)

    def close(self) -> None:
        self._file.close()


class FlatData:
    """Streams files into the data area (which starts on a block boundary)."""

    def __init__(self, out: BinaryIO, position: int, spool: Spool, dedup: bool) -> None:
        assert position % BLOCK_SIZE == 0
        self._out = out
        #: where the next block goes
        self.position = position
        self._dedup = dedup
        self._seen: dict[tuple[bytes, int, bool], Extent] = {}
        #: the first file of each size of more than a block, written unhashed (None
        #: once keyed by reading it back): see the module docstring
        self._firsts: dict[int, Extent | None] | None = (
            {} if dedup and readable(out) else None)
        self.read_backs = 0
        self._spool = spool
        self.bytes_in = 0
        self.duplicates = 0
        self.compressed_files = 0

    def write(self, source: BinaryIO | bytes, size: int | None, inline_room: int) -> Extent:
        """Add one file's data; its tail goes inline if it is at most ``inline_room``."""
        if isinstance(source, bytes):
            size = len(source)
        start = self.position
        hashing = self._dedup
        firsts = self._firsts
        first = False
        if firsts is not None and size is not None and size > BLOCK_SIZE \
                and size not in firsts:
            # No earlier file has this size: none can be a copy of this one.
            first, hashing = True, False
        digest = hashlib.sha256() if hashing else None
        if isinstance(source, bytes):
            data = source
            whole = len(data) - len(data) % BLOCK_SIZE
            if whole:
                self._put(memoryview(data)[:whole])
                if digest is not None:
                    digest.update(memoryview(data)[:whole])
            tail = data[whole:]
            total = len(data)
        else:
            total, tail = self._stream(source, size, digest)
        if digest is not None:
            digest.update(tail)
        self.bytes_in += total
        inline = 0 < len(tail) <= inline_room
        key = None
        if digest is not None and total:
            key = (digest.digest(), total, inline)
            if firsts is not None and total > BLOCK_SIZE:
                earlier = firsts.get(total)
                firsts[total] = None
                if earlier is not None:
                    self._seen.setdefault(self._key_of(earlier), earlier)
            found = self._seen.get(key)
            if found is not None:
                self.position = start
                self.duplicates += 1
                return found
        startblk = start // BLOCK_SIZE if total >= BLOCK_SIZE else 0
        if inline:
            extent = Extent(DataLayout.FLAT_INLINE, total, startblk, self._spool.put(tail))
        else:
            if tail:
                self._put(tail + bytes(BLOCK_SIZE - len(tail)))
            startblk = start // BLOCK_SIZE if total else 0
            extent = Extent(DataLayout.FLAT_PLAIN, total, startblk, -1)
        if key is not None:
            self._seen[key] = extent
        if first:
            assert firsts is not None
            firsts[total] = extent
        return extent

    def _key_of(self, extent: Extent) -> tuple[bytes, int, bool]:
        """The dedup key of a file written unhashed, from the image and the spool."""
        self.read_backs += 1
        whole = extent.size - extent.tail_len
        self._out.seek(extent.startblk * BLOCK_SIZE)
        data = self._out.read(whole)
        if len(data) != whole:
            raise ErofsError("cannot read back the image being written")
        digest = hashlib.sha256(data)
        if extent.tail_len:
            digest.update(self._spool.get(extent.tail_at, extent.tail_len))
        return digest.digest(), extent.size, extent.layout == DataLayout.FLAT_INLINE

    def _stream(self, source: BinaryIO, size: int | None,
                digest: hashlib._Hash | None) -> tuple[int, bytes]:
        total = 0
        pending = b""
        while size is None or total < size:
            want = CHUNK if size is None else min(CHUNK, size - total)
            chunk = source.read(want)
            if not chunk:
                if size is not None:
                    raise ErofsError(f"file data ended after {total} of {size} bytes")
                break
            total += len(chunk)
            buf = pending + chunk if pending else chunk
            whole = len(buf) - len(buf) % BLOCK_SIZE
            if whole:
                view = memoryview(buf)[:whole]
                self._put(view)
                if digest is not None:
                    digest.update(view)
            pending = buf[whole:]
        return total, pending

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
