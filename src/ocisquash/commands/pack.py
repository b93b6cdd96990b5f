"""``ocisquash pack DIR OUT``: pack a local directory tree into a squashfs image."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

from ..errors import UsageError

_SIZE = re.compile(r"^(\d+)([KkMm]?)$")


def parse_size(text: str) -> int:
    """Parse a block size such as ``131072``, ``128K`` or ``1M``."""
    match = _SIZE.match(text.strip())
    if not match:
        raise UsageError(f"block size {text!r} is not a number with optional K or M suffix")
    value = int(match.group(1))
    return value * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "pack",
        help="pack a local directory tree into a squashfs image",
        description=(
            "Pack DIR into the squashfs image OUT, keeping owners, modes, mtimes, devices, "
            "hard links and user/trusted/security xattrs. Symlinks are stored, never followed."
        ),
    )
    parser.add_argument("source", metavar="DIR", type=Path, help="directory to pack")
    parser.add_argument("output", metavar="OUT", type=Path, help="image to write")
    parser.add_argument(
        "--compression",
        choices=["gzip", "xz", "zstd", "lz4", "lzo"],
        default="gzip",
        help="compressor (default: gzip)",
    )
    parser.add_argument("--level", type=int, help="compression level (default: the compressor's)")
    parser.add_argument(
        "--block-size",
        default="128K",
        metavar="SIZE",
        help="data block size, 4K..1M (default: 128K)",
    )
    parser.add_argument("--no-fragments", action="store_true", help="do not pack tail ends")
    parser.add_argument("--no-dedup", action="store_true", help="do not share identical files")
    parser.add_argument("--no-xattrs", action="store_true", help="do not store xattrs")
    parser.add_argument("--all-root", action="store_true", help="store every entry as 0:0")
    parser.add_argument(
        "--mkfs-time",
        type=int,
        metavar="T",
        help="image timestamp in seconds (default: $SOURCE_DATE_EPOCH, else now)",
    )
    parser.add_argument("--workers", type=int, metavar="N", help="compression threads")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..pack import pack_directory
    from ..squashfs import Compression, WriterOptions

    options = WriterOptions(
        compression=Compression(args.compression),
        level=args.level,
        block_size=parse_size(args.block_size),
        fragments=not args.no_fragments,
        dedup=not args.no_dedup,
        xattrs=not args.no_xattrs,
        all_root=args.all_root,
        mkfs_time=args.mkfs_time,
        workers=args.workers,
    )
    summary = pack_directory(args.source, args.output, options)
    if args.json:
        json.dump(dataclasses.asdict(summary), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not args.quiet:
        print(
            f"wrote {args.output}: {summary.bytes_written} bytes, {summary.inodes} inodes "
            f"({summary.files} files, {summary.directories} directories, "
            f"{summary.symlinks} symlinks, {summary.devices} special, "
            f"{summary.hardlinks} hard links), {summary.data_bytes_in} bytes of data in, "
            f"{summary.duplicates} duplicates, {summary.fragments} fragment blocks, "
            f"{summary.compression} {summary.block_size // 1024}K blocks"
        )
    return 0
