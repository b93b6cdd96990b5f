"""The flattening rules through the EROFS writer: the kernel mounts the image and it
must match ``umoci unpack`` of the same layers, for the rule table and for random
layer stacks (as ``tests/flatten`` does for the recording sink and for squashfs)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from flatten.cases import CASES, Case, layer_bytes
from flatten.layerkit import BlobLayer, RecordingSink
from flatten.test_differential import layer
from flatten.test_rules import reference_tree
from flatten.treecmp import Tree, differences, implicit_dirs, tree_from_dir, umoci_unpack
from ocisquash.erofs import ErofsOptions, ErofsWriter
from ocisquash.errors import LayerError
from ocisquash.flatten import flatten

from ._util import erofs_mounted
from conftest import require_or_skip
from imagebuilder import Entry, make_tar, write_oci_layout

pytestmark = pytest.mark.root


def _tree_of_erofs(tars: list[bytes], where: Path) -> Tree:
    image = where / "image.erofs"
    with ErofsWriter(image, ErofsOptions(mkfs_time=0, workers=1)) as writer:
        flatten([BlobLayer.of(t) for t in tars], writer)
    with erofs_mounted(image, where / "mnt") as mnt:
        return tree_from_dir(mnt)


@pytest.mark.parametrize("case", [c for c in CASES if c.reference], ids=lambda c: c.name)
def test_erofs_image_mounts_as_the_umoci_tree(case: Case, tmp_path: Path) -> None:
    require_or_skip(os.geteuid() == 0, "mounting and umoci's owners need root")
    tars = [layer_bytes(layer) for layer in case.layers]
    recorded = RecordingSink()
    flatten([BlobLayer.of(t) for t in tars], recorded)
    expected = tree_from_dir(reference_tree(case, tars, tmp_path))
    actual = _tree_of_erofs(tars, tmp_path)
    explicit_root = recorded.nodes[b""].meta is not None
    assert differences(expected, actual, root_meta=explicit_root,
                       ignore_mtime=implicit_dirs(recorded)) == []


@settings(max_examples=int(os.environ.get("OCISQUASH_DIFF_EXAMPLES", "40")) // 2,
          deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.filter_too_much])
@given(st.lists(layer(), min_size=1, max_size=5))
def test_random_layer_stacks_in_erofs_match_umoci(layers: list[list[Entry]]) -> None:
    require_or_skip(shutil.which("umoci") is not None, "umoci is not installed")
    require_or_skip(os.geteuid() == 0, "mounting and umoci's owners need root")
    for entries in layers:  # the same discards as tests/flatten/test_differential.py
        names = [e.path for e in entries if isinstance(e.path, str)]
        gone = [n.replace(".wh.", "") for n in names if n.rpartition("/")[2].startswith(".wh.")
                and ".wh..wh." not in n]
        assume(not any(n.startswith(g + "/") for g in gone for n in names))
        opaque = [n.rpartition("/")[0] for n in names if n.endswith(".wh..wh..opq")]
        assume(not any(n.startswith(o + "/") and "/" in n[len(o) + 1:]
                       for o in opaque for n in names))
    tars = [make_tar(entries) for entries in layers]
    sink = RecordingSink()
    try:
        report = flatten([BlobLayer.of(t) for t in tars], sink)
    except LayerError:
        assume(False)
        return
    assume(not report.fidelity)
    with tempfile.TemporaryDirectory() as tmp:
        write_oci_layout(Path(tmp, "image"), tars, compression="gzip")
        try:
            rootfs = umoci_unpack(Path(tmp, "image"), Path(tmp, "bundle"))
        except AssertionError:
            assume(False)
            return
        expected = tree_from_dir(rootfs)
        actual = _tree_of_erofs(tars, Path(tmp))
    explicit_root = sink.nodes[b""].meta is not None
    dirs = frozenset(p for p, r in expected.records.items() if r.kind == "dir")
    assert differences(expected, actual, root_meta=explicit_root,
                       ignore_mtime=dirs) == []
