"""Decode a zstd layer frame by frame, so that a stream cut at a frame boundary or
inside a frame is noticed."""

from __future__ import annotations

from typing import Any

from .compression import PeekReader

#: compressed bytes handed to the zstd decoder at once: a zstd frame expands at most
#: about 32000×, so one call never produces more than ~64 MiB.
_ZSTD_INPUT = 2048


class ZstdReader:
    """Decode a sequence of zstd frames; a stream that ends inside a frame is an error."""

    def __init__(self, raw: PeekReader) -> None:
        import zstandard

        self._zstd = zstandard
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._obj: Any = None
        self._pending = b""
        self._out = b""
        #: how much of ``_out`` was handed out: slicing off the rest on every read would
        #: copy up to 64 MiB per call (quadratic on highly compressible layers)
        self._pos = 0
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes, fewer only at the end. Each fill decodes only _ZSTD_INPUT
        bytes (a few KiB of output on ordinary layers), and handing those on one by one
        made a zstd layer cost more than a gzip one: every piece went through the
        decoding thread's hashing and queue and the parser's buffer on its own."""
        if n is None or n < 0:
            n = 1 << 62
        parts = []
        want = n
        while want > 0:
            if self._pos >= len(self._out):
                if self._eof:
                    break
                self._fill()
                continue
            if self._pos == 0 and len(self._out) <= want:
                piece = self._out
            else:
                piece = self._out[self._pos:self._pos + want]
            self._pos += len(piece)
            want -= len(piece)
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _fill(self) -> None:
        data = self._pending or self._raw.read(_ZSTD_INPUT)
        self._pending = b""
        if not data:
            if self._obj is not None:
                raise EOFError("zstd stream truncated inside a frame")
            self._eof = True
            return
        if self._obj is None:
            self._obj = self._dctx.decompressobj()
        self._out = self._obj.decompress(data)
        self._pos = 0
        if self._obj.eof:
            self._pending = self._obj.unused_data
            self._obj = None

    def close(self) -> None:
        pass
