"""Parse an uncompressed tar stream into normalised members, in one pass.

The stream is parsed here rather than with ``tarfile``: its stream mode copies its
whole read buffer on every header read, which costs several times the CPU time of
this parser on layers of small files (figures: ``bench/README.md``). Supported: ustar (with the prefix field, joined
also under GNU magic where Go's archive/tar joins it, as layers written by Go 1.7
and older need), GNU (long names and links ``L``/``K``, base-256 numbers, old sparse
``S`` entries), PAX (per-entry and global headers: path, linkpath, size, uid, gid,
fractional mtime, ``SCHILY.xattr.*``, base64 ``LIBARCHIVE.xattr.*``, GNU sparse formats
0.0, 0.1 and 1.0), and old V7 directories. Names stay bytes, whatever their encoding.
A sparse file's holes read as zeros, or are skipped by a writer that asks
(``entry.HoleReader``). A bad checksum, a cut header or a cut file is a
``LayerError``; a stream that ends on a header boundary without the end-of-archive
blocks is accepted, as Go's archive/tar does.

Every header is bounded (``_MAX_META``), and so is what PAX global headers hand to
every later entry and a sparse file's map (``rules.Limits``): a small layer cannot
make the parser hold or re-read much.
"""

from __future__ import annotations

import math
import struct
from array import array
from collections.abc import Callable, Iterator
from typing import BinaryIO, cast
from zlib import adler32

from ..entry import PERMISSION_MASK, EntryMeta
from ..errors import LayerError, LimitExceededError
from ..rules import MAX_MTIME, Fidelity, Limits
from .decode import CHUNK as _CHUNK
from .decode import TarStream
from .entries import _METAS_KEPT, EntryKind, Member, TarEntry, _show, make_entry

_TYPES: dict[bytes, EntryKind] = {
    b"0": "file", b"\0": "file", b"7": "file", b"S": "file",
    b"1": "hardlink", b"2": "symlink", b"3": "char", b"4": "block", b"5": "dir", b"6": "fifo",
}

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


class Buffer:
    """Forward-only reads over the uncompressed stream, through one large buffer.

    Small reads (headers) are served from the buffer; large reads of file data go
    straight to the stream when the buffer is empty, so data is copied once. A read
    from the buffer moves ``_pos`` only (the parser's fast path does that itself):
    the tar offset is computed when asked for.
    """

    def __init__(self, stream: TarStream) -> None:
        self._stream = stream
        self._buf = b""
        self._pos = 0
        #: the tar offset of ``_buf[0]``
        self._base = 0

    @property
    def offset(self) -> int:
        """Bytes consumed so far (the tar offset of the next read)."""
        return self._base + self._pos

    def exact(self, n: int) -> bytes:
        """``n`` bytes, or fewer only at the end of the stream."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos >= n:
            self._pos = pos + n
            return buf[pos:pos + n]
        base = self._base + pos
        parts = [buf[pos:]]
        have = len(parts[0])
        while have < n:
            chunk = self._stream.read(max(_CHUNK, n - have))
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        joined = b"".join(parts)
        out, self._buf, self._pos, self._base = joined[:n], joined, min(n, len(joined)), base
        return out

    def some(self, n: int) -> bytes:
        """Between 1 and ``n`` bytes; ``b""`` only at the end of the stream."""
        avail = len(self._buf) - self._pos
        if avail <= 0:
            if n >= _CHUNK // 4:
                data = self._stream.read(n)
                self._base += len(data)  # past the (empty) buffer
                return data
            self._base += self._pos
            self._buf, self._pos = self._stream.read(_CHUNK), 0
            avail = len(self._buf)
            if not avail:
                return b""
        k = min(n, avail)
        out = self._buf[self._pos:self._pos + k]
        self._pos += k
        return out

    def take(self, n: int) -> bytes:
        """``n`` bytes, fewer only at the end of the stream; large reads are copied once."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos >= n:
            self._pos = pos + n
            return buf[pos:pos + n]
        return _gather(self.some(n), n, self.some)

    def skip(self, n: int) -> int:
        """Discard ``n`` bytes; returns how many were there."""
        if len(self._buf) - self._pos >= n:  # most skips: a member's padding
            self._pos += n
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

    def __init__(self, buf: Buffer, stored: int, size: int, sparse: array[int] | None,
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

    def regions(self) -> array[int] | None:
        """A sparse file's map (offset, length, …), None for a plain one
        (``entry.SparseSource``)."""
        return self._map

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


def members(stream: TarStream, limits: Limits, fid: Fidelity, context: str,
             small: int = -1) -> Iterator[Member]:
    """Parse the tar stream (ustar, GNU and PAX dialects) and yield normalised entries;
    the data of a file of at most ``small`` bytes (not sparse) as ``bytes``."""
    buf = Buffer(stream)
    globals_: dict[bytes, bytes] = {}
    global_bytes = 0
    pax: dict[bytes, bytes] = {}
    pax_sparse_pairs = array("q")
    long_name: bytes | None = None
    long_link: bytes | None = None
    index = 0
    metas: dict[tuple[int, int, int, int], EntryMeta] = {}
    #: the mode, uid, gid and mtime fields of plain headers -> the metadata they make
    owners: dict[tuple[bytes, bytes, bytes, bytes], EntryMeta] = {}
    # The plain members' fast path (below) reads these once.
    max_path = min(limits.max_path_length, 100)
    max_size = limits.max_file_size
    new_entry = tuple.__new__
    while True:
        have, pos = buf._buf, buf._pos
        if len(have) - pos >= _BLOCK:  # Buffer.exact's common case, without its call
            block = have[pos:pos + _BLOCK]
            buf._pos = pos + _BLOCK
        else:
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
        try:  # most headers: both numbers plain octal, parsed at once (see _num)
            chksum = int(f_chksum.rstrip(b"\0 "), 8)
            size = int(f_size.rstrip(b"\0 "), 8)
            plain = True
        except ValueError:  # the rest are parsed, with their errors, where they are used
            chksum = _num(f_chksum, "checksum", context)
            plain = False
        # The checksum counts its own field as spaces; 8 bytes sum below adler32's modulus.
        # (_byte_sum written out: this runs for every header)
        unsigned = ((adler32(block[:256]) & 0xFFFF) + (adler32(block[256:]) & 0xFFFF)
                    - (adler32(f_chksum) & 0xFFFF) - 1 + 8 * 0x20)
        if chksum != unsigned:
            # Some old tars summed signed chars.
            high = sum(1 for b in block[:148] + block[156:] if b > 127)
            if chksum != unsigned - 256 * high:
                raise LayerError(
                    f"invalid tar header at offset {buf.offset - _BLOCK} (bad checksum)",
                    context=context)
        if not plain:
            size = _num(f_size, "size", context)
        if size < 0:
            raise LayerError(f"invalid tar header at offset {buf.offset - _BLOCK} (negative "
                             "size)", context=context)
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

        if (plain and (typeflag == b"0" or typeflag == b"5") and not f_prefix[0]
                and long_name is None and long_link is None and not pax
                and not pax_sparse_pairs and not globals_):
            # Most members: a file or directory whose ustar or GNU header says all, with
            # no extended header before it. make_entry's steps written out for them (a
            # call is a tenth of the parse's time per member); anything unusual about
            # the name, times, ids or size takes the general path below. Owner, mode and
            # time repeat: their fields' bytes find the metadata they make.
            fields_at = (f_mode, f_uid, f_gid, f_mtime)
            meta = owners.get(fields_at)
            if meta is None:
                meta = _plain_meta(f_mode, f_uid, f_gid, f_mtime, metas)
                if meta is not None:
                    if len(owners) >= _METAS_KEPT:
                        owners.clear()
                    owners[fields_at] = meta
            name = f_name.partition(b"\0")[0]
            path = name[2:] if name[:2] == b"./" else name
            if path[-1:] == b"/":
                path = path[:-1]
            if (meta is not None and path and len(name) <= max_path and path[0] not in b"/."
                    and path[-1:] != b"/" and path.find(b"//") < 0 and path.find(b"/.") < 0
                    and size <= max_size):
                # (a ustar name of at most 100 bytes is never longer than MAX_NAME)
                if typeflag == b"5":
                    plain_entry = new_entry(TarEntry, (path, "dir", meta, 0, b"", 0, 0, index))
                    index += 1
                    yield plain_entry, None
                    if buf.skip(padded) != padded:
                        raise LayerError("tar stream truncated inside an entry", context=context)
                    continue
                plain_entry = new_entry(TarEntry, (path, "file", meta, size, b"", 0, 0, index))
                index += 1
                if size <= small:
                    have, pos = buf._buf, buf._pos
                    if len(have) - pos >= padded:  # Buffer.take and skip, without calls
                        data = have[pos:pos + size]
                        buf._pos = pos + padded
                    else:
                        data = buf.take(size)
                        if len(data) != size or buf.skip(padded - size) != padded - size:
                            raise _truncated_file(context, path)
                    yield plain_entry, data
                    continue
                data_stream = _MemberData(buf, size, size, None, context, path)
                yield plain_entry, cast(BinaryIO, data_stream)
                data_stream.finish()
                continue

        # A real member: gather its fields, extended headers first.
        header_at = buf.offset - _BLOCK
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
            entry = make_entry(name, kind, mode, uid, gid, mtime, linkname,
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


def _plain_meta(f_mode: bytes, f_uid: bytes, f_gid: bytes, f_mtime: bytes,
                metas: dict[tuple[int, int, int, int], EntryMeta]) -> EntryMeta | None:
    """The metadata ``make_entry`` makes of these header fields when they are plain octal
    and nothing needs clamping (one object per value, kept in ``metas``, which
    ``make_entry`` shares); None otherwise: the general path then parses them, with
    their errors, clamps and notes."""
    try:
        mode = int(f_mode.rstrip(b"\0 "), 8) & PERMISSION_MASK
        uid = int(f_uid.rstrip(b"\0 "), 8)
        gid = int(f_gid.rstrip(b"\0 "), 8)
        mtime = int(f_mtime.rstrip(b"\0 "), 8)
    except ValueError:
        return None
    if not (0 <= mtime <= MAX_MTIME and 0 <= uid < 1 << 32 and 0 <= gid < 1 << 32):
        return None
    key = (mode, uid, gid, mtime)
    meta = metas.get(key)
    if meta is None:
        if len(metas) >= _METAS_KEPT:
            metas.clear()
        meta = metas[key] = EntryMeta(mode, uid, gid, mtime)
    return meta


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


def _read_sparse_10(buf: Buffer, size: int, limits: Limits,
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
