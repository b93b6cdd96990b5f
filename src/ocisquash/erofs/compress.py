"""File data of compressed inodes: physical clusters (lz4, deflate or zstd) and the
cluster index.

Format rules enforced here (``erofs_fs.h``, ``erofs.rst`` "Compression", the kernel's
``zmap.c``):

* a compressed file is cut into logical clusters ("lclusters") of one block (4 KiB,
  ``h_clusterbits`` 0); each has an 8-byte "z_erofs_lcluster_index", stored after the
  inode, its xattrs, an 8-byte "z_erofs_map_header" at the next 8-byte boundary and 8
  reserved bytes (``Z_EROFS_FULL_INDEX_START``), one per lcluster of ``i_size``
  (datalayout COMPRESSED_FULL); a file whose pclusters follow each other on disk (all
  but the packed inode) stores them in compact form instead, 2 or 4 bytes each
  (COMPRESSED_COMPACT, ``zindex.py``), converted where its inode is placed;
* an extent of decompressed data starts anywhere in a HEAD lcluster, ``di_clusterofs``
  bytes in, whose ``blkaddr`` is the first block of its physical cluster ("pcluster");
  an lcluster holds at most one extent start, so every extent but a file's last is
  longer than a block. The lclusters an extent covers past its HEAD are NONHEAD, with
  ``delta[0]`` the distance back to the HEAD and ``delta[1]`` the distance to the next
  HEAD (or past the last lcluster); the first NONHEAD carries the pcluster's block
  count instead (``Z_EROFS_LI_D0_CBLKCNT``), which is how a pcluster spans several
  blocks ("big pcluster": ``Z_EROFS_ADVISE_BIG_PCLUSTER_1`` in the map header and
  ``EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER`` in the superblock); a HEAD followed by a HEAD
  is a one-block pcluster;
* with ``EROFS_FEATURE_INCOMPAT_LZ4_0PADDING`` the compressed data (an lz4 block, a
  raw deflate stream, a zstd frame) ends at the pcluster's end and zeros precede it;
  the kernel skips zeros only within the first block, so a pcluster has exactly as
  many blocks as the compressed data needs, and data that starts with a zero byte
  cannot be stored this way;
* data that does not shrink by a whole block is stored raw, a PLAIN lcluster per block
  of it: a PLAIN pcluster is one block holding the extent's bytes from its first
  ("shifted", no ``Z_EROFS_ADVISE_INTERLACED_PCLUSTER``), so a PLAIN extent is at most
  a block long wherever it starts.

lz4 and lz4hc pclusters are fixed-output, as mkfs.erofs makes them: a pcluster holds as
much of the file as compresses into its whole blocks (liblz4's ``*_destSize``), so the
next extent starts mid-block and no pcluster is padded but the last of a segment (see
:func:`compress_segment`). A pcluster still holds at most
:attr:`~.options.ErofsOptions.pcluster_size` bytes of the file, which bounds the work a
read decompresses, as squashfs's block size does. deflate and zstd have no such call
here: their extents are fixed-input, each ``pcluster_size`` bytes of the file, padded.
A file of at most one block, or one that no extent of shrinks, is stored uncompressed
(FLAT_INLINE, as ``data.py``), as mkfs.erofs does.

With fragments (``EROFS_FEATURE_INCOMPAT_FRAGMENTS``, Linux 6.1+), each file's last
``pcluster_size`` bytes (a whole file up to that size) are not compressed on their own:
they are appended to the "packed inode" (a regular file in no directory, ``packed_nid``
in the superblock), whose segments are compressed (in pclusters of
:data:`PACKED_PCLUSTER_BYTES`, fixed-input: :data:`PACKED_FITTED`) and written as they
fill, between the files' own. The file's map header says
``Z_EROFS_ADVISE_FRAGMENT_PCLUSTER`` and
holds the offset; a file of one extent has no indexes at all, only a header whose
highest bit says "the whole file is stored in the packed inode". So small files and
tails are compressed together, as squashfs compresses its fragment blocks.

With ztailpacking (``EROFS_FEATURE_INCOMPAT_ZTAILPACKING``, Linux 5.17+) a file's last
pcluster goes right after its cluster index, in the inode's block, when it fits
(``Z_EROFS_ADVISE_INLINE_PCLUSTER``, ``h_idata_size``): a small file compressed whole,
or the tail left after the last whole-block pcluster.

Files are cut into segments of :data:`SEGMENT_BYTES`, each compressed by a thread pool
(the compressors release the GIL) into a list of pclusters, and written strictly in the
order files were added, so the image does not depend on thread timing. Files wait in a
queue until :data:`IN_FLIGHT_BYTES` per worker of raw data is pending, then the oldest
are written: memory stays bounded. Identical files are found by a sha256 of their
contents before anything is written, and share one extent list. A file of more than a
block is hashed only when an earlier file has its size (see ``data.py``); the first of
each size is keyed when its twin comes, by reading its pclusters back and decompressing
them, its fragment from wherever the packed inode's bytes are; a short file stored
whole in the packed inode (of :data:`SHORT_DEDUP_MIN` bytes or more) is looked up by
its bytes as it comes, among the last such files (:data:`SHORT_KEYS`). Each file's cluster
index is encoded as its extents are written (block addresses are known then) and
spooled with the tails, to be copied behind its inode at the end.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

import lz4.block

from ..errors import ErofsError
from ..imagewriter import readable
from .data import CHUNK, Extent, Spool
from .format import BLOCK_SIZE, DataLayout
from .options import ErofsCompression
from .zindex import compact_size, to_compact

#: Raw bytes of extents queued or being compressed, per worker.
IN_FLIGHT_BYTES = 8 << 20
#: What a queued file counts toward that limit besides its raw bytes: a file with
#: none to compress (stored whole in the packed inode) still holds its ``_File``, so
#: the queue is bounded in files too (millionfiles with fragments: 755 MB at the peak
#: when such files counted nothing).
QUEUED_FILE_BYTES = 4096
#: Bytes of pclusters handed to the output at once.
WRITE_BATCH = 1 << 20
#: File bytes compressed as one job: pclusters are fitted one after another within a
#: segment, so only a segment's last pcluster is padded; segments compress in parallel.
SEGMENT_BYTES = 2 << 20
#: The most file bytes a pcluster of the packed inode holds (fragments): small files
#: compressed together lose less to each pcluster's empty history the longer the
#: pcluster (dist-packages with fragments, lz4hc: 15.49 MB at 128 KiB, 14.87 MB at
#: 1 MiB, mksquashfs 14.81 MB), for a read of up to 1 MiB decompressed (kept in the
#: page cache for the files beside it).
PACKED_PCLUSTER_BYTES = 1 << 20
#: The same for the metabox's pclusters (the inodes, with a metabox). Both cost lz4hc
#: more per byte than 128 KiB would (more history to search), and the metabox holds
#: more bytes than squashfs's inode and directory tables: millionfiles with fragments
#: and a metabox, 104.0 MB and 1.35x the squashfs compile's lz4hc work; with both at
#: 128 KiB, 134.6 MB and 1.29x (bench/README.md, "lz4hc work").
METABOX_PCLUSTER_BYTES = 1 << 20
#: Segments shorter than this (small files, mostly) are compressed in batches of up to
#: this many bytes, one job each: a job per small file cost the writer's thread more
#: (a future, a lock, a wake-up) than the batch's own list.
BATCH_BYTES = 128 << 10
#: The packed inode's segments hold this many of its pclusters (at least a segment),
#: when they are fitted (see ``CompressedData._packed_job``).
PACKED_SEGMENT_PCLUSTERS = 4
#: Short files (stored whole in the packed inode with fragments) remembered for
#: duplicates, the oldest forgotten first: at most this many, holding at most
#: SHORT_KEY_BYTES of their bytes, so memory stays bounded whatever the file count (a
#: copy further back is stored again). The bytes are the key: compared whole, nothing
#: to trust, and a third of a sha256's cost.
SHORT_KEYS = 1 << 16
SHORT_KEY_BYTES = 16 << 20
#: Short files smaller than this are not looked up: the lookup costs the thread that
#: adds files 1-2 µs per file (millionfiles, 1,000,000 files mostly of 256-512 B: +1.5 s,
#: 8 % of the compile), and a copy of such a file saves at most this many bytes before
#: compression (there: 0.08 % of the image).
SHORT_DEDUP_MIN = 512
#: Whether the packed inode's and the metabox's lz4 pclusters are fitted to whole
#: blocks as a file's are. They are not: each holds its whole 1 MiB, compressed in one
#: call and padded, since the fitting's guesses and fixed-output calls cost more per
#: byte than the padding of a pcluster that long saves.
PACKED_FITTED = False
#: lz4hc's output over fast lz4's, roughly, as a segment starts: each lz4hc pcluster
#: aims at fast lz4's size of its window (see :data:`GUESS_PIECES`) times this scale,
#: which then moves halfway to what each fitted pcluster made of its guess (halfway:
#: one odd pcluster moves the next aim less). A low aim only makes the pcluster
#: shorter; a high one fits the whole window with room to spare in its last block.
HC_OVER_FAST = 0.85
#: A fitted pcluster aims at this share of the blocks the previous one's ratio predicts
#: for a whole ``pcluster_size`` of input (lz4, which has no cheaper guess): a smaller
#: aim only makes the extent shorter (measured on /usr/bin).
FIT_MARGIN = 0.95
#: The same for an aim guessed from fast lz4 on the window itself, which is closer.
GUESS_MARGIN = 0.95
#: Steady data needs no guess: when an lz4hc fit took at least this share of its window
#: (its aim was not far too low) but not all of it (nor too high), and its ratio is
#: within :data:`TRUST_DRIFT` of the pcluster's before, the next window aims at that
#: ratio (times :data:`TRUST_MARGIN`) instead of paying for fast lz4's guess, until a
#: fit misses. On bigfile's data 4 in 5 guesses go; on the other bench images' files
#: 1 in 7 to 1 in 4, for 0.03-0.11 % more blocks (bench/RESULTS-erofs.md, "Steady
#: data").
TRUST_SHARE = 0.85
TRUST_DRIFT = 0.03
TRUST_MARGIN = 0.98
#: The liblz4 (``LZ4_versionNumber``) that mkfs.erofs requires for its fixed-output
#: calls, 1.9.3: before 1.9.2 ``LZ4_compress_destSize`` could write a block that does
#: not decompress into its input's size (lz4 #859) or corrupt data (CVE-2019-17543);
#: before 1.9.0 ``LZ4_compress_HC_destSize`` could write a bad block for a long run
#: (lz4 #631); 1.9.3 fixed its ratio (lz4 #784). With an older library each fitted
#: block is decompressed and compared before it is used.
TRUSTED_LZ4 = 10903
#: With ZTAILPACKING, a file's last window is fitted to the blocks that leave this share
#: of the inline room to the rest, by its guess (see :func:`compress_segment`). The
#: guess errs both ways: a fit that takes the whole window is cut once more (two passes
#: over it), a rest past the room too (two over the rest). debian, lz4hc: 0.25 put
#: 193.0 MB through lz4hc for a 76.61 MB image; cutting every last window whole, 231.6
#: MB for 76.55. With up to three fits, each aiming by the one before's ratio (the same
#: image at 0.25): 0.5 185.3 MB for 76.78, 1.0 186.2 MB for 77.17.
TAIL_AIM = 0.25
#: Fast lz4 guesses from this many pieces spread evenly over the window, half of it
#: together: fast lz4 on all of it cost 5-10 % of lz4hc's time (bench/RESULTS-erofs.md).
GUESS_PIECES = 8

#: "enum z_erofs_lcluster_type"
LCLUSTER_PLAIN = 0
LCLUSTER_HEAD1 = 1
LCLUSTER_NONHEAD = 2
#: "Set on 1st non-head lcluster to store compressed block count"
D0_CBLKCNT = 1 << 11
#: "Z_EROFS_ADVISE_COMPACTED_2B": compact indexes in 2-byte form where they can be
ADVISE_COMPACTED_2B = 0x0001
#: "Z_EROFS_ADVISE_BIG_PCLUSTER_1" and "_2" (HEAD1 and HEAD2 pclusters of many blocks)
ADVISE_BIG_PCLUSTER_1 = 0x0002
ADVISE_BIG_PCLUSTER_2 = 0x0004
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

#: One pcluster of a segment: the file bytes it holds and their compressed form (None:
#: stored raw).
Piece = tuple[int, bytes | None]


def _blocks(n: int) -> int:
    return -(-n // BLOCK_SIZE)


def saves(packed: bytes | None, raw_len: int) -> bool:
    """Whether ``packed`` is stored compressed: it saves a block over the raw bytes and
    does not start with a zero byte (zero padding is found by skipping zeros; a raw
    deflate stream may start with one)."""
    return packed is not None and 0 < _blocks(len(packed)) < _blocks(raw_len) \
        and packed[:1] != b"\0"


@functools.cache
def liblz4() -> Any | None:
    """liblz4 through ctypes (which releases the GIL around each call, and unlike cffi
    needs no C parser: loading pycparser cost every EROFS compile 25-80 ms before its
    first layer): the library python-lz4 carries (its extension module exports
    liblz4's calls), else the system's liblz4; the first with the fixed-output calls
    ``LZ4_compress_destSize`` and ``LZ4_compress_HC_destSize``, None when neither has
    them."""
    import ctypes

    def candidates() -> Iterator[str | None]:
        yield getattr(getattr(lz4.block, "_block", None), "__file__", None)
        import ctypes.util  # runs ldconfig: only when python-lz4's library has no calls

        yield ctypes.util.find_library("lz4")

    for path in candidates():
        if not path:
            continue
        try:
            lib = ctypes.CDLL(path)
            for name in ("LZ4_compress_destSize", "LZ4_compress_HC_destSize",
                         "LZ4_versionNumber", "LZ4_sizeofStateHC"):
                getattr(lib, name)
        except (OSError, AttributeError):
            continue
        return lib
    return None


def _destsize_functions() -> tuple[Any, Any, int, bool] | None:
    """liblz4's fixed-output calls (:func:`liblz4`). Returns the two calls, the size of
    an lz4hc state and whether the library predates :data:`TRUSTED_LZ4` (each fitted
    block is then checked). None when there is no such library: extents are then
    fixed-input."""
    import ctypes

    lib = liblz4()
    if lib is None:
        return None
    fast, hc = lib.LZ4_compress_destSize, lib.LZ4_compress_HC_destSize
    version, state_size = lib.LZ4_versionNumber(), lib.LZ4_sizeofStateHC()
    pointer, size = ctypes.c_void_p, ctypes.c_int
    # int LZ4_compress_destSize(const char* src, char* dst, int* srcSizePtr,
    #                           int targetDstSize);
    fast.argtypes = (pointer, pointer, pointer, size)
    # int LZ4_compress_HC_destSize(void* stateHC, const char* src, char* dst,
    #                              int* srcSizePtr, int targetDstSize, int level);
    hc.argtypes = (pointer, pointer, pointer, pointer, size, size)
    fast.restype = hc.restype = size
    return fast, hc, state_size, version < TRUSTED_LZ4


@functools.cache
def destsize() -> tuple[Any, Any, int, bool] | None:
    """The fixed-output calls, loaded once (see :func:`_destsize_functions`)."""
    return _destsize_functions()


class Codec:
    """One compressor as EROFS uses it: "available compression algorithm types (for
    h_algorithmtype)" (lz4 0, deflate 2, zstd 3) and the per-algorithm record that
    follows the superblock (with COMPR_CFGS), each "with its u16 length"."""

    def __init__(self, compression: ErofsCompression, level: int | None,
                 pcluster_size: int) -> None:
        self.name = compression
        self._level = level
        self._local = threading.local()
        self._destsize = None
        if compression in (ErofsCompression.LZ4, ErofsCompression.LZ4HC):
            self.algorithm = 0
            # "z_erofs_lz4_cfgs": max_distance 0 (lz4's 64 KiB), max_pclusterblks
            body = struct.pack("<HH10x", 0, pcluster_size // BLOCK_SIZE)
            self._destsize = destsize()
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

    @property
    def fixed_output(self) -> bool:
        """Whether :meth:`fit` is there (lz4 and lz4hc, with liblz4's destSize calls)."""
        return self._destsize is not None

    def compress(self, data: bytes | memoryview) -> bytes:
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

    def guess_ratio(self, data: bytes | memoryview) -> float:
        """A cheap measure of how well ``data`` compresses, proportional to the codec's
        compressed over raw size (0.0: none cheaper than compressing it): for lz4hc,
        fast lz4's ratio on :data:`GUESS_PIECES` pieces spread over ``data`` (half of
        it, one call), which the caller scales (see :data:`HC_OVER_FAST`)."""
        n = len(data)
        if self.name is not ErofsCompression.LZ4HC or not n:
            return 0.0
        every = n // GUESS_PIECES
        if every >= 2 * BLOCK_SIZE:
            piece = every // 2
            data = b"".join(data[at:at + piece] for at in range(0, every * GUESS_PIECES, every))
        fast = lz4.block.compress(data, mode="default", store_size=False)
        return len(fast) / len(data)

    def fit(self, data: bytes | memoryview, budget: int, start: int = 0,
            end: int | None = None) -> tuple[bytes, int]:
        """As much of ``data[start:end]`` as compresses into ``budget`` bytes: the
        compressed bytes and how many bytes from ``start`` they hold. Thread-safe
        (state per thread); a memoryview is copied first (liblz4 is given the address
        of a ``bytes``). With a liblz4 older than :data:`TRUSTED_LZ4`, each result is
        decompressed and compared before it is used: the image must not depend on its
        known bugs."""
        import ctypes

        assert self._destsize is not None
        fast, hc, state_size, check = self._destsize
        if not isinstance(data, bytes):
            data = bytes(data)
        if end is None:
            end = len(data)
        local = self._local
        out = getattr(local, "out", None)
        if out is None or len(out) < budget:
            out = local.out = ctypes.create_string_buffer(budget)
            local.taken = ctypes.c_int()
        taken = local.taken
        taken.value = end - start
        src = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
        assert src is not None
        src += start
        if self.name is ErofsCompression.LZ4HC:
            state = getattr(local, "state", None)
            if state is None:
                state = local.state = ctypes.create_string_buffer(state_size)
            n = hc(state, src, out, ctypes.byref(taken), budget, self._level or 9)
        else:
            n = fast(src, out, ctypes.byref(taken), budget)
        used = taken.value
        packed = ctypes.string_at(out, n) if n > 0 else b""
        if not 0 < used <= end - start or (
                check and packed and lz4.block.decompress(packed, uncompressed_size=used)
                != data[start:start + used]):
            raise ErofsError("liblz4 made a fixed-output block that does not decompress "
                             "to its input")
        return packed, used

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


def largest_pcluster(pcluster_size: int, fragments: bool, metabox: bool = False) -> int:
    """The most file bytes any pcluster holds: ``pcluster_size``, or the packed inode's
    (with ``fragments``) or the metabox's (with ``metabox``) when that is larger (the
    codec's configuration record says so to the kernel)."""
    return max(pcluster_size, PACKED_PCLUSTER_BYTES if fragments else 0,
               METABOX_PCLUSTER_BYTES if metabox else 0)


def compress_segment(codec: Codec, data: bytes, step: int, fitted: bool = True,
                     tail_room: int = -1) -> list[Piece]:
    """Cut ``data`` (one segment of a file) into pclusters of at most ``step`` bytes of
    it each, in order; they hold all of it.

    With :attr:`Codec.fixed_output`, every pcluster but the last is fitted to whole
    blocks: each aims at the blocks its window (the next ``step`` bytes) is expected to
    fill, from the cheap :meth:`Codec.guess_ratio` of the window scaled by what the
    last fitted pcluster made of it (lz4hc), else from the last pcluster's ratio (lz4;
    with none yet, the window is compressed whole to learn it and fitted into the
    blocks that filled). Each window is fitted once: when all of it fits with room to
    spare, its last block is padded rather than fitted again into fewer blocks (a
    second pass over the window saved 0.02-0.04 % of the data's blocks on the bench
    images). The last pcluster, ``step`` bytes or less up to the segment's end, is
    compressed whole and padded (or, for a file's last, goes inline or to the packed
    inode). With ``tail_room`` (not negative: a file's last segment with ZTAILPACKING,
    whose last pcluster is cut so that its tail goes inline, see :func:`last_cuts`), a
    last window of more than two blocks is first fitted to the whole blocks that its
    guess says leave a rest of :data:`TAIL_AIM` of that room, and only the rest is
    compressed whole (and cut, if it must be): cutting the whole window compressed all
    of it twice. Without it (or without ``fitted``), every pcluster is ``step`` bytes,
    compressed whole. A pcluster
    that does not shrink by a block is stored raw (None), and the ratio is learned
    again: when fitted by a guess, the whole blocks of what the fit took (at least one),
    not compressed whole once more. The last piece
    is returned compressed even when that saves nothing: ztailpacking may place it
    inline; the writer checks :func:`saves` before storing it.
    """
    pieces: list[Piece] = []
    view = memoryview(data)
    pos, n = 0, len(data)
    fixed = fitted and codec.fixed_output
    ratio = 0.0  # compressed / raw of the last fitted pcluster, 0 when unknown
    scale = HC_OVER_FAST  # that ratio over the guess for its window
    steady = False  # the last fit hit its aim (see TRUST_SHARE)
    # whether the last window is fitted first (see tail_room)
    aim_tail = tail_room >= 0 and fixed
    while pos < n:
        window = view[pos:pos + step]
        last = pos + step >= n
        whole = None  # the window compressed whole, when it was
        if last and aim_tail and len(window) > 2 * BLOCK_SIZE:
            aim_tail = False
            rate = codec.guess_ratio(window) * scale or ratio
            blocks = round((len(window) * rate - TAIL_AIM * tail_room) / BLOCK_SIZE)
            if blocks > 0:
                packed, used = codec.fit(data, blocks * BLOCK_SIZE, pos, n)
                if saves(packed, used):
                    pieces.append((used, packed))
                    pos += used
                    if used == len(window):  # it took all: the last piece, padded
                        break
                    continue
        guess = codec.guess_ratio(window) if fixed and not last and not steady else 0.0
        if guess:
            aim, margin = guess * scale, GUESS_MARGIN
        else:
            aim, margin = ratio, TRUST_MARGIN if steady else FIT_MARGIN
        if last or not fixed or not aim:
            whole = codec.compress(window)
            if last:
                pieces.append((len(window), whole))
                break
            if not saves(whole, len(window)):
                pieces.append((len(window), None))
                pos += len(window)
                ratio = 0.0
                continue
            if not fixed or len(whole) % BLOCK_SIZE == 0 or len(whole) < BLOCK_SIZE:
                pieces.append((len(window), whole))
                pos += len(window)
                continue
            budget = len(whole) // BLOCK_SIZE * BLOCK_SIZE
        else:
            budget = max(1, int(step * aim * margin) // BLOCK_SIZE) * BLOCK_SIZE
        packed, used = codec.fit(data, budget, pos, pos + len(window))
        if not saves(packed, used):
            if whole is not None:  # the window compressed whole does save a block
                packed, used = whole, len(window)
            else:
                raw = max(BLOCK_SIZE, used - used % BLOCK_SIZE)
                pieces.append((raw, None))
                pos += raw
                ratio = 0.0
                steady = False
                continue
        pieces.append((used, packed))
        pos += used
        before, ratio = ratio, len(packed) / used
        if guess:
            scale = (scale + ratio / guess) / 2
        steady = bool(guess or steady) and TRUST_SHARE * len(window) <= used < len(window) \
            and abs(ratio - before) <= TRUST_DRIFT * ratio
    return pieces


#: One way to cut a file's last pcluster for ZTAILPACKING (see
#: ``CompressedData._split_last``): where, the head compressed, the tail compressed.
Cut = tuple[int, bytes, bytes]


def last_cuts(codec: Codec, raw: bytes | memoryview, packed: bytes, room: int) -> list[Cut]:
    """The cuts ``CompressedData._split_last`` tries for a last pcluster ``raw`` that
    compressed whole to ``packed``, in order, whatever inline room it turns out to have
    (at most ``room``): a head that fills the whole blocks ``packed`` filled and the rest
    as the tail. With a fixed-output codec the head is fitted (one cut); else the cut is
    estimated from the ratio and moved back a block while the head is too big (at most
    three cuts). None (an empty list) when no cut can fit: the part of ``packed`` past
    its whole blocks alone passes ``room``, or there are no whole blocks to fill."""
    whole = len(packed) // BLOCK_SIZE
    if not whole or len(raw) <= BLOCK_SIZE or len(packed) % BLOCK_SIZE > room:
        return []
    if codec.fixed_output:
        head, cut = codec.fit(raw, whole * BLOCK_SIZE)
        tail = raw[cut:]
        return [(cut, head, codec.compress(tail) if tail else b"")]
    cuts: list[Cut] = []
    cut = whole * BLOCK_SIZE * len(raw) // len(packed) // BLOCK_SIZE * BLOCK_SIZE
    while len(cuts) < 3 and 0 < cut < len(raw):
        head = codec.compress(raw[:cut])
        cuts.append((cut, head, codec.compress(raw[cut:])))
        if len(head) <= whole * BLOCK_SIZE:
            break
        cut -= BLOCK_SIZE
    return cuts


#: What a compression job returns: the segment's pieces, and the cuts of its last piece
#: (``last_cuts``) when the job was asked for them (a file's last segment with
#: ZTAILPACKING), else None.
Compressed = tuple[list[Piece], list[Cut] | None]


def compress_job(codec: Codec, data: bytes, step: int, fitted: bool, room: int
                 ) -> Compressed:
    """``compress_segment``, then, when ``room`` is not negative, the cuts of the last
    piece: computed here, on a compressing thread, rather than by the thread that
    writes the file when it comes to its last pcluster, which would wait for them."""
    pieces = compress_segment(codec, data, step, fitted, room)
    n, packed = pieces[-1]
    if room < 0 or packed is None:
        return pieces, None
    return pieces, last_cuts(codec, memoryview(data)[len(data) - n:], packed, room)


def map_header(extent: Extent, algorithm: int) -> bytes:
    """The map header, plus the 8 reserved bytes before the first full index (none for
    compact indexes, nor for a file stored whole in the packed inode)."""
    if extent.fragment_at >= 0 and not extent.index_len:
        return struct.pack("<Q", WHOLE_FRAGMENT | extent.fragment_at)
    advise = ADVISE_BIG_PCLUSTER_1
    reserved = bytes(8)
    if extent.layout == DataLayout.COMPRESSED_COMPACT:
        advise |= ADVISE_BIG_PCLUSTER_2 | ADVISE_COMPACTED_2B
        reserved = b""
    if extent.fragment_at >= 0:
        return MAP_HEADER.pack(extent.fragment_at & 0xFFFF_FFFF,
                               advise | ADVISE_FRAGMENT_PCLUSTER, algorithm, 0) + reserved
    if extent.idata_len:
        # "h_reserved1" (u16), then "h_idata_size": the inline pcluster's length
        return struct.pack("<HHHBB", 0, extent.idata_len, advise | ADVISE_INLINE_PCLUSTER,
                           algorithm, 0) + reserved
    return MAP_HEADER.pack(0, advise, algorithm, 0) + reserved


def index_extra(end: int, extent: Extent) -> int:
    """Bytes after an inode and its xattrs ending at ``end``: alignment to 8, the map
    header, its reserved 8 bytes (full indexes) and the lcluster indexes (not the
    inline pcluster, which follows them)."""
    # len(map_header(extent, 0)), without packing it: 8 bytes, and the reserved 8 of
    # full indexes (none for a file stored whole in the packed inode)
    compact = extent.layout == DataLayout.COMPRESSED_COMPACT
    whole_fragment = extent.fragment_at >= 0 and not extent.index_len
    header = end + -end % 8 + (8 if compact or whole_fragment else 16)
    if compact:
        return header - end + compact_size(extent.index_len // LCLUSTER_INDEX.size, header)
    return header - end + extent.index_len


def index_bytes(extent: Extent, full: bytes, ebase: int) -> bytes:
    """The cluster index as stored at ``ebase``: ``full`` as it is, or in compact form."""
    if extent.layout != DataLayout.COMPRESSED_COMPACT:
        return full
    compact = to_compact(full, ebase)
    if compact is None:
        raise ErofsError("a compact cluster index over pclusters that do not follow "
                         "each other")
    return compact


#: The layouts of compressed inodes (see :func:`has_map`).
MAPPED_LAYOUTS = (DataLayout.COMPRESSED_FULL, DataLayout.COMPRESSED_COMPACT)


def has_map(extent: Extent) -> bool:
    """Whether the inode is compressed (a map header and maybe indexes follow it)."""
    return extent.layout in MAPPED_LAYOUTS


class Withdrawn(Exception):
    """Raised by a file's source to take the file back: :meth:`CompressedData.write`
    leaves nothing of it in the image and, if asked, hands back the bytes it read."""


#: What an extent's HEAD says: PLAIN (raw, one block), HEAD1 with its block count in
#: the first NONHEAD, or HEAD1 without (the tail inline or in the packed inode).
_PLAIN, _COMPRESSED, _TAIL = 0, 1, 2


@functools.lru_cache(maxsize=1024)
def _nonheads(n: int) -> bytes:
    """The ``n`` NONHEAD indexes after a HEAD: ``delta[0]`` back to it, ``delta[1]``
    forward past the last (an extent maps at most a pcluster: ``n`` stays small)."""
    return b"".join(LCLUSTER_DELTA.pack(LCLUSTER_NONHEAD, 0, i, n + 1 - i)
                    for i in range(1, n + 1))


class _Batch:
    """Short segments of several files, compressed by one job, in order."""

    __slots__ = ("done", "future", "raws", "rooms", "size")

    def __init__(self) -> None:
        self.raws: list[bytes] = []
        #: each segment's ``room`` for ``compress_job``
        self.rooms: list[int] = []
        self.size = 0
        self.future: Future[list[Compressed]] | None = None  # None: still filling
        #: the future's result, once a file asked for it
        self.done: list[Compressed] | None = None


def _compress_batch(codec: Codec, raws: list[bytes], rooms: list[int], step: int,
                    fitted: bool) -> list[Compressed]:
    return [compress_job(codec, raw, step, fitted, room) for raw, room in zip(raws, rooms,
                                                                              strict=True)]


#: How a segment is compressed: its own job, a place in a batch, or not at all (None).
_Job = Future[Compressed] | tuple[_Batch, int] | None


class _File:
    """One file on its way out: its segments, compressing or compressed, in order."""

    __slots__ = ("chunks", "compressed", "cuts", "extent", "index", "logical", "next_blk",
                 "pending", "placed", "raw_bytes", "scattered", "start", "starts", "tail",
                 "tail_len", "total_blocks")

    def __init__(self, extent: Extent) -> None:
        self.extent = extent
        self.chunks: deque[tuple[bytes, _Job]] = deque()
        self.raw_bytes = 0
        self.start = -1  # where its first block went, once writing began
        self.index = bytearray()
        #: file bytes the extents written so far hold (where the next extent starts)
        self.logical = 0
        #: the last extent written, (start, kind, blkaddr, blocks): its index entries
        #: wait for the next extent's start
        self.pending: tuple[int, int, int, int] | None = None
        self.total_blocks = 0
        #: the block after the last pcluster; whether one did not start there (the
        #: compact index then cannot say where pclusters are)
        self.next_blk = -1
        self.scattered = False
        self.compressed = False
        self.tail = b""  # the raw bytes past the last whole block, when stored raw
        self.tail_len = 0  # bytes of the file's end that went to the packed inode
        #: where each extent went, (offset, blocks or 0 when stored raw, raw length):
        #: kept for the files that may be read back (see ``CompressedData._key_of``)
        self.placed: list[tuple[int, int, int]] | None = None
        #: the packed inode's: the offset in it where each ``placed`` entry starts
        self.starts: list[int] | None = None
        #: the cuts of the last pcluster, held back for ZTAILPACKING (``last_cuts``);
        #: None when its job did not look for them
        self.cuts: list[Cut] | None = None


class CompressedData:
    """Streams files into the data area as pclusters (or flat, when that is smaller).

    Files are written in the order they were added. A file is queued until the raw
    bytes queued exceed the limit; a file larger than the limit is written while it is
    read, after every file queued before it.
    """

    def __init__(self, out: BinaryIO, position: int, spool: Spool, *, codec: Codec,
                 pcluster_size: int, workers: int, dedup: bool,
                 fragments: bool = False, ztailpacking: bool = False,
                 metabox: bool = False) -> None:
        self._out = out
        #: where ``out``'s own position is, as left by ``_drain`` and ``_read`` (-1: not
        #: known), so that a write asks the kernel for it only when it moved: another
        #: writer of ``out`` (``sparse.py``) leaves it past ``position`` or at it
        self._out_at = -1
        #: the bytes written last, ``_pending[:_filled]``, in order from ``_pending_at``,
        #: not yet handed to ``out``: the pclusters of many small files go in one write
        #: (see ``_put``); a buffer of fixed size, filled in place
        self._pending = bytearray(WRITE_BATCH)
        self._filled = 0
        self._pending_at = -1
        self.position = position
        self._spool = spool
        self._codec = codec
        self._pcluster = pcluster_size
        self._segment = max(pcluster_size, SEGMENT_BYTES // pcluster_size * pcluster_size)
        #: the packed inode's pcluster and segment size, and the metabox's (see
        #: PACKED_PCLUSTER_BYTES, METABOX_PCLUSTER_BYTES)
        self._packed_step = largest_pcluster(pcluster_size, fragments)
        self._box_step = largest_pcluster(pcluster_size, False, metabox)
        #: the packed inode's bytes handed to the threads as one job: a pcluster when
        #: they are not fitted (each is compressed on its own then), so that its last
        #: bytes, which come after every file, are compressed by all the threads, not
        #: one; else a segment, within which pclusters are fitted one after another
        self._packed_job = (max(self._segment, PACKED_SEGMENT_PCLUSTERS * self._packed_step)
                            if PACKED_FITTED else self._packed_step)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ocisquash-erofs")
        self._limit = IN_FLIGHT_BYTES * workers
        self._workers = workers
        #: whether lz4 pclusters are fitted to whole blocks (not the metabox's: see
        #: PACKED_FITTED)
        self._fitted = True
        self._queue: deque[_File] = deque()
        #: the batch that short segments join, not handed to the pool yet
        self._filling: _Batch | None = None
        self._queued = 0
        self._dedup = dedup
        self._ztailpacking = ztailpacking
        self._seen: dict[tuple[bytes, int, bool], Extent] = {}
        #: a file of more than a block is hashed only when an earlier file has its
        #: size (as the squashfs writer does); the first file of each size, unhashed,
        #: is kept here, and None once it is keyed: from its segments while it is
        #: queued, else by reading it back (which needs an output that can be read;
        #: without one every file is hashed).
        self._firsts: dict[int, _File | None] | None = (
            {} if dedup and readable(out) else None)
        #: files read back to be keyed, and keyed from their queued segments instead
        self.read_backs = 0
        self.keyed_queued = 0
        self.bytes_in = 0
        self.duplicates = 0
        #: the bytes of the last distinct files stored whole in the packed inode
        #: (``pack_whole``) -> their offset there; oldest first in ``_short_order``,
        #: ``_short_held`` bytes in all
        self._short_seen: dict[bytes, int] = {}
        self._short_order: deque[bytes] = deque()
        self._short_held = 0
        self.compressed_files = 0
        #: the packed inode, which the last extent of each file joins (None: no fragments)
        self._packed = _File(Extent(DataLayout.COMPRESSED_FULL, 0, 0, -1)) if fragments \
            else None
        #: the packed inode's bytes not yet a whole segment
        self._packing = bytearray()
        if self._packed is not None:
            self._packed.placed = []
            self._packed.starts = []

    def write(self, source: BinaryIO | bytes, size: int | None, inline_room: int,
              given_back: Callable[[bytes], None] | None = None) -> Extent:
        """Add one file's data; returns its extent, filled in once it is written. When
        ``source`` raises :class:`Withdrawn`, ``given_back`` (if any) gets the bytes
        read from it so far, in order, read back from the image where they were
        written (which needs an output that can be read)."""
        extent = Extent(DataLayout.COMPRESSED_FULL, 0, 0, -1)
        extent.room = inline_room
        f = _File(extent)
        if given_back is not None:
            f.placed = []
        if isinstance(source, bytes):
            size = len(source)
        hashing = self._dedup
        firsts = self._firsts
        if firsts is not None and size is not None and size > BLOCK_SIZE \
                and size not in firsts and not (self._packed is not None
                                                and size <= self._pcluster):
            # No earlier file has this size: none can be a copy of this one. (A file
            # that goes whole into the packed inode is hashed as it comes instead:
            # reading it back would decompress a whole pcluster of the packed inode.)
            firsts[size] = f
            f.placed = []
            hashing = False
        digest = hashlib.sha256() if hashing else None
        streaming = False
        fragment = b""
        try:
            # A file given whole in one segment (most files) needs no generator.
            segments: Iterable[tuple[bytes, bool]] = (
                ((source, True),) if type(source) is bytes and 0 < size <= self._segment  # type: ignore[operator]
                else self._segments(source, size))
            for raw, last in segments:
                streaming = self._add_segment(f, raw, last, digest, streaming)
                if last and self._packed is not None:
                    fragment = raw[(len(raw) - 1) // self._pcluster * self._pcluster:]
        except BaseException as e:
            # The source gave up (see ``sparse.py``), or the build fails: the file leaves
            # nothing behind, so that it may be added again.
            self._drop_jobs(f)
            if f.start >= 0:
                self.position = f.start
            if firsts is not None and size is not None and firsts.get(size) is f:
                del firsts[size]
            if given_back is not None and isinstance(e, Withdrawn):
                # Its bytes are still where they were written, until the next file.
                self._give_back(f, given_back)
            raise

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
            self._drop_jobs(f)
            if f.start >= 0:
                self.position = f.start  # drop what was written; the next file overwrites it
            self.duplicates += 1
            return found
        if key is not None:
            self._seen[key] = extent
        if fragment:
            f.tail_len = len(fragment)
            extent.fragment_at = self._pack(fragment)
        if streaming:
            self._finish_file(f)
        else:
            self._queue.append(f)
            self._queued += f.raw_bytes + QUEUED_FILE_BYTES
            while self._queued > self._limit:
                self._write_oldest()
        return extent

    def write_alone(self, source: BinaryIO, size: int) -> Extent:
        """Add a file that shares nothing and is not counted among the files (the
        metabox): in pclusters of :data:`METABOX_PCLUSTER_BYTES`, no duplicate search,
        its last extent not in the packed inode, no inline pcluster."""
        packed, firsts, dedup = self._packed, self._firsts, self._dedup
        sizes = self._pcluster, self._segment, self._limit
        counts = self.bytes_in, self.compressed_files
        self.flush()
        self._packed = self._firsts = None
        self._dedup = False
        # Segments of one pcluster, two per thread in flight: enough to keep the
        # threads busy, and the least memory at the end of a build, when the tree is
        # largest.
        step = self._box_step
        self._pcluster, self._segment, self._limit = step, step, 2 * self._workers * step
        self._fitted = PACKED_FITTED
        try:
            extent = self.write(source, size, 0)
            self.flush()
            return extent
        finally:
            self._packed, self._firsts, self._dedup = packed, firsts, dedup
            self._pcluster, self._segment, self._limit = sizes
            self._fitted = True
            self.bytes_in, self.compressed_files = counts

    def pack_whole(self, data: bytes) -> int:
        """Put a small file whole in the packed inode; return its offset there. With
        dedup, a copy of one of the last distinct files put there (see
        :data:`SHORT_KEYS`; of :data:`SHORT_DEDUP_MIN` bytes or more) is not stored
        again: its offset is the earlier file's (the kernel reads a fragment by offset
        and size, so two inodes may name the same bytes)."""
        seen = self._short_seen
        looked_up = self._dedup and len(data) >= SHORT_DEDUP_MIN
        if looked_up:
            found = seen.get(data)
            if found is not None:
                self.duplicates += 1
                return found
        at = self._pack(data)
        if looked_up:
            seen[data] = at
            order = self._short_order
            order.append(data)
            self._short_held += len(data)
            while len(order) > SHORT_KEYS or self._short_held > SHORT_KEY_BYTES:
                old = order.popleft()
                self._short_held -= len(old)
                del seen[old]
        while self._queued > self._limit:
            self._write_oldest()
        return at

    def skip_to(self, position: int) -> None:
        """Go on at ``position``: the bytes before it were written by someone else."""
        self._drain()
        self.position = position
        self._out_at = -1

    def _add_segment(self, f: _File, raw: bytes, last: bool,
                     digest: hashlib._Hash | None, streaming: bool) -> bool:
        """Queue the next segment of ``f`` for compression, and write ``f``'s older
        segments once it holds more than the in-flight limit; returns whether ``f`` is
        written while it is read (the files added before it were written first)."""
        f.extent.size += len(raw)
        if digest is not None:
            digest.update(raw)
        if last and self._packed is not None:
            # The file's last pcluster_size bytes (or fewer) join the packed inode.
            raw = raw[:(len(raw) - 1) // self._pcluster * self._pcluster]
            if not raw:
                return streaming
        # A file of one block is not compressed (nothing to gain) unless its
        # compressed form may go inline.
        job: _Job = None
        if not (last and f.extent.size <= BLOCK_SIZE and not self._ztailpacking):
            # With ZTAILPACKING a file's last pcluster may be cut to go inline: the job
            # tries the cuts that the room beside the inode could take (see _write_last).
            room = f.extent.room - INLINE_OVERHEAD \
                if last and self._ztailpacking and self._packed is None else -1
            job = self._batched(raw, room) if len(raw) < BATCH_BYTES else self._pool.submit(
                compress_job, self._codec, raw, self._pcluster, self._fitted, room)
        f.chunks.append((raw, job))
        f.raw_bytes += len(raw)
        if f.raw_bytes > self._limit:
            if not streaming:
                streaming = True
                self.flush()  # the files added before this one go first
            # The newest segment stays: its last pcluster may go inline.
            while f.raw_bytes > self._limit and len(f.chunks) > 1:
                self._emit_one(f)
        return streaming

    def _batched(self, raw: bytes, room: int) -> tuple[_Batch, int]:
        """Put ``raw`` in the batch being filled (handed over first if ``raw`` would
        make it too long, so that the newest segment is always the filling batch's
        last until the next one comes)."""
        batch = self._filling
        if batch is not None and batch.size + len(raw) > BATCH_BYTES:
            self._hand_over()
            batch = None
        if batch is None:
            batch = self._filling = _Batch()
        batch.raws.append(raw)
        batch.rooms.append(room)
        batch.size += len(raw)
        return batch, len(batch.raws) - 1

    def _hand_over(self) -> None:
        batch = self._filling
        assert batch is not None
        self._filling = None
        batch.future = self._pool.submit(_compress_batch, self._codec, batch.raws,
                                         batch.rooms, self._pcluster, self._fitted)

    def _drop_jobs(self, f: _File) -> None:
        """Spare the compressing threads ``f``'s segments (it leaves nothing behind):
        jobs not started, and its segment at the end of the batch being filled."""
        for raw, job in f.chunks:
            if isinstance(job, tuple):
                batch = job[0]
                if batch is self._filling and batch.raws and batch.raws[-1] is raw:
                    batch.raws.pop()
                    batch.rooms.pop()
                    batch.size -= len(raw)
            elif job is not None:
                job.cancel()

    def _segments(self, source: BinaryIO | bytes, size: int | None
                  ) -> Iterator[tuple[bytes, bool]]:
        """The file in segments, each with whether it is the last."""
        step = self._segment
        if isinstance(source, bytes):
            for i in range(0, len(source), step):
                yield source[i:i + step], i + step >= len(source)
            return
        total = 0
        if size is not None:
            # A segment in one read (a tar member's data is copied once, joined).
            while total < size:
                want = min(step, size - total)
                piece = source.read(want)
                if 0 < len(piece) < want:
                    parts = [piece]
                    got = len(piece)
                    while got < want and (more := source.read(want - got)):
                        parts.append(more)
                        got += len(more)
                    piece = b"".join(parts)
                if not piece:
                    raise ErofsError(f"file data ended after {total} of {size} bytes")
                total += len(piece)
                yield piece, total >= size
            return
        buf = bytearray()
        while True:
            piece = source.read(CHUNK)
            if not piece:
                break
            buf += piece
            # A segment goes once more follows it (so the last is known as such).
            while len(buf) > step:
                yield bytes(buf[:step]), False
                del buf[:step]
        if buf:
            yield bytes(buf), True

    def flush(self) -> None:
        """Write every queued file, and hand every byte written to the output."""
        while self._queue:
            self._write_oldest()
        self._drain()

    def close(self) -> None:
        self._queue.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._seen.clear()
        if self._firsts is not None:
            self._firsts.clear()

    def _write_oldest(self) -> None:
        f = self._queue.popleft()
        if f is self._packed:  # one segment of the packed inode, queued when it filled
            self._queued -= len(f.chunks[0][0])
            self._emit_one(f)
            return
        self._queued -= f.raw_bytes + QUEUED_FILE_BYTES
        self._finish_file(f)

    def _pack(self, raw: bytes) -> int:
        """Append ``raw`` to the packed inode; return its offset there. Each whole
        segment of the packed inode is compressed and queued at once, so the packed
        inode is written as the files are, in pieces between them (each pcluster has
        its own address in the index)."""
        packed = self._packed
        assert packed is not None
        at = packed.extent.size
        packed.extent.size += len(raw)
        self._packing += raw
        step = self._packed_job
        while len(self._packing) >= step:
            self._queue_packed(bytes(self._packing[:step]))
            del self._packing[:step]
        return at

    def _queue_packed(self, piece: bytes) -> None:
        packed = self._packed
        assert packed is not None
        future = self._pool.submit(compress_job, self._codec, piece, self._packed_step,
                                   PACKED_FITTED, -1) \
            if len(piece) > BLOCK_SIZE else None
        packed.chunks.append((piece, future))
        self._queue.append(packed)
        self._queued += len(piece)

    # -- writing extents and their index ----------------------------------------------

    def _emit_one(self, f: _File, hold_last: bool = False
                  ) -> tuple[bytes | memoryview, bytes | None]:
        """Write ``f``'s oldest segment, pcluster by pcluster; with ``hold_last``, all
        but the last, which is returned (its bytes, compressed or not) instead."""
        raw, job = f.chunks.popleft()
        f.raw_bytes -= len(raw)
        pieces: list[Piece]
        if job is None:
            pieces = [(len(raw), None)]
        else:
            if isinstance(job, tuple):
                batch, i = job
                if batch.done is None:
                    if batch.future is None:  # the batch still filling
                        self._hand_over()
                    assert batch.future is not None
                    batch.done = batch.future.result()
                pieces, cuts = batch.done[i]
            else:
                pieces, cuts = job.result()
            if hold_last:
                f.cuts = cuts
        if len(pieces) == 1:  # most segments: one pcluster, the segment's bytes whole
            packed = pieces[0][1]
            if hold_last:
                return raw, packed
            self._write_piece(f, raw, packed)
            return b"", None
        at = 0
        held: tuple[bytes | memoryview, bytes | None] = (b"", None)
        view = memoryview(raw)  # the pieces' bytes are not copied
        for i, (n, packed) in enumerate(pieces):
            part = view[at:at + n]
            at += n
            if hold_last and i == len(pieces) - 1:
                held = (part, packed)
            else:
                self._write_piece(f, part, packed)
        assert at == len(raw)
        return held

    def _write_piece(self, f: _File, raw: bytes | memoryview, packed: bytes | None) -> None:
        """Write one extent: compressed if that takes fewer blocks, else raw, a PLAIN
        extent per block. A PLAIN extent maps at most a block, up to the end of the
        lcluster after its HEAD's when that holds no HEAD: so the file's last, when it
        starts mid-lcluster and passes into the next one, is cut there (a block more)."""
        position = self.position
        if f.start < 0:
            f.start = position
        blkaddr = position // BLOCK_SIZE
        n = len(raw)
        raw_blocks = -(-n // BLOCK_SIZE)
        cut = n  # where the last PLAIN extent is cut in two (n: not cut)
        if f.logical + n == f.extent.size:
            end_of_head = BLOCK_SIZE - (f.logical + (raw_blocks - 1) * BLOCK_SIZE) % BLOCK_SIZE
            if n - (raw_blocks - 1) * BLOCK_SIZE > end_of_head:
                cut = (raw_blocks - 1) * BLOCK_SIZE + end_of_head
                raw_blocks += 1
        if packed is not None:
            size = len(packed)
            blocks = -(-size // BLOCK_SIZE)
            if 0 < blocks < raw_blocks and packed[0]:  # see saves()
                if f.placed is not None:
                    self._place(f, blocks, n)
                # self._put() of the padding and the pcluster, written out
                filled = self._filled
                stored = blocks * BLOCK_SIZE
                if self._pending_at + filled != position or filled + stored > WRITE_BATCH:
                    self._drain()
                    self._pending_at = position
                    filled = 0
                end = filled + stored
                pending = self._pending
                pending[filled:end - size] = bytes(stored - size)
                pending[end - size:end] = packed
                self._filled = end
                self.position = position + stored
                self._extent(f, n, _COMPRESSED, blkaddr, blocks)
                f.total_blocks += blocks
                f.compressed = True
                f.tail = b""
                return
        parts = [raw[i:i + BLOCK_SIZE] for i in range(0, cut, BLOCK_SIZE)]
        if cut < n:
            parts[-1] = raw[(raw_blocks - 2) * BLOCK_SIZE:cut]
            parts.append(raw[cut:])
        out = []  # the blocks, each part padded, written at once
        for part in parts:
            out.append(part)
            if len(part) < BLOCK_SIZE:
                out.append(bytes(BLOCK_SIZE - len(part)))
        start = self.position
        for i, part in enumerate(parts):
            self._place(f, 0, len(part))
            self.position += BLOCK_SIZE
            self._extent(f, len(part), _PLAIN, blkaddr + i, 1)
        self.position = start
        self._put(b"".join(out))
        f.total_blocks += len(parts)
        f.tail = bytes(raw[n - n % BLOCK_SIZE:])

    def _place(self, f: _File, blocks: int, n: int) -> None:
        """Remember where an extent went, for a file that may be read back (raw
        extents that follow each other as one)."""
        placed = f.placed
        if placed is None:
            return
        if not blocks and placed:
            at, was, m = placed[-1]
            if not was and at + m == self.position and m % BLOCK_SIZE == 0:
                placed[-1] = (at, 0, m + n)
                return
        placed.append((self.position, blocks, n))
        if f.starts is not None:
            f.starts.append(f.logical)

    def _extent(self, f: _File, n: int, kind: int, blkaddr: int, blocks: int) -> None:
        """Record the next ``n`` bytes of ``f`` as one extent; index the one before."""
        if f.pending is not None:
            self._index(f, f.pending, f.logical, last=False)
        f.pending = (f.logical, kind, blkaddr, blocks)
        if kind != _TAIL:
            f.scattered |= 0 <= f.next_blk != blkaddr
            f.next_blk = blkaddr + blocks
        f.logical += n

    def _close_index(self, f: _File) -> None:
        """Index the file's last extent (its NONHEADs count to the end of the file)."""
        if f.pending is not None:
            self._index(f, f.pending, f.extent.size, last=True)
            f.pending = None

    @staticmethod
    def _index(f: _File, extent: tuple[int, int, int, int], end: int, last: bool) -> None:
        """The lcluster indexes of one extent: from the lcluster where it starts (its
        HEAD) to the one where the next starts, or past the file's last lcluster."""
        start, kind, blkaddr, blocks = extent
        head = start // BLOCK_SIZE
        after = -(-end // BLOCK_SIZE) if last else end // BLOCK_SIZE
        index = f.index
        index += LCLUSTER_INDEX.pack(LCLUSTER_PLAIN if kind == _PLAIN else LCLUSTER_HEAD1,
                                     start % BLOCK_SIZE, blkaddr)
        n = after - head - 1
        if n > 0:
            if kind == _COMPRESSED:  # the first NONHEAD holds the block count
                index += LCLUSTER_DELTA.pack(LCLUSTER_NONHEAD, 0, D0_CBLKCNT | blocks, n)
                index += _nonheads(n)[LCLUSTER_DELTA.size:]
            else:
                index += _nonheads(n)

    def _finish_file(self, f: _File) -> None:
        while len(f.chunks) > 1:
            self._emit_one(f)
        if f.chunks:
            raw, packed = self._emit_one(
                f, hold_last=self._ztailpacking and f.extent.fragment_at < 0)
            if raw:
                self._write_last(f, raw, packed)
        extent = f.extent
        if extent.fragment_at >= 0:
            self._finish_fragmented(f)
            return
        if f.start < 0:  # an empty file
            extent.layout = DataLayout.FLAT_PLAIN
            return
        if f.compressed:
            if f.pending is not None:  # self._close_index(f), written out
                self._index(f, f.pending, extent.size, last=True)
                f.pending = None
            if not f.scattered:
                extent.layout = DataLayout.COMPRESSED_COMPACT
            extent.startblk = f.total_blocks  # a compressed inode's i_u: its block count
            index = f.index
            extent.index_at = self._spool.put(bytes(index))
            extent.index_len = len(index)
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

    def _write_last(self, f: _File, raw: bytes | memoryview, packed: bytes | None) -> None:
        """ZTAILPACKING: store ``f``'s last pcluster after its cluster index if it fits
        in the inode's block ("erofs_blkoff(m_pa) + m_plen" may not pass the block's
        end), else as any other. Its lclusters are a HEAD and NONHEADs, the HEAD's
        blkaddr unused (the kernel finds the data after the last index, ``h_idata_size``
        long). A pcluster too big for the room is cut first (``_split_last``)."""
        extent = f.extent
        # Every lcluster of the file has its index before the inline data: compact
        # ones, wherever the inode lands, unless the pclusters are scattered.
        lclusters = _blocks(extent.size)
        index = max(compact_size(lclusters, at) for at in (0, 8, 16, 24)) \
            if not f.scattered else lclusters * LCLUSTER_INDEX.size
        room = extent.room - INLINE_OVERHEAD - index
        if packed is not None and len(packed) > room:
            split = self._split_last(f, raw, packed, room)
            if split is not None:
                raw, packed = split
                if not raw:
                    return
        # A file of this pcluster alone, raw and inline (FLAT_INLINE), costs no index.
        flat_inline = (not f.logical and len(raw) <= extent.room
                       and len(raw) <= len(packed or b"") + INLINE_OVERHEAD + index)
        if packed is None or not 0 < len(packed) <= room or packed[:1] == b"\0" \
                or len(packed) >= len(raw) or flat_inline:
            self._write_piece(f, raw, packed)
            return
        if f.start < 0:
            f.start = self.position
        extent.idata_at = self._spool.put(packed)
        extent.idata_len = len(packed)
        if f.placed is not None:
            f.placed.append((extent.idata_at, -len(packed), len(raw)))
        self._extent(f, len(raw), _TAIL, 0, 0)
        f.compressed = True
        f.tail = b""

    def _split_last(self, f: _File, raw: bytes | memoryview, packed: bytes, room: int
                    ) -> tuple[bytes | memoryview, bytes] | None:
        """Cut ``f``'s last pcluster in two: a head that fills the whole blocks the
        pcluster filled and a tail, the rest, that compresses into ``room``, as
        mkfs.erofs's fixed-output compression leaves a small last pcluster. The head is
        written; the tail is returned (empty when the head took everything). The cuts
        to try (``last_cuts``) came with the pcluster from its compressing thread; the
        first whose tail fits is taken if its head fills no more than those blocks.
        None when no cut fits (nothing written)."""
        whole = len(packed) // BLOCK_SIZE
        # The tail holds at least what spills past the whole blocks: when that alone
        # passes the room, no cut fits.
        if not whole or len(raw) <= BLOCK_SIZE or len(packed) % BLOCK_SIZE > room:
            return None
        # The pcluster's job tried the cuts for a room of at least this one (the inline
        # room less INLINE_OVERHEAD: see _add_segment), so a job that tried none had
        # a negative room, and returned above.
        assert f.cuts is not None
        chosen = None
        for tried in f.cuts:
            if len(tried[2]) > room:
                return None  # a shorter head only makes the tail bigger
            if len(tried[1]) <= whole * BLOCK_SIZE:
                chosen = tried
                break
        if chosen is None:
            return None
        cut, head_packed, tail_packed = chosen
        if self._codec.fixed_output and not saves(head_packed, cut):
            return None
        self._write_piece(f, raw[:cut], head_packed)
        return raw[cut:], tail_packed

    def _finish_fragmented(self, f: _File) -> None:
        """A file whose last extent is in the packed inode: stays compressed, its tail
        lclusters a HEAD (whose blkaddr holds the fragment offset's high 32 bits, "for
        non-compact indexes, fragmentoff is 64 bits") and NONHEADs."""
        extent = f.extent
        extent.startblk = f.total_blocks
        if f.pending is not None:
            self._extent(f, f.tail_len, _TAIL, extent.fragment_at >> 32, 0)
            self._close_index(f)
            # Compact indexes hold 32 bits of the offset (h_fragmentoff) only.
            if not f.scattered and extent.fragment_at < 1 << 32:
                extent.layout = DataLayout.COMPRESSED_COMPACT
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
        self._close_index(packed)
        extent = packed.extent
        extent.startblk = packed.total_blocks
        extent.index_at = self._spool.put(bytes(packed.index))
        extent.index_len = len(packed.index)
        self._packed = None
        return extent

    def _put(self, data: bytes) -> None:
        """Write ``data`` at ``position``: kept after the bytes written just before it
        and handed to the output :data:`WRITE_BATCH` bytes at a time (a write of its own
        for each pcluster cost a system call each, most of them for small files). Bytes
        that do not follow the kept ones (after a rewind) hand those over first, so the
        output gets the same writes in the same order."""
        position = self.position
        filled = self._filled
        n = len(data)
        if self._pending_at + filled != position or filled + n > WRITE_BATCH:
            self._drain()
            self._pending_at = position
            filled = 0
        self.position = position + n
        if n >= WRITE_BATCH:  # a long run of raw blocks: as it is
            if self._out_at != position:
                self._out.seek(position)
            self._out.write(data)
            self._out_at = self._pending_at = position + n
            return
        self._pending[filled:filled + n] = data
        self._filled = filled + n

    def _drain(self) -> None:
        """Hand the bytes kept by ``_put`` to the output."""
        filled = self._filled
        if filled:
            at = self._pending_at
            if self._out_at != at:  # a seek would flush the buffer every time
                self._out.seek(at)
            with memoryview(self._pending) as whole:
                self._out.write(whole[:filled])
            self._out_at = self._pending_at = at + filled
            self._filled = 0

    # -- keying a file already written (size-first dedup) ------------------------------

    def _key_of(self, f: _File) -> tuple[bytes, int, bool]:
        """The dedup key of ``f``, added unhashed: the key ``write`` computes as it reads
        a file. From its segments while it is still queued (they hold all its bytes but
        its fragment's), else from its bytes in the image, its inline tail and its
        fragment."""
        extent = f.extent
        digest = hashlib.sha256()
        if f in self._queue:
            self.keyed_queued += 1
            for raw, _ in f.chunks:
                digest.update(raw)
        else:
            self.read_backs += 1
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

    def _give_back(self, f: _File, out: Callable[[bytes], None]) -> None:
        """``f``'s bytes so far, in order and a piece at a time: its extents from the
        image, then its segments still queued."""
        for at, blocks, n in f.placed or ():
            if blocks:
                out(self._extent_raw(at, blocks, n))
                continue
            for i in range(0, n, CHUNK):  # raw blocks, merged into one run
                out(self._read(at + i, min(CHUNK, n - i)))
        for raw, _ in f.chunks:
            out(raw)

    def _read(self, at: int, n: int) -> bytes:
        self._drain()
        self._out.seek(at)
        data = self._out.read(n)
        self._out_at = at + len(data)
        if len(data) != n:
            raise ErofsError("cannot read back the image being written")
        return data

    def _extent_raw(self, at: int, blocks: int, n: int) -> bytes:
        """One extent's raw bytes from the image: stored raw, or a pcluster of
        ``blocks`` blocks (compressed data starts with no zero byte: see ``saves``)."""
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
        the image, queued, or not yet a whole segment."""
        packed = self._packed
        assert packed is not None and packed.placed is not None and packed.starts is not None
        out = bytearray()
        end = at + n
        pos = at
        # Written: the extents whose bytes overlap, from the one holding ``at``.
        i = bisect.bisect_right(packed.starts, pos) - 1
        while pos < min(end, packed.logical):
            start = packed.starts[i]
            raw = self._extent_raw(*packed.placed[i])
            out += raw[pos - start:end - start]
            pos = min(end, start + len(raw))
            i += 1
        # Queued segments, then the bytes not yet a segment.
        start = packed.logical
        for raw, _ in packed.chunks:
            if start <= pos < start + len(raw):
                out += raw[pos - start:end - start]
                pos = min(end, start + len(raw))
            start += len(raw)
        if pos < end:
            out += self._packing[pos - start:end - start]
        if len(out) != n:
            raise ErofsError("cannot read back the packed inode being written")
        return bytes(out)
