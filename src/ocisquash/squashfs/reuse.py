"""Compressed blocks reused across images: a recompile copies what earlier compiles wrote.

What the writer stores for a block (its compressed form, or the block itself when
compressing does not make it smaller, with bit 24 of the size field set) depends only on
the block's bytes and the compressor settings (``blocks._compress_block``). So an image
written before with the same settings holds, for each block it wrote, exactly the bytes
this compile would write for the same block: copying them gives an image byte-identical
to one compressed afresh.

Each image compiled into the cache keeps a *block index* beside it (:data:`INDEX_FILE`):
per data or fragment block it wrote, the sha256 of the uncompressed block, the block's
offset in the image and its size field, its uncompressed length, and the CRC-32 of its
stored bytes. A compile into the cache loads the indexes of
earlier images with the same settings (:func:`settings_key`) and, for each block, copies
the stored bytes when an index knows the block's digest, else compresses it. The
compressing threads do the hashing and the look-up, so a cold compile pays one sha256
per block in parallel with the compression.

Fragment blocks are reused only when the whole fragment block recurs: tails are packed in
file order, so a changed small file changes its fragment block, and they are compressed
again (they are a small part of the data; keying the tails one by one would need the
packing to be known before the data is). A layer that an earlier image applied need not
even be decoded: see ``layerindex.py``.

Index file layout, all integers little-endian::

    magic "OSQBLK2\\n" · u32 n · settings (n bytes of JSON) · u64 count ·
    count × (sha256[32] · u64 offset · u32 size field · u32 length · u32 CRC-32) ·
    sha256 of everything before

52 bytes per block, 0.04 % of the uncompressed data at 128 KiB blocks. An index whose
checksum, settings or bounds do not hold is not used (the blocks are compressed again);
``cache verify`` also decodes each indexed block and compares its digest. Every block
taken from an earlier image is checked against the CRC-32 of its stored bytes: those
copied from file to file are read back from the new image after the copy
(``blocks._Copier``, on its own thread; a mismatch makes the compile build the image
again without copying), those read here (:meth:`BlockReuse.read`: to decode a block a
replay needs, or to copy through the writer) before use (a block that does not match
is compressed again, or, named by a replay alone, the image is built again). A replay
copies a fragment block of an earlier image whole after that check alone, without
decoding it, and needs its length to know the block is whole (see ``layerindex.py``).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import importlib
import json
import operator
import os
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from isal.isal_zlib import crc32 as _crc32

from .format import DATA_UNCOMPRESSED
from .options import Compression, WriterOptions
from .version import FORMAT_VERSION

if TYPE_CHECKING:
    from .compressor import Compressor

#: The block index's name in a cache entry, beside ``image.squashfs``.
INDEX_FILE = "blocks.idx"

_MAGIC = b"OSQBLK2\n"
_RECORD = struct.Struct("<32sQIII")
_COUNT = struct.Struct("<Q")
_LEN = struct.Struct("<I")

#: Indexes of at most this many earlier images are loaded (those sharing a layer with
#: the image first, then the newest): this bounds the memory of the look-up table.
MAX_SOURCES = 16

#: The Python packages whose version can change a compressor's output, with the
#: module each installs.
_LIBRARIES = {
    Compression.GZIP: (("deflate", "deflate"),),  # and zlib for small windows: below
    Compression.ZSTD: (("zstandard", "zstandard"),),
    Compression.LZ4: (("lz4", "lz4"),),
    Compression.LZO: (("python-lzo", "lzo"),),
    Compression.XZ: (),  # the interpreter's own lzma module: its version is below
}


def _library_version(package: str, module: str) -> str | None:
    """The installed version of ``package``: its module's ``__version__``, which the
    compressor has imported already (importing ``importlib.metadata`` for it took a
    compile into the cache 0.03-0.1 s of start-up; figures: ``bench/README.md``), or
    the package's metadata when the module has none."""
    try:
        found = getattr(importlib.import_module(module), "__version__", None)
    except ImportError:
        found = None
    if isinstance(found, bytes):  # python-lzo's
        found = found.decode("ascii", "replace")
    if isinstance(found, str):
        return found
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def settings_key(options: WriterOptions) -> str:
    """What a block's stored bytes depend on besides the block: the compressor settings,
    the writer's format version and the compressing libraries' versions."""
    import zlib

    libs: dict[str, str] = {"python": sys.version.split()[0], "zlib": zlib.ZLIB_RUNTIME_VERSION}
    for package, module in _LIBRARIES[options.compression]:
        found = _library_version(package, module)
        if found is not None:
            libs[package] = found
    return json.dumps({
        "format": FORMAT_VERSION,
        "compression": options.compression.value,
        "level": options.level,
        "block_size": options.block_size,
        "gzip_window": options.gzip_window,
        "xz_filters": list(options.xz_filters),
        "lz4_hc": options.lz4_hc,
        "libraries": libs,
    }, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class IndexRecord:
    digest: bytes  # sha256 of the uncompressed block
    offset: int  # where its stored bytes start in the image
    field: int  # its size field (bit 24: stored uncompressed)
    length: int  # the uncompressed block's length
    check: int  # CRC-32 of the stored bytes

    @property
    def stored_size(self) -> int:
        return self.field & ~DATA_UNCOMPRESSED


#: What the block index keeps of a block written: its digest, offset, size field,
#: uncompressed length and the CRC-32 of its stored bytes.
Written = tuple[bytes, int, int, int, int]


def pack_index(settings: str, records: Iterable[Written]) -> bytes:
    """The bytes of a block index."""
    body = [_MAGIC, _LEN.pack(len(settings.encode())), settings.encode()]
    rows = [_RECORD.pack(*r) for r in records]
    body.append(_COUNT.pack(len(rows)))
    body.extend(rows)
    blob = b"".join(body)
    return blob + hashlib.sha256(blob).digest()


class BadIndex(ValueError):
    """A block index that cannot be used (damaged, or for other settings)."""


#: Cache files are opened without following symlinks, as the cache opens its own.
_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW


def _read_file(path: Path) -> bytes:
    with os.fdopen(os.open(path, _READ), "rb") as f:
        return f.read()


def index_settings(path: Path) -> str | None:
    """The settings an index was written with, from its header alone (None when it is
    not an index): sources with other settings are passed over without reading them."""
    try:
        with os.fdopen(os.open(path, _READ), "rb") as f:
            head = f.read(len(_MAGIC) + 4)
            if len(head) != len(_MAGIC) + 4 or not head.startswith(_MAGIC):
                return None
            (n,) = _LEN.unpack_from(head, len(_MAGIC))
            return f.read(min(n, 1 << 16)).decode("utf-8", "replace")
    except OSError:
        return None


def read_index(path: Path, image_size: int | None = None) -> tuple[str, list[IndexRecord]]:
    """The settings and records of the block index at ``path``; raises ``BadIndex``
    when it is damaged or points past ``image_size``."""
    try:
        blob = _read_file(path)
    except OSError as e:
        raise BadIndex(f"cannot read it: {e.strerror or e}") from e
    if len(blob) < len(_MAGIC) + 4 + 8 + 32 or not blob.startswith(_MAGIC):
        raise BadIndex("not a block index")
    body, checksum = blob[:-32], blob[-32:]
    if hashlib.sha256(body).digest() != checksum:
        raise BadIndex("its checksum does not match")
    at = len(_MAGIC)
    (n,) = _LEN.unpack_from(body, at)
    at += 4
    settings = body[at:at + n].decode("utf-8", "replace")
    at += n
    (count,) = _COUNT.unpack_from(body, at)
    at += 8
    if len(body) - at != count * _RECORD.size:
        raise BadIndex(f"it holds {len(body) - at} bytes of records, not {count} records")
    records = [IndexRecord(*r) for r in _RECORD.iter_unpack(body[at:])]
    if image_size is not None:
        for r in records:
            if r.offset + r.stored_size > image_size:
                raise BadIndex(f"a block at offset {r.offset} ends past the image")
    return settings, records


def compressor_for(settings: str) -> tuple[Compressor, int]:
    """The compressor and block size of an index's ``settings`` (``ValueError``,
    ``KeyError`` or ``TypeError`` when they are not such settings)."""
    from .compressor import make_compressor

    s = json.loads(settings)
    compressor = make_compressor(
        Compression(s["compression"]), level=s["level"], block_size=s["block_size"],
        gzip_window=s["gzip_window"], xz_filters=tuple(s["xz_filters"]),
        lz4_hc=s["lz4_hc"])
    return compressor, int(s["block_size"])


def check_index(image: Path, index: Path) -> str | None:
    """What is wrong with an image's block index (None: nothing): besides what
    :func:`read_index` checks, each indexed block must decode to its digest."""
    try:
        settings, records = read_index(index, image.stat().st_size)
        compressor, block_size = compressor_for(settings)
    except BadIndex as e:
        return str(e)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its settings cannot be used: {e}"
    try:
        with os.fdopen(os.open(image, _READ), "rb") as f:
            for r in records:
                f.seek(r.offset)
                raw = f.read(r.stored_size)
                try:
                    block = raw if r.field & DATA_UNCOMPRESSED else compressor.decompress(
                        raw, block_size)
                except Exception:  # a codec's own error type
                    return f"the block at offset {r.offset} does not decode"
                if stored_check(raw) != r.check:
                    return f"the block at offset {r.offset} does not match its CRC-32"
                if hashlib.sha256(block).digest() != r.digest:
                    return f"the block at offset {r.offset} does not match its digest"
    except OSError as e:
        return f"its image cannot be read: {e.strerror or e}"
    return None


class BlockReuse:
    """The blocks of earlier images (looked up by the compressing threads) and the
    index of the image being written (kept by the thread that writes blocks)."""

    def __init__(self, settings: str) -> None:
        self.settings = settings
        #: digest -> (descriptor of the earlier image, offset, size field, length,
        #: CRC-32 of the stored bytes)
        self._known: dict[bytes, tuple[int, int, int, int, int]] = {}
        self._fds: list[int] = []
        #: (inode, size, mtime) of each earlier image when it was opened
        self._seen: list[tuple[int, int, int]] = []
        #: (digest, offset, field, length, CRC-32) of each block written, in offset order
        self.records: list[Written] = []
        #: blocks copied (counted by the compressing threads: a statistic, not exact)
        self.reused = 0
        #: the block indexes loaded (their cache entries' directories hold the images)
        self.loaded: list[Path] = []

    @classmethod
    def load(cls, settings: str, sources: Iterable[tuple[Path, Path]]) -> BlockReuse:
        """Reuse the blocks of the ``(image, index)`` pairs whose index holds and has
        ``settings``; the others are passed over (their blocks are compressed again)."""
        reuse = cls(settings)
        for image, index in sources:
            if len(reuse._fds) >= MAX_SOURCES:
                break
            if index_settings(index) != settings:
                continue
            try:
                fd = os.open(image, _READ)
            except OSError:
                continue
            try:
                found, records = read_index(index, os.fstat(fd).st_size)
            except BadIndex:
                os.close(fd)
                continue
            if found != settings:
                os.close(fd)
                continue
            reuse._fds.append(fd)
            reuse.loaded.append(index)
            st = os.fstat(fd)
            reuse._seen.append((st.st_ino, st.st_size, st.st_mtime_ns))
            for r in records:
                reuse._known.setdefault(r.digest, (fd, r.offset, r.field, r.length, r.check))
        return reuse

    @property
    def sources(self) -> int:
        return len(self._fds)

    def has(self, digest: bytes) -> bool:
        """Whether an earlier image holds the block with ``digest``."""
        return digest in self._known

    def length(self, digest: bytes) -> int | None:
        """The uncompressed length of the block with ``digest`` (None: no earlier image
        holds it)."""
        found = self._known.get(digest)
        return None if found is None else found[3]

    def read(self, digest: bytes) -> tuple[bytes, int] | None:
        """The stored bytes and size field of the block with ``digest``, checked against
        the CRC-32 its index keeps (None: no earlier image holds it, or it cannot be
        read, or its bytes changed)."""
        found = self._known.get(digest)
        if found is None:
            return None
        fd, offset, field, _, check = found
        size = field & ~DATA_UNCOMPRESSED
        try:
            payload = os.pread(fd, size, offset)
        except OSError:
            return None
        if len(payload) != size or stored_check(payload) != check:
            return None
        return payload, field

    def locate(self, digest: bytes) -> tuple[int, int, int, int, int] | None:
        """Where an earlier image holds the block with ``digest``: its descriptor (open
        until :meth:`close`), the offset and the size field, and the block's length and
        the CRC-32 of its stored bytes (None: none holds it).
        Called by the compressing threads, which count it as reused."""
        found = self._known.get(digest)
        if found is not None:
            self.reused += 1
        return found

    def stored(self, digest: bytes) -> tuple[bytes, int, int, int] | None:
        """The stored bytes and size field of the block with ``digest``, its length and
        the CRC-32 of those bytes, if an earlier image holds it. Called by the
        compressing threads (a read-only look-up and a positional read)."""
        found = self.read(digest)
        if found is None:
            return None
        self.reused += 1
        known = self._known[digest]
        return found[0], found[1], known[3], known[4]

    def changed(self) -> bool:
        """Whether an earlier image was written to since it was opened (its mtime or size
        moved): then the blocks copied from it may not be the ones its index names."""
        for fd, seen in zip(self._fds, self._seen, strict=True):
            try:
                st = os.fstat(fd)
            except OSError:
                return True
            if (st.st_ino, st.st_size, st.st_mtime_ns) != seen:
                return True
        return False

    def written(self, digest: bytes, position: int, field: int, length: int,
                check: int) -> None:
        """Record a block written at ``position``."""
        self.records.append((digest, position, field, length, check))

    def digest_at(self, position: int) -> bytes | None:
        """The digest of the block written at ``position`` of this image (None: none was),
        from the records kept for its block index."""
        records = self.records
        i = bisect.bisect_left(records, position, key=_position)
        if i < len(records) and records[i][1] == position:
            return records[i][0]
        return None

    def read_written(self, position: int, size: int) -> bytes | None:
        """The ``size`` stored bytes of the block written at ``position`` of this image,
        read from an earlier image that holds the same block (None: none does). Such a
        block was copied from there, or compressed to the same bytes."""
        digest = self.digest_at(position)
        found = self.read(digest) if digest is not None else None
        if found is None or found[1] & ~DATA_UNCOMPRESSED != size:
            return None
        return found[0]

    def rewound(self, position: int) -> None:
        """The data area was rewound to ``position``: forget the blocks at and after it."""
        records = self.records
        while records and records[-1][1] >= position:
            records.pop()

    def index_bytes(self) -> bytes:
        return pack_index(self.settings, self.records)

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._seen.clear()
        self._known.clear()


_position = operator.itemgetter(1)


#: isal (as zlib) lets the GIL go while it computes the CRC-32 of more than this many
#: bytes.
_CRC_GIL_MINSIZE = 5 * 1024


def crc32_holding_gil(data: bytes | memoryview, check: int = 0) -> int:
    """The CRC-32 of a file's tail (zlib's; continuing ``check``, that of the bytes
    before), in pieces that keep the GIL: as for ``blocks._sha256_holding_gil``, taking
    the GIL back from the compressing threads after each tail cost more than computing
    it. isal's CRC-32 (carry-less multiplication) takes a quarter of zlib's time on a
    1.7 KB tail (figures: ``bench/README.md``)."""
    if len(data) <= _CRC_GIL_MINSIZE:
        return _crc32(data, check)
    view = memoryview(data)
    for start in range(0, len(data), _CRC_GIL_MINSIZE):
        check = _crc32(view[start:start + _CRC_GIL_MINSIZE], check)
    return check


def stored_check(payload: bytes) -> int:
    """The CRC-32 of a block's stored bytes, as the block index keeps it."""
    return crc32_holding_gil(payload)


def index_sources(entries: Iterable[Any], layers: Iterable[str] = ()) -> list[tuple[Path, Path]]:
    """``(image, index)`` of the cache entries (``CacheEntry``) that have a block index:
    first those whose image shares a layer (by digest) with ``layers``, each group the
    newest first."""
    ours = set(layers)

    def shares(entry: Any) -> bool:
        if not ours:
            return False
        try:
            manifest = json.loads(_read_file(entry.path / "manifest.json"))
            return not ours.isdisjoint(d["digest"] for d in manifest["layers"])
        except (OSError, ValueError, KeyError, TypeError):
            return False

    found = []
    for entry in sorted(entries, key=lambda e: (shares(e), e.created), reverse=True):
        index = entry.path / INDEX_FILE
        if index.is_file():
            found.append((entry.image, index))
    return found
