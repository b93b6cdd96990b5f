"""``ocisquash umount DIR``: undo ``ocisquash mount``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "umount",
        help="unmount what 'ocisquash mount' mounted",
        description="Unmount DIR, and with it the overlay's tmpfs and image underneath.",
    )
    p.add_argument("target", metavar="DIR", type=Path, help="the mount point")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..mount import unmount

    unmount(args.target)
    return 0
