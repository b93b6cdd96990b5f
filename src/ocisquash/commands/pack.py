"""``ocisquash pack DIR OUT``: pack a local directory tree into a squashfs or EROFS image."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ._common import add_writer_arguments
from ._verity import add_verity_arguments


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "pack",
        help="pack a local directory tree into a squashfs or EROFS image",
        description=(
            "Pack DIR into the squashfs (or EROFS) image OUT, keeping owners, modes, mtimes, devices, "
            "hard links and user/trusted/security xattrs. Symlinks are stored, never followed."
        ),
    )
    parser.add_argument("source", metavar="DIR", type=Path, help="directory to pack")
    parser.add_argument("output", metavar="OUT", type=Path, help="image to write")
    add_writer_arguments(
        parser, compression_help="compressor (default: gzip, level 9, as mksquashfs)",
        time_help="image timestamp in seconds (default: $SOURCE_DATE_EPOCH, else now)")
    parser.add_argument("--format", choices=("squashfs", "erofs"), default="squashfs",
                        help="image format (default squashfs)")
    add_verity_arguments(parser)
    parser.add_argument("--force", action="store_true",
                        help="replace OUT if it exists (else an existing OUT is refused, as "
                             "mksquashfs refuses; OUT's directory must exist)")
    parser.add_argument("--all-root", action="store_true", help="store every entry as 0:0")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..erofs.options import ErofsOptions
    from ..pack import pack_image
    from ..rules import Fidelity
    from ..squashfs import WriteSummary
    from ..squashfs.options import WriterOptions
    from ._common import erofs_options_from_args, print_fidelity, writer_options_from_args

    if not args.source.exists() and not args.source.is_symlink():
        from ..errors import ImageNotFoundError

        # The input is missing, as with `compile oci:/nope`: the same exit status.
        raise ImageNotFoundError("no such directory", context=str(args.source),
                                 hint="pack takes the directory tree to put in the image")
    from ._verity import describe, verity_options_from_args

    options: WriterOptions | ErofsOptions
    if args.format == "erofs":
        options = erofs_options_from_args(args, all_root=args.all_root)
    else:
        options = writer_options_from_args(args, default_compression="gzip",
                                           all_root=args.all_root)
    verity = verity_options_from_args(args)
    fidelity = Fidelity()
    packed = pack_image(args.source, args.output, options, fidelity, verity=verity,
                        overwrite=args.force)
    summary = packed.summary
    issues = [i.to_json() for i in fidelity.issues()]
    if args.json:
        from ..jsonout import SCHEMA_VERSION, plain, write

        out = {"schema_version": SCHEMA_VERSION, **plain(dataclasses.asdict(summary)),
               "fidelity": plain(issues)}
        if packed.verity is not None:
            out["verity"] = plain(packed.verity.to_json())
        write(out, sys.stdout)
    elif not args.quiet:
        print(
            f"wrote {args.output}: {summary.bytes_written} bytes, {summary.inodes} inodes "
            f"({summary.files} files, {summary.directories} directories, "
            f"{summary.symlinks} symlinks, {summary.devices} special, "
            f"{summary.hardlinks} hard links), {summary.data_bytes_in} bytes of data in, "
            f"{summary.duplicates} duplicates, "
            + (f"{summary.fragments} fragment blocks, "
               if isinstance(summary, WriteSummary) else "")
            + f"{summary.compression} {summary.block_size // 1024}K blocks"
        )
        if packed.verity is not None:
            print(describe(packed.verity))
    if not args.json and not args.quiet:
        print_fidelity(fidelity.issues())
    return 0
