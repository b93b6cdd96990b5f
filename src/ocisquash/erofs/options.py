"""How to write an EROFS image: the writer's options, importable without the writer.

Like ``squashfs.options``, a cached compile needs these for its cache key and must
not pay for the writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ..entry import EntryMeta
from ..errors import UsageError
from ..squashfs.options import resolve_mkfs_time


class ErofsCompression(Enum):
    """Compressor names as the CLI and the API spell them."""

    NONE = "none"
    LZ4 = "lz4"
    LZ4HC = "lz4hc"


#: The oldest Linux that mounts each compressor's images (for ``--help``): EROFS left
#: staging in 5.4; multi-block lz4 pclusters (BIG_PCLUSTER, COMPR_CFGS) came in 5.13.
MIN_KERNEL = {
    ErofsCompression.NONE: "5.4",
    ErofsCompression.LZ4: "5.13",
    ErofsCompression.LZ4HC: "5.13",
}

#: The oldest Linux that mounts images with fragments (a packed inode).
FRAGMENTS_MIN_KERNEL = "6.1"

#: What ``--help`` says about the EROFS compressors.
COMPRESSION_HELP = ", ".join(
    f"{c.value} (Linux {MIN_KERNEL[c]}+)" for c in ErofsCompression)


@dataclass(frozen=True)
class ErofsOptions:
    """How to write the image; invalid settings raise UsageError."""

    compression: ErofsCompression = ErofsCompression.LZ4HC
    #: lz4hc level 1..12; None = 9
    level: int | None = None
    #: file bytes compressed together into one physical cluster, a multiple of 4 KiB up
    #: to 1 MiB (the same 128 KiB as squashfs's default block)
    pcluster_size: int = 131072
    dedup: bool = True
    #: pack every file's last extent (small files whole) into one compressed "packed
    #: inode", as squashfs packs fragments: smaller images of small files; Linux 6.1+
    fragments: bool = False
    xattrs: bool = True
    #: image timestamp (the superblock's epoch); None = $SOURCE_DATE_EPOCH, else now
    mkfs_time: int | None = None
    #: compression threads; None = os.cpu_count()
    workers: int | None = None
    #: store every entry as owned by uid 0 / gid 0
    all_root: bool = False
    #: the volume uuid (zeros unless given: the image must not depend on chance)
    uuid: bytes = bytes(16)
    #: metadata of directories created implicitly (and of the root unless given)
    default_dir_meta: EntryMeta = field(default_factory=lambda: EntryMeta(mode=0o755))

    def __post_init__(self) -> None:
        ps = self.pcluster_size
        if not (4096 <= ps <= 1 << 20 and ps % 4096 == 0):
            raise UsageError(f"physical cluster size {ps} is not a multiple of 4 KiB "
                             "between 4 KiB and 1 MiB", hint="use e.g. 64K")
        if self.level is not None and not 1 <= self.level <= 12:
            raise UsageError(f"lz4hc level {self.level} is outside 1..12")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"workers must be at least 1, not {self.workers}")
        if self.mkfs_time is not None and not 0 <= self.mkfs_time < 2**32:
            raise UsageError(f"mkfs time {self.mkfs_time} is outside 0..2**32-1")
        if self.fragments and self.compression is ErofsCompression.NONE:
            raise UsageError("EROFS fragments are compressed: they need lz4 or lz4hc",
                             hint="drop --erofs-fragments or choose --compression lz4hc")
        if len(self.uuid) != 16:
            raise UsageError("the volume uuid must be 16 bytes")

    def resolved_mkfs_time(self) -> int:
        return resolve_mkfs_time(self.mkfs_time)
