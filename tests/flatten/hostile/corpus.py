"""Builders of hostile layers: each item is a list of layer tars (bottom first), what
ocisquash must do with it (an error class, or success), and the paths an escape would
reach, so a test can prove nothing was written there.

``ESCAPE`` is a unique name under /tmp; absolute paths in the corpus point at it, so
that following them would create a file a test can look for.
"""

from __future__ import annotations

import io
import tarfile
import uuid
from dataclasses import dataclass

from ocisquash.errors import LayerError, OcisquashError, UnsafeLayerError

ESCAPE = f"tmp/ocisquash-escape-{uuid.uuid4().hex}"


def raw_tar(*members: tuple[str, bytes, str, bytes]) -> bytes:
    """A tar of ``(name, type, linkname, data)`` members, names taken verbatim."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, link, data in members:
            ti = tarfile.TarInfo(name)
            ti.type = kind
            ti.linkname = link
            ti.mode = 0o777 if kind == tarfile.SYMTYPE else 0o644
            ti.size = len(data) if kind == tarfile.REGTYPE else 0
            tf.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def f(name: str, data: bytes = b"pwned") -> tuple[str, bytes, str, bytes]:
    return (name, tarfile.REGTYPE, "", data)


def sym(name: str, target: str) -> tuple[str, bytes, str, bytes]:
    return (name, tarfile.SYMTYPE, target, b"")


def link(name: str, target: str) -> tuple[str, bytes, str, bytes]:
    return (name, tarfile.LNKTYPE, target, b"")


def d(name: str) -> tuple[str, bytes, str, bytes]:
    return (name, tarfile.DIRTYPE, "", b"")


@dataclass(frozen=True)
class Hostile:
    name: str
    layers: tuple[bytes, ...]
    #: the error flatten must raise, or None when the layers must apply (safely)
    error: type[OcisquashError] | None
    #: paths inside the image that must exist after a successful flatten
    inside: tuple[bytes, ...] = ()


CORPUS = [
    Hostile("dot_dot_traversal", (raw_tar(f("../../escape-dotdot")),), UnsafeLayerError),
    Hostile("dot_dot_in_the_middle", (raw_tar(f("a/../../../escape-mid")),), UnsafeLayerError),
    Hostile("absolute_path_is_made_relative", (raw_tar(f("/" + ESCAPE)),), None,
            (ESCAPE.encode(),)),
    Hostile("symlink_to_root_then_file_through_it_same_layer",
            (raw_tar(sym("etc", "/"), f(f"etc/{ESCAPE}")),), UnsafeLayerError),
    Hostile("symlink_to_parent_then_file_through_it_same_layer",
            (raw_tar(sym("up", "../../../../.."), f("up/escape-up")),), UnsafeLayerError),
    Hostile("symlink_to_root_in_lower_layer_file_through_it_in_upper",
            (raw_tar(sym("etc", "/")), raw_tar(f(f"etc/{ESCAPE}"))), None,
            (f"etc/{ESCAPE}".encode(),)),
    Hostile("symlink_to_absolute_dir_in_lower_layer_directory_in_upper",
            (raw_tar(sym("lib", "/tmp")), raw_tar(d("lib"), f("lib/x"))), None, (b"lib/x",)),
    Hostile("hardlink_out_of_the_root", (raw_tar(link("l", "../../../etc/shadow")),),
            UnsafeLayerError),
    Hostile("hardlink_to_absolute_path_not_in_layer", (raw_tar(link("l", "/etc/shadow")),),
            LayerError),
    Hostile("hardlink_through_a_symlinked_directory",
            (raw_tar(sym("s", "/etc"), link("l", "s/shadow")),), LayerError),
    Hostile("whiteout_of_dot_dot", (raw_tar(f("a/.wh..."), f("b")),), UnsafeLayerError),
    Hostile("root_replaced_by_symlink", (raw_tar(sym(".", "/")),), UnsafeLayerError),
    Hostile("root_replaced_by_symlink_with_trailing_slash", (raw_tar(sym("./", "/tmp")),),
            UnsafeLayerError),
    Hostile("whiteout_beneath_a_lower_symlink_is_harmless",
            (raw_tar(sym("a", "/"), f("a")), raw_tar(f(f"a/.wh.{ESCAPE.rpartition('/')[2]}"))),
            None, (b"a",)),
]
