"""``ocisquash compile``: an image in, one flattened squashfs (or tar) out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..erofs.options import ErofsOptions
    from ..squashfs.options import WriterOptions


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from ._common import add_source_arguments, add_writer_arguments
    from ._verity import add_verity_arguments

    p = sub.add_parser(
        "compile",
        help="compile an image into one flattened squashfs or EROFS image",
        description=(
            "Pull IMAGE (or read it from a local layout or archive), apply its layers by the "
            "OCI rules (whiteouts, opaque directories, hardlinks) and write one squashfs (or "
            "EROFS, with --format erofs) that "
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
            "  ocisquash compile alpine:3.20 --format erofs -o alpine.erofs\n"
            "  ocisquash compile app:1 -o app.raw --verity    # app.verity, app.roothash\n"
            "  ocisquash compile app:1 -o app.squashfs --bundle app && "
            "ocisquash mount app.squashfs app/rootfs && runc run -b app app1\n"
            "\nOUT:\n"
            "  OUT must not exist (--force replaces it) and its directory must exist. It is\n"
            "  written under a temporary name beside it and renamed when complete. A\n"
            "  character device or FIFO (/dev/null, a named pipe, /dev/stdout) is written\n"
            "  into, never replaced; '-' is stdout, refused when stdout is a terminal.\n"
            "  A cached image is placed as a reflink where the filesystem has them, else as\n"
            "  a read-only hard link to the cache's own file (that is what makes a warm\n"
            "  compile take 0.1 s; writing to it anyway damages the cache entry, which the\n"
            "  next compile rebuilds), else as a copy. --copy gives an independent,\n"
            "  writable file.\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", metavar="IMAGE", help="the image to compile")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="where to write the result ('-' for stdout; see OUT below); default: "
                        "keep it in the cache and print its path")
    p.add_argument("--force", action="store_true",
                   help="replace OUT if it exists")
    p.add_argument("--copy", action="store_true",
                   help="make OUT an independent, writable file rather than a read-only hard "
                        "link into the cache")
    p.add_argument("--format", choices=("squashfs", "erofs", "tar"), default="squashfs",
                   help="squashfs (default), EROFS, or the flattened tree as one tar stream")
    p.add_argument("--pull", choices=("never", "missing", "always"), default="missing",
                   help="missing (default): reuse a cached compile of the same manifest digest; "
                        "never: use the cache only; always: fetch and build again")
    p.add_argument("--no-cache", action="store_true",
                   help="build straight to OUT without storing the compiled image")
    p.add_argument("--json", action="store_true",
                   help="print a JSON summary on stdout (schema: docs/json.md)")
    p.add_argument("--bundle", metavar="DIR", type=Path,
                   help="also write an OCI runtime bundle: DIR/config.json (the image's "
                        "config converted for runc) and the mount point DIR/rootfs")
    p.add_argument("--config-out", metavar="FILE", type=Path,
                   help="also write the image's config JSON, byte for byte as served")
    g = p.add_argument_group(
        "published compiles",
        "A compiled image pushed with 'ocisquash push' (or --publish) is an OCI 1.1 artifact "
        "beside the image in its registry. Another host fetches it instead of compiling "
        "when the manifest digest, format version and output options match, after "
        "checking every blob and, with --verity, the root hash recomputed from the image.")
    g.add_argument("--use-published", nargs="?", const="use", choices=("use", "verify"),
                   metavar="verify",
                   help="fetch a published compile of IMAGE instead of compiling; with "
                        "=verify fetch it and compile too, report every difference, and "
                        "exit with status 1 when there is one")
    g.add_argument("--trust-cert", metavar="CERT.pem", type=Path,
                   help="with --use-published and --verity: use only an artifact whose root "
                        "hash this certificate's key signed")
    g.add_argument("--publish", action="store_true",
                   help="after compiling, push the compiled image to IMAGE's repository "
                        "(as 'ocisquash push' does)")
    add_source_arguments(p)
    add_writer_arguments(
        p, compression_help="compressor (default: zstd level 5; every current Linux kernel "
                            "mounts it)",
        time_help="image timestamp (default: $SOURCE_DATE_EPOCH, else the image's config "
                  "date); the files keep the times their layers give them")
    add_verity_arguments(p)
    p.set_defaults(func=run)


def _check_level(compression: str | None, level: int | None) -> None:
    """Refuse a level the compressor lacks before anything is fetched, with the default
    that applies to this command line (compile's own without -c, the compressor's with it)."""
    from ..compile import DEFAULT_COMPRESSION, DEFAULT_ZSTD_LEVEL
    from ..errors import UsageError
    from ..squashfs.options import LEVELS
    from ._common import squashfs_compressor

    if level is None:
        return
    shown = compression or DEFAULT_COMPRESSION
    try:
        kind, _ = squashfs_compressor(shown)
    except ValueError:
        return  # not a squashfs compressor: writer_options_from_args says so
    low, high, default = LEVELS[kind]
    if low <= level <= high:
        return
    if compression is None:
        hint = (f"compile's default is {DEFAULT_COMPRESSION} level {DEFAULT_ZSTD_LEVEL}; "
                f"{kind.value} levels go from {low} to {high}")
    else:
        hint = f"without --level, -c {shown} uses level {default}"
    raise UsageError(f"{shown} level {level} is outside {low}..{high}", hint=hint)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..output import stdout_stream

    if args.output == "-":
        if args.json:
            raise UsageError("--json and -o - both want stdout")
        with stdout_stream() as out:
            return _run(args, out)
    return _run(args, None if args.output is None else Path(args.output))


def _run(args: argparse.Namespace, output: object) -> int:
    from ..compile import DEFAULT_COMPRESSION, DEFAULT_ZSTD_LEVEL, compile_image
    from ..errors import UsageError
    from ._common import (
        close_progress,
        erofs_options_from_args,
        print_fidelity,
        source_options_from_args,
        writer_options_from_args,
    )
    from ._verity import describe, verity_options_from_args

    wopts: WriterOptions | ErofsOptions | None = None
    if args.format == "erofs":
        wopts = erofs_options_from_args(args)
    else:
        _check_level(args.compression, args.level)
        wopts = writer_options_from_args(args, default_compression=DEFAULT_COMPRESSION,
                                         default_level=DEFAULT_ZSTD_LEVEL)
    verity = verity_options_from_args(args)
    sopts = source_options_from_args(args)
    if args.bundle is not None and args.format not in ("squashfs", "erofs"):
        raise UsageError(f"--bundle needs a squashfs or EROFS image, not {args.format}: a "
                         "runtime mounts it as the root")
    try:
        result = compile_image(
            args.image,
            output,  # type: ignore[arg-type]
            platform=args.platform,
            format=args.format,
            writer_options=wopts,
            source_options=sopts,
            pull=args.pull,
            use_cache=not args.no_cache,
            progress=sopts.progress,
            verity=verity,
            overwrite=args.force,
            copy=args.copy,
            published=args.use_published,
            trust_cert=args.trust_cert,
        )
        pushed = None
        if args.publish:
            from .push import publish

            pushed = publish(args.image, None, result, sopts)
    finally:
        close_progress(sopts)
    if args.config_out is not None:
        from ..runtime import write_file

        write_file(args.config_out, result.config.raw)
    if args.bundle is not None:
        from ..runtime import write_bundle

        write_bundle(args.bundle, result.runtime_config())
    if args.json:
        from ..jsonout import write

        doc = result.to_json()
        if pushed is not None:
            doc["pushed"] = pushed.to_json()
        write(doc, sys.stdout)
    elif not args.quiet:
        from ..terminal import printable

        what = {"cache": "cached", "published": "fetched published"}.get(result.source,
                                                                        "compiled")
        where = printable(result.path) if result.path else "stdout"
        print(
            f"{what} {printable(result.reference)} ({result.digest.short}, "
            f"{printable(result.platform)}): {where}, {result.size / 1e6:.1f} MB, "
            f"{result.files} inodes",
            file=sys.stderr,
        )
        print_fidelity(result.fidelity)
        if result.verity is not None:
            print(describe(result.verity), file=sys.stderr)
        outcome = result.published
        if outcome is not None and outcome.mode == "verify" and outcome.artifact is not None:
            verdict = ("differs from the compile here (see above)" if outcome.differences
                       else "is identical to the compile here")
            print(f"published compile {outcome.artifact} {verdict}", file=sys.stderr)
        if pushed is not None:
            from .push import describe as describe_push

            print(describe_push(pushed, result.digest), file=sys.stderr)
        if args.output is None:
            print(result.path)
    if result.published is not None and result.published.differences:
        return 1  # --use-published=verify found a difference (reported on stderr)
    return 0
