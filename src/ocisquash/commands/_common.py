"""Options every command that reads an image shares: platform, cache, credentials, TLS, mirrors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..model import Platform
    from ..sources.options import SourceOptions


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
    g.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def platform_from_args(args: argparse.Namespace) -> Platform | None:
    """The ``--platform`` given, parsed, or None."""
    from ..model import Platform

    text = getattr(args, "platform", None)
    return Platform.parse(text) if text else None


def source_options_from_args(args: argparse.Namespace) -> SourceOptions:
    """The ``SourceOptions`` of the parsed arguments; reads the password from stdin if asked.

    ``progress`` is a terminal renderer when stderr is a terminal and ``--quiet``
    was not given, else None.
    """
    from ..errors import UsageError
    from ..progress import make_renderer
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
        progress=make_renderer(args.quiet),
    )


def close_progress(options: SourceOptions) -> None:
    """Draw the renderer's final state, if there is one."""
    close = getattr(options.progress, "close", None)
    if callable(close):
        close()
