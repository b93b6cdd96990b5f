"""Layer indexes: a recompile replays an unchanged layer instead of decoding its tar.

A compile into the cache keeps, beside the image and its block index (``reuse.py``),
one *layer index* per layer it applied (``layer-<hex of the layer digest>.idx``): every
tar entry of the layer in order, with what the flattener uses of it (path, kind,
metadata with xattrs, size, link target, device numbers, member position), the fidelity
notes the tar reader made for it, and for each regular file this image wrote, where its
data is *by content*: the sha256 of each whole block (or a run of zero blocks) and, for
its last partial block, the sha256 of the uncompressed block that holds it (a fragment
block, or the file's short last block without fragments) with the offset and length in
it, and the CRC-32 of the tail. Those digests are all in the same image's block index, so an index refers only to
its own image and goes away with it (``cache rm``, ``cache prune``).

A later compile with the same settings, of an image sharing the layer (same blob digest
and diff_id), *replays* the index instead of decoding the layer when

* the index is whole (checksum) and was made with the same settings and limits;
* every block and tail block it names is in the loaded block indexes;
* every file entry the earlier compile did not write (it was hidden then, or it is a
  whiteout marker) is hidden now too by the layers above, as far as their decisions
  show before the layer is read, or is a marker, and no hard link of the layer names it
  (its data might be needed in a second pass).

Otherwise the layer is decoded as usual. Replayed files reach the writer as
:class:`IndexedFile`: the writer copies whole blocks by digest (the compressed bytes of
an earlier image, as for any reused block, each checked after its copy against the
CRC-32 of its stored bytes: ``blocks._Copier``), and packs the tails into fragment blocks
exactly as a cold compile packs them, so the image is byte-identical to a cold compile.
Such a compile keys small files by their CRC-32 (``blocks.py``), so a replayed small
file whose key no file stored before has is placed without its bytes. While the tails
fill a fragment block in the order and at the offsets they had in a block of an earlier
image, that block is copied whole, checked only by the CRC-32 of its stored bytes
(which the block index keeps): in devel-v2's recompile 2,129 of 2,133 fragment blocks,
none of them decoded (bench/README.md). The other tails' bytes are taken from the
referenced blocks, decoded from an earlier image, checked against each tail's CRC-32 (so
a damaged block or a wrong offset is caught; hashing each whole block again for each
small file in it would cost more). Without fragments, or when duplicates are keyed by
sha256 (an output that cannot be read back), every tail is fetched: a thread of the
replay's own then reads the index ahead of the writer and decodes those blocks, checking
the tails in them, before the files come (the writer checks a tail itself when its block
was not decoded that way). A fragment block that does not recur whole is compressed
again. A block that cannot be read, decoded or matched with its CRC-32, or a tail that
does not match its CRC-32, raises :class:`ReplayError`; the compile then builds the
image again without reusing anything.

The replayed entries' metadata is trusted as the decoding compile normalised it: an
index is written only by this program, into the user's own cache, and its checksum is
checked before use. Nothing is read from the layer blob while it is replayed: the index
stands for the blob with that digest and diff_id, which the compile that wrote it read
and verified whole.

File layout, all integers little-endian::

    magic "OSQLAY3\\n" · u32 n · header (n bytes of JSON) ·
    u64 m · zstd frame of the entry records (m bytes) ·
    u64 k · zstd frame of the data records (k bytes) · sha256 of everything before

An entry record is ``_ENTRY`` then the path, the link target and the xattrs. Data
records come by member position, one per file written: ``_DATA`` (the position less the
previous record's, the number of block items, the kind of tail), then per item ``0x00``
+ u64 run of zero blocks or ``0x01`` + sha256, then the tail: none, its CRC-32 alone
when it follows the previous tail in the same block, else the sha256 of its block, its
offset there and its CRC-32. A tail's length is its file's size modulo the block size
(in the header).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import operator
import os
import struct
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast

from ..entry import EntryMeta
from ..errors import SquashfsError
from ..layers import Fidelity, Limits, TarEntry
from .blocks import (
    _SHORT_BITS,
    _SHORT_MASK,
    Stored,
    TailOrigin,
    unpack_short,
)
from .format import DATA_UNCOMPRESSED, FRAGMENT_ENTRY, INVALID_INDEX
from .reuse import crc32_holding_gil

if TYPE_CHECKING:
    from ..layers import TarStream
    from ..sources.base import Layer
    from .reuse import BlockReuse
    from .writer import SquashfsWriter

from .reuse import compressor_for

log = logging.getLogger(__name__)

_MAGIC = b"OSQLAY3\n"
_LEN = struct.Struct("<I")
_SECTION = struct.Struct("<Q")
#: kind, mode, uid, gid, mtime, size, position, devmajor, devminor, path length,
#: link length, xattr count
_ENTRY = struct.Struct("<BHIIQQQIIIIH")
_XATTR = struct.Struct("<HI")
#: a data record: its member position less the previous record's, its block items, and
#: how its tail is given (_NO_TAIL, _NEXT_TAIL, _TAIL_AT)
_DATA = struct.Struct("<IIB")
_RUN = struct.Struct("<Q")
#: a tail given in full: the digest of the block holding it, its offset there, its CRC-32
_TAIL = struct.Struct("<32sII")
#: a tail that follows the previous record's in the same block: its CRC-32
_CHECK = struct.Struct("<I")
#: a data record without block items and its tail, as most files' are
_DATA_NEXT = struct.Struct("<IIBI")
_DATA_AT = struct.Struct("<IIB32sII")
#: Kinds of tails in a data record. Tails are packed in file order, so most follow the
#: previous file's: they are given by their CRC-32 alone (a third of the index's size
#: for small files). A tail's length is its file's size modulo the block size.
_NO_TAIL, _NEXT_TAIL, _TAIL_AT = 0, 1, 2

_KINDS: tuple[str, ...] = ("file", "dir", "symlink", "hardlink", "char", "block", "fifo")
_KIND_CODE = {k: i for i, k in enumerate(_KINDS)}

#: Data records are compressed in pieces of this many bytes.
_SPOOL = 256 << 10

#: An index may take this share of its layer's blob (issue 24: "the indexes cost at most
#: 2% of the layers' size"), and at least :data:`_MIN_BUDGET` bytes (a small layer's
#: header alone is more). A layer whose index grows past it while it is recorded (tiny
#: files: about 10 bytes each after compression, see bench/RESULTS-recompile.md) is not
#: indexed, and a recompile decodes it; its records are dropped at once, which also bounds
#: what recording holds in memory.
_BUDGET_SHARE = 50
_MIN_BUDGET = 64 << 10
#: What a written file's data record costs in the index, roughly (for the budget
#: check while the layer is applied; the packed index is checked exactly).
_DATA_RECORD = 10
#: A layer is given up at once when its index so far, spread over the whole blob at the
#: rate it grew over the part read so far, would take more than this many times its
#: budget (rather than only when the index outgrows the budget). The part read is
#: ``TarStream.compressed``, the same for the same blob whatever the timing, so the
#: decision is too. A layer of tiny files outgrows its budget at about the rate of its
#: start: manyfiles' rate was 1.3 at its first 4,096 entries and 1.4-1.5 after, and its
#: index was dropped at entry 69,632 of 101,001 before. Layers whose indexes fit stayed
#: far below: devel's largest (small files first) 0.29 at a quarter of its blob and
#: 0.14 at its end, debian's 0.15 (bench/README.md).
_EARLY_OVER = 1.25

#: Entries of a layer whose records the check before a replay keeps for its first pass
#: (a larger layer's are decoded again). 32,768 hold devel's 30,000-entry layer: its
#: recompile took 0.25 s less CPU (about 11 %) for 7 MB more peak memory.
_KEPT = 1 << 15

#: Decoded blocks kept for the tails of replayed files: a layer's small files were
#: packed in order, so consecutive files mostly share one.
_BLOCK_CACHE = 8

#: Blocks holding the tails of a replay's next files, decoded ahead by a thread of their
#: own (zstd and zlib let the GIL go while they decode): at most this many bytes of them
#: (runs of files whose tails share a block, a block each) are looked at ahead of the
#: flattener. Decoding them on the main thread was a quarter of a recompile's time there;
#: 8 blocks ahead left the main thread waiting for them twice as long as 32 did on a
#: loaded machine (bench/README.md).
_AHEAD_BYTES = 4 << 20
#: ... and at most this many entries.
_LOOKAHEAD = 8192


#: The layer indexes' names in a cache entry, as a glob pattern.
LAYER_INDEX_GLOB = "layer-*.idx"


def index_name(layer_digest: str) -> str:
    """The layer index's file name in a cache entry."""
    return "layer-" + layer_digest.replace(":", "-") + ".idx"


class ReplayError(SquashfsError):
    """A replayed layer's data could not be fetched as its index says; the compile
    builds the image again without reusing earlier images."""


class BadLayerIndex(ValueError):
    """A layer index that cannot be used."""


def _header_for(layer: Layer, settings: str, limits: Limits) -> dict[str, object]:
    return {
        "layer": str(layer.descriptor.digest),
        "diff_id": str(layer.diff_id) if layer.diff_id is not None else None,
        "settings": hashlib.sha256(settings.encode()).hexdigest(),
        "limits": asdict(limits),
    }


# -- writing ---------------------------------------------------------------------------


class _NoteRecorder(Fidelity):
    """Passes notes on to the compile's record and keeps them for the index, under the
    number of the entry they come before (a reader notes an entry before yielding it)."""

    def __init__(self, target: Fidelity, record: _LayerRecord | None) -> None:
        super().__init__()
        self._target = target
        #: the layer's record (None: not recorded, or the first pass is over)
        self.record = record

    def note(self, kind: str, path: bytes) -> None:
        self._target.note(kind, path)
        record = self.record
        if record is not None:
            record.notes.append((record.flushed + len(record.batch), kind, path))


class _LayerRecord:
    """What one layer's index will hold, gathered while the layer is applied: entries
    are kept in batches (the flattener appends each to ``batch`` and hands over every
    ``flatten.GATHERED``), each packed and put through a zstd stream in one go (memory
    stays small whatever the entry count, and the main thread's cost per entry is a list
    append and a share of one loop), the written files' data records wait for the end
    of the image."""

    def __init__(self, header: dict[str, object], budget: int, blob_size: int) -> None:
        import zstandard

        self.header = header
        #: the most bytes this layer's index may take
        self.budget = budget
        self.blob_size = blob_size
        #: the layer's decoded stream, which says how much of the blob the entries so
        #: far took (None: not known, a replayed layer)
        self.stream: TarStream | None = None
        self._packed = 0
        self._z = zstandard.ZstdCompressor(level=3).compressobj()
        self._chunks: list[bytes] = []
        #: entries not packed yet, and how many were before them
        self.batch: list[TarEntry] = []
        self.flushed = 0
        self.notes: list[tuple[int, str, bytes]] = []
        #: member positions of the files written, their tails' CRC-32, and their data
        #: (short ones as ints)
        self.positions = array("Q")
        self.checks = array("I")
        self.short = array("Q")
        self.long: dict[int, Stored] = {}
        #: a replayed layer's entry records, notes and entry count, as its index holds
        #: them (None: gathered here)
        self.kept: tuple[bytes, list[tuple[int, str, bytes]], int] | None = None

    @property
    def count(self) -> int:
        return self.flushed + len(self.batch)

    def flush(self) -> bool:
        """Pack the batch's entry records into the zstd stream; False once the index
        has outgrown its budget."""
        batch = self.batch
        if not batch:
            return True
        parts: list[bytes] = []
        add = parts.append
        pack = _ENTRY.pack
        codes = _KIND_CODE
        for path, kind, m, size, link, major, minor, position in batch:
            xattrs = m.xattrs
            add(pack(codes[kind], m.mode, m.uid, m.gid, m.mtime, size, position, major,
                     minor, len(path), len(link), len(xattrs)))
            add(path)
            if link:
                add(link)
            for name, value in xattrs:
                add(_XATTR.pack(len(name), len(value)))
                add(name)
                add(value)
        self.flushed += len(batch)
        batch.clear()
        chunk = self._z.compress(b"".join(parts))
        if chunk:
            self._chunks.append(chunk)
            self._packed += len(chunk)
        size = self._packed + _DATA_RECORD * len(self.positions)
        if size > self.budget:
            return False
        stream = self.stream
        read = stream.compressed if stream is not None else 0
        return not read or size * self.blob_size <= _EARLY_OVER * self.budget * read

    def written(self, position: int, stored: Stored, check: int) -> None:
        self.checks.append(check)
        if isinstance(stored, int) and stored < 1 << 64:
            self.positions.append(position)
            self.short.append(stored)
        else:  # a FileData, or an empty file (its fragment index is INVALID_INDEX)
            self.long[len(self.positions)] = stored
            self.positions.append(position)
            self.short.append(0)

    def pack(self, locate: _Locator) -> bytes:
        import zstandard

        self.flush()
        entries = b"".join(self._chunks) + self._z.flush()
        self._chunks.clear()
        entry_count, notes = self.count, self.notes
        if self.kept is not None:
            entries, notes, entry_count = self.kept
        z = zstandard.ZstdCompressor(level=3).compressobj()
        data: list[bytes] = []
        parts: list[bytes] = []
        size = 0
        # By member position (a second pass writes files after the first pass's), so
        # that a replay reads them alongside the entries.
        positions = self.positions
        order: Iterable[int] = range(len(positions))
        if any(map(operator.gt, positions, positions[1:])):
            order = sorted(order, key=positions.__getitem__)
        long, short, checks = self.long, self.short, self.checks
        fragment_digest = locate.fragment_digest
        next_tail, tail_at = _DATA_NEXT.pack, _DATA_AT.pack
        last = 0
        # the block and offset a next tail takes
        follow: bytes = b""
        follow_at = -1
        # the fragment block the last short file was in, and its digest
        fragment_at, digest = -1, b""
        for i in order:
            position = positions[i]
            step = position - last
            if not 0 <= step < 1 << 32:
                raise BadLayerIndex("a member position does not fit a data record")
            last = position
            stored = long.get(i)
            if stored is None:
                # A file in a fragment, as pack_short made it (most files are): written
                # out, as the main thread packs one per file.
                stored = short[i]
                length = stored & _SHORT_MASK
                fragment = stored >> 2 * _SHORT_BITS
                offset = stored >> _SHORT_BITS & _SHORT_MASK
                if length == 0 or fragment == INVALID_INDEX:
                    record = _DATA.pack(step, 0, _NO_TAIL)
                else:
                    if fragment != fragment_at:
                        fragment_at, digest = fragment, fragment_digest(fragment)
                    if offset == follow_at and digest == follow:
                        record = next_tail(step, 0, _NEXT_TAIL, checks[i])
                    else:
                        record = tail_at(step, 0, _TAIL_AT, digest, offset, checks[i])
                    follow, follow_at = digest, offset + length
            else:
                count, items, tail = locate(stored)
                if tail is None:
                    record = _DATA.pack(step, count, _NO_TAIL) + items
                elif follow_at == tail[1] and follow == tail[0]:
                    record = _DATA.pack(step, count, _NEXT_TAIL) + items + _CHECK.pack(
                        checks[i])
                else:
                    record = _DATA.pack(step, count, _TAIL_AT) + items + _TAIL.pack(
                        tail[0], tail[1], checks[i])
                if tail is not None:
                    follow, follow_at = tail[0], tail[1] + tail[2]
            parts.append(record)
            size += len(record)
            if size >= _SPOOL:
                data.append(z.compress(b"".join(parts)))
                parts.clear()
                size = 0
        data.append(z.compress(b"".join(parts)))
        data.append(z.flush())
        header = dict(self.header, entries=entry_count, files=len(self.positions),
                      block_size=locate.block_size,
                      notes=[[i, k, p.decode("latin-1")] for i, k, p in notes])
        head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        refs = b"".join(data)
        blob = b"".join([_MAGIC, _LEN.pack(len(head)), head, _SECTION.pack(len(entries)),
                         entries, _SECTION.pack(len(refs)), refs])
        return blob + hashlib.sha256(blob).digest()


class _Locator:
    """Turns where a file's data landed in the image being written into digests."""

    def __init__(self, records: Iterable[tuple[bytes, int, int, int, int]],
                 fragment_table: list[bytes],
                 block_size: int, fragments: bool) -> None:
        self._at = {r[1]: r[0] for r in records}
        self._fragments = [FRAGMENT_ENTRY.unpack(e)[0] for e in fragment_table]
        self.block_size = block_size
        self._use_fragments = fragments

    def fragment_digest(self, fragment: int) -> bytes:
        """The digest of fragment block ``fragment``."""
        return self._digest(self._fragments[fragment])

    def _digest(self, position: int) -> bytes:
        digest = self._at.get(position)
        if digest is None:
            raise BadLayerIndex(f"no block was written at offset {position}")
        return digest

    def __call__(self, stored: Stored) -> tuple[int, bytes, tuple[bytes, int, int] | None]:
        """A file's block items (their count and bytes) and its tail (the digest of the
        block holding it, its offset and length there), from where it landed."""
        bs = self.block_size
        if isinstance(stored, int):
            size, fragment, offset = unpack_short(stored)
            if size == 0 or fragment == INVALID_INDEX:
                return 0, b"", None
            return 0, b"", (self._digest(self._fragments[fragment]), offset, size)
        whole = stored.size // bs
        left = stored.size - whole * bs
        fields = stored.sizes if stored.sizes is not None else array("I")
        items: list[bytes] = []
        count = 0
        run = 0
        at = stored.start or 0
        for i in range(whole):
            field = fields[i]
            if field == 0:
                run += 1
                continue
            if run:
                items.append(b"\x00" + _RUN.pack(run))
                count += 1
                run = 0
            items.append(b"\x01" + self._digest(at))
            count += 1
            at += field & ~DATA_UNCOMPRESSED
        if run:
            items.append(b"\x00" + _RUN.pack(run))
            count += 1
        tail = None
        if left:
            if self._use_fragments:
                tail = (self._digest(self._fragments[stored.fragment]), stored.fragment_offset,
                        left)
            else:
                tail = (self._digest(at), 0, left)
        return count, b"".join(items), tail


class Recorder:
    """Gathers the layer indexes of the image being written (see the module docstring);
    :meth:`finish` writes them once the image is finished."""

    def __init__(self, settings: str, limits: Limits) -> None:
        self._settings = settings
        self._limits = limits
        #: by layer digest (None: over its budget, not indexed)
        self._layers: dict[str, _LayerRecord | None] = {}
        #: the layer being applied (None: not recorded)
        self.current: _LayerRecord | None = None
        #: the same, when its entries are gathered (None: not recorded, or replayed)
        self.gathering: _LayerRecord | None = None
        self._notes: _NoteRecorder | None = None

    def start(self, layer: Layer, fidelity: Fidelity,
              replayed: LayerIndex | None = None) -> Fidelity:
        """A layer's first pass begins; returns the fidelity record its reader notes into.
        A layer ``replayed`` from an index keeps that index's entry records and notes
        (the same bytes as gathering them again; only where its files went is new)."""
        digest = str(layer.descriptor.digest)
        # A layer a manifest lists twice is recorded where it is applied first (above).
        if digest in self._layers:
            self.current = None
        else:
            self.current = self._layers[digest] = _LayerRecord(
                _header_for(layer, self._settings, self._limits),
                max(layer.descriptor.size // _BUDGET_SHARE, _MIN_BUDGET),
                layer.descriptor.size)
        self.gathering = self.current
        count = replayed.header.get("entries") if replayed is not None else None
        if self.current is not None and replayed is not None and isinstance(count, int):
            self.current.kept = (replayed.entry_records, replayed.notes(), count)
            self.gathering = None
        self._notes = _NoteRecorder(fidelity, self.gathering)
        return self._notes

    def drop(self) -> None:
        """The layer being applied is not indexed after all (over its budget)."""
        for digest, record in self._layers.items():
            if record is self.current:
                self._layers[digest] = None
        self.current = self.gathering = None
        if self._notes is not None:
            self._notes.record = None

    def end(self) -> None:
        """The layer's first pass is over (a second pass's notes are not recorded)."""
        if self._notes is not None:
            self._notes.record = None
        self._notes = None

    def stop(self) -> None:
        """The layer's passes are over."""
        self.current = self.gathering = None

    def finish(self, directory: Path, reuse: BlockReuse, fragment_table: list[bytes],
               block_size: int, fragments: bool,
               write: Callable[[Path, bytes], None]) -> int:
        """Write the layer indexes into ``directory``; returns their total size."""
        locate = _Locator(reuse.records, fragment_table, block_size, fragments)
        total = 0
        for digest, record in self._layers.items():
            if record is None:
                continue
            try:
                blob = record.pack(locate)
            except BadLayerIndex as e:
                # Not expected: the image is whole, only this layer's index is left out
                # (a later compile decodes the layer).
                log.warning("no layer index for %s: %s", digest, e)
                continue
            if len(blob) > record.budget:
                log.debug("no layer index for %s: %d bytes, over its budget of %d",
                          digest, len(blob), record.budget)
                continue
            write(directory / index_name(digest), blob)
            total += len(blob)
        self._layers.clear()
        return total


# -- reading ---------------------------------------------------------------------------


#: Compressed bytes of an index section fed to the decoder at once: a layer's records
#: are parsed as they are decoded, so memory stays small whatever the entry count.
_PIECE = 64 << 10

#: One item of a data record: a block's digest, or a run of zero blocks.
Item = bytes | int
#: A tail: the digest of the block holding it, its offset and length there, its CRC-32.
Tail = tuple[bytes, int, int, int]
#: A data record: member position, block items, tail or None.
DataRecord = tuple[int, list[Item], Tail | None]


def _decoded(section: bytes) -> Iterator[bytes]:
    import zstandard

    if not section:
        return
    d = zstandard.ZstdDecompressor().decompressobj()
    try:
        for at in range(0, len(section), _PIECE):
            out = d.decompress(section[at:at + _PIECE])
            if out:
                yield out
    except zstandard.ZstdError as e:
        raise BadLayerIndex(f"a section does not decode: {e}") from e
    if not d.eof:
        raise BadLayerIndex("a section ends inside its zstd frame")


def _parse_entry(buf: bytes, at: int, metas: dict[tuple[object, ...], EntryMeta]
                 ) -> tuple[TarEntry, int] | None:
    """The entry record at ``at`` and where the next starts; None if ``buf`` ends first."""
    end = len(buf)
    if end - at < _ENTRY.size:
        return None
    (kind, mode, uid, gid, mtime, size, position, major, minor, plen, llen,
     nx) = _ENTRY.unpack_from(buf, at)
    p = at + _ENTRY.size
    if end - p < plen + llen:
        return None
    path = buf[p:p + plen]
    link = buf[p + plen:p + plen + llen]
    p += plen + llen
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    if nx:
        found = []
        for _ in range(nx):
            if end - p < _XATTR.size:
                return None
            nlen, vlen = _XATTR.unpack_from(buf, p)
            p += _XATTR.size
            if end - p < nlen + vlen:
                return None
            found.append((buf[p:p + nlen], buf[p + nlen:p + nlen + vlen]))
            p += nlen + vlen
        xattrs = tuple(found)
    if kind >= len(_KINDS):
        raise BadLayerIndex(f"an entry record has kind {kind}")
    key = (mode, uid, gid, mtime, xattrs)
    meta = metas.get(key)
    if meta is None:
        if len(metas) >= 1 << 16:
            metas.clear()
        meta = metas[key] = EntryMeta(mode, uid, gid, mtime, xattrs)
    return TarEntry(path, _KINDS[kind], meta, size, link, major, minor,
                    position), p


#: A data record as stored: position step, block items, tail kind, the tail's block
#: digest and offset (for _TAIL_AT), its CRC-32.
_RawData = tuple[int, list[Item], int, bytes, int, int]


def _parse_data(buf: bytes, at: int) -> tuple[_RawData, int] | None:
    """The data record at ``at`` and where the next starts; None if ``buf`` ends first."""
    end = len(buf)
    if end - at < _DATA.size:
        return None
    step, count, kind = _DATA.unpack_from(buf, at)
    p = at + _DATA.size
    items: list[Item] = []
    for _ in range(count):
        if end - p < 1 + (_RUN.size if buf[p:p + 1] == b"\x00" else 32):
            return None
        if buf[p] == 0:
            items.append(_RUN.unpack_from(buf, p + 1)[0])
            p += 1 + _RUN.size
        else:
            items.append(buf[p + 1:p + 33])
            p += 33
    digest, offset, check = b"", 0, 0
    if kind == _NEXT_TAIL:
        if end - p < _CHECK.size:
            return None
        (check,) = _CHECK.unpack_from(buf, p)
        p += _CHECK.size
    elif kind == _TAIL_AT:
        if end - p < _TAIL.size:
            return None
        digest, offset, check = _TAIL.unpack_from(buf, p)
        p += _TAIL.size
    elif kind != _NO_TAIL:
        raise BadLayerIndex(f"a data record has tail kind {kind}")
    return (step, items, kind, digest, offset, check), p


_T = TypeVar("_T")


def _records(section: bytes, parse: Callable[[bytes, int], tuple[_T, int] | None]
             ) -> Iterator[_T]:
    buf = b""
    at = 0
    for chunk in _decoded(section):
        buf = buf[at:] + chunk
        at = 0
        while True:
            parsed = parse(buf, at)
            if parsed is None:
                break
            record, at = parsed
            yield record
    if at != len(buf):
        raise BadLayerIndex("a section ends inside a record")


class LayerIndex:
    """A layer index read back; its sections are decoded as they are iterated."""

    def __init__(self, header: dict[str, object], entries: bytes, data: bytes) -> None:
        self.header = header
        self._entries = entries
        self._data = data

    @property
    def entry_records(self) -> bytes:
        """The entry section as stored (a zstd frame of the entry records)."""
        return self._entries

    def entries(self) -> Iterator[TarEntry]:
        """The layer's entries in tar order."""
        metas: dict[tuple[object, ...], EntryMeta] = {}
        return _records(self._entries, lambda buf, at: _parse_entry(buf, at, metas))

    def joined(self) -> Iterator[tuple[TarEntry, DataRecord | None]]:
        """Each entry with its data record (None: not a file, or one not written)."""
        block_size = self.header.get("block_size")
        if not isinstance(block_size, int) or block_size <= 0:
            raise BadLayerIndex("its header names no block size")
        data = _records(self._data, _parse_data)
        raw = next(data, None)
        position = 0
        follow: tuple[bytes, int] | None = None
        for e in self.entries():
            if raw is None or e.kind != "file":
                yield e, None
                continue
            if position + raw[0] < e.position:
                raise BadLayerIndex("a data record names no file entry")
            if position + raw[0] > e.position:
                yield e, None
                continue
            step, items, kind, digest, offset, check = raw
            position += step
            tail: Tail | None = None
            if kind != _NO_TAIL:
                length = e.size % block_size
                if kind == _NEXT_TAIL:
                    if follow is None:
                        raise BadLayerIndex("a tail follows none")
                    digest, offset = follow
                tail = (digest, offset, length, check)
                follow = (digest, offset + length)
            yield e, (position, items, tail)
            raw = next(data, None)
        if raw is not None:
            raise BadLayerIndex("a data record names no file entry")

    def notes(self) -> list[tuple[int, str, bytes]]:
        raw = self.header.get("notes", [])
        if not isinstance(raw, list):
            raise BadLayerIndex("its notes are not a list")
        return [(int(i), str(k), str(p).encode("latin-1")) for i, k, p in raw]


def read_layer_index(path: Path) -> LayerIndex:
    """The layer index at ``path``; raises ``BadLayerIndex`` when it is damaged (its
    sections are checked as they are decoded)."""
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW), "rb") as f:
            blob = f.read()
    except OSError as e:
        raise BadLayerIndex(f"cannot read it: {e.strerror or e}") from e
    if len(blob) < len(_MAGIC) + 4 + 16 + 32 or not blob.startswith(_MAGIC):
        raise BadLayerIndex("not a layer index")
    body, checksum = blob[:-32], blob[-32:]
    if hashlib.sha256(body).digest() != checksum:
        raise BadLayerIndex("its checksum does not match")
    try:
        at = len(_MAGIC)
        (n,) = _LEN.unpack_from(body, at)
        at += 4
        header = json.loads(body[at:at + n])
        at += n
        sections = []
        for _ in range(2):
            (m,) = _SECTION.unpack_from(body, at)
            at += 8
            sections.append(body[at:at + m])
            at += m
    except (struct.error, ValueError) as e:
        raise BadLayerIndex(f"it does not parse: {e}") from e
    if at != len(body) or not isinstance(header, dict):
        raise BadLayerIndex("its sections do not add up")
    return LayerIndex(header, sections[0], sections[1])


def check_layer_indexes(image: Path, index: Path, paths: Iterable[Path]
                        ) -> Iterator[tuple[Path, str]]:
    """What is wrong with the layer indexes at ``paths`` beside ``image`` and its sound
    block index ``index``: each must read back whole, name only blocks the block index
    holds, and each tail must match its CRC-32 in the block it names."""
    from .reuse import BlockReuse, read_index

    settings, _ = read_index(index)
    compressor, block_size = compressor_for(settings)
    reuse = BlockReuse.load(settings, [(image, index)])
    try:
        blocks = _Blocks(reuse, compressor.decompress, block_size)
        for path in paths:
            wrong = _check_layer_index(path, reuse, blocks)
            if wrong is not None:
                yield path, wrong
    finally:
        reuse.close()


def _check_layer_index(path: Path, reuse: BlockReuse, blocks: _Blocks) -> str | None:
    try:
        index = read_layer_index(path)
        count = files = 0
        for _, record in index.joined():
            count += 1
            if record is None:
                continue
            files += 1
            _, items, tail = record
            for item in items:
                if isinstance(item, bytes) and not reuse.has(item):
                    return "it names a block its image's block index does not hold"
            if tail is not None:
                if not reuse.has(tail[0]):
                    return "it names a block its image's block index does not hold"
                if zlib.crc32(blocks.piece(*tail[:3])) != tail[3]:
                    return "a file's tail does not match its CRC-32"
        index.notes()
    except ReplayError as e:
        return str(e)
    except (BadLayerIndex, struct.error, ValueError, KeyError, IndexError, TypeError) as e:
        return str(e)
    if count != index.header.get("entries") or files != index.header.get("files"):
        return "its record counts do not match its header"
    return None


class IndexedFile:
    """A replayed file's data, named by the digests of its blocks. The squashfs writer
    copies the blocks (``DataWriter.write_indexed``); any other reader may ``read`` it,
    which decodes them."""

    __slots__ = ("_at", "_blocks", "_buffer", "_source", "items", "size", "tail")

    def __init__(self, source: _Blocks, size: int, items: list[Item],
                 tail: Tail | None) -> None:
        self._source = source
        self.size = size
        self.items = items
        self.tail = tail
        self._blocks: Iterator[bytes] | None = None
        self._buffer = b""
        self._at = 0

    def tail_bytes(self) -> bytes:
        """The bytes of the file's last partial block (``b""``: none), checked against the
        CRC-32 the index keeps (the block holding them is found by its digest)."""
        return self.tail_piece()[0]

    def tail_piece(self) -> tuple[bytes, TailOrigin | None]:
        """:meth:`tail_bytes`, and where they lie: the digest of the block holding them,
        their offset there, and the block's length (None: no tail)."""
        if self.tail is None:
            return b"", None
        digest, offset, length, check = self.tail
        piece, block_length = self._source.tail(digest, offset, length, check)
        return piece, (digest, offset, block_length)

    def _chunks(self) -> Iterator[bytes]:
        bs = self._source.block_size
        for item in self.items:
            if isinstance(item, int):
                for _ in range(item):
                    yield bytes(bs)
            else:
                yield self._source.block(item)
        yield self.tail_bytes()

    def read(self, n: int = -1) -> bytes:
        if self._blocks is None:
            self._blocks = self._chunks()
        parts = [self._buffer]
        have = len(self._buffer)
        while n < 0 or have < n:
            chunk = next(self._blocks, None)
            if chunk is None:
                break
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        if n < 0:
            self._buffer = b""
            return data
        self._buffer = data[n:]
        return data[:n]


#: A block decoded, and the tails found in it that match their CRC-32 (offset, length,
#: CRC-32), checked by the thread that decoded it.
_Decoded = tuple[bytes, frozenset[tuple[int, int, int]]]


class _Blocks:
    """Uncompressed blocks of earlier images by digest. A replay has the blocks its next
    files' tails are in decoded ahead, and those tails checked, by a thread of its own
    (:meth:`ahead`, :meth:`release`)."""

    def __init__(self, reuse: BlockReuse, decompress: Callable[[bytes, int], bytes],
                 block_size: int) -> None:
        self._reuse = reuse
        self._decompress = decompress
        self.block_size = block_size
        self._cache: dict[bytes, _Decoded] = {}
        #: digest -> its decoding ahead, and how many runs of tails ahead need it
        self._ahead: dict[bytes, list[Future[_Decoded] | int]] = {}
        self._pool: ThreadPoolExecutor | None = None
        #: whether a replay has its tails' blocks decoded ahead (not when the writer
        #: places them without their bytes: it fetches few)
        self.decode_ahead = True

    def _decode(self, digest: bytes) -> bytes:
        """The block with ``digest``, read and decoded (on any thread)."""
        found = self._reuse.read(digest)
        if found is None:
            raise ReplayError("a block a layer index names cannot be read from its image")
        raw, field = found
        if field & DATA_UNCOMPRESSED:
            return raw
        try:
            return self._decompress(raw, self.block_size)
        except Exception as e:  # a codec's own error type
            raise ReplayError("a block a layer index names does not decode") from e

    def _decode_checking(self, digest: bytes, tails: list[tuple[int, int, int]]) -> _Decoded:
        block = self._decode(digest)
        view = memoryview(block)
        # Holding the GIL: taking it back from the writing thread after each tail would
        # cost more than the CRC-32 (as for the writer's own, see crc32_holding_gil).
        crc32 = crc32_holding_gil
        return block, frozenset(t for t in tails if len(view[t[0]:t[0] + t[1]]) == t[1]
                                and crc32(view[t[0]:t[0] + t[1]]) == t[2])

    def _decoded(self, digest: bytes) -> _Decoded:
        cache = self._cache
        found = cache.pop(digest, None)
        if found is None:
            ahead = self._ahead.get(digest)
            if ahead is not None:
                found = cast("Future[_Decoded]", ahead[0]).result()
            else:
                found = self._decode(digest), frozenset()
            if len(cache) >= _BLOCK_CACHE:
                del cache[next(iter(cache))]
        cache[digest] = found  # the most recently used last
        return found

    def ahead(self, digest: bytes, tails: list[tuple[int, int, int]]) -> None:
        """A run of files whose ``tails`` (offset, length, CRC-32) are in the block with
        ``digest`` comes soon: decode the block and check the tails now in the background
        (those of a block decoded already are checked as they are used). Each call is
        undone by a :meth:`release`."""
        ahead = self._ahead.get(digest)
        if ahead is not None:
            ahead[1] = cast(int, ahead[1]) + 1
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ocisquash-tails")
        self._ahead[digest] = [self._pool.submit(self._decode_checking, digest, tails), 1]

    def release(self, digest: bytes) -> None:
        """The run of tails an :meth:`ahead` call announced is over (its files were
        written, or passed over): the block is let go once no run ahead needs it."""
        ahead = self._ahead.get(digest)
        if ahead is None:  # forgotten
            return
        ahead[1] = cast(int, ahead[1]) - 1
        if not ahead[1]:
            cast("Future[_Decoded]", ahead[0]).cancel()
            del self._ahead[digest]

    def forget(self) -> None:
        """Let every block decoded ahead go (a replay's pass ended)."""
        for future, _ in self._ahead.values():
            cast("Future[_Decoded]", future).cancel()
        self._ahead.clear()

    def close(self) -> None:
        self.forget()
        self._cache.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def block(self, digest: bytes) -> bytes:
        """A whole block, checked against its digest."""
        block = self._decoded(digest)[0]
        if hashlib.sha256(block).digest() != digest:
            raise ReplayError("a block a layer index names does not match its digest")
        return block

    def piece(self, digest: bytes, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` in a block (unchecked)."""
        piece = self._decoded(digest)[0][offset:offset + length]
        if len(piece) != length:
            raise ReplayError("a file's tail lies past the end of its block")
        return piece

    def tail(self, digest: bytes, offset: int, length: int, check: int) -> tuple[bytes, int]:
        """A file's tail: ``length`` bytes at ``offset`` in a block, checked against their
        CRC-32 ``check`` (which costs less than hashing the whole block for each file in
        it, and catches a wrong offset too); and the block's length."""
        block, checked = self._decoded(digest)
        piece = block[offset:offset + length]
        if len(piece) != length:
            raise ReplayError("a file's tail lies past the end of its block")
        if (offset, length, check) not in checked and crc32_holding_gil(piece) != check:
            raise ReplayError("a file's tail does not match the CRC-32 its layer index keeps")
        return piece, len(block)


class Replay:
    """One layer's members, replayed from its index."""

    def __init__(self, index: LayerIndex, blocks: _Blocks) -> None:
        self._index = index
        self._blocks = blocks
        self._notes = index.notes()
        #: the records ``usable`` read, for the first pass (None: read them again)
        self._kept: list[tuple[TarEntry, DataRecord | None]] | None = None

    def usable(self, reuse: BlockReuse, hidden: Callable[[bytes], bool]) -> bool:
        """Whether every block the index names is at hand, and every file it holds no data
        for is hidden by ``hidden`` and named by no hard link of the layer. The records
        read are kept for the first pass when the layer has at most :data:`_KEPT`
        entries (decoding them again cost a sixth of a replay), else read again."""
        unwritten = []
        linked = set()
        kept: list[tuple[TarEntry, DataRecord | None]] | None = []
        for e, record in self._index.joined():
            if kept is not None:
                kept.append((e, record))
                if len(kept) > _KEPT:
                    kept = None
            if e.kind == "hardlink":
                linked.add(e.linkname)
            if e.kind != "file":
                continue
            if record is None:
                unwritten.append(e.path)
                continue
            for item in record[1]:
                if isinstance(item, bytes) and not reuse.has(item):
                    return False
            if record[2] is not None and not reuse.has(record[2][0]):
                return False
        if unwritten and not (linked.isdisjoint(unwritten)
                              and all(hidden(path) for path in unwritten)):
            return False
        self._kept = kept
        return True

    def members(self, fidelity: Fidelity | None) -> Iterator[tuple[TarEntry, BinaryIO | None]]:
        """``(entry, data)`` as the tar reader yields them; ``fidelity`` gets the notes
        the reader made (None: a second pass, which notes nothing)."""
        notes = self._notes
        n = 0
        blocks = self._blocks
        joined: Iterable[tuple[TarEntry, DataRecord | None]] = self._index.joined()
        if self._kept is not None:
            joined, self._kept = self._kept, None  # the first pass only: let them go
        for i, (e, record) in enumerate(self._ahead(joined)):
            while n < len(notes) and notes[n][0] <= i:
                if fidelity is not None:
                    fidelity.note(notes[n][1], notes[n][2])
                n += 1
            if e.kind != "file":
                yield e, None
            elif record is None:
                # Not written before, and hidden now or a whiteout marker (checked
                # before the replay began): the flattener skips it. Reading it would be
                # a bug, not a wrong image.
                yield e, cast(BinaryIO, _Unwritten())
            else:
                yield e, cast(BinaryIO, IndexedFile(blocks, e.size, record[1], record[2]))
        if fidelity is not None:
            for _, kind, path in notes[n:]:
                fidelity.note(kind, path)

    def _ahead(self, joined: Iterable[tuple[TarEntry, DataRecord | None]]
               ) -> Iterator[tuple[TarEntry, DataRecord | None]]:
        """``joined``, read ahead of the caller by up to :data:`_LOOKAHEAD` entries and
        as many runs of tails (consecutive tails in one block) as blocks make
        :data:`_AHEAD_BYTES`, so that each run's block is decoded and its tails checked
        before its files are written."""
        blocks = self._blocks
        if not blocks.decode_ahead:
            yield from joined
            return
        source = iter(joined)
        buffer: deque[tuple[TarEntry, DataRecord | None]] = deque()
        #: each run of tails ahead: its block's digest, its first and last entry's
        #: numbers, its tails (offset, length, CRC-32), and whether the block was asked
        #: for (when the run is complete, or about to be used)
        runs: deque[list[Any]] = deque()
        read = 0  # entries taken from ``source``
        given = 0  # entries handed on
        ahead = max(1, _AHEAD_BYTES // blocks.block_size)
        try:
            while True:
                while not buffer or (len(buffer) < _LOOKAHEAD and len(runs) < ahead):
                    item = next(source, None)
                    if item is None:
                        break
                    buffer.append(item)
                    record = item[1]
                    if record is not None and record[2] is not None:
                        digest, offset, length, check = record[2]
                        last = runs[-1] if runs else None
                        if last is not None and last[0] == digest and not last[4]:
                            last[2] = read
                            last[3].append((offset, length, check))
                        else:
                            if last is not None and not last[4]:
                                blocks.ahead(last[0], last[3])
                                last[4] = True
                            runs.append([digest, read, read, [(offset, length, check)], False])
                    read += 1
                if not buffer:
                    return
                # The caller is done with the entries before this one.
                while runs and runs[0][2] < given:
                    done = runs.popleft()
                    if done[4]:
                        blocks.release(done[0])
                if runs and not runs[-1][4] and runs[-1][1] <= given:
                    blocks.ahead(runs[-1][0], runs[-1][3])
                    runs[-1][4] = True
                given += 1
                yield buffer.popleft()
        finally:
            blocks.forget()


class _Unwritten(io.RawIOBase):
    def read(self, n: int = -1) -> bytes:
        raise ReplayError("a file the layer index holds no data for was needed")


class Indexes:
    """The layer indexes a compile replays and the ones it records (see the module
    docstring); what ``flatten`` is given as its ``indexes``."""

    def __init__(self, reuse: BlockReuse, settings: str, limits: Limits,
                 decompress: Callable[[bytes, int], bytes], block_size: int,
                 sources: Iterable[Path]) -> None:
        self.reuse = reuse
        self.recorder = Recorder(settings, limits)
        self._settings = hashlib.sha256(settings.encode()).hexdigest()
        self._limits = limits
        self._blocks = _Blocks(reuse, decompress, block_size)
        #: the cache entry directories whose images ``reuse`` has open
        self._sources = list(sources)
        #: layers replayed, and layers whose index was there but could not be used
        self.replayed = 0
        self.passed_over = 0
        #: the writer whose files are recorded (its ``last_stored``)
        self.writer: SquashfsWriter | None = None
        #: the layer :meth:`replay` replays, and its index (for :meth:`start`)
        self._replayed: tuple[Layer, LayerIndex] | None = None

    def finish(self, directory: Path, block_size: int, fragments: bool,
               write: Callable[[Path, bytes], None]) -> int:
        """Write the image's layer indexes into ``directory`` (after the writer finished);
        returns their total size."""
        assert self.writer is not None
        return self.recorder.finish(directory, self.reuse, self.writer.fragment_table,
                                    block_size, fragments, write)

    def start(self, layer: Layer, fidelity: Fidelity) -> Fidelity:
        replayed, self._replayed = self._replayed, None
        if replayed is not None and replayed[0] is not layer:
            replayed = None
        return self.recorder.start(layer, fidelity,
                                   replayed[1] if replayed is not None else None)

    def close(self) -> None:
        """Stop the thread that decodes blocks ahead of replays (when the writer is done
        with the files)."""
        self._blocks.close()

    def gather(self) -> list[TarEntry] | None:
        """The list the layer's first pass appends its entries to (no call per entry);
        None when they are not gathered (not recorded, or replayed)."""
        record = self.recorder.gathering
        return None if record is None else record.batch

    def gathered(self) -> bool:
        """Pack the entries gathered so far; False once the layer is over its budget
        (then not recorded)."""
        record = self.recorder.gathering
        if record is None:
            return False
        if record.flush():
            return True
        log.debug("no layer index for %s: over its budget after %d entries",
                  record.header["layer"], record.count)
        self.recorder.drop()
        return False

    def reading(self, stream: TarStream) -> None:
        """The layer being gathered is read from ``stream``."""
        record = self.recorder.gathering
        if record is not None:
            record.stream = stream

    def written(self, position: int) -> None:
        """The file at member ``position`` went where the writer's ``last_stored`` says."""
        record = self.recorder.current
        if record is not None:
            writer = self.writer
            assert writer is not None and writer.last_stored is not None
            stored = writer.last_stored
            # _LayerRecord.written, written out for the most common file, and the
            # writer's last_tail_check read without its property (two calls less per
            # file).
            if type(stored) is int and stored < 1 << 64:
                record.checks.append(writer.tails.tail_check)
                record.positions.append(position)
                record.short.append(stored)
            else:
                record.written(position, stored, writer.last_tail_check)

    def end(self) -> None:
        self.recorder.end()

    def stop(self) -> None:
        self.recorder.stop()

    def replay(self, layer: Layer, hidden: Callable[[bytes], bool]) -> Replay | None:
        """The replay of ``layer``, if an index allows one (see the module docstring);
        ``hidden(path)`` says whether the layer's pass leaves the data of a file at
        ``path`` unread (a whiteout marker, or a file the layers above hide)."""
        want = _header_for(layer, "", self._limits)
        want["settings"] = self._settings
        name = index_name(str(layer.descriptor.digest))
        found = False
        for directory in self._sources:
            path = directory / name
            if not path.is_file():
                continue
            found = True
            try:
                index = read_layer_index(path)
                if any(index.header.get(k) != v for k, v in want.items()):
                    continue
                replay = Replay(index, self._blocks)
                if not replay.usable(self.reuse, hidden):
                    continue
            except (BadLayerIndex, struct.error, ValueError, KeyError, IndexError,
                    TypeError):
                continue
            self.replayed += 1
            self._replayed = (layer, index)
            self._blocks.decode_ahead = self.writer is None or not self.writer.lazy_tails
            return replay
        if found:
            self.passed_over += 1
        return None
