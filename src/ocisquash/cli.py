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
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from . import __version__
from .errors import OcisquashError

#: Subcommands in the order ``--help`` lists them.
COMMANDS = ("compile", "pull", "push", "inspect", "pack", "verify", "cache", "mount", "umount",
            "login", "logout", "man", "completion")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or of ``command`` alone (one of ``COMMANDS``)."""
    parser = argparse.ArgumentParser(
        prog="ocisquash",
        description=(
            "Compile OCI and Docker container images into one flattened, compressed, "
            "read-only squashfs or EROFS image that a VM, sandbox or HPC job mounts as its root."
        ),
        epilog=(
            "examples:\n"
            "  ocisquash compile alpine:3.20 -o alpine.squashfs\n"
            "  ocisquash compile oci:./layout:latest -o app.squashfs --compression zstd\n"
            "  ocisquash inspect --json 127.0.0.1:5000/app:1.0\n"
            "  ocisquash pack ./rootfs rootfs.squashfs\n"
            "  ocisquash verify rootfs.squashfs\n"
            "\nRun 'ocisquash COMMAND --help' for a command's options. The global options "
            "may come\nbefore or after COMMAND.\n\n" + EXIT_STATUS
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ocisquash {__version__}")
    _add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS if command is None else (command,):
        try:
            module = importlib.import_module(f"ocisquash.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"ocisquash.commands.{name}":
                continue
            raise
        module.add_parser(sub)
    for subparser in _subparsers(parser):
        _add_global_options(subparser, top=False)
    return parser


#: The exit statuses, for ``--help``, the man page and the README.
EXIT_STATUS = """exit status:
  0    success
  1    the work failed: the output, the cache or the writer (a full disk, a read-only
       directory, a damaged cache entry); a check found bytes that do not match their digest (a download,
       cache verify, verify); a feature this machine lacks (no root, no squashfuse)
  2    usage error: an unknown option, a bad value, an image reference that does not
       parse; an output refused before any work (it exists and --force was not given,
       its directory is missing, it is a directory, a block device or a terminal)
  3    image error: no such image, tag, layout, archive or directory; no image for the
       platform; an invalid or unsafe manifest, config or layer; a limit it exceeds
  4    registry or network error: unreachable, refused credentials, failing responses
  130  interrupted (Ctrl-C)
  141  stdout closed early (a broken pipe)
  143  terminated (SIGTERM)"""

#: Options every command takes, before or after its name (``ocisquash --debug compile``
#: and ``ocisquash compile --debug`` alike): (flags, argparse keywords, top-level default).
_GLOBAL_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any], Any], ...] = (
    (("--debug",), {"action": "store_true", "help": "show tracebacks for errors"}, False),
    (("-q", "--quiet"), {"action": "store_true", "help": "no progress or summary on stderr"},
     False),
    (("--cache-dir",), {"metavar": "DIR", "type": Path,
                        "help": "the cache directory (default: $XDG_CACHE_HOME/ocisquash)"},
     None),
)


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser`` (commands, and actions of a command group)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found.append(child)
                found.extend(_subparsers(child))
    return found


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Add the global options to ``parser``. Below the top, an option a command defines
    itself keeps its help, and none has a default: a value given before the command
    name must not be reset by the command's parser."""
    group = None
    for flags, kwargs, default in _GLOBAL_OPTIONS:
        existing = [parser._option_string_actions[f] for f in flags
                    if f in parser._option_string_actions]
        if existing:
            for action in existing:
                action.default = argparse.SUPPRESS
            continue
        if group is None:
            group = parser.add_argument_group("global options")
        group.add_argument(*flags, **kwargs,
                           default=default if top else argparse.SUPPRESS)


def _command_named(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names, if parsing needs no other: the first word that is
    neither an option nor the value of ``--cache-dir``."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("-h", "--help", "--version", "--"):
            return None  # help lists every command
        if arg == "--cache-dir":
            skip = True
            continue
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it cleans up as after Ctrl-C (the
    staging directory, the temporary output, the downloads) and exits 143."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # One is enough: a second SIGTERM must not interrupt the cleanup of the first.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


def _stopped(e: KeyboardInterrupt) -> int:
    """Say how the run was stopped; its exit status (128 + the signal's number)."""
    if isinstance(e, Terminated):
        print("ocisquash: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    print("ocisquash: interrupted", file=sys.stderr)
    return 128 + signal.SIGINT


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    import threading

    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return _main(argv)  # SIGTERM is someone else's to handle
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _main(argv: Sequence[str] | None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        # imports the subcommand modules: Ctrl-C may land here too
        parser = build_parser(_command_named(argv))
        args = parser.parse_args(argv)
    except KeyboardInterrupt as e:
        return _stopped(e)
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
    except KeyboardInterrupt as e:
        return _stopped(e)
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main())
