"""``ocisquash completion bash``: the shell completion script, generated from the parser."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "completion", help="print the shell completion script",
        description="Print a completion script for SHELL, generated from this version's "
                    "commands and options.",
        epilog="examples:\n"
               "  source <(ocisquash completion bash)\n"
               "  ocisquash completion bash > /etc/bash_completion.d/ocisquash\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shell", metavar="SHELL", choices=("bash",), help="the shell: bash")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import build_parser
    from ..clidocs import bash_completion

    sys.stdout.write(bash_completion(build_parser()))
    return 0
