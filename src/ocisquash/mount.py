"""Mount a compiled image (squashfs or EROFS, told apart by magic) read-only, or writable with a tmpfs overlay, and unmount it.

Which way is chosen:

* as root, the kernel: ``mount -t squashfs -o loop,ro`` (the loop device is released
  when the image is unmounted, by ``autoclear``);
* without root, ``squashfuse`` (``erofsfuse`` for an EROFS image) when it and
  ``/dev/fuse`` are present;
* otherwise a :class:`~ocisquash.errors.UnsupportedError` that says what is missing.

``overlay=True`` (root only: only root can mount a tmpfs and an overlay outside a user
namespace) makes the tree writable and throws the writes away at unmount: a tmpfs is
mounted on a state directory ``/run/ocisquash/mounts/<hash of DIR>`` holding the image's
read-only mount (``lower``) and the overlay's ``upper`` and ``work``; the overlay goes on
DIR. :func:`unmount` finds that state directory again from the overlay's ``lowerdir``
in ``/proc/self/mountinfo``, so unmounting needs nothing but DIR.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputError, UnsupportedError, UsageError

STATE_ROOT = Path("/run/ocisquash/mounts")


@dataclass(frozen=True)
class Mounted:
    """What :func:`mount_image` did."""

    target: Path
    #: "loop", "squashfuse" or "erofsfuse"
    method: str
    overlay: bool


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise OutputError(f"{what}: {argv[0]} failed: {detail[-1] if detail else proc.returncode}")


def _is_root() -> bool:
    return os.geteuid() == 0


def _mountinfo() -> list[tuple[str, str, str, str]]:
    """(mount point, fs type, source, super options) of each mount, last mounted last."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            point = left.split()[4]
            fstype, source, options = [*right.split(), "", "", ""][:3]
            out.append((_unescape(point), fstype, _unescape(source), options))
    return out


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _mount_of(path: Path) -> tuple[str, str, str] | None:
    """(fs type, source, super options) of the mount on exactly ``path``, or None."""
    found = None
    for point, fstype, source, options in _mountinfo():
        if point == str(path):
            found = (fstype, source, options)  # the topmost one wins
    return found


def _state_dir(target: Path) -> Path:
    return STATE_ROOT / hashlib.sha256(str(target).encode()).hexdigest()[:16]


def _filesystem(image: Path) -> str:
    """``erofs`` or ``squashfs``, by the image's magic (anything but EROFS is left to
    the squashfs mount to refuse)."""
    from .imagereader import image_format

    try:
        return image_format(image) or "squashfs"
    except OSError as e:
        raise UsageError(f"cannot read {image}: {e.strerror or e}") from e


#: Where Linux lists the EROFS features its driver reads.
EROFS_FEATURES = Path("/sys/fs/erofs/features")


def _erofs_features(image: Path) -> list[tuple[str, str]]:
    """The incompatible features the EROFS ``image`` uses (its superblock's
    ``feature_incompat``) among those this project writes, by the names Linux lists
    them under, with the oldest Linux that reads each where it is known here."""
    from .erofs import format as fmt
    from .erofs.options import (
        FRAGMENTS_MIN_KERNEL,
        HOLES_MIN_KERNEL,
        METABOX_MIN_KERNEL,
        MIN_KERNEL,
        ZTAILPACKING_MIN_KERNEL,
        ErofsCompression,
    )

    known = ((fmt.INCOMPAT_BIG_PCLUSTER, "big_pcluster", MIN_KERNEL[ErofsCompression.LZ4]),
             (fmt.INCOMPAT_CHUNKED_FILE, "chunked_file", HOLES_MIN_KERNEL),
             (fmt.INCOMPAT_ZTAILPACKING, "ztailpacking", ZTAILPACKING_MIN_KERNEL),
             (fmt.INCOMPAT_FRAGMENTS, "fragments", FRAGMENTS_MIN_KERNEL),
             (fmt.INCOMPAT_48BIT, "48bit", ""),
             (fmt.INCOMPAT_METABOX, "metabox", METABOX_MIN_KERNEL))
    try:
        with open(image, "rb") as f:
            f.seek(fmt.SUPER_OFFSET + fmt.FEATURE_INCOMPAT_AT)
            raw = f.read(4)
    except OSError:
        return []
    bits = int.from_bytes(raw, "little") if len(raw) == 4 else 0
    return [(name, since) for bit, name, since in known if bits & bit]


def _erofs_hint(image: Path, fuse: bool) -> str:
    """What a failed mount of the EROFS ``image`` may lack: the features it uses that
    this kernel does not list (loop), or that an older erofsfuse cannot read."""
    used = _erofs_features(image)
    if fuse:
        needs = [name for name, _ in used if name in ("fragments", "48bit", "metabox")]
        return (f"the image uses {', '.join(needs)}, which erofsfuse from erofs-utils "
                "1.5 (Debian 12) cannot read: mount it as root on a kernel that can"
                if needs else "")
    try:
        have = set(os.listdir(EROFS_FEATURES))
    except OSError:
        return ""
    missing = [name + (f" (Linux {since}+)" if since else "") for name, since in used
               if name not in have]
    if not missing:
        return ""
    return (f"this kernel's EROFS lacks {', '.join(missing)}: mount the image on a newer "
            "kernel, or build it without the feature (--erofs-kernel VERSION)")


def _mount_with(argv: list[str], fs: str, image: Path, target: Path, fuse: bool) -> None:
    """Run a mount command; a failed EROFS mount's error says which of the image's
    features the kernel (or erofsfuse) may lack."""
    try:
        _run(argv, f"cannot mount {image} on {target}")
    except OutputError as e:
        if fs == "erofs" and not e.hint:
            e.hint = _erofs_hint(image, fuse=fuse)
        raise


def _mount_readonly(image: Path, target: Path) -> str:
    fs = _filesystem(image)
    if _is_root():
        _mount_with(["mount", "-t", fs, "-o", "loop,ro", str(image), str(target)], fs, image,
                    target, fuse=False)
        return "loop"
    fuse = "squashfuse" if fs == "squashfs" else "erofsfuse"
    if shutil.which(fuse) is not None and os.path.exists("/dev/fuse"):
        _mount_with([fuse, str(image), str(target)], fs, image, target, fuse=True)
        return fuse
    raise UnsupportedError(
        f"cannot mount {image}: not root, and {fuse} is not available",
        hint=f"run as root (a loop mount), or install {fuse} (and give access to /dev/fuse)")


def mount_image(image: str | os.PathLike[str], target: str | os.PathLike[str], *,
                overlay: bool = False) -> Mounted:
    """Mount the squashfs ``image`` on the existing directory ``target``; with
    ``overlay``, writable through a tmpfs overlay (root only)."""
    image_path = Path(image).absolute()
    target_path = Path(target).absolute()
    if not os.path.isfile(image_path):
        raise UsageError(f"{image_path} is not a file")
    if not os.path.isdir(target_path):
        raise UsageError(f"the mount point {target_path} is not a directory",
                         hint="create it first (a bundle's rootfs is made by --bundle)")
    if not overlay:
        return Mounted(target_path, _mount_readonly(image_path, target_path), False)
    if not _is_root():
        raise UnsupportedError(
            "--overlay needs root: only root can mount a tmpfs and an overlay",
            hint="mount without --overlay (read-only), or run as root")
    if _mount_of(target_path) is not None:
        raise UsageError(f"{target_path} is already a mount point",
                         hint=f"unmount it first: ocisquash umount {target_path}")
    state = _state_dir(target_path)
    state.mkdir(parents=True, exist_ok=True)
    _run(["mount", "-t", "tmpfs", "-o", "mode=0700", "ocisquash-overlay", str(state)],
         f"cannot mount a tmpfs on {state}")
    try:
        for name in ("lower", "upper", "work"):
            (state / name).mkdir()
        method = _mount_readonly(image_path, state / "lower")
        try:
            _run(["mount", "-t", "overlay", "-o",
                  f"lowerdir={state / 'lower'},upperdir={state / 'upper'},"
                  f"workdir={state / 'work'}", "overlay", str(target_path)],
                 f"cannot mount an overlay on {target_path}")
        except BaseException:
            subprocess.run(["umount", str(state / "lower")], capture_output=True, check=False)
            raise
    except BaseException:
        subprocess.run(["umount", str(state)], capture_output=True, check=False)
        state.rmdir()
        raise
    return Mounted(target_path, method, True)


def unmount(target: str | os.PathLike[str]) -> None:
    """Undo :func:`mount_image` on ``target`` (and the overlay's layers under it)."""
    target_path = Path(target).absolute()
    mounted = _mount_of(target_path)
    if mounted is None:
        raise UsageError(f"nothing is mounted on {target_path}")
    fstype, _source, options = mounted
    if fstype.startswith("fuse") and not _is_root():
        fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
        if fusermount is None:
            raise UnsupportedError("cannot unmount a FUSE mount: fusermount is not installed")
        _run([fusermount, "-u", str(target_path)], f"cannot unmount {target_path}")
        return
    _run(["umount", str(target_path)], f"cannot unmount {target_path}")
    if fstype != "overlay":
        return
    state = _state_dir(target_path)
    lower = next((o.partition("=")[2] for o in options.split(",")
                  if o.startswith("lowerdir=")), "")
    if Path(lower) != state / "lower":
        return  # an overlay mounted by something else: its layers are not ours
    _run(["umount", str(state / "lower")], f"cannot unmount {state / 'lower'}")
    _run(["umount", str(state)], f"cannot unmount {state}")
    state.rmdir()


__all__ = ["Mounted", "mount_image", "unmount"]
