"""Options every command that reads an image shares: platform, cache, credentials, TLS, mirrors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..erofs.options import ErofsOptions
    from ..model import Platform
    from ..progress import ProgressCallback, ProgressEvent
    from ..rules import FidelityIssue
    from ..sources.options import SourceOptions
    from ..squashfs.options import Compression, WriterOptions


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the image source options (``--platform``, credentials, TLS, mirrors, ``--quiet``)."""
    g = parser.add_argument_group("image source options")
    g.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="which image of a multi-platform index (default: this machine's)")
    g.add_argument("--cache-dir", metavar="DIR", type=Path,
                   help="where downloaded blobs are kept (default: $XDG_CACHE_HOME/ocisquash)")
    g.add_argument("--username", metavar="USER", help="registry user name")
    g.add_argument("--password-stdin", action="store_true",
                   help="read the registry password (or token) from stdin")
    g.add_argument("--auth-file", metavar="FILE", type=Path,
                   help="credentials file to use instead of the podman/Docker ones "
                        "(containers-auth.json format)")
    g.add_argument("--ca-cert", metavar="FILE", type=Path,
                   help="PEM file of a CA to trust for the registry's TLS certificate")
    g.add_argument("--insecure", action="store_true",
                   help="do not verify the registry's TLS certificate (and allow plain HTTP)")
    g.add_argument("--plain-http", action="store_true",
                   help="talk to the registry over plain HTTP (loopback registries fall "
                        "back to it by themselves)")
    g.add_argument("--registry-mirror", metavar="HOST", action="append", default=[],
                   dest="registry_mirrors",
                   help="a Docker Hub mirror to try before docker.io (repeatable)")
    g.add_argument("--max-parallel", metavar="N", type=int, default=4,
                   help="layers downloaded at once (default: 4)")
    g.add_argument("--timeout", metavar="SECONDS", type=float, default=60.0,
                   help="how long the registry may take to connect and to answer, and may "
                        "stay silent (default: 60)")
    g.add_argument("--min-rate", metavar="BYTES", default="1K",
                   help="the least a download must average over each --timeout window, in "
                        "bytes per second, K or M allowed (default: 1K; 0: no minimum)")
    g.add_argument("--retries", metavar="N", type=int, default=5,
                   help="retries of a temporary registry failure: a timeout, a cut "
                        "connection, 429, 5xx (default: 5); a host name that does not "
                        "resolve or a refused connection fails at once")
    g.add_argument("--lock-timeout", metavar="SECONDS", type=float, default=None,
                   help="give up after waiting this long for another ocisquash that builds or "
                        "downloads the same image in the cache (default: wait; what is waited "
                        "for is shown after a few seconds)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def platform_from_args(args: argparse.Namespace) -> Platform | None:
    """The ``--platform`` given, parsed, or None."""
    from ..model import Platform

    text = getattr(args, "platform", None)
    return Platform.parse(text) if text else None


def source_options_from_args(args: argparse.Namespace) -> SourceOptions:
    """The ``SourceOptions`` of the parsed arguments; reads the password from stdin if asked.

    ``progress`` renders on stderr (rows on a terminal, lines on a pipe) unless
    ``--quiet`` was given.
    """
    from ..errors import UsageError
    from ..sources.options import SourceOptions

    password: str | None = None
    if args.password_stdin:
        if not args.username:
            raise UsageError("--password-stdin needs --username")
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise UsageError("--password-stdin read an empty password")
    elif args.username:
        raise UsageError("--username needs --password-stdin",
                         hint="echo \"$PASSWORD\" | ocisquash … --username USER --password-stdin")
    if args.max_parallel < 1:
        raise UsageError(f"--max-parallel must be at least 1, not {args.max_parallel}")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds, not {args.timeout}")
    if args.retries < 0:
        raise UsageError(f"--retries must not be negative, not {args.retries}")
    min_rate = parse_size(args.min_rate)
    if args.lock_timeout is not None and not args.lock_timeout >= 0:
        raise UsageError(f"--lock-timeout must be a number of seconds, not {args.lock_timeout}")
    return SourceOptions(
        cache_dir=args.cache_dir,
        username=args.username,
        password=password,
        auth_file=args.auth_file,
        ca_cert=args.ca_cert,
        insecure=args.insecure,
        plain_http=args.plain_http,
        registry_mirrors=tuple(args.registry_mirrors),
        max_parallel=args.max_parallel,
        timeout=args.timeout,
        min_rate=min_rate,
        retries=args.retries,
        lock_timeout=args.lock_timeout,
        progress=_renderer(args.quiet),
    )


def _renderer(quiet: bool) -> ProgressCallback | None:
    """``progress.make_renderer`` for stderr: redrawn rows on a terminal, else one line per step."""
    if quiet:
        return None
    if sys.stderr.isatty():
        from ..progress import make_renderer

        return make_renderer()  # made here, in the main thread, to watch SIGWINCH
    return _FirstEventImports()


class _FirstEventImports:
    """The line renderer for a pipe, imported by the first event: a cached compile has
    none to show and imports nothing for it."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._renderer: ProgressCallback | None = None

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            if self._renderer is None:
                from ..progress import LineProgress

                self._renderer = LineProgress(sys.stderr)
        self._renderer(event)

    def close(self) -> None:
        """Every line is written when its event arrives: nothing to finish."""


def close_progress(options: SourceOptions) -> None:
    """Draw the renderer's final state, if there is one."""
    close = getattr(options.progress, "close", None)
    if callable(close):
        close()


def add_writer_arguments(p: argparse.ArgumentParser, *, compression_help: str,
                         time_help: str) -> None:
    """Options of the squashfs writer, shared by ``compile`` and ``pack``."""
    from ..erofs.options import (
        COMPRESSION_HELP,
        FRAGMENTS_MIN_KERNEL,
        HOLES_MIN_KERNEL,
        METABOX_MIN_KERNEL,
        ZTAILPACKING_MIN_KERNEL,
    )

    g = p.add_argument_group("image output")
    g.add_argument("--compression", "-c", default=None,
                   choices=("gzip", "xz", "zstd", "lz4", "lzo", "none", "lz4hc", "deflate"),
                   help=f"{compression_help}; with --format erofs: {COMPRESSION_HELP}")
    g.add_argument("--level", type=int, default=None,
                   help="compression level (default: as above, else the compressor's own, as "
                        "mksquashfs: gzip 9, xz 6, zstd 15, lz4hc 9)")
    g.add_argument("--block-size", "-b", default="128K", metavar="SIZE",
                   help="data block size, a power of two from 4K to 1M (default 128K); "
                        "for EROFS the most file data in one compressed cluster")
    g.add_argument("--no-fragments", action="store_true", help="do not pack file tails into fragments")
    g.add_argument("--erofs-fragments", action="store_true",
                   help="with --format erofs: pack small files and file tails together into "
                        "one compressed inode, in clusters of up to 1 MiB, as squashfs "
                        "fragments: squashfs's size on trees of small files "
                        f"(Linux {FRAGMENTS_MIN_KERNEL}+)")
    g.add_argument("--erofs-ztailpacking", action="store_true",
                   help="with --format erofs: store a compressed file's last physical cluster inline "
                        "after its inode when it fits, not in a block of its own "
                        f"(Linux {ZTAILPACKING_MIN_KERNEL}+)")
    g.add_argument("--erofs-metabox", action="store_true",
                   help="with --format erofs: store the inodes, with the directories and "
                        "small files that go inline, in one compressed inode instead of "
                        "uncompressed: much smaller images of many small files "
                        f"(Linux {METABOX_MIN_KERNEL}+, which calls it experimental)")
    g.add_argument("--erofs-no-holes", action="store_true",
                   help="with --format erofs: write every zero of a file; by default a file "
                        "with an all-zero 4 KiB-aligned chunk (a sparse file's hole) is "
                        "stored chunk-based with that chunk as a hole, which an image needs "
                        f"Linux {HOLES_MIN_KERNEL}+ for")
    g.add_argument("--erofs-kernel", default=None, metavar="VERSION",
                   help="with --format erofs: the oldest Linux that will mount the image, "
                        "e.g. 5.15 or 6.1; switches on what it reads that makes images "
                        f"smaller (fragments from {FRAGMENTS_MIN_KERNEL}, else ztailpacking "
                        f"from {ZTAILPACKING_MIN_KERNEL}; holes only from {HOLES_MIN_KERNEL})"
                        " and refuses a compressor or flag it cannot mount (default: "
                        "images Linux 5.13 mounts, holes aside)")
    g.add_argument("--no-dedup", action="store_true", help="do not detect duplicate files")
    g.add_argument("--no-xattrs", action="store_true", help="leave extended attributes out")
    g.add_argument("--mkfs-time", type=int, default=None, metavar="EPOCH",
                   help=time_help)
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="compression threads (default: all cores)")


def parse_size(text: str) -> int:
    """``131072``, ``128K``, ``1M``, ``20G`` → bytes."""
    from ..errors import UsageError

    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    for suffix, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    try:
        value = float(t)
    except ValueError:
        raise UsageError(f"invalid size {text!r}",
                         hint="use a number with an optional K, M or G") from None
    if value < 0 or value != value:
        raise UsageError(f"invalid size {text!r}", hint="use a non-negative number")
    return int(value * mult)


def squashfs_compressor(name: str) -> tuple[Compression, bool]:
    """The squashfs compressor that ``--compression NAME`` means, and whether it is
    lz4hc: squashfs's lz4 with its high-compression flag (mksquashfs -Xhc), which the
    kernel reads as plain lz4. ValueError for a name squashfs has no compressor for."""
    from ..squashfs.options import Compression

    hc = name == "lz4hc"
    return (Compression.LZ4 if hc else Compression(name)), hc


def writer_options_from_args(args: argparse.Namespace, *, default_compression: str,
                             default_level: int | None = None,
                             all_root: bool = False) -> WriterOptions:
    """The ``WriterOptions`` of the parsed arguments; ``default_level`` only with the default compressor."""
    from ..errors import UsageError
    from ..squashfs.options import WriterOptions

    if args.compression in ("none", "deflate"):
        raise UsageError(f"squashfs cannot compress with {args.compression}",
                         hint="use gzip, xz, zstd, lz4, lz4hc or lzo, or --format erofs")
    level = args.level
    if level is None and args.compression is None:
        level = default_level
    compression, hc = squashfs_compressor(args.compression or default_compression)
    return WriterOptions(
        compression=compression,
        lz4_hc=hc,
        level=level,
        block_size=parse_size(args.block_size),
        fragments=not args.no_fragments,
        dedup=not args.no_dedup,
        xattrs=not args.no_xattrs,
        mkfs_time=args.mkfs_time,
        workers=args.workers,
        all_root=all_root,
    )


def erofs_options_from_args(args: argparse.Namespace, *,
                            all_root: bool = False) -> ErofsOptions:
    """The ``ErofsOptions`` of the parsed arguments (``--format erofs``)."""
    from ..erofs.options import ErofsCompression, ErofsOptions
    from ..errors import UsageError

    names = [c.value for c in ErofsCompression]
    name = args.compression or ErofsOptions().compression.value
    if name not in names:
        raise UsageError(f"EROFS cannot compress with {name}",
                         hint=f"with --format erofs use --compression {', '.join(names)}")
    common = dict(
        compression=ErofsCompression(name),
        level=args.level,
        pcluster_size=parse_size(args.block_size),
        dedup=not args.no_dedup,
        xattrs=not args.no_xattrs,
        mkfs_time=args.mkfs_time,
        workers=args.workers,
        all_root=all_root,
    )
    # The feature flags only ever switch a feature one way.
    flags = {"fragments": args.erofs_fragments, "ztailpacking": args.erofs_ztailpacking,
             "metabox": args.erofs_metabox, "holes": not args.erofs_no_holes}
    if args.erofs_kernel is None:
        return ErofsOptions(**common, **flags)
    asked = {k: v for k, v in flags.items() if v != (k == "holes")}
    return ErofsOptions.for_kernel(args.erofs_kernel, **common, **asked)


def print_fidelity(issues: Iterable[FidelityIssue]) -> None:
    """One stderr line per kind of thing the image could not hold exactly."""
    from ..terminal import printable

    for issue in issues:
        shown = [e.decode("utf-8", "replace") for e in issue.examples[:3]]
        examples = ", ".join("/" + printable(e) for e in shown)
        # squashfs keeps whole seconds only; most build tools write finer times, so
        # that loss is a note, not a warning that every compile would print.
        level = "note" if issue.kind == "mtime-subsecond-truncated" else "warning"
        print(f"ocisquash: {level}: {issue.count} entries: {printable(issue.detail or issue.kind)}"
              + (f" (e.g. {examples})" if examples else ""), file=sys.stderr)
