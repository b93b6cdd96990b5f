"""A layer's decoder, chosen by ``ocisquash.sniff`` from the blob's first bytes.

Layers may be gzip, zstd or plain (the image spec's types). gzip is decoded with
python-isal, the fastest of the installed decoders (``bench/bench_gunzip.py``; figures:
``bench/README.md``); zstd frame by frame (``zstd.ZstdReader``).
"""

from __future__ import annotations

from typing import Any, BinaryIO

from ..sniff import SNIFF_BYTES, Compression, sniff_compression

__all__ = ["SNIFF_BYTES", "Compression", "PeekReader", "layer_decoder", "sniff_compression"]


class PeekReader:
    """A reader that hands back a few bytes it has already read (for magic sniffing)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._head = b""
        self.count = 0

    def peek(self, n: int) -> bytes:
        while len(self._head) < n:
            more = self._raw.read(n - len(self._head))
            if not more:
                break
            self._head += more
        return self._head[:n]

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0 or n >= len(self._head):
                out, self._head = self._head, b""
                if n is not None and n >= 0 and n > len(out):
                    out += self._raw.read(n - len(out))
            else:
                out, self._head = self._head[:n], self._head[n:]
        else:
            out = self._raw.read(n)
        if n is not None and 0 < len(out) < n:
            # Wait for all n bytes (or the end): how much of the blob is read for a given
            # stretch of the tar then depends on the blob alone, not on how its bytes
            # arrived (``TarStream.compressed``).
            parts = [out]
            have = len(out)
            while have < n:
                more = self._raw.read(n - have)
                if not more:
                    break
                parts.append(more)
                have += len(more)
            out = b"".join(parts)
        self.count += len(out)
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False


def layer_decoder(raw: PeekReader, compression: Compression) -> Any:
    """A reader of the uncompressed bytes of a layer read through ``raw``: ``raw``
    itself for a plain tar."""
    if compression == "gzip":
        from isal import igzip

        return igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[no-untyped-call]
    if compression == "zstd":
        from .zstd import ZstdReader

        return ZstdReader(raw)
    return raw
