"""Pure-Python EROFS writer: images the Linux kernel mounts and erofs-utils checks.

    from ocisquash.entry import EntryMeta
    from ocisquash.erofs import ErofsWriter, ErofsOptions, ErofsCompression

    with ErofsWriter("out.erofs", ErofsOptions(compression=ErofsCompression.NONE)) as w:
        w.add_file(b"etc/hostname", EntryMeta(mode=0o644), b"box\\n")
        w.add_symlink(b"bin", EntryMeta(mode=0o777), b"usr/bin")
        summary = w.finish()

The interface is ``SquashfsWriter``'s: entries in any order, parents created as
needed, a later add of a path replaces the earlier one. File data streams into the
image (lz4hc by default, 128 KiB of file data per physical cluster); only metadata
waits for :meth:`ErofsWriter.finish`.

One module per on-disk concern::

    format.py      constants, the superblock, compact and extended inodes
    options.py     ErofsOptions and the compressor names, importable without the writer
    data.py        file data: FLAT_PLAIN blocks, FLAT_INLINE tails, dedup, the spool
    chunks.py      holes: CHUNK_BASED files, the chunk size, the block map
    sparse.py      in a compressed image, large files mostly holes stay chunk-based
    compress.py    lz4/lz4hc/deflate/zstd pclusters in parallel (lz4 fitted to whole
                   blocks), the lcluster index, fragments (the packed inode),
                   ztailpacking, dedup
    zindex.py      the compact (2- and 4-byte) form of the cluster index
    directory.py   directory blocks of sorted entries
    xattr.py       name prefixes, inline xattr bodies, the shared xattr area
    tree.py        the entries until the end: a log of compact records per directory
    writer.py      ErofsWriter: the public API and the finish sequence, the
                   metabox (the inodes in one compressed inode)
    reader.py      ErofsReader: one file read back by its path (runtime configs)
    version.py     FORMAT_VERSION, importable without the writer (a cache key)

The path rules are the squashfs writer's (``squashfs/tree.py``).
"""

from typing import TYPE_CHECKING, Any

from .version import FORMAT_VERSION

if TYPE_CHECKING:
    from .options import ErofsCompression, ErofsOptions
    from .writer import ErofsSummary, ErofsWriter

__all__ = ["FORMAT_VERSION", "ErofsCompression", "ErofsOptions", "ErofsSummary",
           "ErofsWriter"]


def __getattr__(name: str) -> Any:
    if name in ("ErofsCompression", "ErofsOptions"):
        from . import options

        return getattr(options, name)
    if name in ("ErofsWriter", "ErofsSummary"):
        from . import writer

        return getattr(writer, name)
    raise AttributeError(f"module 'ocisquash.erofs' has no attribute {name!r}")
