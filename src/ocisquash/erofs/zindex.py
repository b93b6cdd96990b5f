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

import struct

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


def _entries(full: bytes) -> list[tuple[int, int, int, int]]:
    """The full index as (type, clusterofs or delta[0], delta[1], blkaddr)."""
    out = []
    for at in range(0, len(full), _FULL.size):
        advise, clusterofs, blkaddr = _FULL.unpack_from(full, at)
        if advise == _NONHEAD:
            _, _, d0, d1 = _DELTA.unpack_from(full, at)
            out.append((_NONHEAD, d0, d1, 0))
        else:
            out.append((advise, clusterofs, 0, blkaddr))
    return out


def _pack(entries: list[tuple[int, int, int, int]], bits: int, size: int
          ) -> bytes | None:
    """One pack of ``len(entries)`` entries, ``bits`` apart, ``size`` bytes in all;
    None when its HEADs' block addresses do not follow from one base."""
    n = len(entries)
    values = []
    for i, (kind, lo, d1, _) in enumerate(entries):
        if kind == _NONHEAD and not lo & _CBLKCNT and i == n - 1:
            lo = min(d1, _LO_MASK)
        values.append(kind << _LO_BITS | lo)
    base = None
    for i, (kind, _, _, blkaddr) in enumerate(entries):
        if kind == _NONHEAD or not blkaddr:
            continue  # a tail (inline or in the packed inode) has no block
        want = blkaddr - _blocks_before(values, i)
        if base is None:
            base = want
        elif want != base:
            return None
    bitstring = 0
    for i, v in enumerate(values):
        bitstring |= v << (bits * i)
    return bitstring.to_bytes(size - 4, "little") + struct.pack("<I", base or 0)


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
    entries = _entries(full)
    initial, two, rest = _sections(len(entries), ebase)
    dummy = (_PLAIN, 0, 0, 0)  # past the last lcluster: read by no one
    out = bytearray()
    at = 0
    for count, per, bits, size in ((initial, 2, 16, 8), (two, 16, 14, 32), (rest, 2, 16, 8)):
        for start in range(at, at + count, per):
            group = entries[start:min(start + per, at + count)]
            group += [dummy] * (per - len(group))
            try:
                packed = _pack(group, bits, size)
            except ValueError:
                packed = None
            if packed is None:
                return None
            out += packed
        at += count
    return bytes(out)
