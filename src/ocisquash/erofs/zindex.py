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
#: a pack of 2 entries of 4 bytes (16 bits apart: two 16-bit words), then its blkaddr
_PACK2 = struct.Struct("<HHI")
_BASE = struct.Struct("<I")
#: PLAIN entries after the last lcluster, read by no one (enough for any pack)
_PAST_END = [_PLAIN] * 16


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


#: Where each entry of a pack of 16 starts in its bit string (14 bits apart).
_SHIFTS = [14 * i for i in range(16)]


def blocks_before(values: list[int], i: int) -> int:
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
    words = array("H", full)
    if sys.byteorder != "little":
        words.byteswap()
    kinds, lo, hi = words[0::4], words[2::4], words[3::4]
    # The index read as 16-bit words: type, clusterofs, and blkaddr's halves, which for
    # a NONHEAD are delta[0] and delta[1]. Each lcluster's compact value is its type and
    # clusterofs (a NONHEAD: delta[0] or the block count); PLAIN entries past the end.
    values = [k << _LO_BITS | (d0 if k == _NONHEAD else o)
              for k, o, d0 in zip(kinds, words[1::4], lo, strict=True)]
    total = len(values)
    values += _PAST_END
    # Where the lclusters with a block are (HEADs and PLAINs, not a tail), in order.
    heads = [i for i, (k, a, b) in enumerate(zip(kinds, lo, hi, strict=True))
             if k != _NONHEAD and (a or b)]
    heads.append(total)  # after every pack
    initial, two, rest = sections(total, ebase)
    out = bytearray()
    at = 0
    h = 0  # the first of ``heads`` not in a pack yet
    for count, per in ((initial, 2), (two, 16), (rest, 2)):
        stop = at + count
        for start in range(at, stop, per):
            end = start + per
            group = values[start:end]
            if stop < end:  # the last pack: the entries after the last lcluster
                group[stop - start:] = _PAST_END[:end - stop]
                last_d1 = 0
            else:
                last_d1 = hi[end - 1]
            last = group[-1]
            if last >> _LO_BITS == _NONHEAD and not last & _CBLKCNT:
                # A NONHEAD last in its pack holds its distance forward to the next HEAD.
                group[-1] = _NONHEAD << _LO_BITS | min(last_d1, _LO_MASK)
            # The block the pack's first pcluster starts at, the same from each HEAD.
            base = None
            while heads[h] < end and heads[h] < stop:
                i = heads[h]
                h += 1
                try:
                    want = (lo[i] | hi[i] << 16) - (blocks_before(group, i - start)
                                                   if i > start else 0)
                except ValueError:
                    return None
                if base is None:
                    base = want
                elif want != base:
                    return None
            if per == 2:
                out += _PACK2.pack(group[0], group[1], base or 0)
            else:
                bitstring: int = sum(map(operator.lshift, group, _SHIFTS))
                out += bitstring.to_bytes(28, "little")
                out += _BASE.pack(base or 0)
        at = stop
    return bytes(out)
