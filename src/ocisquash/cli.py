"""The ``ocisquash`` command: argument parsing and one handler that turns errors into one line.

Each subcommand lives in ``ocisquash.commands.<name>`` and exposes
``add_parser(subparsers)`` and ``run(args) -> int``; this module only wires them up,
so that ``ocisquash --help`` stays quick (subcommand modules import lazily what
they need). A command line that names its subcommand builds only that one's parser.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from . import __version__
from .errors import OcisquashError

#: Subcommands in the order ``--help`` lists them.
COMMANDS = ("compile", "pull", "inspect", "pack", "verify", "cache", "mount", "umount")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or of ``command`` alone (one of ``COMMANDS``)."""
    parser = argparse.ArgumentParser(
        prog="ocisquash",
        description=(
            "Compile OCI and Docker container images into one flattened, compressed, "
            "read-only squashfs image that a VM, sandbox or HPC job mounts as its root."
        ),
        epilog=(
            "examples:\n"
            "  ocisquash compile alpine:3.20 -o alpine.squashfs\n"
            "  ocisquash compile oci:./layout:latest -o app.squashfs --compression zstd\n"
            "  ocisquash inspect --json 127.0.0.1:5000/app:1.0\n"
            "  ocisquash pack ./rootfs rootfs.squashfs\n"
            "  ocisquash verify rootfs.squashfs\n"
            "\nRun 'ocisquash COMMAND --help' for a command's options."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ocisquash {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS if command is None else (command,):
        try:
            module = importlib.import_module(f"ocisquash.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"ocisquash.commands.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def _command_named(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names, if parsing needs no other (the top-level options take no
    value, so the first word that is not an option is the subcommand)."""
    for arg in argv:
        if arg in ("-h", "--help", "--version", "--"):
            return None  # help lists every command
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


class _StderrHandler(logging.Handler):
    """``ocisquash: warning: …`` on whatever ``sys.stderr`` is now, with control characters
    escaped (messages quote registries and images)."""

    def format(self, record: logging.LogRecord) -> str:
        from .terminal import printable

        return f"ocisquash: {record.levelname.lower()}: {printable(record.getMessage())}"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def _log_to_stderr(debug: bool) -> None:
    logger = logging.getLogger("ocisquash")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.INFO if debug else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        # imports the subcommand modules: Ctrl-C may land here too
        parser = build_parser(_command_named(argv))
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("ocisquash: interrupted", file=sys.stderr)
        return 130
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    _log_to_stderr(bool(args.debug or os.environ.get("OCISQUASH_DEBUG")))
    try:
        status: int = args.func(args)
        return status
    except OcisquashError as e:
        if args.debug or os.environ.get("OCISQUASH_DEBUG"):
            raise
        from .terminal import printable

        # Messages quote registries, images and file names: escape what they hold.
        print(f"ocisquash: {printable(e)}", file=sys.stderr)
        if e.hint:
            print(f"hint: {printable(e.hint)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("ocisquash: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main())
