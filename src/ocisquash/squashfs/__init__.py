"""Pure-Python squashfs 4.0 writer: the images the Linux kernel, squashfuse and
squashfs-tools read.

    from ocisquash.entry import EntryMeta
    from ocisquash.squashfs import SquashfsWriter, WriterOptions, Compression

    with SquashfsWriter("out.squashfs", WriterOptions(compression=Compression.ZSTD)) as w:
        w.add_file(b"etc/hostname", EntryMeta(mode=0o644), b"box\n")
        w.add_symlink(b"bin", EntryMeta(mode=0o777), b"usr/bin")
        summary = w.finish()

Entries may arrive in any order (parents are created as needed) and a later add of
the same path replaces the earlier one. File data streams through a bounded pool of
compression threads; only metadata is kept in memory until :meth:`finish`.

One module per on-disk concern::

    format.py      constants and fixed-size structures (superblock, inodes, entries)
    options.py     WriterOptions and the Compression names, importable without the writer
    compressor.py  gzip / xz / zstd / lz4 / lzo blocks and the compressor-options block
    blocks.py      file data: parallel block compression, fragments, sparse, dedup
    reuse.py       block indexes: a recompile copies the blocks earlier images hold
    layerindex.py  layer indexes: a recompile replays the layers earlier images applied
    metadata.py    8 KiB metadata blocks and lookup tables
    inode.py       inode records, basic or extended
    directory.py   directory listings, headers and index
    tables.py      id table and xattr table
    tree.py        the in-memory tree of entries and path rules
    writer.py      SquashfsWriter: the public API and the finish sequence
    reader.py      SquashfsReader: one file read back by its path (runtime configs)
    version.py     FORMAT_VERSION, importable without the writer (a cache key)

The writer's names are imported on first use: a cached compile imports
``ocisquash.squashfs.version`` and ``.options`` only and must not pay for the writer's threads and
compressors.
"""

from typing import TYPE_CHECKING, Any

from .version import FORMAT_VERSION

if TYPE_CHECKING:
    from .options import Compression, WriterOptions
    from .writer import SquashfsWriter, WriteSummary

__all__ = ["FORMAT_VERSION", "Compression", "SquashfsWriter", "WriteSummary", "WriterOptions"]


def __getattr__(name: str) -> Any:
    if name in ("Compression", "WriterOptions"):
        from . import options

        return getattr(options, name)
    if name in ("SquashfsWriter", "WriteSummary"):
        from . import writer

        return getattr(writer, name)
    raise AttributeError(f"module 'ocisquash.squashfs' has no attribute {name!r}")
