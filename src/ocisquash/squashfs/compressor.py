"""Block compressors and their compressor-options block.

Format rules enforced here:

* one compressor for data and metadata ("Using one compressor for data and switching
  to a different compressor for e.g. inodes is not supported");
* gzip writes zlib streams ("just zlib streams (no gzip headers!)");
* xz uses CRC32 checks only ("The lzma 2 aka xz compressor MUST use CRC32 checksums
  only") and a dictionary the size of a data block; of the requested BCJ filters the
  smallest result wins, like mksquashfs;
* lz4 writes raw blocks and always has an options block with "Version MUST be set to 1";
* the options block is written only when it differs from the compressor's defaults
  (except lz4, where it is mandatory).

``compress`` is safe to call from several threads at once: libdeflate, zlib, lzma and
zstd release the GIL, which is what makes the thread pool in ``blocks.py`` pay off.

gzip blocks are deflated by libdeflate (the ``deflate`` package): at level 9 it is faster
than zlib and its output smaller (figures: ``bench/README.md``). It always uses a 32 KiB
window, so a smaller ``window`` (an API option; the command line offers none) is
deflated by the standard library's zlib, which honours it.
"""

from __future__ import annotations

import lzma
import struct
import threading
from collections.abc import Callable
from typing import Any

from ..errors import MissingExtraError, SquashfsError, UsageError
from .format import CompressorId
from .options import LEVELS as LEVELS
from .options import Compression as Compression

#: XZ "Filters" bit field of the options block, and the lzma filter id of each.
XZ_FILTERS: dict[str, tuple[int, int]] = {
    "x86": (0x0001, lzma.FILTER_X86),
    "powerpc": (0x0002, lzma.FILTER_POWERPC),
    "ia64": (0x0004, lzma.FILTER_IA64),
    "arm": (0x0008, lzma.FILTER_ARM),
    "armthumb": (0x0010, lzma.FILTER_ARMTHUMB),
    "sparc": (0x0020, lzma.FILTER_SPARC),
}

#: zstd compresses a block in parts of this size, each a zstd block of its own.
#: zstd codes a block's literals and sequences with one set of tables, and its own
#: block splitting leaves the first 128 KiB of a frame whole, which is all of a
#: squashfs block; a block that mixes kinds of data (code and strings, text and
#: packed bytes) then pays for the mix. Parts of 32 KiB make images smaller for a little
#: more compressing time (figures: ``bench/README.md``).
ZSTD_PART = 32 * 1024

class Compressor:
    """Compresses blocks with one configuration; build with :func:`make_compressor`."""

    def __init__(
        self,
        kind: Compression,
        compressor_id: CompressorId,
        func: Callable[[bytes], bytes],
        options: bytes | None,
    ) -> None:
        self.kind = kind
        self.id = compressor_id
        self._func = func
        #: payload of the compressor-options metadata block, or None when default
        self.options = options
        #: each thread's zstd decompressor, kept: making one for each block read back
        #: cost a tenth of decoding the block
        self._local = threading.local()

    def compress(self, data: bytes) -> bytes:
        """Return the compressed form of ``data`` (the caller keeps it only if smaller)."""
        return self._func(data)

    def decompress(self, data: bytes, size: int) -> bytes:
        """Decode a block of at most ``size`` bytes that this kind of compressor wrote
        (the writer reads a few blocks back; see ``blocks.DataWriter``)."""
        kind = self.kind
        if kind is Compression.GZIP:
            import zlib

            return zlib.decompress(data, 15, size)
        if kind is Compression.XZ:
            return lzma.decompress(data, format=lzma.FORMAT_XZ)
        if kind is Compression.ZSTD:
            decompressor = getattr(self._local, "zstd", None)
            if decompressor is None:
                import zstandard

                decompressor = self._local.zstd = zstandard.ZstdDecompressor()
            out: bytes = decompressor.decompress(data, max_output_size=size)
            return out
        if kind is Compression.LZ4:
            import lz4.block

            out = lz4.block.decompress(data, uncompressed_size=size)
            return out
        import lzo

        out = lzo.decompress(data, False, size)
        return out


def make_compressor(
    kind: Compression,
    *,
    level: int | None,
    block_size: int,
    gzip_window: int = 15,
    xz_filters: tuple[str, ...] = (),
    lz4_hc: bool = False,
) -> Compressor:
    """Build the compressor for ``kind``; raise UsageError for impossible settings and
    MissingExtraError when the Python package for it is not installed."""
    low, high, default = LEVELS[kind]
    if level is None:
        level = default
    if not low <= level <= high:
        raise UsageError(
            f"{kind.value} level {level} is outside {low}..{high}",
            hint=f"the default for {kind.value} is {default}",
        )
    if kind is Compression.GZIP:
        return _gzip(level, gzip_window)
    if kind is Compression.XZ:
        return _xz(level, block_size, xz_filters)
    if kind is Compression.ZSTD:
        return _zstd(level)
    if kind is Compression.LZ4:
        return _lz4(level, lz4_hc)
    return _lzo(level)


def _gzip(level: int, window: int) -> Compressor:
    if not 8 <= window <= 15:
        raise UsageError(f"gzip window {window} is outside 8..15")
    if window == 15:
        import deflate

        def compress(data: bytes) -> bytes:
            # libdeflate hands back a bytearray; callers keep and hash bytes.
            return bytes(deflate.zlib_compress(data, level))

    else:
        import zlib

        def compress(data: bytes) -> bytes:
            return zlib.compress(data, level, window)

    # "compression level ... Defaults to 9", "window size ... Defaults to 15",
    # strategies 0 = "the default strategy is implicitly used".
    options = None if (level, window) == (9, 15) else struct.pack("<IHH", level, window, 0)
    return Compressor(Compression.GZIP, CompressorId.GZIP, compress, options)


def _xz(level: int, block_size: int, filters: tuple[str, ...]) -> Compressor:
    mask = 0
    for name in filters:
        if name not in XZ_FILTERS:
            raise UsageError(
                f"unknown xz filter {name!r}",
                hint="squashfs xz supports: " + ", ".join(XZ_FILTERS),
            )
        mask |= XZ_FILTERS[name][0]
    lzma2 = {"id": lzma.FILTER_LZMA2, "preset": level, "dict_size": block_size}
    chains: list[list[dict[str, Any]]] = [[lzma2]]
    chains += [[{"id": bcj}, lzma2] for bit, bcj in XZ_FILTERS.values() if mask & bit]

    def compress(data: bytes) -> bytes:
        best: bytes | None = None
        for chain in chains:
            out = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=chain)
            if best is None or len(out) < len(best):
                best = out
        assert best is not None
        return best

    # "dictionary size ... must be either a power of 2, or the sum of two consecutive
    # powers of 2"; the default (options absent) is the block size and no filters.
    options = None if mask == 0 else struct.pack("<II", block_size, mask)
    return Compressor(Compression.XZ, CompressorId.XZ, compress, options)


def _zstd(level: int) -> Compressor:
    compress = _zstd_in_one_call(level) or _zstd_in_parts(level)
    # "compression level ... The default value is 15."
    options = None if level == 15 else struct.pack("<I", level)
    return Compressor(Compression.ZSTD, CompressorId.ZSTD, compress, options)


def _zstd_in_parts(level: int) -> Callable[[bytes], bytes]:
    """Compress a block a part at a time through python-zstandard's public API: a frame
    with one zstd block per part, two C calls per part."""
    import zstandard

    local = threading.local()
    end_block = zstandard.COMPRESSOBJ_FLUSH_BLOCK
    part = ZSTD_PART

    def compress(data: bytes) -> bytes:
        # A ZstdCompressor must not be shared between threads.
        cctx = getattr(local, "cctx", None)
        if cctx is None:
            cctx = local.cctx = zstandard.ZstdCompressor(level=level)
        size = len(data)
        if size <= part:
            out: bytes = cctx.compress(data)
            return out
        # One frame, one zstd block (with its own entropy tables) per part.
        stream = cctx.compressobj(size=size)
        view = memoryview(data)
        pieces = []
        last = (size - 1) // part * part
        for start in range(0, last, part):
            pieces.append(stream.compress(view[start:start + part]))
            pieces.append(stream.flush(end_block))
        pieces.append(stream.compress(view[last:]))
        pieces.append(stream.flush())
        return b"".join(pieces)

    return compress


#: libzstd 1.5.6 added ZSTD_c_maxBlockSize.
_MAX_BLOCK_SIZE_SINCE = 10506


def _zstd_in_one_call(level: int) -> Callable[[bytes], bytes] | None:
    """The same bytes as :func:`_zstd_in_parts` in one C call per block: libzstd's
    ``maxBlockSize`` ends a zstd block after every part, as the flushes there do.

    A compressing thread takes the GIL back after each C call, and each time it can
    hold up the thread that parses the layers: eight calls per block become one
    (figures: ``bench/README.md``).

    python-zstandard exposes ``maxBlockSize`` only in the libzstd bindings of its cffi
    backend (``zstandard._cffi``, shipped with its C backend; cffi releases the GIL
    around each call). ``None`` when those cannot be loaded, lack the parameter, or
    refuse it (a libzstd older than 1.5.6); the caller then compresses in parts.
    """
    try:
        from zstandard._cffi import ffi, lib

        if lib.ZSTD_versionNumber() < _MAX_BLOCK_SIZE_SINCE:
            return None
        params = ((lib.ZSTD_c_compressionLevel, level), (lib.ZSTD_c_maxBlockSize, ZSTD_PART))
    except (ImportError, AttributeError):  # no bindings, or bindings without the parameter
        return None

    def context() -> Any:
        cctx = ffi.gc(lib.ZSTD_createCCtx(), lib.ZSTD_freeCCtx)
        for param, value in params:
            if cctx == ffi.NULL or lib.ZSTD_isError(lib.ZSTD_CCtx_setParameter(cctx, param, value)):
                return None
        return cctx

    if context() is None:  # settle it here, not in a compressing thread
        return None
    local = threading.local()

    def compress(data: bytes) -> bytes:
        # A compression context must not be shared between threads.
        cctx = getattr(local, "cctx", None)
        if cctx is None:
            cctx = local.cctx = context()
            local.out = ffi.new("char[]", 0)
            if cctx is None:
                raise SquashfsError("zstd could not make a compression context")
        room = lib.ZSTD_compressBound(len(data))
        if len(local.out) < room:
            local.out = ffi.new("char[]", room)
        n = lib.ZSTD_compress2(cctx, local.out, room, ffi.from_buffer(data), len(data))
        if lib.ZSTD_isError(n):
            name = ffi.string(lib.ZSTD_getErrorName(n)).decode()
            raise SquashfsError(f"zstd could not compress a block: {name}")
        out: bytes = ffi.buffer(local.out, n)[:]
        return out

    return compress


def _lz4(level: int, hc: bool) -> Compressor:
    import lz4.block

    def compress(data: bytes) -> bytes:
        if hc:
            out: bytes = lz4.block.compress(
                data, mode="high_compression", compression=level, store_size=False
            )
        else:
            out = lz4.block.compress(data, store_size=False)
        return out

    # "For LZ4, the compressor options always have to be present": Version 1 (legacy
    # block format), Flags 0x1 = "Use LZ4 High Compression(HC) mode".
    options = struct.pack("<II", 1, 1 if hc else 0)
    return Compressor(Compression.LZ4, CompressorId.LZ4, compress, options)


def _lzo(level: int) -> Compressor:
    try:
        import lzo
    except ImportError as e:
        raise MissingExtraError(
            "lzo compression needs the python-lzo package",
            hint="pip install ocisquash[lzo]",
        ) from e
    py_level = 1 if level < 9 else 9

    def compress(data: bytes) -> bytes:
        out: bytes = lzo.compress(data, py_level, False)
        return out

    # algorithm 0 = lzo1x_1 (level MUST be 0), 4 = lzo1x_999 (default, level 8): python-lzo's
    # level 9 is lzo1x_999 at its default level 8, i.e. the format's default settings.
    options = None if py_level == 9 else struct.pack("<II", 0, 0)
    return Compressor(Compression.LZO, CompressorId.LZO, compress, options)
