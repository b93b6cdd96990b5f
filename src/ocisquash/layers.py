"""Read one layer blob: sniff its compression, decompress, verify, yield normalised tar entries.

The compression is taken from the blob's first bytes, never from the media type
(registries mislabel): gzip ``1f 8b``, zstd ``28 b5 2f fd``, anything else is read as
plain tar. gzip is decoded with python-isal, the fastest of the installed decoders
(``bench/bench_gunzip.py``: about 2.5× the standard library); zstd with ``zstandard``,
frame by frame, so that a stream cut at a frame boundary or inside a frame is noticed.
Reading, decoding and hashing run on a thread of their own, beside the tar parser
(:class:`_TarStream`).

Every byte of the uncompressed tar is hashed and compared with the config's
``diff_id`` when the stream ends, and the stream is drained to its real end even
when the tar parser stops at the end-of-archive blocks, so the check always runs;
the compressed blob's digest is checked the same way by the source's stream. A plain
tar whose blob digest is its diff_id (every layer of a ``docker save`` archive) is
hashed once: the blob's check at the end is then the diff_id check, over the same
bytes.

The tar stream is parsed here rather than with ``tarfile``: its stream mode copies its
whole read buffer on every header read, and measured 5× the CPU time of this parser
on a layer of 50 000 small files. Supported: ustar (with the prefix field, joined
also under GNU magic where Go's archive/tar joins it, as layers written by Go 1.7
and older need), GNU
(long names and links ``L``/``K``, base-256 numbers, old sparse ``S`` entries), PAX
(per-entry and global headers: path, linkpath, size, uid, gid, fractional mtime,
``SCHILY.xattr.*``, base64 ``LIBARCHIVE.xattr.*``, GNU sparse formats 0.0, 0.1 and 1.0),
and old V7 directories. Names stay bytes, whatever their encoding. Sparse files come
out with their holes filled with zeros. A bad checksum, a cut header or a cut file is
a ``LayerError``; a stream that ends on a header boundary without the end-of-archive
blocks is accepted, as Go's archive/tar does.

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
import math
import queue
import struct
import threading
import urllib.parse
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, NamedTuple, cast
from zlib import adler32

from .digest import Digest, HashBehind, VerifyingReader
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
#: the longest file name Linux allows (``NAME_MAX``): squashfs could store 256 bytes, but
#: neither the kernel nor unsquashfs could use such a name
MAX_NAME = 255
#: the longest symlink target Linux allows: ``PATH_MAX`` less its terminating NUL
MAX_SYMLINK_TARGET = 4095

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
    #: size of one file, holes of a sparse file included (1 TiB)
    max_file_size: int = 1 << 40
    #: data regions in one sparse file's map (each costs 16 bytes while the file is read)
    max_sparse_regions: int = 1 << 20


@dataclass(frozen=True, slots=True)
class FidelityIssue:
    """Something in the layers the output could not hold exactly."""

    #: short stable name, e.g. ``xattr-dropped``, ``mtime-clamped``
    kind: str
    #: how many times it happened (once per entry and kind)
    count: int
    #: the first few paths affected
    examples: tuple[bytes, ...]
    #: what was done about it, in words
    detail: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record (paths shown as text)."""
        return {"kind": self.kind, "count": self.count, "detail": self.detail,
                "examples": [e.decode("utf-8", "replace") for e in self.examples]}


_FIDELITY_DETAIL = {
    "xattr-dropped": "extended attributes outside user./trusted./security. were dropped",
    "mtime-clamped": "modification times outside 0..2^32-1 were clamped",
    "mtime-subsecond-truncated": "sub-second modification times were truncated to seconds",
    "id-clamped": f"owner ids above 2^32-1 were replaced by {OVERFLOW_ID}",
    "same-layer-replacement-ignored": (
        "a layer replaced its own directory by a non-directory under an upper layer's "
        "directory; the entries it had put in it were kept"
    ),
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
        if len(ex) < self._max and path not in ex:
            ex.append(path)

    def issues(self) -> tuple[FidelityIssue, ...]:
        return tuple(
            FidelityIssue(k, n, tuple(self._examples[k]), _FIDELITY_DETAIL.get(k, k))
            for k, n in sorted(self._counts.items())
        )


class TarEntry(NamedTuple):
    """One normalised tar member.

    ``path`` is relative to the image root (root is ``b""``). ``linkname`` is the
    symlink target as stored, or a hard link's target path normalised like ``path``.
    ``size`` is the file's full (hole-expanded) length; 0 for non-files. ``position``
    is the member's index in its layer, so a second pass can find it again.

    A named tuple, not a frozen dataclass: one is made per tar member, and a frozen
    dataclass took 2.4 µs to build against 0.55 µs.
    """

    path: bytes
    kind: EntryKind
    meta: EntryMeta
    size: int = 0
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    position: int = 0


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
    if len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18":
        return "zstd"  # a zstd skippable frame (metadata) before the first data frame
    return "tar"


def normalize_path(raw: bytes, *, context: str = "") -> bytes:
    """``raw`` relative to the image root: no leading ``/`` or ``./``, no empty or ``.``
    components; a ``..`` component or a NUL byte raises ``UnsafeLayerError``."""
    if b"\0" in raw:
        raise UnsafeLayerError(f"path {raw!r} contains a NUL byte", context=context)
    # Fast path, most tar names ("./usr/bin/x", "usr/lib/"): once a leading "./" and a
    # trailing "/" are gone, no component can be empty, "." or ".." if no "//" or "/."
    # is left and the name starts with neither "/" nor ".".
    p = raw[2:] if raw[:2] == b"./" else raw
    if p[-1:] == b"/":
        p = p[:-1]
    if (p and p[0] not in b"/." and p[-1:] != b"/" and b"//" not in p
            and b"/." not in p):
        return p
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise UnsafeLayerError(
            f"path {raw.decode('utf-8', 'backslashreplace')!r} leaves the image root with '..'",
            context=context,
            hint="the layer is malformed or hostile; ocisquash refuses to apply it",
        )
    return b"/".join(parts)


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


class _TarStream:
    """The uncompressed tar stream, decoded on a thread of its own.

    The thread reads the blob (whose reader checks the blob's digest at its end),
    decompresses it, hashes every uncompressed byte for the diff_id check (unless the
    blob's own check is that check), enforces the ratio limit, maps decoder errors to
    ``LayerError``, and hands chunks of about 1 MiB to the parser through a short
    queue; errors travel the same queue, in stream order. Hashing there rather than in
    the parser's thread takes about 0.6 s of CPU per GB off the thread that parses the
    tar and feeds the squashfs writer (isal, zstandard and hashlib release the GIL, so
    both threads run at once). On a machine of 4 cores or more both digests are
    computed behind this thread, on threads of their own (``digest.HashBehind``).
    """

    #: chunks decoded ahead of the parser
    QUEUED = 4

    def __init__(self, inner: Any, raw: _PeekReader, algorithm: str | None,
                 compression: Compression, limits: Limits, context: str,
                 abort: Callable[[], None] | None = None) -> None:
        #: the uncompressed bytes' hash; None when nothing is to be checked against it
        self.hash = HashBehind(algorithm) if algorithm else None
        #: ends a read of the blob that waits for bytes (a layer read as it downloads)
        self._abort = abort
        self.count = 0
        self.eof = False
        self._chunk = b""
        self._pos = 0
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(self.QUEUED)
        self._stopped = False
        self._thread = threading.Thread(
            target=self._decode, args=(inner, raw, compression, limits, context),
            name="ocisquash-decode", daemon=True)
        self._thread.start()

    def _decode(self, inner: Any, raw: _PeekReader, compression: Compression, limits: Limits,
                context: str) -> None:
        item: bytes | BaseException = b""
        try:
            while True:
                try:
                    data: bytes = inner.read(_CHUNK)
                except OcisquashError:
                    raise
                except EOFError:
                    raise LayerError(f"{compression} stream truncated", context=context) from None
                except Exception as e:
                    raise LayerError(f"invalid {compression} stream: {e}", context=context) from None
                if not data:
                    break
                if self.hash is not None:
                    self.hash.update(data)
                self.count += len(data)
                if self.count > limits.ratio_floor and self.count > limits.max_ratio * max(raw.count, 1):
                    raise LimitExceededError(
                        f"layer expands more than {limits.max_ratio}× ({raw.count} compressed "
                        f"bytes gave {self.count})",
                        context=context,
                        hint="a decompression bomb? raise Limits.max_ratio if the image is genuine",
                    )
                if not self._put(data):
                    return
            while raw.read(_CHUNK):  # the source's stream checks the blob digest at its EOF
                pass
        except BaseException as e:  # handed to the parser's thread, raised there
            item = e
        finally:
            if self.hash is not None:
                self.hash.close()  # all it will get is hashed; hexdigest still answers
        self._put(item)

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stopped:
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (``b""`` only at the end); whole chunks are passed on uncopied."""
        if self._pos >= len(self._chunk):
            if self.eof:
                return b""
            item = self._queue.get()
            if isinstance(item, BaseException):
                self.eof = True
                raise item
            if not item:
                self.eof = True
                return b""
            self._chunk, self._pos = item, 0
        chunk, pos = self._chunk, self._pos
        if pos == 0 and (n is None or n < 0 or n >= len(chunk)):
            self._pos = len(chunk)
            return chunk
        out = chunk[pos:] if n is None or n < 0 else chunk[pos:pos + n]
        self._pos = pos + len(out)
        return out

    def drain(self) -> None:
        """Read to the end: the blob's and the tar's digests are then both checked."""
        while self.read(_CHUNK):
            pass

    def close(self) -> None:
        """Stop the thread (it may be waiting to hand over a chunk, or for the blob's
        bytes to arrive) and wait for it."""
        self._stopped = True
        if self._abort is not None and self._thread.is_alive():
            self._abort()
        while self._thread.is_alive():
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(0.05)


def _gather(first: bytes, n: int, more: Callable[[int], bytes]) -> bytes:
    """``first`` and then pieces from ``more(missing)`` until there are ``n`` bytes or a
    piece is empty (the end)."""
    if len(first) == n or not first:
        return first
    parts = [first]
    got = len(first)
    while got < n:
        piece = more(n - got)
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


class _Buffer:
    """Forward-only reads over the uncompressed stream, through one large buffer.

    Small reads (headers) are served from the buffer; large reads of file data go
    straight to the stream when the buffer is empty, so data is copied once.
    """

    def __init__(self, stream: _TarStream) -> None:
        self._stream = stream
        self._buf = b""
        self._pos = 0
        #: bytes consumed so far (the tar offset of the next read)
        self.offset = 0

    def exact(self, n: int) -> bytes:
        """``n`` bytes, or fewer only at the end of the stream."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos >= n:
            self._pos = pos + n
            self.offset += n
            return buf[pos:pos + n]
        parts = [buf[pos:]]
        have = len(parts[0])
        while have < n:
            chunk = self._stream.read(max(_CHUNK, n - have))
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        joined = b"".join(parts)
        out, self._buf, self._pos = joined[:n], joined, min(n, len(joined))
        self.offset += len(out)
        return out

    def some(self, n: int) -> bytes:
        """Between 1 and ``n`` bytes; ``b""`` only at the end of the stream."""
        avail = len(self._buf) - self._pos
        if avail <= 0:
            if n >= _CHUNK // 4:
                data = self._stream.read(n)
                self.offset += len(data)
                return data
            self._buf, self._pos = self._stream.read(_CHUNK), 0
            avail = len(self._buf)
            if not avail:
                return b""
        k = min(n, avail)
        out = self._buf[self._pos:self._pos + k]
        self._pos += k
        self.offset += k
        return out

    def take(self, n: int) -> bytes:
        """``n`` bytes, fewer only at the end of the stream; large reads are copied once."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos >= n:
            self._pos = pos + n
            self.offset += n
            return buf[pos:pos + n]
        return _gather(self.some(n), n, self.some)

    def skip(self, n: int) -> int:
        """Discard ``n`` bytes; returns how many were there."""
        if len(self._buf) - self._pos >= n:  # most skips: a member's padding
            self._pos += n
            self.offset += n
            return n
        done = 0
        while done < n:
            chunk = self.some(min(n - done, _CHUNK))
            if not chunk:
                break
            done += len(chunk)
        return done


def _truncated_file(context: str, path: bytes) -> LayerError:
    # Built only when raised: most files never need the message.
    return LayerError("tar stream truncated inside a file", context=f"{context}: {_show(path)}")


class _MemberData:
    """A regular file's data, valid until the next entry: exactly ``size`` bytes, with
    the holes of a sparse file read as zeros. A sparse file's holes are computed from
    its map as they are reached, never laid out in memory, and a writer that knows
    about holes (``entry.HoleReader``) skips them without reading their zeros."""

    def __init__(self, buf: _Buffer, stored: int, size: int, sparse: array[int] | None,
                 context: str, path: bytes) -> None:
        self._buf = buf
        self.size = size
        self._stored_total = stored
        self._stored_left = stored  # bytes of this member still in the tar stream
        self._pos = 0  # position in the expanded file
        #: a sparse file's map, offset and length of each data region in turn; None
        #: when the stored bytes are the file
        self._map = sparse
        #: index in ``_map`` of the next data region's offset
        self._at = 0
        self._layer_context = context
        self._path = path

    def read(self, n: int = -1) -> bytes:
        """Exactly ``n`` bytes (all that is left when ``n`` is negative or too large),
        like a buffered file: callers such as ``shutil.copyfileobj`` rely on it."""
        if n is None or n < 0 or n > self.size - self._pos:
            n = self.size - self._pos
        if self._map is None:
            data = self._buf.take(n)
            if len(data) != n:
                raise _truncated_file(self._layer_context, self._path)
            self._pos += n
            self._stored_left -= n
            return data
        return _gather(self._piece(n), n, self._piece)

    def zeros_ahead(self) -> int:
        """How many bytes from the current position are a hole (0 inside data)."""
        sparse = self._map
        if sparse is None:
            return 0
        at, pos = self._at, self._pos
        # Skip regions already read and empty ones (a map may end with one).
        while at < len(sparse) and sparse[at] + sparse[at + 1] <= pos:
            at += 2
        self._at = at
        if at >= len(sparse):
            return self.size - pos
        return max(sparse[at] - pos, 0)

    def skip_zeros(self, n: int) -> None:
        """Move past ``n`` bytes of a hole (at most :meth:`zeros_ahead`)."""
        if not 0 <= n <= self.zeros_ahead():
            raise ValueError(f"{n} bytes are not a hole here")
        self._pos += n

    def _piece(self, n: int) -> bytes:
        if self._pos >= self.size or n <= 0:
            return b""
        hole = self.zeros_ahead()
        if hole:
            k = min(n, hole, _CHUNK)
            self._pos += k
            return bytes(k)
        assert self._map is not None
        k = min(n, self._map[self._at] + self._map[self._at + 1] - self._pos)
        data = self._buf.some(k)
        if not data:
            raise _truncated_file(self._layer_context, self._path)
        self._pos += len(data)
        self._stored_left -= len(data)
        return data

    def readable(self) -> bool:
        return True

    def finish(self) -> None:
        """Skip what the consumer left unread, up to the next header."""
        left = self._stored_left + (-self._stored_total % _BLOCK)
        if self._buf.skip(left) != left:
            raise _truncated_file(self._layer_context, self._path)


_TYPES: dict[bytes, EntryKind] = {
    b"0": "file", b"\0": "file", b"7": "file", b"S": "file",
    b"1": "hardlink", b"2": "symlink", b"3": "char", b"4": "block", b"5": "dir", b"6": "fifo",
}

Member = tuple[TarEntry, BinaryIO | bytes | None]
#: largest PAX or GNU long-name header accepted (real ones are a few KiB)
_MAX_META = 16 << 20
#: PAX global header fields kept for the entries after them: the ones an entry reads
#: (sparse maps only ever come from an entry's own header, as in Go's archive/tar)
_GLOBAL_KEYS = (b"path", b"linkpath", b"size", b"uid", b"gid", b"mtime")
_GLOBAL_XATTRS = (b"SCHILY.xattr.", b"LIBARCHIVE.xattr.")
#: bounds on what global headers hand to every later entry, which is read again for
#: each of them: real layers have none, or a ``comment`` (git archive) that is not kept
_MAX_GLOBAL_BYTES = 64 << 10
_MAX_GLOBAL_FIELDS = 128
#: how much of a bad value an error message shows
_SHOWN = 40
_BLOCK = 512
#: a header's fields: name, mode, uid, gid, size, mtime, checksum, typeflag, linkname,
#: magic, (version, uname, gname skipped) devmajor, devminor, prefix (ustar)
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2x64x8s8s155s12x")
_ZERO_BLOCK = bytes(_BLOCK)
#: distinct (mode, uid, gid, mtime) EntryMeta values a layer reader keeps for reuse
_METAS_KEPT = 1 << 16

def layer_context(layer: Layer, index: int | None = None) -> str:
    d = layer.descriptor.digest
    where = f"layer {d.algorithm}:{d.hex[:12]}…"
    return where if index is None else f"{where} (#{index + 1})"


def read_layer(layer: Layer, *, limits: Limits = Limits(), fidelity: Fidelity | None = None,
               index: int | None = None, verify_diff_id: bool = True,
               small_files: int = -1) -> Iterator[Member]:
    """Yield ``(entry, data)`` for each member of ``layer``; ``data`` only for files.

    ``data`` is a stream of exactly ``entry.size`` bytes, valid until the next item
    is requested; unread data is skipped. A file (not sparse) of at most
    ``small_files`` bytes comes as ``bytes`` instead. When the generator is exhausted
    the whole blob has been read and both digests checked. Errors name the layer.
    """
    context = layer_context(layer, index)
    check_media_type(layer.descriptor.media_type, context=context)
    fid = fidelity if fidelity is not None else Fidelity()
    raw_stream = layer.open()
    try:
        yield from _read(raw_stream, layer.diff_id if verify_diff_id else None, limits, fid,
                         context, small_files)
    finally:
        close = getattr(raw_stream, "close", None)
        if close is not None:
            close()


def _read(raw_stream: BinaryIO, diff_id: Digest | None, limits: Limits, fid: Fidelity,
          context: str, small: int) -> Iterator[Member]:
    raw = _PeekReader(raw_stream)
    compression = sniff_compression(raw.peek(4))
    inner: Any
    if compression == "gzip":
        from isal import igzip

        inner = igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[no-untyped-call]
    elif compression == "zstd":
        inner = _ZstdReader(raw)
    else:
        inner = raw
        if isinstance(raw_stream, VerifyingReader) and raw_stream.digest == diff_id:
            # The blob is the uncompressed tar, and the stream checks its digest at the
            # end: that check is the diff_id check, over the same bytes.
            diff_id = None
    stream = _TarStream(inner, raw, diff_id.algorithm if diff_id else None, compression,
                        limits, context, getattr(raw_stream, "abort", None))
    try:
        yield from _members(stream, limits, fid, context, small)
        stream.drain()
    finally:
        stream.close()  # before the decoder it uses is closed
        if inner is not raw:
            inner.close()
    if diff_id is not None and stream.hash is not None and stream.hash.hexdigest() != diff_id.hex:
        from .errors import DigestMismatchError

        raise DigestMismatchError(
            f"uncompressed layer has digest {diff_id.algorithm}:{stream.hash.hexdigest()[:12]}…, "
            f"the image config says {diff_id}",
            context=context,
            hint="the layer blob does not belong to this image config",
        )


def _num(field: bytes, what: str, context: str) -> int:
    """A numeric header field: octal text, or GNU base-256 when the top bit is set."""
    try:
        # The common case, octal digits ended by NULs or spaces (the checksum field's
        # "NUL, space"), in one call; anything else (base-256, junk after the NUL, all
        # NULs) takes the general path.
        return int(field.rstrip(b"\0 "), 8)
    except ValueError:
        return _num_general(field, what, context)


def _num_general(field: bytes, what: str, context: str) -> int:
    if field and field[0] & 0x80:
        value = int.from_bytes(field, "big")
        if field[0] == 0xFF:  # negative, two's complement over the whole field
            return value - (1 << (8 * len(field)))
        return value - (0x80 << (8 * (len(field) - 1)))
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise LayerError(f"invalid tar header: {what} field {field!r} is not a number",
                         context=context) from None


def _byte_sum(block: bytes) -> int:
    """The sum of a header block's 512 bytes, computed in C: each half sums to at most
    256 × 255 = 65280, below adler32's modulus 65521, so the low 16 bits of a half's
    adler32 are exactly 1 + its sum. (``sum(block)`` was a fifth of the parse time.)"""
    return (adler32(block[:256]) & 0xFFFF) + (adler32(block[256:]) & 0xFFFF) - 2


def _nts(field: bytes) -> bytes:
    i = field.find(b"\0")
    return field if i < 0 else field[:i]


def _pax_records(data: bytes, context: str) -> list[tuple[bytes, bytes]]:
    """``LEN KEY=VALUE\\n`` records, in order (GNU sparse 0.0 repeats keys)."""
    out = []
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] == 0:
            break  # NUL padding after the last record
        sp = data.find(b" ", pos, pos + 20)
        try:
            length = int(data[pos:sp]) if sp > pos else 0
        except ValueError:
            length = 0
        # No space within 20 bytes (sp == -1) must fail too: a length of 0 would
        # otherwise pass the checks below and never advance ``pos``.
        if sp <= pos or length <= sp - pos or pos + length > end \
                or data[pos + length - 1] != 0x0A:
            raise LayerError("invalid PAX header record", context=context)
        key, eq, value = data[sp + 1:pos + length - 1].partition(b"=")
        if not eq:
            raise LayerError("invalid PAX header record", context=context)
        out.append((key, value))
        pos += length
    return out


def _cut(value: bytes) -> str:
    """``value`` for an error message, cut if long (a hostile header's number may run
    to thousands of digits)."""
    if len(value) <= _SHOWN:
        return repr(value)
    return f"{value[:_SHOWN]!r}… ({len(value)} bytes)"


def _pax_int(value: bytes, key: bytes, context: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise LayerError(f"invalid PAX {key.decode('ascii', 'replace')} {_cut(value)}",
                         context=context) from None


def _sparse_map(numbers: list[int] | array[int], context: str) -> array[int]:
    """A sparse map as a flat array: offset, length, offset, length…"""
    if len(numbers) % 2:
        raise LayerError("invalid sparse map", context=context)
    try:
        return numbers if isinstance(numbers, array) else array("q", numbers)
    except OverflowError:
        raise LayerError("invalid sparse map (numbers out of range)", context=context) from None


def _check_sparse_count(pairs: int, limits: Limits, context: str) -> None:
    if pairs > limits.max_sparse_regions:
        raise LimitExceededError(
            f"sparse map of more than {limits.max_sparse_regions} regions", context=context,
            hint="raise Limits.max_sparse_regions if the image is genuine")


def _check_sparse(sparse: array[int], real: int, stored: int, context: str) -> None:
    at = total = 0
    for i in range(0, len(sparse), 2):
        off, length = sparse[i], sparse[i + 1]
        if off < at or length < 0 or off + length > real:
            raise LayerError("invalid sparse map (overlapping or out of range)", context=context)
        at = off + length
        total += length
    if total > stored:
        raise LayerError("sparse map promises more data than the entry holds", context=context)


def _members(stream: _TarStream, limits: Limits, fid: Fidelity, context: str,
             small: int = -1) -> Iterator[Member]:
    """Parse the tar stream (ustar, GNU and PAX dialects) and yield normalised entries;
    the data of a file of at most ``small`` bytes (not sparse) as ``bytes``."""
    buf = _Buffer(stream)
    globals_: dict[bytes, bytes] = {}
    global_bytes = 0
    pax: dict[bytes, bytes] = {}
    pax_sparse_pairs = array("q")
    long_name: bytes | None = None
    long_link: bytes | None = None
    index = 0
    metas: dict[tuple[int, int, int, int], EntryMeta] = {}
    while True:
        header_at = buf.offset
        block = buf.exact(_BLOCK)
        if not block:
            if pax or long_name is not None or long_link is not None:
                raise LayerError("tar stream truncated after an extended header", context=context)
            return  # ended on a header boundary without end blocks: tolerated, like Go
        if len(block) < _BLOCK:
            raise LayerError("tar stream truncated inside a header", context=context)
        if block == _ZERO_BLOCK:
            return  # end of archive; the caller drains the rest
        (f_name, f_mode, f_uid, f_gid, f_size, f_mtime, f_chksum, typeflag, f_link, magic,
         f_devmajor, f_devminor, f_prefix) = _HEADER.unpack(block)
        try:  # most headers: every number plain octal, parsed at once (see _num)
            chksum = int(f_chksum.rstrip(b"\0 "), 8)
            size = int(f_size.rstrip(b"\0 "), 8)
            mode = int(f_mode.rstrip(b"\0 "), 8)
            uid = int(f_uid.rstrip(b"\0 "), 8)
            gid = int(f_gid.rstrip(b"\0 "), 8)
            mtime = int(f_mtime.rstrip(b"\0 "), 8)
            plain = True
        except ValueError:  # the rest are parsed, with their errors, where they are used
            chksum = _num(f_chksum, "checksum", context)
            plain = False
        # The checksum counts its own field as spaces; 8 bytes sum below adler32's modulus.
        unsigned = _byte_sum(block) - (adler32(f_chksum) & 0xFFFF) + 1 + 8 * 0x20
        if chksum != unsigned:
            # Some old tars summed signed chars.
            high = sum(1 for b in block[:148] + block[156:] if b > 127)
            if chksum != unsigned - 256 * high:
                raise LayerError(f"invalid tar header at offset {header_at} (bad checksum)",
                                 context=context)
        if not plain:
            size = _num(f_size, "size", context)
        if size < 0:
            raise LayerError(f"invalid tar header at offset {header_at} (negative size)",
                             context=context)
        padded = size + (-size % _BLOCK)

        if typeflag in (b"x", b"g", b"L", b"K"):
            if size > _MAX_META:
                raise LimitExceededError(f"extended tar header of {size} bytes", context=context)
            data = buf.exact(padded)
            if len(data) < padded:
                raise LayerError("tar stream truncated inside an extended header",
                                 context=context)
            data = data[:size]
            if typeflag == b"L":
                long_name = _nts(data)
            elif typeflag == b"K":
                long_link = _nts(data)
            else:
                records = _pax_records(data, context)
                if typeflag == b"x":
                    for key, value in records:
                        if key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
                            if len(pax_sparse_pairs) >= 2 * limits.max_sparse_regions:
                                _check_sparse_count(len(pax_sparse_pairs), limits, context)
                            try:
                                pax_sparse_pairs.append(_pax_int(value, key, context))
                            except OverflowError:
                                raise LayerError("invalid sparse map (numbers out of range)",
                                                 context=context) from None
                        else:
                            pax[key] = value
                else:
                    global_bytes = _merge_globals(globals_, global_bytes, records, context)
            continue

        # A real member: gather its fields, extended headers first.
        if long_name is not None:
            name = long_name
        else:
            name = f_name.partition(b"\0")[0]
            if magic == b"ustar\x00":
                prefix = f_prefix.partition(b"\0")[0]
                if prefix:
                    name = prefix + b"/" + name
            elif magic == b"ustar " and f_prefix[0] and typeflag != b"S":
                name = _go_gnu_prefix(block, name)
        linkname = long_link if long_link is not None else f_link.partition(b"\0")[0]
        if not plain:
            mode = _num(f_mode, "mode", context)
            uid = _num(f_uid, "uid", context)
            gid = _num(f_gid, "gid", context)
            mtime = _num(f_mtime, "mtime", context)
        devmajor = devminor = 0
        if typeflag in (b"3", b"4"):
            devmajor = _num(f_devmajor, "devmajor", context)
            devminor = _num(f_devminor, "devminor", context)
        xattrs: list[tuple[bytes, bytes]] = []
        subsecond = False
        sparse: array[int] | None = None
        real_size = size
        # Globals are read in place (their size is bounded, see _merge_globals), copied
        # only when the entry's own header overrides some of them.
        fields = {**globals_, **pax} if globals_ and pax else pax or globals_
        if fields:
            for key, value in fields.items():
                if key == b"path":
                    name = value
                elif key == b"linkpath":
                    linkname = value
                elif key == b"size":
                    size = real_size = _pax_int(value, key, context)
                    padded = size + (-size % _BLOCK)
                elif key == b"uid":
                    uid = _pax_int(value, key, context)
                elif key == b"gid":
                    gid = _pax_int(value, key, context)
                elif key == b"mtime":
                    try:
                        exact = float(value)
                        mtime = math.floor(exact)
                    except (ValueError, OverflowError):
                        raise LayerError(f"invalid PAX mtime {_cut(value)}",
                                         context=context) from None
                    subsecond = exact != mtime
                elif key.startswith((b"SCHILY.xattr.", b"LIBARCHIVE.xattr.")):
                    xattrs.append((key, value))
            if b"GNU.sparse.name" in fields:
                name = fields[b"GNU.sparse.name"]
            if b"GNU.sparse.realsize" in fields:
                real_size = _pax_int(fields[b"GNU.sparse.realsize"], b"realsize", context)
            elif b"GNU.sparse.size" in fields:
                real_size = _pax_int(fields[b"GNU.sparse.size"], b"size", context)
            if b"GNU.sparse.map" in fields:  # format 0.1
                text = fields[b"GNU.sparse.map"]
                _check_sparse_count(text.count(b",") // 2, limits, context)
                nums = [_pax_int(v, b"GNU.sparse.map", context) for v in text.split(b",") if v]
                sparse = _sparse_map(nums, context)
            elif pax_sparse_pairs:  # format 0.0
                sparse = _sparse_map(pax_sparse_pairs, context)
            elif fields.get(b"GNU.sparse.major") == b"1":  # format 1.0: the map leads the data
                sparse, used = _read_sparse_10(buf, size, limits, context)
                size -= used
                padded -= used
        if pax or pax_sparse_pairs:
            pax, pax_sparse_pairs = {}, array("q")
        long_name = long_link = None
        if size < 0 or real_size < 0:
            raise LayerError(f"invalid tar header at offset {header_at} (negative size)",
                             context=context)

        if typeflag == b"S":  # old GNU sparse: map in the header and extension blocks
            sparse = array("q")
            real_size = _num(block[483:495], "realsize", context)
            area, extended = block[386:482], block[482]
            while True:
                for i in range(0, len(area) - 23, 24):
                    off = _num(area[i:i + 12], "sparse offset", context)
                    length = _num(area[i + 12:i + 24], "sparse length", context)
                    if off or length:
                        try:
                            sparse.extend((off, length))
                        except OverflowError:
                            raise LayerError("invalid sparse map (numbers out of range)",
                                             context=context) from None
                _check_sparse_count(len(sparse) // 2, limits, context)
                if not extended:
                    break
                ext = buf.exact(_BLOCK)
                if len(ext) < _BLOCK:
                    raise LayerError("tar stream truncated inside a sparse header",
                                     context=context)
                area, extended = ext[:504], ext[504]
        if sparse is not None:
            _check_sparse(sparse, real_size, size, context)
        else:
            real_size = size  # a GNU.sparse size without a map means nothing (as in Go)

        kind = _TYPES.get(typeflag)
        if kind == "file" and typeflag == b"\0" and name.endswith(b"/"):
            kind = "dir"  # old V7 tars mark directories by the trailing slash only
        entry = None
        if kind is None:
            fid.note("entry-type-skipped", name)
        else:
            entry = _entry(name, kind, mode, uid, gid, mtime, linkname,
                           real_size if kind == "file" else 0, devmajor, devminor, xattrs,
                           index, limits, fid, context, metas)
        index += 1
        if subsecond and entry is not None:
            fid.note("mtime-subsecond-truncated", entry.path)
        if entry is not None and entry.kind == "file":
            if size <= small and sparse is None:
                data = buf.take(size)
                if len(data) != size or buf.skip(padded - size) != padded - size:
                    raise _truncated_file(context, entry.path)
                yield entry, data
                continue
            data_stream = _MemberData(buf, size, real_size, sparse, context, entry.path)
            yield entry, cast(BinaryIO, data_stream)
            data_stream.finish()
        else:
            if entry is not None:
                yield entry, None
            if buf.skip(padded) != padded:
                raise LayerError("tar stream truncated inside an entry", context=context)


def _go_gnu_prefix(block: bytes, name: bytes) -> bytes:
    """``name`` under the ustar prefix field of a header with GNU magic, when Go's
    archive/tar would read one there.

    Before Go 1.8 its writer put the ustar prefix into GNU headers, where GNU keeps
    atime and ctime. Go still reads such layers (golang.org/issue/12594), and so do
    containerd and moby, whose layers these are: when the atime or ctime field is not
    a number and the prefix is ASCII, the prefix is joined to the name. GNU tar never
    joins it; ocisquash follows Go."""
    if _go_numeric(block[345:357]) and _go_numeric(block[357:369]):
        return name
    prefix = block[345:500].partition(b"\0")[0]
    if not prefix.isascii():
        return name
    return prefix + b"/" + name


def _go_numeric(field: bytes) -> bool:
    """Whether Go's archive/tar parses ``field`` as a number without error."""
    if field[0] & 0x80:
        return True  # base-256
    text = field.strip(b" \0").partition(b"\0")[0]
    return not text or all(0x30 <= c <= 0x37 for c in text)


def _read_sparse_10(buf: _Buffer, size: int, limits: Limits,
                    context: str) -> tuple[array[int], int]:
    """The GNU sparse 1.0 map: decimal numbers, one a line, at the start of the data,
    padded to a block: the count, then offset/length pairs. Returns it and its length."""
    text = b""
    used = 0
    numbers = array("q")
    want: int | None = None
    while want is None or len(numbers) < 1 + 2 * want:
        if used >= size:
            raise LayerError("truncated sparse map", context=context)
        block = buf.exact(_BLOCK)
        if len(block) < _BLOCK:
            raise LayerError("tar stream truncated inside a sparse map", context=context)
        used += _BLOCK
        if len(text) > _SHOWN:  # a number never needs more than 20 digits
            raise LayerError("invalid sparse map (a line is too long)", context=context)
        text += block
        lines = text.split(b"\n")
        text = lines.pop()
        for line in lines:
            try:
                numbers.append(_pax_int(line, b"sparse map", context))
            except OverflowError:
                raise LayerError("invalid sparse map (numbers out of range)",
                                 context=context) from None
            if want is None:
                want = numbers[0]
                if want < 0 or want > size:
                    raise LayerError("invalid sparse map", context=context)
                _check_sparse_count(want, limits, context)
            if len(numbers) >= 1 + 2 * want:
                break
    assert want is not None
    return _sparse_map(numbers[1:1 + 2 * want], context), used


def _merge_globals(globals_: dict[bytes, bytes], held: int,
                   records: list[tuple[bytes, bytes]], context: str) -> int:
    """Add a PAX global header's ``records`` to ``globals_``, keeping only the fields an
    entry reads; returns the bytes they hold. Every later entry reads them again, so
    their size is bounded: without a bound, one 16 MiB global header costs 16 MiB of
    work per entry after it."""
    for key, value in records:
        if key not in _GLOBAL_KEYS and not key.startswith(_GLOBAL_XATTRS):
            continue
        old = globals_.get(key)
        if old is not None:
            held -= len(key) + len(old)
        globals_[key] = value
        held += len(key) + len(value)
    if held > _MAX_GLOBAL_BYTES or len(globals_) > _MAX_GLOBAL_FIELDS:
        raise LimitExceededError(
            f"PAX global headers set {len(globals_)} fields of {held} bytes for every later "
            f"entry, more than {_MAX_GLOBAL_FIELDS} fields or {_MAX_GLOBAL_BYTES} bytes",
            context=context, hint="the layer is malformed or hostile")
    return held


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace") or "/"


def _entry(raw_path: bytes, kind: EntryKind, mode: int, uid: int, gid: int, mtime: int,
           raw_link: bytes, size: int, devmajor: int, devminor: int,
           pax_xattrs: list[tuple[bytes, bytes]], index: int, limits: Limits, fid: Fidelity,
           context: str, metas: dict[tuple[int, int, int, int], EntryMeta]) -> TarEntry:
    if len(raw_path) > limits.max_path_length:
        raise LimitExceededError(
            f"path of {len(raw_path)} bytes is longer than {limits.max_path_length}",
            context=context,
        )
    path = normalize_path(raw_path, context=context)
    if len(path) > MAX_NAME:
        _check_names(path, context)
    if size > limits.max_file_size:
        raise LimitExceededError(
            f"file {_show(path)} is {size} bytes, more than {limits.max_file_size}",
            context=context, hint="raise Limits.max_file_size if the image is genuine")
    if not 0 <= mtime <= MAX_MTIME:
        fid.note("mtime-clamped", path)
        mtime = min(max(mtime, 0), MAX_MTIME)
    if not (0 <= uid < 2**32 and 0 <= gid < 2**32):
        fid.note("id-clamped", path)
        uid = uid if 0 <= uid < 2**32 else OVERFLOW_ID
        gid = gid if 0 <= gid < 2**32 else OVERFLOW_ID
    xattrs = _xattrs(pax_xattrs, path, limits, fid, context) if pax_xattrs else ()
    if kind == "symlink":
        # Linux gives every symlink mode 0777 whatever the tar header says; so must we.
        mode = 0o777
    mode &= PERMISSION_MASK
    if xattrs:
        meta = EntryMeta(mode, uid, gid, mtime, xattrs)
    else:
        # Most members of a layer share a few owner/mode/time combinations: build
        # each EntryMeta once (frozen, so sharing is safe).
        key = (mode, uid, gid, mtime)
        shared = metas.get(key)
        if shared is None:
            if len(metas) >= _METAS_KEPT:
                metas.clear()
            shared = metas[key] = EntryMeta(mode, uid, gid, mtime)
        meta = shared
    linkname = b""
    if kind == "symlink":
        linkname = raw_link
        if b"\0" in linkname or not linkname:
            raise LayerError(f"symlink {_show(path)} has an invalid target", context=context)
        longest = min(limits.max_path_length, MAX_SYMLINK_TARGET)
        if len(linkname) > longest:
            raise LimitExceededError(
                f"symlink target of {len(linkname)} bytes is longer than {longest}",
                context=f"{context}: {_show(path)}")
    elif kind == "hardlink":
        linkname = normalize_path(raw_link, context=context)
        if not linkname:
            raise UnsafeLayerError(f"hard link {_show(path)} points at the root", context=context)
    if devmajor < 0 or devminor < 0:
        raise LayerError(f"device {_show(path)} has a negative number", context=context)
    return TarEntry(path, kind, meta, size, linkname, devmajor, devminor, index)


def _check_names(path: bytes, context: str) -> None:
    """Refuse a component of ``path`` longer than ``MAX_NAME`` (a whiteout's name may
    be its prefix longer: it names a file, and is never created itself)."""
    parts = path.split(b"/")
    for i, part in enumerate(parts):
        allowed = MAX_NAME + 4 if i == len(parts) - 1 and part.startswith(b".wh.") else MAX_NAME
        if len(part) > allowed:
            raise LimitExceededError(
                f"file name of {len(part)} bytes is longer than {MAX_NAME}",
                context=f"{context}: {_show(path)[:200]}",
                hint="Linux allows 255 bytes per name; no mounted image could show it")


def _xattrs(pax: list[tuple[bytes, bytes]], path: bytes, limits: Limits, fid: Fidelity,
            context: str) -> tuple[tuple[bytes, bytes], ...]:
    found: dict[bytes, bytes] = {}
    dropped = False
    for key, value in pax:
        if key.startswith(b"SCHILY.xattr."):
            name, data = key[len(b"SCHILY.xattr."):], value
        else:
            name = urllib.parse.unquote_to_bytes(key[len(b"LIBARCHIVE.xattr."):])
            try:
                data = base64.b64decode(value + b"===")
            except (binascii.Error, ValueError):
                raise LayerError(f"entry {_show(path)} has an invalid base64 xattr {key!r}",
                                 context=context) from None
            if name in found:
                continue  # SCHILY and LIBARCHIVE spell the same attribute: keep one
        if len(data) > limits.max_xattr_size:
            raise LimitExceededError(
                f"xattr {name!r} of {_show(path)} is {len(data)} bytes, more than "
                f"{limits.max_xattr_size}", context=context)
        if not name.startswith(KEPT_XATTR_NAMESPACES) or b"\0" in name or not name:
            dropped = True
            continue
        found[name] = data
    if dropped:
        fid.note("xattr-dropped", path)
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
