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

import operator
import struct
import sys
from array import array

#: "struct z_erofs_lcluster_index" of the full form: di_advise (the type), clusterofs,
#: blkaddr | delta[2]
_FULL = struct.Struct("<HHI")
_DELTA = struct.Struct("<HHHH")
_PLAIN, _HEAD1, _NONHEAD = 0, 1, 2
_CBLKCNT = 1 << 11
#: "lclusterbits": one block
_LO_BITS = 12
_LO_MASK = (1 << _LO_BITS) - 1


def _sections(total: int, ebase: int) -> tuple[int, int, int]:
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
    initial, two, rest = _sections(total, ebase)
    return -(-initial // 2) * 8 + two * 2 + -(-rest // 2) * 8


def _values(full: bytes) -> tuple[list[int], list[int], list[int]]:
    """Each lcluster of the full index as its compact value (type and clusterofs,
    delta[0] or block count), its delta[1] (read for NONHEADs) and its blkaddr (0 for a
    NONHEAD and for a tail, which has no block). A NONHEAD's delta[0] and delta[1] are
    the two halves of the blkaddr field: the index is read as 16-bit words."""
    words = array("H", full)
    if sys.byteorder != "little":
        words.byteswap()
    kinds, ofs, lo, hi = words[0::4], words[1::4], words[2::4], words[3::4]
    values = [k << _LO_BITS | (d0 if k == _NONHEAD else o) for k, o, d0 in zip(kinds, ofs, lo, strict=True)]
    addrs = [0 if k == _NONHEAD else a | b << 16 for k, a, b in zip(kinds, lo, hi, strict=True)]
    return values, hi.tolist(), addrs


def _pack(values: list[int], last_d1: int, heads: list[int], addrs: list[int], bits: int,
          size: int) -> bytes | None:
    """One pack of ``len(values)`` entries, ``bits`` apart, ``size`` bytes in all
    (``last_d1``: the last entry's delta[1]; ``heads``: where its entries with a block
    are, ``addrs`` their blocks); None when the HEADs' block addresses do not follow
    from one base."""
    last = values[-1]
    if last >> _LO_BITS == _NONHEAD and not last & _CBLKCNT:
        # A NONHEAD last in its pack holds its distance forward to the next HEAD.
        values = [*values[:-1], _NONHEAD << _LO_BITS | min(last_d1, _LO_MASK)]
    base = None
    for i, blkaddr in zip(heads, addrs, strict=True):
        want = blkaddr - _blocks_before(values, i)
        if base is None:
            base = want
        elif want != base:
            return None
    bitstring: int = sum(map(operator.lshift, values, _SHIFTS[bits]))
    return bitstring.to_bytes(size - 4, "little") + struct.pack("<I", base or 0)


#: Where each entry of a pack starts in its bit string, by the entries' spacing.
_SHIFTS = {14: [14 * i for i in range(16)], 16: [0, 16]}


def _blocks_before(values: list[int], i: int) -> int:
    """Blocks of the pack's pclusters before the HEAD at ``i``, counted as the kernel
    counts them (``unpack_compacted_index`` with big pclusters)."""
    blocks = 0
    while i > 0:
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


def to_compact(full: bytes, ebase: int) -> bytes | None:
    """The compact form of the full index ``full`` placed at ``ebase``; None when the
    pclusters do not follow each other on disk."""
    values, d1s, addrs = _values(full)
    initial, two, rest = _sections(len(values), ebase)
    # Past the last lcluster: PLAIN entries read by no one.
    values += [_PLAIN] * 16
    d1s += [0] * 16
    addrs += [0] * 16
    # Where the lclusters with a block are (HEADs and PLAINs, not a tail), in order.
    heads = [i for i, a in enumerate(addrs) if a]
    out = bytearray()
    at = 0
    h = 0  # the first of ``heads`` not in a pack yet
    for count, per, bits, size in ((initial, 2, 16, 8), (two, 16, 14, 32), (rest, 2, 16, 8)):
        for start in range(at, at + count, per):
            end = start + per
            group, last_d1 = values[start:end], d1s[end - 1]
            if at + count < end:  # the last pack: the entries after the last lcluster
                group[at + count - start:] = [_PLAIN] * (end - at - count)
                last_d1 = 0
            first = h
            while h < len(heads) and heads[h] < min(end, at + count):
                h += 1
            in_pack = heads[first:h]
            try:
                packed = _pack(group, last_d1, [i - start for i in in_pack],
                               [addrs[i] for i in in_pack], bits, size)
            except ValueError:
                packed = None
            if packed is None:
                return None
            out += packed
        at += count
    return bytes(out)
