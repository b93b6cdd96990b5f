"""End to end: flatten into the real ``SquashfsWriter``, unpack the image with
``unsquashfs`` as root, and compare path by path with ``umoci unpack`` of the same image."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ocisquash.flatten import flatten
from ocisquash.squashfs.writer import SquashfsWriter, WriterOptions

from .cases import CASES, Case, layer_bytes
from .layerkit import BlobLayer, RecordingSink
from .test_rules import reference_tree
from .treecmp import differences, implicit_dirs, tree_from_dir
from conftest import require_or_skip


def squash_and_unpack(tars: list[bytes], tmp_path: Path) -> Path:
    image = tmp_path / "image.sqfs"
    with SquashfsWriter(image, WriterOptions(mkfs_time=0, workers=1)) as writer:
        flatten([BlobLayer.of(t) for t in tars], writer)
    out = tmp_path / "unsquashed"
    subprocess.run(["unsquashfs", "-no-progress", "-d", str(out), str(image)], check=True,
                   capture_output=True)
    return out


@pytest.mark.parametrize("case", [c for c in CASES if c.reference], ids=lambda c: c.name)
def test_squashfs_image_unpacks_to_the_umoci_tree(case: Case, tmp_path: Path) -> None:
    require_or_skip(os.geteuid() == 0, "unsquashfs and umoci keep owners and devices only as root")
    require_or_skip(shutil.which("unsquashfs") is not None, "unsquashfs is not installed")
    tars = [layer_bytes(layer) for layer in case.layers]
    recorded = RecordingSink()
    flatten([BlobLayer.of(t) for t in tars], recorded)
    expected = tree_from_dir(reference_tree(case, tars, tmp_path))
    actual = tree_from_dir(squash_and_unpack(tars, tmp_path))
    explicit_root = recorded.nodes[b""].meta is not None
    assert differences(expected, actual, root_meta=explicit_root,
                       ignore_mtime=implicit_dirs(recorded)) == []
