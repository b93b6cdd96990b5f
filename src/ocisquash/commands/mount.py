"""``ocisquash mount IMAGE_OR_FILE DIR``: mount a compiled image, read-only or writable."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from ._common import add_source_arguments

    p = sub.add_parser(
        "mount",
        help="mount a compiled image (or a squashfs or EROFS file) on a directory",
        description=(
            "Mount IMAGE_OR_FILE on DIR: a squashfs or EROFS file, or an image reference that is "
            "compiled first (or taken from the cache). As root a loop mount; without root "
            "squashfuse (erofsfuse for EROFS). --overlay (root) puts a tmpfs on top so the tree is writable; the "
            "writes vanish at 'ocisquash umount DIR'."
        ),
        epilog=(
            "examples:\n"
            "  ocisquash mount app.squashfs /mnt\n"
            "  ocisquash compile app:1 -o app.squashfs --bundle b && ocisquash mount "
            "app.squashfs b/rootfs && runc run -b b app\n"
            "  ocisquash mount --overlay alpine:3.20 /mnt/alpine\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", metavar="IMAGE_OR_FILE", help="a squashfs or EROFS file, or an image")
    p.add_argument("target", metavar="DIR", type=Path, help="the mount point")
    p.add_argument("--overlay", action="store_true",
                   help="writable: a tmpfs overlay on top of the image (root only)")
    add_source_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..mount import mount_image

    image = Path(args.image)
    if not _is_file(image):
        from ..compile import compile_image
        from ._common import close_progress, source_options_from_args

        sopts = source_options_from_args(args)
        try:
            result = compile_image(args.image, None, platform=args.platform,
                                   source_options=sopts, progress=sopts.progress)
        finally:
            close_progress(sopts)
        assert result.path is not None  # a squashfs compiled without output stays cached
        image = result.path
    mounted = mount_image(image, args.target, overlay=args.overlay)
    if not args.quiet:
        how = f"{mounted.method}{' with a tmpfs overlay' if mounted.overlay else ', read-only'}"
        print(f"mounted {image} on {mounted.target} ({how})", file=sys.stderr)
    return 0


def _is_file(path: Path) -> bool:
    """Whether ``path`` names a file (else IMAGE_OR_FILE is an image reference)."""
    import os
    import stat

    from ..errors import UsageError

    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from e
