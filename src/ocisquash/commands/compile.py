"""``ocisquash compile``: an image in, one flattened squashfs (or tar) out."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_writer_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the squashfs writer that compile shares with pack."""
    g = p.add_argument_group("squashfs output")
    g.add_argument("--compression", "-c", default=None,
                   choices=("gzip", "xz", "zstd", "lz4", "lzo"),
                   help="compressor (compile's default: zstd level 6; every current Linux kernel "
                        "mounts it)")
    g.add_argument("--level", type=int, default=None,
                   help="compression level (default: 6 for compile's zstd, else the compressor's "
                        "own default, as mksquashfs: gzip 9, xz 6, zstd 15)")
    g.add_argument("--block-size", "-b", default="128K", metavar="SIZE",
                   help="data block size, a power of two from 4K to 1M (default 128K)")
    g.add_argument("--no-fragments", action="store_true", help="do not pack file tails into fragments")
    g.add_argument("--no-dedup", action="store_true", help="do not detect duplicate files")
    g.add_argument("--no-xattrs", action="store_true", help="leave extended attributes out")
    g.add_argument("--mkfs-time", type=int, default=None, metavar="EPOCH",
                   help="image timestamp (default: $SOURCE_DATE_EPOCH, else the image's config date)")
    g.add_argument("--workers", type=int, default=None, help="compression threads (default: all cores)")


def parse_size(text: str) -> int:
    from ..errors import UsageError

    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    for suffix, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    try:
        return int(float(t) * mult)
    except ValueError:
        raise UsageError(f"invalid size {text!r}", hint="use a number with an optional K, M or G") from None


def writer_options_from_args(args: argparse.Namespace, *, default_compression: str) -> object:
    from ..squashfs import Compression, WriterOptions

    return WriterOptions(
        compression=Compression(args.compression or default_compression),
        level=args.level,
        block_size=parse_size(args.block_size),
        fragments=not args.no_fragments,
        dedup=not args.no_dedup,
        xattrs=not args.no_xattrs,
        mkfs_time=args.mkfs_time,
        workers=args.workers,
    )


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from ._common import add_source_arguments

    p = sub.add_parser(
        "compile",
        help="compile an image into one flattened squashfs",
        description=(
            "Pull IMAGE (or read it from a local layout or archive), apply its layers by the "
            "OCI rules (whiteouts, opaque directories, hardlinks) and write one squashfs that "
            "a VM, sandbox or HPC job mounts as its root filesystem. The result is cached: "
            "compiling the same image again costs one manifest request."
        ),
        epilog=(
            "IMAGE forms:\n"
            "  alpine:3.20                    docker.io/library/alpine:3.20\n"
            "  docker://HOST[:PORT]/NAME:TAG  any OCI registry\n"
            "  NAME@sha256:DIGEST             a pinned image\n"
            "  oci:DIR[:TAG]                  an OCI image layout directory\n"
            "  oci-archive:FILE[:TAG]         a tar of an OCI layout\n"
            "  docker-archive:FILE[:REF]      a 'docker save' archive\n"
            "\nexamples:\n"
            "  ocisquash compile alpine:3.20 -o alpine.squashfs\n"
            "  ocisquash compile --platform linux/arm64 debian:12 -o debian-arm64.squashfs\n"
            "  ocisquash compile oci:./layout:v1 --format tar -o - | sqfstar out.sqfs\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", metavar="IMAGE", help="the image to compile")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="where to write the result ('-' for stdout); default: keep it in the cache "
                        "and print its path")
    p.add_argument("--format", choices=("squashfs", "tar"), default="squashfs",
                   help="squashfs (default) or the flattened tree as one tar stream")
    p.add_argument("--pull", choices=("never", "missing", "always"), default="missing",
                   help="missing (default): reuse a cached compile of the same manifest digest; "
                        "never: use the cache only; always: fetch and build again")
    p.add_argument("--no-cache", action="store_true",
                   help="build straight to OUT without storing the compiled image")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_source_arguments(p)
    add_writer_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..compile import DEFAULT_COMPRESSION, DEFAULT_ZSTD_LEVEL, compile_image
    from ..errors import UsageError
    from ._common import close_progress, source_options_from_args

    if args.compression is None and args.level is None:
        args.level = DEFAULT_ZSTD_LEVEL
    wopts = writer_options_from_args(args, default_compression=DEFAULT_COMPRESSION)
    sopts = source_options_from_args(args)
    output: object = args.output
    if args.output == "-":
        if args.json:
            raise UsageError("--json and -o - both want stdout")
        output = sys.stdout.buffer
    elif args.output is not None:
        output = Path(args.output)
    try:
        result = compile_image(
            args.image,
            output,  # type: ignore[arg-type]
            platform=args.platform,
            format=args.format,
            writer_options=wopts,  # type: ignore[arg-type]
            source_options=sopts,
            pull=args.pull,
            use_cache=not args.no_cache,
            progress=sopts.progress,
        )
    finally:
        close_progress(sopts)
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not args.quiet:
        what = "cached" if result.cached else "compiled"
        where = result.path if result.path else "stdout"
        print(
            f"{what} {result.reference} ({result.digest.short}, {result.platform}): "
            f"{where}, {result.size / 1e6:.1f} MB, {result.files} inodes",
            file=sys.stderr,
        )
        for issue in result.fidelity:
            examples = ", ".join("/" + str(e) for e in issue.get("examples", ())[:3])
            # squashfs keeps whole seconds only; most build tools write finer times, so
            # that loss is a note, not a warning that every compile would print.
            level = "note" if issue.get("kind") == "mtime-subsecond-truncated" else "warning"
            print(f"ocisquash: {level}: {issue.get('count', '?')} entries: "
                  f"{issue.get('detail', issue.get('kind', issue))}"
                  + (f" (e.g. {examples})" if examples else ""), file=sys.stderr)
        if args.output is None:
            print(result.path)
    return 0
