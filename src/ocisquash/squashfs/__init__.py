"""Pure-Python squashfs 4.0 writer: the images the Linux kernel, squashfuse and
squashfs-tools read.

One module per on-disk concern::

    format.py      constants and fixed-size structures (superblock, inodes, entries)
    compressor.py  gzip / xz / zstd / lz4 / lzo blocks and the compressor-options block
    blocks.py      file data: parallel block compression, fragments, sparse, dedup
    metadata.py    8 KiB metadata blocks and lookup tables
    inode.py       inode records, basic or extended
    directory.py   directory listings, headers and index
    tables.py      id table and xattr table
    tree.py        the in-memory tree of entries and path rules
    writer.py      SquashfsWriter: the public API and the finish sequence
"""

from .compressor import Compression
from .writer import FORMAT_VERSION, SquashfsWriter, WriterOptions, WriteSummary

__all__ = ["FORMAT_VERSION", "Compression", "SquashfsWriter", "WriteSummary", "WriterOptions"]
