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
    DEFLATE = "deflate"
    ZSTD = "zstd"


#: The oldest Linux that mounts each compressor's images (for ``--help``): EROFS left
#: staging in 5.4; multi-block lz4 pclusters (BIG_PCLUSTER, COMPR_CFGS) came in 5.13.
MIN_KERNEL = {
    ErofsCompression.NONE: "5.4",
    ErofsCompression.LZ4: "5.13",
    ErofsCompression.LZ4HC: "5.13",
    ErofsCompression.DEFLATE: "6.6",
    ErofsCompression.ZSTD: "6.10",
}

#: Each compressor's levels and the level used when none is given.
LEVELS = {
    ErofsCompression.LZ4HC: (1, 12, 9),
    ErofsCompression.DEFLATE: (1, 9, 9),
    ErofsCompression.ZSTD: (1, 22, 15),
}

#: The oldest Linux that mounts images with fragments (a packed inode).
FRAGMENTS_MIN_KERNEL = "6.1"

#: The oldest Linux that mounts images whose compressed tails are inline
#: (ZTAILPACKING).
ZTAILPACKING_MIN_KERNEL = "5.17"

#: The oldest Linux that mounts images whose inodes are in a metabox (METABOX, 48BIT).
METABOX_MIN_KERNEL = "6.17"

#: The oldest Linux that mounts images with a chunk-based file (CHUNKED_FILE): one
#: with an all-zero chunk, stored as a hole (see ``chunks.py``).
HOLES_MIN_KERNEL = "5.15"

#: The oldest Linux ``for_kernel`` accepts: EROFS left staging in 5.4.
OLDEST_KERNEL = "5.4"


def kernel_version(text: str) -> tuple[int, int]:
    """``"6.1"``, ``"5.15.0-91-generic"`` → (6, 1); anything else raises UsageError."""
    head = text.strip().split("-", 1)[0].split(".")
    try:
        if len(head) < 2 or not all(part.isdigit() for part in head[:3]):
            raise ValueError
        return int(head[0]), int(head[1])
    except ValueError:
        raise UsageError(f"invalid kernel version {text!r}",
                         hint="give MAJOR.MINOR, e.g. 5.15 or 6.1 (`uname -r` of the "
                              "oldest host that mounts the image)") from None


#: What ``--help`` says about the EROFS compressors.
COMPRESSION_HELP = "default lz4hc; " + ", ".join(
    f"{c.value} (Linux {MIN_KERNEL[c]}+)" for c in ErofsCompression)


@dataclass(frozen=True)
class ErofsOptions:
    """How to write the image; invalid settings raise UsageError."""

    compression: ErofsCompression = ErofsCompression.LZ4HC
    #: compressor level (lz4hc 1..12, deflate 1..9, zstd 1..22); None = 9, 9, 15
    level: int | None = None
    #: the most file bytes one physical cluster holds, a multiple of 4 KiB up to 1 MiB
    #: (the same 128 KiB as squashfs's default block); lz4 pclusters hold as much as
    #: fills their blocks, up to this, deflate and zstd ones exactly this
    pcluster_size: int = 131072
    dedup: bool = True
    #: pack every file's last extent (small files whole) into one compressed "packed
    #: inode", as squashfs packs fragments: smaller images of small files; Linux 6.1+
    fragments: bool = False
    #: store a compressed file's last pcluster right after its inode when it fits in
    #: that block, instead of padding it to a block of its own; Linux 5.17+
    ztailpacking: bool = False
    #: store the inodes, and with them the directories and small files that go inline,
    #: in one compressed "metabox" inode instead of uncompressed: squashfs's size on
    #: trees of many small files; Linux 6.17+, where it is marked experimental
    metabox: bool = False
    #: store a file with an all-zero 4 KiB-aligned chunk chunk-based, its zero chunks as
    #: holes: a 1 TiB sparse file costs its data, not 1 TiB (Linux 5.15+ for an image
    #: with such a file); False writes every zero, as Linux 5.4 and 5.13 read
    holes: bool = True
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
        if self.level is not None:
            low, high, _ = LEVELS.get(self.compression, (0, 0, 0))
            if not low <= self.level <= high:
                raise UsageError(
                    f"{self.compression.value} has no level {self.level}",
                    hint=f"use {low}..{high}" if high else "give no --level for it")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"workers must be at least 1, not {self.workers}")
        if self.mkfs_time is not None and not 0 <= self.mkfs_time < 2**32:
            raise UsageError(f"mkfs time {self.mkfs_time} is outside 0..2**32-1")
        if self.fragments and self.compression is ErofsCompression.NONE:
            raise UsageError("EROFS fragments are compressed: they need a compressor",
                             hint="drop --erofs-fragments or choose --compression lz4hc")
        if self.ztailpacking and self.compression is ErofsCompression.NONE:
            raise UsageError("EROFS tail packing of compressed data needs a compressor",
                             hint="drop --erofs-ztailpacking (uncompressed tails are "
                                  "always inline) or choose --compression lz4hc")
        if self.metabox and self.compression is ErofsCompression.NONE:
            raise UsageError("an EROFS metabox is compressed: it needs a compressor",
                             hint="drop --erofs-metabox or choose --compression lz4hc")
        if len(self.uuid) != 16:
            raise UsageError("the volume uuid must be 16 bytes")

    @classmethod
    def for_kernel(cls, kernel: str, **settings: object) -> ErofsOptions:
        """Options whose images the given Linux and every later one mount.

        Every EROFS feature that ``kernel`` reads and that makes images smaller is
        switched on: fragments from 6.1 (which carry file tails, so tail packing is
        left off), else ztailpacking from 5.17; holes are kept from 5.15 and turned off
        before it. The metabox (6.17) is left to be asked for: Linux calls it
        experimental. ``settings`` are the other fields, and a feature given there wins
        (``holes=False`` on 6.1 stays off); a compressor or feature asked for there that
        ``kernel`` cannot mount raises UsageError, naming the version it needs.
        """
        have = kernel_version(kernel)
        shown = f"{have[0]}.{have[1]}"
        if have < kernel_version(OLDEST_KERNEL):
            raise UsageError(f"Linux {shown} cannot mount EROFS images",
                             hint=f"EROFS is mountable from Linux {OLDEST_KERNEL}")
        compression = settings.get("compression", cls.compression)
        assert isinstance(compression, ErofsCompression)
        needs = MIN_KERNEL[compression]
        if have < kernel_version(needs):
            raise UsageError(
                f"Linux {shown} cannot mount EROFS images compressed with "
                f"{compression.value} (it needs Linux {needs}+)",
                hint="choose --compression " + ", ".join(
                    c.value for c in ErofsCompression if have >= kernel_version(MIN_KERNEL[c])))
        wanted = {"fragments": FRAGMENTS_MIN_KERNEL, "ztailpacking": ZTAILPACKING_MIN_KERNEL,
                  "metabox": METABOX_MIN_KERNEL, "holes": HOLES_MIN_KERNEL}
        for name, since in wanted.items():
            if settings.get(name) and have < kernel_version(since):
                raise UsageError(f"Linux {shown} cannot mount EROFS images with {name} "
                                 f"(it needs Linux {since}+)",
                                 hint=f"drop --erofs-{name} or give a later kernel")
        compressed = compression is not ErofsCompression.NONE
        fragments = compressed and have >= kernel_version(FRAGMENTS_MIN_KERNEL)
        chosen: dict[str, object] = {
            "fragments": fragments,
            "ztailpacking": (compressed and not fragments
                             and have >= kernel_version(ZTAILPACKING_MIN_KERNEL)),
            "holes": have >= kernel_version(HOLES_MIN_KERNEL),
        }
        chosen.update(settings)
        return cls(**chosen)  # type: ignore[arg-type]

    def resolved_level(self) -> int | None:
        """The level the compressor runs at (None: lz4's single fast mode, or none)."""
        if self.compression not in LEVELS:
            return None
        return self.level if self.level is not None else LEVELS[self.compression][2]

    def resolved_mkfs_time(self) -> int:
        return resolve_mkfs_time(self.mkfs_time)
