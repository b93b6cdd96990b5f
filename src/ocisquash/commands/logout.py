"""``ocisquash logout REGISTRY``: remove stored credentials from the containers auth.json."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from .login import add_file_arguments

    p = sub.add_parser(
        "logout", help="remove a registry's credentials from the containers auth.json",
        description="Remove REGISTRY's entry (or, with --all, every entry) from the "
                    "containers auth.json that 'ocisquash login' writes.")
    p.add_argument("registry", metavar="REGISTRY", nargs="?", help="registry host[:port]")
    p.add_argument("-a", "--all", action="store_true", help="remove every registry's entry")
    add_file_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import OcisquashError, UsageError
    from ..terminal import printable
    from .login import auth_file, load, registry_key, save

    if args.all == (args.registry is not None):
        raise UsageError("give either REGISTRY or --all")
    path = auth_file(args.auth_file)
    obj = load(path)
    auths = obj.get("auths", {})
    if args.all:
        removed = len(auths)
        obj["auths"] = {}
    else:
        key = registry_key(args.registry)
        if key not in auths:
            raise OcisquashError(f"not logged in to {key}", context=str(path))
        del auths[key]
        removed = 1
    if removed:
        save(path, obj)
    if not args.quiet:
        what = "every registry" if args.all else printable(args.registry)
        print(f"Removed login credentials for {what}", file=sys.stderr)
    return 0
