"""Read one layer blob: sniff its compression, decompress, verify, yield normalised
tar entries.

The modules, in the order a layer's bytes pass through them:

* ``compression``: the decoder for the compression ``ocisquash.sniff`` reads from
  the blob's first bytes (never the media type); ``zstd``: the zstd decoder, frame
  by frame;
* ``decode``: the decoding thread: reads the blob, decompresses, hashes every
  uncompressed byte for the diff_id check, holds the ratio limit;
* ``tar``: the tar parser (ustar, GNU, PAX), bounded against hostile headers;
* ``entries``: a member as a normalised :class:`TarEntry`.

Every byte of the uncompressed tar is hashed and compared with the config's
``diff_id`` when the stream ends, and the stream is drained to its real end even
when the tar parser stops at the end-of-archive blocks, so the check always runs;
the compressed blob's digest is checked the same way by the source's stream. A plain
tar whose blob digest is its diff_id (every layer of a ``docker save`` archive) is
hashed once: the blob's check at the end is then the diff_id check, over the same
bytes.

The limits and the fidelity record live in ``ocisquash.rules``; they are re-exported
here for the callers that read layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import BinaryIO

from ..digest import Digest, VerifyingReader
from ..errors import DigestMismatchError, UnsupportedError
from ..model import LAYER_TYPES
from ..rules import DEFAULT_LIMITS, Fidelity, FidelityIssue, Limits
from ..sources.base import Layer
from .compression import SNIFF_BYTES, Compression, PeekReader, layer_decoder, sniff_compression
from .decode import TarStream
from .entries import EntryKind, Member, TarEntry, normalize_path
from .tar import members


def check_media_type(media_type: str, *, context: str = "") -> None:
    """Raise ``UnsupportedError`` unless ``media_type`` is a tar layer type ocisquash reads."""
    if media_type in LAYER_TYPES:
        return
    raise UnsupportedError(
        f"unsupported layer media type {media_type!r}",
        context=context,
        hint="ocisquash reads OCI tar, tar+gzip and tar+zstd layers and Docker tar.gzip layers",
    )


def layer_context(layer: Layer, index: int | None = None) -> str:
    d = layer.descriptor.digest
    where = f"layer {d.algorithm}:{d.hex[:12]}…"
    return where if index is None else f"{where} (#{index + 1})"


def read_layer(layer: Layer, *, limits: Limits = DEFAULT_LIMITS, fidelity: Fidelity | None = None,
               index: int | None = None, verify_diff_id: bool = True,
               small_files: int = -1,
               progress: Callable[[TarStream], None] | None = None) -> Iterator[Member]:
    """Yield ``(entry, data)`` for each member of ``layer``; ``data`` only for files.

    ``data`` is a stream of exactly ``entry.size`` bytes, valid until the next item
    is requested; unread data is skipped. A file (not sparse) of at most
    ``small_files`` bytes comes as ``bytes`` instead. When the generator is exhausted
    the whole blob has been read and both digests checked. Errors name the layer.
    ``progress`` is given the layer's :class:`TarStream` before its first entry, to ask
    how much of the blob the entries so far took (``TarStream.compressed``).
    """
    context = layer_context(layer, index)
    check_media_type(layer.descriptor.media_type, context=context)
    fid = fidelity if fidelity is not None else Fidelity()
    raw_stream = layer.open()
    try:
        yield from _read(raw_stream, layer.diff_id if verify_diff_id else None, limits, fid,
                         context, small_files, progress)
    finally:
        close = getattr(raw_stream, "close", None)
        if close is not None:
            close()


def _read(raw_stream: BinaryIO, diff_id: Digest | None, limits: Limits, fid: Fidelity,
          context: str, small: int,
          progress: Callable[[TarStream], None] | None = None) -> Iterator[Member]:
    raw = PeekReader(raw_stream)
    compression = sniff_compression(raw.peek(SNIFF_BYTES))
    if compression not in ("gzip", "zstd", "tar"):
        raise UnsupportedError(f"the layer is {compression}-compressed", context=context,
                               hint="layers may be plain, gzip or zstd tars")
    inner = layer_decoder(raw, compression)
    if inner is raw and isinstance(raw_stream, VerifyingReader) and raw_stream.digest == diff_id:
        # The blob is the uncompressed tar, and the stream checks its digest at the
        # end: that check is the diff_id check, over the same bytes.
        diff_id = None
    stream = TarStream(inner, raw, diff_id.algorithm if diff_id else None, compression,
                       limits, context, getattr(raw_stream, "abort", None),
                       marks=progress is not None)
    if progress is not None:
        progress(stream)
    try:
        yield from members(stream, limits, fid, context, small)
        stream.drain()
    finally:
        stream.close()  # before the decoder it uses is closed
        if inner is not raw:
            inner.close()
    if diff_id is not None and stream.hash is not None and stream.hash.hexdigest() != diff_id.hex:
        raise DigestMismatchError(
            f"uncompressed layer has digest {diff_id.algorithm}:{stream.hash.hexdigest()[:12]}…, "
            f"the image config says {diff_id}",
            context=context,
            hint="the layer blob does not belong to this image config",
        )


__all__ = [
    "Compression",
    "EntryKind",
    "Fidelity",
    "FidelityIssue",
    "Limits",
    "Member",
    "TarEntry",
    "TarStream",
    "check_media_type",
    "layer_context",
    "normalize_path",
    "read_layer",
    "sniff_compression",
]
