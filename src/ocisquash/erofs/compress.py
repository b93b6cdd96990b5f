"""File data of compressed inodes: physical clusters (lz4, deflate or zstd) and the
cluster index.

Format rules enforced here (``erofs_fs.h``, ``erofs.rst`` "Compression"):

* a compressed file is cut into logical clusters ("lclusters") of one block (4 KiB,
  ``h_clusterbits`` 0); each has an 8-byte "z_erofs_lcluster_index", stored after the
  inode, its xattrs, an 8-byte "z_erofs_map_header" at the next 8-byte boundary and 8
  reserved bytes (``Z_EROFS_FULL_INDEX_START``), one per lcluster of ``i_size``
  (datalayout COMPRESSED_FULL);
* an extent of decompressed data starts at a HEAD lcluster, whose ``blkaddr`` is the
  first block of its physical cluster ("pcluster"); the extent's other lclusters are
  NONHEAD, with ``delta[0]`` the distance back to the HEAD and ``delta[1]`` the
  distance to the next HEAD; the first NONHEAD carries the pcluster's block count
  instead (``Z_EROFS_LI_D0_CBLKCNT``), which is how a pcluster spans several blocks
  ("big pcluster": ``Z_EROFS_ADVISE_BIG_PCLUSTER_1`` in the map header and
  ``EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER`` in the superblock);
* with ``EROFS_FEATURE_INCOMPAT_LZ4_0PADDING`` the compressed data (an lz4 block, a
  raw deflate stream, a zstd frame) ends at the pcluster's end and zeros precede it;
  the kernel skips zeros only within the first block, so a pcluster has exactly as
  many blocks as the compressed data needs, and data that starts with a zero byte
  cannot be stored this way;
* an extent that does not shrink by a whole block is stored raw, one PLAIN lcluster
  per block (a PLAIN pcluster is one block on every kernel).

With fragments (``EROFS_FEATURE_INCOMPAT_FRAGMENTS``, Linux 6.1+), each file's last
extent is not compressed on its own: it is appended to the "packed inode" (a regular
file in no directory, ``packed_nid`` in the superblock), whose extents are compressed
and written as they fill, between the files' own. The file's map header says ``Z_EROFS_ADVISE_FRAGMENT_PCLUSTER`` and
holds the offset; a file of one extent has no indexes at all, only a header whose
highest bit says "the whole file is stored in the packed inode". So small files and
tails are compressed together, as squashfs compresses its fragment blocks.

Extents are fixed-input: each covers :attr:`~.options.ErofsOptions.pcluster_size`
bytes of the file (the last one less), compressed whole; mkfs.erofs fits lz4 and
deflate to a fixed output size instead, which python-lz4 and zlib cannot do. A file of at most one block,
or one that no extent of shrinks, is stored uncompressed (FLAT_INLINE, as
``data.py``), as mkfs.erofs does.

Extents are compressed by a thread pool (the compressors release the GIL) and written
strictly in the order files were added, so the image does not depend on thread
timing. Files wait in a queue until :data:`IN_FLIGHT_BYTES` per worker of raw data is
pending, then the oldest are written: memory stays bounded. Identical files are found
by a sha256 of their contents before anything is written, and share one extent list.
A file of more than a block is hashed only when an earlier file has its size (see
``data.py``); the first of each size is keyed when its twin comes, by reading its
pclusters back and decompressing them, its fragment from wherever the packed inode's
bytes are. Each file's cluster index is encoded when its extents are written (block addresses
are known then) and spooled with the tails, to be copied behind its inode at the end.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

import lz4.block

from ..errors import ErofsError
from ..imagewriter import readable
from .data import CHUNK, Extent, Spool
from .format import BLOCK_SIZE, DataLayout
from .options import ErofsCompression

#: Raw bytes of extents queued or being compressed, per worker.
IN_FLIGHT_BYTES = 8 << 20

#: "enum z_erofs_lcluster_type"
LCLUSTER_PLAIN = 0
LCLUSTER_HEAD1 = 1
LCLUSTER_NONHEAD = 2
#: "Set on 1st non-head lcluster to store compressed block count"
D0_CBLKCNT = 1 << 11
#: "Z_EROFS_ADVISE_BIG_PCLUSTER_1"
ADVISE_BIG_PCLUSTER_1 = 0x0002
#: "Z_EROFS_ADVISE_INLINE_PCLUSTER": the last pcluster follows the cluster index
ADVISE_INLINE_PCLUSTER = 0x0008
#: Bytes an inline pcluster must leave for what precedes it in its block besides the
#: inode and its xattrs: alignment to 8 (at most 4: inodes and xattrs end 4-aligned),
#: the map header and its 8 reserved bytes.
INLINE_OVERHEAD = 4 + 16
#: "Z_EROFS_ADVISE_FRAGMENT_PCLUSTER": the file's last extent is in the packed inode
ADVISE_FRAGMENT_PCLUSTER = 0x0020
#: "if the highest bit of the 8-byte map header is set, the whole file is stored in the
#: packed inode. The rest bits keeps z_fragmentoff."
WHOLE_FRAGMENT = 1 << 63
#: "struct z_erofs_lcluster_index": di_advise, di_clusterofs, blkaddr | delta[2]
LCLUSTER_INDEX = struct.Struct("<HHI")
LCLUSTER_DELTA = struct.Struct("<HHHH")
#: "struct z_erofs_map_header": h_reserved1/h_idata_size (u32), h_advise (u16),
#: h_algorithmtype (u8, lz4 = 0), h_clusterbits (u8, lcluster bits - block bits)
MAP_HEADER = struct.Struct("<IHBB")


class Codec:
    """One compressor as EROFS uses it: "available compression algorithm types (for
    h_algorithmtype)" (lz4 0, deflate 2, zstd 3) and the per-algorithm record that
    follows the superblock (with COMPR_CFGS), each "with its u16 length"."""

    def __init__(self, compression: ErofsCompression, level: int | None,
                 pcluster_size: int) -> None:
        self.name = compression
        self._level = level
        self._local = threading.local()
        if compression in (ErofsCompression.LZ4, ErofsCompression.LZ4HC):
            self.algorithm = 0
            # "z_erofs_lz4_cfgs": max_distance 0 (lz4's 64 KiB), max_pclusterblks
            body = struct.pack("<HH10x", 0, pcluster_size // BLOCK_SIZE)
        elif compression is ErofsCompression.DEFLATE:
            self.algorithm = 2
            body = struct.pack("<B5x", 15)  # "z_erofs_deflate_cfgs": windowbits
        elif compression is ErofsCompression.ZSTD:
            self.algorithm = 3
            # "z_erofs_zstd_cfgs": format 0, "windowlog - ZSTD_WINDOWLOG_ABSOLUTEMIN(10)":
            # a window of one pcluster, which is all a frame refers back to.
            body = struct.pack("<BB4x", 0, (pcluster_size - 1).bit_length() - 10)
        else:
            raise ValueError(f"no EROFS codec for {compression}")
        self.config = struct.pack("<H", len(body)) + body

    def compress(self, data: bytes) -> bytes:
        """One pcluster's data; thread-safe (a zstd or deflate context per thread)."""
        name = self.name
        if name is ErofsCompression.LZ4:
            return lz4.block.compress(data, mode="default", store_size=False)  # type: ignore[no-any-return]
        if name is ErofsCompression.LZ4HC:
            return lz4.block.compress(data, mode="high_compression",  # type: ignore[no-any-return]
                                      compression=self._level, store_size=False)
        if name is ErofsCompression.DEFLATE:
            z = zlib.compressobj(self._level or 9, zlib.DEFLATED, -15)  # raw deflate
            return z.compress(data) + z.flush()
        import zstandard

        try:
            ctx: zstandard.ZstdCompressor = self._local.zstd
        except AttributeError:  # the first zstd pcluster of this thread
            ctx = self._local.zstd = zstandard.ZstdCompressor(level=self._level or 15)
        out: bytes = ctx.compress(data)
        return out

    def decompress(self, data: bytes, size: int) -> bytes:
        """The ``size`` bytes that :meth:`compress` made ``data`` of."""
        name = self.name
        try:
            if name in (ErofsCompression.LZ4, ErofsCompression.LZ4HC):
                return lz4.block.decompress(data, uncompressed_size=size)  # type: ignore[no-any-return]
            if name is ErofsCompression.DEFLATE:
                return zlib.decompress(data, -15)
            import zstandard

            return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
        except Exception as e:  # each library raises its own kind
            raise ErofsError(f"cannot decompress a pcluster read back: {e}") from None


def map_header(extent: Extent, algorithm: int) -> bytes:
    """The map header, plus the 8 reserved bytes before the first full index (none for
    a file stored whole in the packed inode)."""
    if extent.fragment_at >= 0 and not extent.index_len:
        return struct.pack("<Q", WHOLE_FRAGMENT | extent.fragment_at)
    if extent.fragment_at >= 0:
        return MAP_HEADER.pack(extent.fragment_at & 0xFFFF_FFFF,
                               ADVISE_BIG_PCLUSTER_1 | ADVISE_FRAGMENT_PCLUSTER,
                               algorithm, 0) + bytes(8)
    if extent.idata_len:
        # "h_reserved1" (u16), then "h_idata_size": the inline pcluster's length
        return struct.pack("<HHHBB", 0, extent.idata_len,
                           ADVISE_BIG_PCLUSTER_1 | ADVISE_INLINE_PCLUSTER,
                           algorithm, 0) + bytes(8)
    return MAP_HEADER.pack(0, ADVISE_BIG_PCLUSTER_1, algorithm, 0) + bytes(8)


def index_extra(end: int, extent: Extent) -> int:
    """Bytes after an inode and its xattrs ending at ``end``: alignment to 8, the map
    header, its reserved 8 bytes and the lcluster indexes (not the inline pcluster,
    which follows them)."""
    return -end % 8 + len(map_header(extent, 0)) + extent.index_len


def has_map(extent: Extent) -> bool:
    """Whether the inode is compressed (a map header and maybe indexes follow it)."""
    return extent.layout == DataLayout.COMPRESSED_FULL


class _File:
    """One file on its way out: its extents, compressing or compressed, in order."""

    __slots__ = ("chunks", "compressed", "extent", "index", "placed", "raw_bytes",
                 "start", "tail", "tail_len", "total_blocks")

    def __init__(self, extent: Extent) -> None:
        self.extent = extent
        self.chunks: deque[tuple[bytes, Future[bytes] | None]] = deque()
        self.raw_bytes = 0
        self.start = -1  # where its first block went, once writing began
        self.index = bytearray()
        self.total_blocks = 0
        self.compressed = False
        self.tail = b""  # the last extent's bytes past the last whole block
        self.tail_len = 0  # bytes of the last extent, when it went to the packed inode
        #: where each extent went, (offset, blocks or 0 when stored raw, raw length):
        #: kept for the files that may be read back (see ``CompressedData._key_of``)
        self.placed: list[tuple[int, int, int]] | None = None


class CompressedData:
    """Streams files into the data area as lz4 pclusters (or flat, when that is smaller).

    Files are written in the order they were added. A file is queued until the raw
    bytes queued exceed the limit; a file larger than the limit is written while it is
    read, after every file queued before it.
    """

    def __init__(self, out: BinaryIO, position: int, spool: Spool, *, codec: Codec,
                 pcluster_size: int, workers: int, dedup: bool,
                 fragments: bool = False, ztailpacking: bool = False) -> None:
        self._out = out
        self.position = position
        self._spool = spool
        self._codec = codec
        self._pcluster = pcluster_size
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ocisquash-erofs")
        self._limit = IN_FLIGHT_BYTES * workers
        self._queue: deque[_File] = deque()
        self._queued = 0
        self._dedup = dedup
        self._ztailpacking = ztailpacking
        self._seen: dict[tuple[bytes, int, bool], Extent] = {}
        #: a file of more than a block is hashed only when an earlier file has its
        #: size (as the squashfs writer does); the first file of each size, unhashed,
        #: is kept here, and None once it is keyed by reading it back. Needs an output
        #: that can be read.
        self._firsts: dict[int, _File | None] | None = (
            {} if dedup and readable(out) else None)
        #: files read back to be keyed
        self.read_backs = 0
        self.bytes_in = 0
        self.duplicates = 0
        self.compressed_files = 0
        #: the packed inode, which the last extent of each file joins (None: no fragments)
        self._packed = _File(Extent(DataLayout.COMPRESSED_FULL, 0, 0, -1)) if fragments \
            else None
        #: the packed inode's bytes not yet a whole extent
        self._packing = bytearray()
        if self._packed is not None:
            self._packed.placed = []

    def write(self, source: BinaryIO | bytes, size: int | None, inline_room: int) -> Extent:
        """Add one file's data; returns its extent, filled in once it is written."""
        extent = Extent(DataLayout.COMPRESSED_FULL, 0, 0, -1)
        extent.room = inline_room
        f = _File(extent)
        if isinstance(source, bytes):
            size = len(source)
        hashing = self._dedup
        firsts = self._firsts
        if firsts is not None and size is not None and size > BLOCK_SIZE \
                and size not in firsts:
            # No earlier file has this size: none can be a copy of this one.
            firsts[size] = f
            f.placed = []
            hashing = False
        digest = hashlib.sha256() if hashing else None
        streaming = False
        for raw in self._chunks(source, size):
            extent.size += len(raw)
            if digest is not None:
                digest.update(raw)
            # A file of one block is never compressed (nothing to gain): no work queued.
            small = extent.size <= BLOCK_SIZE and len(raw) < self._pcluster
            f.chunks.append((raw, None if small else self._pool.submit(self._codec.compress,
                                                                         raw)))
            f.raw_bytes += len(raw)
            if f.raw_bytes > self._limit:
                if not streaming:
                    streaming = True
                    self.flush()  # the files added before this one go first
                # The newest extent stays: it may be the last, for the packed inode.
                while f.raw_bytes > self._limit and len(f.chunks) > 1:
                    self._emit_one(f)
        self.bytes_in += extent.size
        # A duplicate shares the extent only if its tail would go inline the same way.
        key = ((digest.digest(), extent.size, extent.size % BLOCK_SIZE <= inline_room)
               if digest is not None and extent.size else None)
        if key is not None and firsts is not None and extent.size > BLOCK_SIZE:
            # Key the first file of this size now, from its bytes in the image.
            first = firsts.get(extent.size)
            firsts[extent.size] = None
            if first is not None:
                self._seen.setdefault(self._key_of(first), first.extent)
        found = self._seen.get(key) if key is not None else None
        if found is not None:
            for _, future in f.chunks:
                if future is not None:
                    future.cancel()
            if streaming:
                self.position = f.start  # drop what was written; the next file overwrites it
            self.duplicates += 1
            return found
        if key is not None:
            self._seen[key] = extent
        if self._packed is not None and f.chunks:
            # The last extent joins the packed inode instead of padding a pcluster.
            raw, future = f.chunks.pop()
            if future is not None:
                future.cancel()
            f.raw_bytes -= len(raw)
            f.tail_len = len(raw)
            extent.fragment_at = self._pack(raw)
        if streaming:
            self._finish_file(f)
        else:
            self._queue.append(f)
            self._queued += f.raw_bytes
            while self._queued > self._limit:
                self._write_oldest()
        return extent

    def _chunks(self, source: BinaryIO | bytes, size: int | None) -> Iterator[bytes]:
        step = self._pcluster
        if isinstance(source, bytes):
            for i in range(0, len(source), step):
                yield source[i:i + step]
            return
        total = 0
        buf = bytearray()
        while size is None or total < size:
            want = CHUNK if size is None else min(CHUNK, size - total)
            piece = source.read(want)
            if not piece:
                if size is not None:
                    raise ErofsError(f"file data ended after {total} of {size} bytes")
                break
            total += len(piece)
            buf += piece
            while len(buf) >= step:
                yield bytes(buf[:step])
                del buf[:step]
        if buf:
            yield bytes(buf)

    def flush(self) -> None:
        """Write every queued file."""
        while self._queue:
            self._write_oldest()

    def close(self) -> None:
        self._queue.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._seen.clear()
        if self._firsts is not None:
            self._firsts.clear()

    def _write_oldest(self) -> None:
        f = self._queue.popleft()
        if f is self._packed:  # one extent of the packed inode, queued when it filled
            self._queued -= len(f.chunks[0][0])
            self._emit_one(f)
            return
        self._queued -= f.raw_bytes
        self._finish_file(f)

    def _pack(self, raw: bytes) -> int:
        """Append ``raw`` to the packed inode; return its offset there. Each whole
        extent of the packed inode is compressed and queued at once, so the packed
        inode is written as the files are, in pieces between them (each pcluster has
        its own address in the index)."""
        packed = self._packed
        assert packed is not None
        at = packed.extent.size
        packed.extent.size += len(raw)
        self._packing += raw
        step = self._pcluster
        while len(self._packing) >= step:
            self._queue_packed(bytes(self._packing[:step]))
            del self._packing[:step]
        return at

    def _queue_packed(self, piece: bytes) -> None:
        packed = self._packed
        assert packed is not None
        future = self._pool.submit(self._codec.compress, piece) \
            if len(piece) > BLOCK_SIZE else None
        packed.chunks.append((piece, future))
        self._queue.append(packed)
        self._queued += len(piece)

    def _emit_one(self, f: _File) -> None:
        """Write ``f``'s oldest extent: compressed if that saves a block, else raw."""
        raw, future = f.chunks.popleft()
        f.raw_bytes -= len(raw)
        if f.start < 0:
            f.start = self.position
        lclusters = -(-len(raw) // BLOCK_SIZE)
        blkaddr = self.position // BLOCK_SIZE
        packed = future.result() if future is not None else raw
        blocks = -(-len(packed) // BLOCK_SIZE)
        # Zero padding is found by skipping zero bytes: data starting with one (a raw
        # deflate stream may) is stored raw instead.
        if future is not None and blocks < lclusters and packed[:1] != b"\0":
            if f.placed is not None:
                f.placed.append((self.position, blocks, len(raw)))
            self._put(bytes(blocks * BLOCK_SIZE - len(packed)) + packed)
            f.index += LCLUSTER_INDEX.pack(LCLUSTER_HEAD1, 0, blkaddr)
            for d in range(1, lclusters):
                d0 = D0_CBLKCNT | blocks if d == 1 else d
                f.index += LCLUSTER_DELTA.pack(LCLUSTER_NONHEAD, 0, d0, lclusters - d)
            f.total_blocks += blocks
            f.compressed = True
            f.tail = b""
        else:
            if f.placed is not None:
                f.placed.append((self.position, 0, len(raw)))
            self._put(raw + bytes(-len(raw) % BLOCK_SIZE))
            for d in range(lclusters):
                f.index += LCLUSTER_INDEX.pack(LCLUSTER_PLAIN, 0, blkaddr + d)
            f.total_blocks += lclusters
            f.tail = raw[len(raw) - len(raw) % BLOCK_SIZE:]

    def _finish_file(self, f: _File) -> None:
        while len(f.chunks) > 1:
            self._emit_one(f)
        if not (f.chunks and self._ztailpacking and self._inline_last(f)):
            while f.chunks:
                self._emit_one(f)
        extent = f.extent
        if extent.fragment_at >= 0:
            self._finish_fragmented(f)
            return
        if f.start < 0:  # an empty file
            extent.layout = DataLayout.FLAT_PLAIN
            return
        if f.compressed:
            extent.startblk = f.total_blocks  # a compressed inode's i_u: its block count
            extent.index_at = self._spool.put(bytes(f.index))
            extent.index_len = len(f.index)
            self.compressed_files += 1
            return
        # Nothing shrank: every block was written raw and in order, which is the
        # FLAT_PLAIN layout; a tail that fits beside the inode moves there.
        extent.startblk = f.start // BLOCK_SIZE
        extent.layout = DataLayout.FLAT_PLAIN
        if f.tail and len(f.tail) <= extent.room:
            self.position -= BLOCK_SIZE
            extent.layout = DataLayout.FLAT_INLINE
            extent.tail_at = self._spool.put(f.tail)
            if extent.size < BLOCK_SIZE:
                extent.startblk = 0

    def _inline_last(self, f: _File) -> bool:
        """ZTAILPACKING: store ``f``'s last extent, compressed, after its cluster index
        if it fits in the inode's block ("erofs_blkoff(m_pa) + m_plen" may not pass
        the block's end): its lclusters are a HEAD and NONHEADs, the HEAD's blkaddr
        unused (the kernel finds the data after the last index, ``h_idata_size``
        long). An extent too big for the room is cut first (``_split_last``). Returns
        False when nothing goes inline; the extents left are then written as usual."""
        raw, future = f.chunks[0]
        if future is None:
            return False
        packed = future.result()
        lclusters = -(-len(raw) // BLOCK_SIZE)
        extent = f.extent
        room = (extent.room - INLINE_OVERHEAD - len(f.index)
                - lclusters * LCLUSTER_INDEX.size)
        if len(packed) > room and not self._split_last(f, packed, room):
            return False
        raw, future = f.chunks[0]  # the tail, when the extent was cut
        packed = future.result() if future is not None else b""
        lclusters = -(-len(raw) // BLOCK_SIZE)
        if not 0 < len(packed) <= room or packed[:1] == b"\0" or len(packed) >= len(raw):
            return False
        f.chunks.popleft()
        f.raw_bytes -= len(raw)
        if f.start < 0:
            f.start = self.position
        extent.idata_at = self._spool.put(packed)
        extent.idata_len = len(packed)
        if f.placed is not None:
            f.placed.append((extent.idata_at, -len(packed), len(raw)))
        f.index += LCLUSTER_INDEX.pack(LCLUSTER_HEAD1, 0, 0)
        for d in range(1, lclusters):
            f.index += LCLUSTER_DELTA.pack(LCLUSTER_NONHEAD, 0, d, lclusters - d)
        f.compressed = True
        f.tail = b""
        return True

    def _split_last(self, f: _File, packed: bytes, room: int) -> bool:
        """Cut ``f``'s last extent, at a block boundary, in two: a head that fills the
        whole blocks its extent filled and a tail, the rest, that compresses into
        ``room``, as mkfs.erofs's fixed-output compression leaves a small last
        pcluster. The cut is estimated from the extent's compression ratio and moved
        back a block at most twice while the head is too big; when no cut fits, the
        extent stays whole (False)."""
        raw = f.chunks[0][0]
        whole = len(packed) // BLOCK_SIZE
        # The tail holds at least what spills past the whole blocks: when that alone
        # passes the room, no cut fits (skip the two compressions).
        if not whole or len(raw) <= BLOCK_SIZE or len(packed) % BLOCK_SIZE > room:
            return False
        cut = whole * BLOCK_SIZE * len(raw) // len(packed) // BLOCK_SIZE * BLOCK_SIZE
        for _ in range(3):
            if not 0 < cut < len(raw):
                return False
            head, tail = raw[:cut], raw[cut:]
            jobs = [self._pool.submit(self._codec.compress, part) for part in (head, tail)]
            head_packed, tail_packed = (job.result() for job in jobs)
            if len(tail_packed) > room:
                return False  # a shorter head only makes the tail bigger
            if len(head_packed) <= whole * BLOCK_SIZE:
                break
            cut -= BLOCK_SIZE
        else:
            return False
        f.chunks.popleft()
        for part, done in ((tail, tail_packed), (head, head_packed)):
            future: Future[bytes] = Future()
            future.set_result(done)
            f.chunks.appendleft((part, future))
        self._emit_one(f)  # the head, as any extent
        return True

    def _finish_fragmented(self, f: _File) -> None:
        """A file whose last extent is in the packed inode: stays compressed, its tail
        lclusters a HEAD (whose blkaddr holds the fragment offset's high 32 bits, "for
        non-compact indexes, fragmentoff is 64 bits") and NONHEADs."""
        extent = f.extent
        extent.startblk = f.total_blocks
        if f.index:
            lclusters = -(-f.tail_len // BLOCK_SIZE)
            f.index += LCLUSTER_INDEX.pack(LCLUSTER_HEAD1, 0, extent.fragment_at >> 32)
            for d in range(1, lclusters):
                f.index += LCLUSTER_DELTA.pack(LCLUSTER_NONHEAD, 0, d, lclusters - d)
            extent.index_at = self._spool.put(bytes(f.index))
            extent.index_len = len(f.index)
        self.compressed_files += 1

    def pack_fragments(self) -> Extent | None:
        """Write the rest of the packed inode (every file's last extent, in the order
        files were added) and index it; None when no file has a fragment."""
        packed = self._packed
        if packed is None or not packed.extent.size:
            return None
        if self._packing:
            self._queue_packed(bytes(self._packing))
            self._packing.clear()
        self.flush()
        # Always COMPRESSED_FULL: its pclusters lie between other files' blocks.
        extent = packed.extent
        extent.startblk = packed.total_blocks
        extent.index_at = self._spool.put(bytes(packed.index))
        extent.index_len = len(packed.index)
        self._packed = None
        return extent

    def _put(self, data: bytes) -> None:
        self._out.seek(self.position)
        self._out.write(data)
        self.position += len(data)

    # -- keying a file already written (size-first dedup) ------------------------------

    def _key_of(self, f: _File) -> tuple[bytes, int, bool]:
        """The dedup key of ``f``, written unhashed, from its bytes in the image, its
        inline tail and its fragment: the key ``write`` computes as it reads a file."""
        self.read_backs += 1
        while f in self._queue:  # write it, and the files queued before it
            self._write_oldest()
        extent = f.extent
        digest = hashlib.sha256()
        placed = f.placed or []
        for i, (at, blocks, n) in enumerate(placed):
            if extent.layout == DataLayout.FLAT_INLINE and i == len(placed) - 1:
                # Its last block was given back: the tail is in the spool.
                whole = n - n % BLOCK_SIZE
                digest.update(self._read(at, whole))
                digest.update(self._spool.get(extent.tail_at, extent.tail_len))
            else:
                digest.update(self._extent_raw(at, blocks, n))
        if extent.fragment_at >= 0:
            digest.update(self._packed_raw(extent.fragment_at, f.tail_len))
        f.placed = None
        return digest.digest(), extent.size, extent.size % BLOCK_SIZE <= extent.room

    def _read(self, at: int, n: int) -> bytes:
        self._out.seek(at)
        data = self._out.read(n)
        if len(data) != n:
            raise ErofsError("cannot read back the image being written")
        return data

    def _extent_raw(self, at: int, blocks: int, n: int) -> bytes:
        """One extent's raw bytes from the image: stored raw, or a pcluster of
        ``blocks`` blocks (compressed data starts with no zero byte: see _emit_one)."""
        if blocks < 0:  # an inline pcluster, in the spool
            raw = self._codec.decompress(self._spool.get(at, -blocks), n)
            if len(raw) != n:
                raise ErofsError("an inline pcluster does not decompress to its size")
            return raw
        if not blocks:
            return self._read(at, n)
        data = self._read(at, blocks * BLOCK_SIZE).lstrip(b"\0")
        raw = self._codec.decompress(data, n)
        if len(raw) != n:
            raise ErofsError("a pcluster read back does not decompress to its size")
        return raw

    def _packed_raw(self, at: int, n: int) -> bytes:
        """Bytes ``at`` to ``at + n`` of the packed inode, wherever they are now: in
        the image, queued, or not yet a whole extent."""
        packed = self._packed
        assert packed is not None and packed.placed is not None
        step = self._pcluster
        written = len(packed.placed)
        queued = len(packed.chunks)
        out = bytearray()
        k = at // step
        skip = at - k * step
        while len(out) < n:
            if k < written:
                raw = self._extent_raw(*packed.placed[k])
            elif k - written < queued:
                raw = packed.chunks[k - written][0]
            else:
                raw = bytes(self._packing)
            out += raw[skip:skip + n - len(out)]
            skip = 0
            k += 1
        return bytes(out)
