"""Directory data: blocks of sorted entries.

Format rules enforced here (``erofs.rst``, "Directories"):

* a directory's data is a sequence of blocks; each block holds "erofs_dirent"
  records (nid, nameoff, file_type) followed by the names they point at, not
  NUL-terminated; "the number of dirents in a block is nameoff[0] / 12";
* "dirent sorts in alphabet order, thus we can do binary search": every name of the
  directory, ``.`` and ``..`` included, in byte order across all blocks;
* a name's length is up to the next name's offset; the last name of a block runs to
  the first NUL or the end of the block, and in the last block to the directory's
  size, so a directory's size ends exactly after its last name;
* an entry never spans two blocks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .format import BLOCK_SIZE, DIRENT

#: (name, file type, nid)
DirEntry = tuple[bytes, int, int]


def split_blocks(names: list[bytes]) -> list[int]:
    """How many of the sorted ``names`` each block holds, first block first (the blocks
    :func:`pack_blocks` makes of them)."""
    counts: list[int] = []
    used = n = 0
    for name in names:
        cost = DIRENT.size + len(name)
        if used + cost > BLOCK_SIZE:
            counts.append(n)
            used = n = 0
        used += cost
        n += 1
    counts.append(n)
    return counts


def pack_blocks(entries: Iterable[DirEntry]) -> Iterator[bytes]:
    """The blocks of the sorted ``entries``, used bytes only (the last one is not
    padded), made one at a time: a block takes entries while they fit, as
    :func:`split_blocks` counts them."""
    block: list[DirEntry] = []
    used = 0
    for entry in entries:
        cost = DIRENT.size + len(entry[0])
        if used + cost > BLOCK_SIZE:
            yield pack_block(block)
            block, used = [], 0
        block.append(entry)
        used += cost
    yield pack_block(block)


def directory_size(names: list[bytes], counts: list[int]) -> int:
    """The directory's ``i_size``: full blocks, then the last block up to its last name."""
    last = names[len(names) - counts[-1]:]
    return (len(counts) - 1) * BLOCK_SIZE + sum(DIRENT.size + len(n) for n in last)


def pack_block(entries: list[DirEntry]) -> bytes:
    """One directory block's used bytes (not padded)."""
    nameoff = DIRENT.size * len(entries)
    heads = []
    for name, file_type, nid in entries:
        heads.append(DIRENT.pack(nid, nameoff, file_type, 0))
        nameoff += len(name)
    return b"".join(heads) + b"".join(name for name, _, _ in entries)
