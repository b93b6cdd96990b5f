"""The compact form of a compressed file's cluster index (datalayout
COMPRESSED_COMPACT), made from the full one that ``compress.py`` writes.

Format rules enforced here (``erofs_fs.h`` "compacted" indexes, the kernel's
``zmap.c`` ``compacted_load_cluster_from_disk`` and ``unpack_compacted_index``):

* the indexes start right after the 8-byte map header (no reserved 8 bytes), at
  ``ebase``; until the next 32-byte boundary they come in 4-byte form
  ("compacted_4b_initial", 0, 2, 4 or 6 of them), then, with
  ``Z_EROFS_ADVISE_COMPACTED_2B``, in 2-byte form in packs of 16 for as many whole packs
  as there are lclusters left, then 4-byte form again for the rest;
* a pack (2 entries of 4 bytes, or 16 of 2) is a little-endian bit string of entries,
  each ``lclusterbits`` (12) bits of value and 2 bits of lcluster type, 16 or 14 bits
  apart, then a 32-bit block address: the first block of the pack's first pcluster,
  as the kernel counts them (a HEAD counts one block unless its first NONHEAD, with the
  pcluster's block count, follows in the pack; that count moves the base);
* a HEAD's value is its ``clusterofs``, a NONHEAD's its distance back to the HEAD, or
  ``Z_EROFS_LI_D0_CBLKCNT`` with the block count; a NONHEAD last in its pack holds its
  distance forward to the next HEAD instead (the kernel takes the distance back from
  the entry before it);
* with big pclusters, ``Z_EROFS_ADVISE_BIG_PCLUSTER_1`` and ``_2`` are both set ("big
  pcluster head1/2 of compact indexes should be consistent").

So block addresses are not stored per pcluster: a file's pclusters must follow each
other on disk, which holds for a regular file's (written in one go) but not for the
packed inode's, which keeps full indexes.
"""

from __future__ import annotations

import re
import struct
import sys
from array import array
from collections.abc import Sequence

#: "struct z_erofs_lcluster_index" of the full form: di_advise (the type), clusterofs,
#: blkaddr | delta[2]
_FULL = struct.Struct("<HHI")
_DELTA = struct.Struct("<HHHH")
_PLAIN, _HEAD1, _NONHEAD = 0, 1, 2
_CBLKCNT = 1 << 11
#: "lclusterbits": one block
_LO_BITS = 12
_LO_MASK = (1 << _LO_BITS) - 1
#: a pack of 2 entries of 4 bytes (16 bits apart: two 16-bit words), then its blkaddr
_PACK2 = struct.Struct("<HHI")
#: Bits of an entry of the 2-byte form: its value and its type
_ENTRY_BITS = _LO_BITS + 2


def sections(total: int, ebase: int) -> tuple[int, int, int]:
    """How many lclusters are in the initial 4-byte form, the 2-byte form and the
    final 4-byte form."""
    initial = (32 - ebase % 32) // 4
    if initial == 8:
        initial = 0
    if initial >= total:
        return total, 0, 0
    two = (total - initial) // 16 * 16
    return initial, two, total - initial - two


def compact_size(total: int, ebase: int) -> int:
    """Bytes of the compact index of ``total`` lclusters starting at ``ebase``: up to
    the end of the pack that holds the last (where an inline pcluster begins)."""
    initial, two, rest = sections(total, ebase)
    return -(-initial // 2) * 8 + two * 2 + -(-rest // 2) * 8


def blocks_before(values: Sequence[int], i: int, start: int = 0) -> int:
    """Blocks of the pack's pclusters before the HEAD at ``i`` (the pack's entries from
    ``start``), counted as the kernel counts them (``unpack_compacted_index`` with big
    pclusters)."""
    blocks = 0
    while i > start:
        i -= 1
        kind, lo = values[i] >> _LO_BITS, values[i] & _LO_MASK
        if kind == _NONHEAD:
            if lo & _CBLKCNT:
                i -= 1
                blocks += lo & ~_CBLKCNT
                continue
            if lo <= 1:  # "bigpcluster shouldn't have plain d0 == 1"
                raise ValueError("a NONHEAD one lcluster after a HEAD without its count")
            i -= lo - 2
            continue
        blocks += 1
    return blocks


def one_block_blocks_before(values: Sequence[int], i: int) -> int:
    """The same count without big pclusters (mkfs.erofs without ``-C``), as the kernel
    makes it: 1, plus one for each pcluster before entry ``i`` of the pack, a NONHEAD
    skipping back over its ``delta[0]``. (This writer always sets big pclusters; the
    reader reads both.)"""
    blocks = 1
    while i > 0:
        i -= 1
        if values[i] >> _LO_BITS == _NONHEAD:
            i -= values[i] & _LO_MASK
        if i >= 0:
            blocks += 1
    return blocks


def entry(value: int) -> tuple[int, int]:
    """A compact entry's lcluster type and its value (clusterofs, a NONHEAD's delta
    or block count)."""
    return value >> _LO_BITS & 3, value & _LO_MASK


#: An lcluster that is not a NONHEAD, by its type's low byte (HEADs and PLAINs).
_NOT_NONHEAD = re.compile(b"[^\x02]")
#: The high bytes of values that fit an entry (14 bits).
_NARROW = bytes(range(1 << _ENTRY_BITS - 8))
#: A NONHEAD's delta[0] read as its compact value's high byte: its type over it.
_NONHEAD_HIGH = bytes(b | _NONHEAD << (_LO_BITS - 8) for b in range(256))


def _pairs(full: bytes, total: int) -> bytes | None:
    """:func:`to_compact` of an index of fewer than 16 lclusters, which has no pack of
    16 wherever it starts: packs of 2 only, each pair from an even entry. Most
    compressed files are this small (a few pclusters), and the whole-index operations
    cost more than a loop over their entries at the end of a compile of thousands."""
    entries = list(_DELTA.iter_unpack(full))
    values = [_NONHEAD << _LO_BITS | word2 if kind == _NONHEAD else kind << _LO_BITS | lo
              for kind, lo, word2, _ in entries]
    if max(values, default=0) >> _ENTRY_BITS:
        return None  # a value wider than its entry's 14 bits
    if total % 2:
        values.append(_PLAIN)
        entries.append((_NONHEAD, 0, 0, 0))  # no block, not read
    out = bytearray()
    for start in range(0, total, 2):
        base = None  # the block the pack's first pcluster starts at
        for i in (start, start + 1):
            kind, _, word2, word3 = entries[i]
            if kind == _NONHEAD or not (word2 or word3):
                continue
            try:
                want = (word2 | word3 << 16) - blocks_before(values, i, start)
            except ValueError:
                return None
            if base is not None and base != want:
                return None
            base = want
        last = values[start + 1]
        if last >> _LO_BITS == _NONHEAD and not last & _CBLKCNT:
            # a NONHEAD last in its pack holds its distance forward (delta[1]) instead
            last = _NONHEAD << _LO_BITS | min(entries[start + 1][3], _LO_MASK)
        out += _PACK2.pack(values[start], last, base or 0)
    return bytes(out)


def to_compact(full: bytes, ebase: int) -> bytes | None:
    """The compact form of the full index ``full`` placed at ``ebase``; None when the
    pclusters do not follow each other on disk (or an entry does not fit the form).

    Made with operations over the whole index rather than a loop per lcluster: a
    large file's index is converted at the end of the compile, on one thread, with a
    pack of 16 per 64 KiB of the file.
    """
    total = len(full) // 8
    if full[1::8].count(0) != total:
        return None  # a type of more than a byte
    if total < 16:
        return _pairs(full, total)
    return _sections(full, total, ebase)


def _sections(full: bytes, total: int, ebase: int) -> bytes | None:
    """:func:`to_compact` of any index (the type bytes checked)."""
    # Each lcluster's compact value, 16 bits: its type and clusterofs, for a NONHEAD
    # delta[0] or the block count (the full form's blkaddr low half).
    value_bytes = bytearray(2 * total)
    value_bytes[0::2] = full[4::8]
    value_bytes[1::2] = full[5::8].translate(_NONHEAD_HIGH)
    heads = [m.start() for m in _NOT_NONHEAD.finditer(full[0::8])]
    words = array("H", full)
    values = array("H", value_bytes)
    if sys.byteorder != "little":
        words.byteswap()
        values.byteswap()
    for i in heads:
        values[i] = words[4 * i] << _LO_BITS | words[4 * i + 1]
    high = values.tobytes()[sys.byteorder == "little"::2]
    if high.translate(None, _NARROW):
        return None  # a value wider than its entry's 14 bits
    initial, two, _ = sections(total, ebase)
    # The sections: where each starts, its entries per pack, where it stops.
    parts = ((0, 2, initial), (initial, 16, initial + two), (initial + two, 2, total))

    # The block each pack's first pcluster starts at, from the lclusters with a block
    # (HEADs and PLAINs, not a tail): the same from each of its HEADs (0: none).
    bases: dict[int, int] = {}
    for i in heads:
        blkaddr = words[4 * i + 2] | words[4 * i + 3] << 16
        if not blkaddr:
            continue
        at, per, _ = parts[0] if i < initial else parts[1] if i < initial + two else parts[2]
        start = i - (i - at) % per
        try:
            want = blkaddr - blocks_before(values, i, start)
        except ValueError:
            return None
        if bases.setdefault(start, want) != want:
            return None

    # A NONHEAD last in its pack holds its distance forward to the next HEAD (delta[1])
    # instead; PLAIN entries follow the file's last lcluster to the end of its pack.
    for at, per, stop in parts:
        lasts = slice(at + per - 1, stop, per)
        values[lasts] = array("H", [
            _NONHEAD << _LO_BITS | min(d1, _LO_MASK)
            if last >> _LO_BITS == _NONHEAD and not last & _CBLKCNT else last
            for last, d1 in zip(values[lasts], words[4 * lasts.start + 3:4 * stop:4 * per],
                                strict=True)])
    values.extend(_PLAIN for _ in range(total % 2))

    out = bytearray()
    for start in range(0, initial, 2):
        out += _PACK2.pack(values[start], values[start + 1], bases.get(start, 0))
    packs = two // 16
    if packs:
        # The packs of 16 at once: each entry's 14 bits moved down over the 2 unused
        # bits of the entries before it, so that a pack's bit string fills its first
        # 28 of 32 bytes; its base fills the other 4.
        section = values[initial:initial + two]
        base = array("I", (bases.get(start, 0) for start in range(initial, initial + two, 16)))
        if sys.byteorder != "little":
            section.byteswap()
            base.byteswap()
        entries = int.from_bytes(section.tobytes(), "little")
        first = int.from_bytes((b"\xff\xff" + bytes(30)) * packs, "little")  # each pack's first
        bits = 0
        for slot in range(16):
            bits |= entries >> 2 * slot & first << 14 * slot
        packed = bytearray(bits.to_bytes(32 * packs, "little"))
        fours = base.tobytes()
        for byte in range(4):
            packed[28 + byte::32] = fours[byte::4]
        out += packed
    for start in range(initial + two, total, 2):
        out += _PACK2.pack(values[start], values[start + 1], bases.get(start, 0))
    return bytes(out)
