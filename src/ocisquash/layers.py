"""Read one layer blob: sniff its compression, decompress, verify, yield normalised tar entries.

The compression is taken from the blob's first bytes, never from the media type
(registries mislabel): gzip ``1f 8b``, zstd ``28 b5 2f fd``, anything else is read as
plain tar. gzip is decoded with python-isal's threaded reader, the fastest of the
installed decoders (``bench/bench_gunzip.py``: about 2.5× the standard library), and
runs beside the tar parser in its own thread; zstd with ``zstandard``, frame by frame,
so that a stream cut at a frame boundary or inside a frame is noticed.

Every byte of the uncompressed tar is hashed and compared with the config's
``diff_id`` when the stream ends, and the stream is drained to its real end even
when the tar parser stops at the end-of-archive blocks, so the check always runs;
the compressed blob's digest is checked the same way by the source's stream.

Entries come out as frozen :class:`TarEntry` values with paths as bytes relative to
the image root (``./``, ``/`` and ``//`` removed; a ``..`` component is refused with
``UnsafeLayerError``), permission bits only in ``mode``, and the extended attributes
squashfs can hold. What is dropped or changed on the way (other xattr namespaces,
out-of-range times and ids, entry types tar cannot express) is recorded in a
:class:`Fidelity` report instead of passing silently.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import tarfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, Self, cast

from .digest import Digest
from .entry import PERMISSION_MASK, EntryMeta
from .errors import (
    LayerError,
    LimitExceededError,
    OcisquashError,
    UnsafeLayerError,
    UnsupportedError,
)
from .model import LAYER_TYPES
from .sources.base import Layer

Compression = Literal["gzip", "zstd", "tar"]
EntryKind = Literal["file", "dir", "symlink", "hardlink", "char", "block", "fifo"]

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

#: xattr namespaces a squashfs image can carry; others are dropped and reported.
KEPT_XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")
#: the largest mtime squashfs stores (an unsigned 32-bit field).
MAX_MTIME = 2**32 - 1
#: the id used for an owner that does not fit 32 bits (the kernel's overflow id).
OVERFLOW_ID = 65534

_CHUNK = 1 << 20
#: compressed bytes handed to the zstd decoder at once: a zstd frame expands at most
#: about 32000×, so one call never produces more than ~64 MiB.
_ZSTD_INPUT = 2048


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds against hostile layers; the defaults are far above what real images use."""

    #: longest path, in bytes (Linux ``PATH_MAX``)
    max_path_length: int = 4096
    #: tar entries over all layers of one image
    max_entries: int = 10_000_000
    #: size of one extended attribute value (Linux ``XATTR_SIZE_MAX``)
    max_xattr_size: int = 65536
    #: uncompressed bytes per compressed byte of one layer; checked once the layer
    #: has produced ``ratio_floor`` bytes, so small files of zeros never trip it
    max_ratio: int = 10_000
    ratio_floor: int = 1 << 30
    #: layers of one image (Docker refuses more than 127)
    max_layers: int = 1000


@dataclass(frozen=True, slots=True)
class FidelityIssue:
    """Something in the layers the output could not hold exactly."""

    #: short stable name, e.g. ``xattr-dropped``, ``mtime-clamped``
    kind: str
    #: how many entries were affected
    count: int
    #: the first few paths affected
    examples: tuple[bytes, ...]
    #: what was done about it, in words
    detail: str


_FIDELITY_DETAIL = {
    "xattr-dropped": "extended attributes outside user./trusted./security. were dropped",
    "mtime-clamped": "modification times outside 0..2^32-1 were clamped",
    "id-clamped": f"owner ids above 2^32-1 were replaced by {OVERFLOW_ID}",
    "entry-type-skipped": "tar entries of a type a filesystem cannot hold were skipped",
    "symlink-replaced-by-directory": (
        "a lower layer's non-directory stood where an upper layer put entries beneath it; "
        "the directory wins (Docker would write through a symlink instead)"
    ),
}


class Fidelity:
    """Collects :class:`FidelityIssue` records while layers are read."""

    def __init__(self, max_examples: int = 5) -> None:
        self._counts: dict[str, int] = {}
        self._examples: dict[str, list[bytes]] = {}
        self._max = max_examples

    def note(self, kind: str, path: bytes) -> None:
        self._counts[kind] = self._counts.get(kind, 0) + 1
        ex = self._examples.setdefault(kind, [])
        if len(ex) < self._max:
            ex.append(path)

    def issues(self) -> tuple[FidelityIssue, ...]:
        return tuple(
            FidelityIssue(k, n, tuple(self._examples[k]), _FIDELITY_DETAIL.get(k, k))
            for k, n in sorted(self._counts.items())
        )


@dataclass(frozen=True, slots=True)
class TarEntry:
    """One normalised tar member.

    ``path`` is relative to the image root (root is ``b""``). ``linkname`` is the
    symlink target as stored, or a hard link's target path normalised like ``path``.
    ``size`` is the file's full (hole-expanded) length; 0 for non-files. ``index`` is
    the member's position in its layer, so a second pass can find it again.
    """

    path: bytes
    kind: EntryKind
    meta: EntryMeta
    size: int = 0
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    index: int = 0


def check_media_type(media_type: str, *, context: str = "") -> None:
    """Raise ``UnsupportedError`` unless ``media_type`` is a tar layer type ocisquash reads."""
    if media_type in LAYER_TYPES:
        return
    raise UnsupportedError(
        f"unsupported layer media type {media_type!r}",
        context=context,
        hint="ocisquash reads OCI tar, tar+gzip and tar+zstd layers and Docker tar.gzip layers",
    )


def sniff_compression(head: bytes) -> Compression:
    """The compression of a stream starting with ``head`` (at least 4 bytes when available)."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "tar"


def normalize_path(raw: bytes, *, context: str = "") -> bytes:
    """``raw`` relative to the image root: no leading ``/`` or ``./``, no empty or ``.``
    components; a ``..`` component or a NUL byte raises ``UnsafeLayerError``."""
    if b"\0" in raw:
        raise UnsafeLayerError(f"path {raw!r} contains a NUL byte", context=context)
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise UnsafeLayerError(
            f"path {raw.decode('utf-8', 'backslashreplace')!r} leaves the image root with '..'",
            context=context,
            hint="the layer is malformed or hostile; ocisquash refuses to apply it",
        )
    return b"/".join(parts)


def _enc(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


class _PeekReader:
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


class _ZstdReader:
    """Decode a sequence of zstd frames; a stream that ends inside a frame is an error."""

    def __init__(self, raw: _PeekReader) -> None:
        import zstandard

        self._zstd = zstandard
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._obj: Any = None
        self._pending = b""
        self._out = b""
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 62
        while not self._out and not self._eof:
            self._fill()
        out, self._out = self._out[:n], self._out[n:]
        return out

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
        if self._obj.eof:
            self._pending = self._obj.unused_data
            self._obj = None

    def close(self) -> None:
        pass


class _Hashing:
    """The uncompressed tar stream: hashes, counts, enforces the ratio limit, maps errors."""

    def __init__(self, inner: Any, raw: _PeekReader, algorithm: str, compression: Compression,
                 limits: Limits, context: str) -> None:
        self._inner = inner
        self._raw = raw
        self.hash = hashlib.new(algorithm)
        self.count = 0
        self.eof = False
        self._compression = compression
        self._limits = limits
        self._context = context

    def read(self, n: int = -1) -> bytes:
        if self.eof:
            return b""
        try:
            data: bytes = self._inner.read(n)
        except OcisquashError:
            raise
        except EOFError:
            raise LayerError(f"{self._compression} stream truncated", context=self._context) from None
        except Exception as e:
            raise LayerError(f"invalid {self._compression} stream: {e}", context=self._context) from None
        if not data:
            self.eof = True
            return b""
        self.hash.update(data)
        self.count += len(data)
        lim = self._limits
        if self.count > lim.ratio_floor and self.count > lim.max_ratio * max(self._raw.count, 1):
            raise LimitExceededError(
                f"layer expands more than {lim.max_ratio}× ({self._raw.count} compressed bytes "
                f"gave {self.count})",
                context=self._context,
                hint="a decompression bomb? raise Limits.max_ratio if the image is genuine",
            )
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


# tarfile's private header errors (stable since Python 3.2).
_EOF_HEADER: type[Exception] = tarfile.EOFHeaderError  # type: ignore[attr-defined]
_EMPTY_HEADER: type[Exception] = tarfile.EmptyHeaderError  # type: ignore[attr-defined]
_TRUNCATED_HEADER: type[Exception] = tarfile.TruncatedHeaderError  # type: ignore[attr-defined]


class _StopRecorder(tarfile.TarInfo):
    """TarInfo that tells the reader why ``tarfile`` stopped: tarfile ends the archive
    quietly at any bad header, and only the zero block is a real end."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.HeaderError as e:
            tarfile_._ocisquash_stop = e  # type: ignore[attr-defined]
            raise


class _MemberData:
    """A regular file's data, valid until the next entry; tar errors become ``LayerError``."""

    def __init__(self, inner: BinaryIO, size: int, context: str) -> None:
        self._inner = inner
        self.size = size
        self._left = size
        self._context = context

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._left
        n = min(n, self._left)
        if n == 0:
            return b""
        try:
            data = self._inner.read(n)
        except OcisquashError:
            raise
        except Exception as e:
            raise LayerError(f"tar data unreadable: {e}", context=self._context) from None
        if not data:
            raise LayerError("tar stream truncated inside a file", context=self._context)
        self._left -= len(data)
        return data

    def readable(self) -> bool:
        return True


_TYPES: dict[bytes, EntryKind] = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.GNUTYPE_SPARSE: "file",
    tarfile.LNKTYPE: "hardlink",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.DIRTYPE: "dir",
    tarfile.FIFOTYPE: "fifo",
}

Member = tuple[TarEntry, BinaryIO | None]


def layer_context(layer: Layer, index: int | None = None) -> str:
    d = layer.descriptor.digest
    where = f"layer {d.algorithm}:{d.hex[:12]}…"
    return where if index is None else f"{where} (#{index + 1})"


def read_layer(layer: Layer, *, limits: Limits = Limits(), fidelity: Fidelity | None = None,
               index: int | None = None, verify_diff_id: bool = True) -> Iterator[Member]:
    """Yield ``(entry, data)`` for each member of ``layer``; ``data`` only for files.

    ``data`` is a stream of exactly ``entry.size`` bytes, valid until the next item
    is requested; unread data is skipped. When the generator is exhausted the whole
    blob has been read and both digests checked. Errors name the layer.
    """
    context = layer_context(layer, index)
    check_media_type(layer.descriptor.media_type, context=context)
    fid = fidelity if fidelity is not None else Fidelity()
    raw_stream = layer.open()
    try:
        yield from _read(raw_stream, layer.diff_id if verify_diff_id else None, limits, fid,
                         context)
    finally:
        close = getattr(raw_stream, "close", None)
        if close is not None:
            close()


def _read(raw_stream: BinaryIO, diff_id: Digest | None, limits: Limits, fid: Fidelity,
          context: str) -> Iterator[Member]:
    raw = _PeekReader(raw_stream)
    compression = sniff_compression(raw.peek(4))
    inner: Any
    if compression == "gzip":
        from isal import igzip_threaded

        inner = igzip_threaded.open(raw, "rb", threads=1)  # type: ignore[no-untyped-call]
    elif compression == "zstd":
        inner = _ZstdReader(raw)
    else:
        inner = raw
    stream = _Hashing(inner, raw, diff_id.algorithm if diff_id else "sha256", compression,
                      limits, context)
    try:
        yield from _members(stream, limits, fid, context)
        stream.drain()
        while raw.read(_CHUNK):  # the source's stream checks the blob digest at its EOF
            pass
    finally:
        if inner is not raw:
            inner.close()
    if diff_id is not None and stream.hash.hexdigest() != diff_id.hex:
        from .errors import DigestMismatchError

        raise DigestMismatchError(
            f"uncompressed layer has digest {diff_id.algorithm}:{stream.hash.hexdigest()[:12]}…, "
            f"the image config says {diff_id}",
            context=context,
            hint="the layer blob does not belong to this image config",
        )


def _members(stream: _Hashing, limits: Limits, fid: Fidelity, context: str) -> Iterator[Member]:
    first = stream.read(tarfile.BLOCKSIZE)
    if not first:
        return  # an empty blob is an empty layer
    buffered = _Prefixed(first, stream)
    try:
        tf = tarfile.open(fileobj=buffered, mode="r|", bufsize=_CHUNK, encoding="utf-8",  # type: ignore[call-overload]  # noqa: SIM115
                          errors="surrogateescape", tarinfo=_StopRecorder)
    except OcisquashError:
        raise
    except Exception as e:
        raise LayerError(f"not a tar stream: {e}", context=context) from None
    index = 0
    while True:
        try:
            ti = tf.next()
        except OcisquashError:
            raise
        except Exception as e:
            raise LayerError(f"invalid tar header: {e}", context=context) from None
        tf.members.clear()  # stream mode keeps every header otherwise
        if ti is None:
            break
        entry = _entry(ti, index, limits, fid, context)
        index += 1
        if entry is None:
            continue
        if entry.kind == "file":
            fobj = tf.extractfile(ti)
            assert fobj is not None
            yield entry, cast(BinaryIO, _MemberData(fobj, entry.size,
                                                    f"{context}: {_show(entry.path)}"))
        else:
            yield entry, None
    stop = getattr(tf, "_ocisquash_stop", None)
    if isinstance(stop, _EOF_HEADER):
        return
    if isinstance(stop, _EMPTY_HEADER):
        # The stream ended exactly at a header boundary without the two zero blocks:
        # tolerated, like Go's archive/tar; anything shorter is truncation.
        stream.drain()
        if buffered.count >= tf.offset:
            return
    raise LayerError(
        "tar stream truncated" if isinstance(stop, (_TRUNCATED_HEADER, _EMPTY_HEADER))
        else f"invalid tar header at offset {tf.offset}: {stop}",
        context=context,
    )


class _Prefixed:
    """``stream`` with ``head`` put back in front; counts what tarfile consumed."""

    def __init__(self, head: bytes, stream: _Hashing) -> None:
        self._head = head
        self._stream = stream
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0 or n >= len(self._head):
                out, self._head = self._head, b""
                if n is not None and n > len(out):
                    out += self._stream.read(n - len(out))
                elif n is None or n < 0:
                    out += self._stream.read(-1)
            else:
                out, self._head = self._head[:n], self._head[n:]
        else:
            out = self._stream.read(n)
        self.count += len(out)
        return out


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace") or "/"


def _entry(ti: tarfile.TarInfo, index: int, limits: Limits, fid: Fidelity,
           context: str) -> TarEntry | None:
    raw_path = _enc(ti.name)
    if len(raw_path) > limits.max_path_length:
        raise LimitExceededError(
            f"path of {len(raw_path)} bytes is longer than {limits.max_path_length}",
            context=context,
        )
    path = normalize_path(raw_path, context=context)
    kind = _TYPES.get(ti.type)
    if kind is None:
        fid.note("entry-type-skipped", path)
        return None
    mtime = int(ti.mtime)
    if not 0 <= mtime <= MAX_MTIME:
        fid.note("mtime-clamped", path)
        mtime = min(max(mtime, 0), MAX_MTIME)
    uid, gid = ti.uid, ti.gid
    if not (0 <= uid < 2**32 and 0 <= gid < 2**32):
        fid.note("id-clamped", path)
        uid = uid if 0 <= uid < 2**32 else OVERFLOW_ID
        gid = gid if 0 <= gid < 2**32 else OVERFLOW_ID
    xattrs = _xattrs(ti, path, limits, fid, context) if ti.pax_headers else ()
    meta = EntryMeta(ti.mode & PERMISSION_MASK, uid, gid, mtime, xattrs)
    linkname = b""
    if kind == "symlink":
        linkname = _enc(ti.linkname)
        if b"\0" in linkname or not linkname:
            raise LayerError(f"symlink {_show(path)} has an invalid target", context=context)
        if len(linkname) > limits.max_path_length:
            raise LimitExceededError(
                f"symlink target of {len(linkname)} bytes is longer than "
                f"{limits.max_path_length}", context=context)
    elif kind == "hardlink":
        linkname = normalize_path(_enc(ti.linkname), context=context)
        if not linkname:
            raise UnsafeLayerError(f"hard link {_show(path)} points at the root", context=context)
    size = ti.size if kind == "file" else 0
    if size < 0:
        raise LayerError(f"entry {_show(path)} has a negative size", context=context)
    return TarEntry(path, kind, meta, size, linkname, ti.devmajor, ti.devminor, index)


def _xattrs(ti: tarfile.TarInfo, path: bytes, limits: Limits, fid: Fidelity,
            context: str) -> tuple[tuple[bytes, bytes], ...]:
    found: dict[bytes, bytes] = {}
    for key, value in ti.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = _enc(key[len("SCHILY.xattr."):])
            data = _enc(value)
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote_to_bytes(key[len("LIBARCHIVE.xattr."):])
            try:
                data = base64.b64decode(_enc(value) + b"===")
            except (binascii.Error, ValueError):
                raise LayerError(f"entry {_show(path)} has an invalid base64 xattr {key!r}",
                                 context=context) from None
            if name in found:
                continue  # SCHILY and LIBARCHIVE spell the same attribute: keep one
        else:
            continue
        if len(data) > limits.max_xattr_size:
            raise LimitExceededError(
                f"xattr {name!r} of {_show(path)} is {len(data)} bytes, more than "
                f"{limits.max_xattr_size}", context=context)
        if not name.startswith(KEPT_XATTR_NAMESPACES) or b"\0" in name:
            fid.note("xattr-dropped", path)
            continue
        found[name] = data
    return tuple(sorted(found.items()))


__all__ = [
    "EntryKind",
    "Fidelity",
    "FidelityIssue",
    "Limits",
    "Member",
    "TarEntry",
    "check_media_type",
    "normalize_path",
    "read_layer",
    "sniff_compression",
]
