"""How to write an image: the writer's options, importable without the writer.

``WriterOptions`` is part of a compiled image's cache key, so a cache hit needs it but
must not pay for the writer's compressors and threads (see
``tests/compile/test_warm_imports.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum

from ..entry import EntryMeta
from ..errors import UsageError
from .limits import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE


class Compression(Enum):
    """Compressor names as the CLI and the API spell them."""

    GZIP = "gzip"
    XZ = "xz"
    ZSTD = "zstd"
    LZ4 = "lz4"
    LZO = "lzo"


#: (lowest, highest, default) level of each compressor.
LEVELS: dict[Compression, tuple[int, int, int]] = {
    Compression.GZIP: (1, 9, 9),
    Compression.XZ: (0, 9, 6),
    Compression.ZSTD: (1, 22, 15),
    # lz4 levels only mean something in HC mode (lz4 HC levels 1..12, 9 = lz4's default).
    Compression.LZ4: (1, 12, 9),
    # python-lzo offers lzo1x_1 (level 1) and lzo1x_999 (level 9, i.e. its level 8).
    Compression.LZO: (1, 9, 9),
}


@dataclass(frozen=True)
class WriterOptions:
    """How to write the image. Invalid combinations raise UsageError when the writer
    is created (block size, levels, window, filters)."""

    compression: Compression = Compression.GZIP
    #: compressor level; None = that compressor's default (gzip 9, xz 6, zstd 15, lz4hc 9)
    level: int | None = None
    gzip_window: int = 15
    #: xz BCJ filters to try per block: x86, powerpc, ia64, arm, armthumb, sparc
    xz_filters: tuple[str, ...] = ()
    lz4_hc: bool = False
    block_size: int = 131072
    fragments: bool = True
    dedup: bool = True
    exportable: bool = True
    xattrs: bool = True
    #: image timestamp; None = $SOURCE_DATE_EPOCH if set, else the current time
    mkfs_time: int | None = None
    #: compression threads; None = os.cpu_count()
    workers: int | None = None
    #: store every entry as owned by uid 0 / gid 0
    all_root: bool = False
    #: metadata of directories created implicitly (and of the root unless given)
    default_dir_meta: EntryMeta = field(default_factory=lambda: EntryMeta(mode=0o755))

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise UsageError for settings no image can have (compressor settings are
        checked when a writer builds its compressor)."""
        bs = self.block_size
        if not (MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE and bs & (bs - 1) == 0):
            raise UsageError(
                f"block size {bs} is not a power of two between 4 KiB and 1 MiB",
                hint="use e.g. 128K or 1M",
            )
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"workers must be at least 1, not {self.workers}")
        if self.mkfs_time is not None and not 0 <= self.mkfs_time < 2**32:
            raise UsageError(f"mkfs time {self.mkfs_time} is outside 0..2**32-1")

    def resolved_mkfs_time(self) -> int:
        return resolve_mkfs_time(self.mkfs_time)


def resolve_mkfs_time(mkfs_time: int | None) -> int:
    """An image's timestamp: ``mkfs_time`` if given, else $SOURCE_DATE_EPOCH if set,
    else the current time (shared by the squashfs and EROFS writers)."""
    if mkfs_time is not None:
        return mkfs_time
    epoch = source_date_epoch()
    if epoch is not None:
        return epoch
    import time

    return int(time.time())


def source_date_epoch() -> int | None:
    """``$SOURCE_DATE_EPOCH`` as an image time, None when unset or empty; ``UsageError``
    when it is not an integer in 0..2**32-1 (reproducible-builds.org's rule)."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if not env:
        return None
    try:
        value = int(env)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH={env!r} is not an integer") from None
    if not 0 <= value < 2**32:
        raise UsageError(f"SOURCE_DATE_EPOCH={env!r} is outside 0..2**32-1")
    return value
