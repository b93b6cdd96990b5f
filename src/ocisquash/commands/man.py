"""``ocisquash man``: the ocisquash(1) man page, generated from the parser."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "man", help="print the man page (roff)",
        description="Print the ocisquash(1) man page in roff, generated from this version's "
                    "commands and options.",
        epilog="examples:\n"
               "  ocisquash man | man -l -\n"
               "  ocisquash man > /usr/local/share/man/man1/ocisquash.1\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..cli import EXIT_STATUS, build_parser
    from ..clidocs import manpage

    sys.stdout.write(manpage(build_parser(), __version__, EXIT_STATUS))
    return 0
