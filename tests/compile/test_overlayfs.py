"""The kernel as judge: our squashfs, mounted by the kernel, equals overlayfs over the layers.

Each layer is extracted with GNU tar into its own directory, its whiteouts are
converted to overlayfs form (``.wh.NAME`` → a 0/0 character device, an opaque
marker → ``trusted.overlay.opaque=y`` on its directory), and the kernel's
overlayfs stacks them read-only. That merged view is what a container runtime
shows for the image; the squashfs that ocisquash compiled from the same layers is
loop-mounted and compared with it path by path. Every layer names its parent
directories explicitly, as image builders do, so that overlayfs has no
extraction-time metadata of its own to show.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocisquash.compile import compile_image
from ocisquash.sources.options import SourceOptions

from .test_compile import CAP, tree_of
from conftest import require_or_skip
from imagebuilder import Entry, make_tar, write_oci_layout


def D(path: str, mode: int = 0o755, **kw: object) -> Entry:
    return Entry(path, "dir", mode=mode, **kw)  # type: ignore[arg-type]


def F(path: str, data: bytes = b"", **kw: object) -> Entry:
    return Entry(path, "file", data, **kw)  # type: ignore[arg-type]


CASES: dict[str, list[list[Entry]]] = {
    "whiteouts_and_opaque_dirs": [
        [D("a"), F("a/keep", b"k"), F("a/gone", b"g"), D("a/b"), F("a/b/old", b"o"),
         D("c", 0o700, uid=3), F("c/lower", b"l"), D("c/deep"), F("c/deep/x", b"x")],
        [D("a"), F("a/.wh.gone"), D("a/b"), F("a/b/.wh..wh..opq"), F("a/b/new", b"n"),
         D("c", 0o750, uid=4), F("c/.wh.deep"), F("c/upper", b"u")],
    ],
    "opaque_marker_after_siblings_keeps_siblings": [
        [D("d"), F("d/lower-1", b"1"), F("d/lower-2", b"2")],
        [D("d", 0o711), F("d/same-layer-before", b"b"), F("d/.wh..wh..opq"),
         F("d/same-layer-after", b"a")],
    ],
    "type_changes_between_layers": [
        [D("x"), F("x/child", b"c"), F("y", b"file first"), Entry("z", "symlink", linkname="x"),
         D("w"), F("w/in", b"i")],
        [F("x", b"now a file", mode=0o600), D("y", 0o701), F("y/inside", b"in"),
         D("z"), F("z/real", b"r"), Entry("w", "symlink", linkname="/elsewhere")],
    ],
    "owners_modes_devices_xattrs_hardlinks": [
        [D("bin"), F("bin/su", b"su" * 3000, mode=0o4755), F("bin/wall", b"w", mode=0o2755, gid=5),
         D("tmp", 0o1777), D("dev"), Entry("dev/null", "char", mode=0o666, devmajor=1, devminor=3),
         Entry("dev/loop0", "block", mode=0o660, devmajor=7, devminor=0, gid=6),
         Entry("dev/pipe", "fifo", mode=0o620),
         F("bin/ping", b"ping", mode=0o755, xattrs={"security.capability": CAP}),
         F("bin/tagged", b"t", xattrs={"user.origin": b"layer one", "trusted.x": b"\x00\x01"}),
         F("bin/big", bytes(range(256)) * 2000, uid=70000, gid=2**31),
         Entry("bin/big-link", "hardlink", linkname="bin/big")],
        [D("bin"), F("bin/.wh.big"), F("bin/newer", b"n", mode=0o640, uid=1000, gid=1000)],
    ],
}


@contextlib.contextmanager
def mounted(*args: str) -> Iterator[None]:
    subprocess.run(["mount", *args], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["umount", args[-1]], check=False, capture_output=True)


def extract_for_overlay(tar: bytes, dest: Path) -> None:
    """GNU tar extraction of one layer, whiteouts converted to overlayfs form."""
    dest.mkdir()
    subprocess.run(["tar", "-x", "-C", str(dest), "--numeric-owner", "--same-owner", "-p",
                    "--xattrs", "--xattrs-include=*"], input=tar, check=True, capture_output=True)
    for dirpath, _dirs, files in os.walk(dest):
        for name in files:
            if name == ".wh..wh..opq":
                os.unlink(os.path.join(dirpath, name))
                os.setxattr(dirpath, "trusted.overlay.opaque", b"y")
            elif name.startswith(".wh."):
                os.unlink(os.path.join(dirpath, name))
                os.mknod(os.path.join(dirpath, name[4:]), 0o600 | 0o020000, os.makedev(0, 0))


def can_mount_overlay(tmp: Path) -> bool:
    low1, low2, mnt = tmp / "l1", tmp / "l2", tmp / "m"
    for d in (low1, low2, mnt):
        d.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                           f"lowerdir={low2}:{low1}", str(mnt)], capture_output=True)
    if proc.returncode == 0:
        subprocess.run(["umount", str(mnt)], check=False)
    return proc.returncode == 0


@pytest.mark.root
@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_mount_of_squashfs_equals_overlayfs_of_layers(name: str, tmp_path: Path) -> None:
    require_or_skip(os.geteuid() == 0, "loop and overlay mounts need root")
    require_or_skip(can_mount_overlay(tmp_path / "probe"), "overlayfs mounts are not permitted here")
    layers = CASES[name]
    write_oci_layout(tmp_path / "layout", layers, compression="gzip")
    image = tmp_path / "image.squashfs"
    compile_image(f"oci:{tmp_path / 'layout'}:latest", image,
                  source_options=SourceOptions(cache_dir=tmp_path / "cache"))
    lowers = []
    for i, layer in enumerate(layers):
        extract_for_overlay(make_tar(layer), tmp_path / f"layer{i}")
        lowers.append(str(tmp_path / f"layer{i}"))
    over, sq = tmp_path / "over", tmp_path / "sq"
    over.mkdir()
    sq.mkdir()
    with mounted("-t", "overlay", "overlay", "-o", "lowerdir=" + ":".join(reversed(lowers)),
                 str(over)), mounted("-t", "squashfs", "-o", "loop,ro", str(image), str(sq)):
        expected, actual = tree_of(over), tree_of(sq)
    assert sorted(actual) == sorted(expected)
    for path in expected:
        # Hardlink groups are named by their first path in walk order: equal in both trees.
        assert actual[path] == expected[path], path
