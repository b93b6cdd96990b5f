"""The OCI layering rules, one case each (see cases.py), checked twice: against the
case's own expectations, and path by path against ``umoci unpack`` of the same image."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ocisquash.flatten import FlattenReport, flatten

from .cases import CASES, Case, layer_bytes
from .layerkit import BlobLayer, RecordingSink
from .treecmp import differences, tree_from_dir, tree_from_sink, umoci_unpack
from conftest import require_or_skip
from imagebuilder import write_oci_layout


def summary(sink: RecordingSink, path: bytes) -> str | None:
    n = sink.nodes.get(path)
    if n is None:
        return None
    if n.kind == "file":
        return "file:" + n.data.decode("latin-1")
    if n.kind == "symlink":
        return "symlink->" + n.target.decode("latin-1")
    return n.kind


def run_case(case: Case, compression: str = "gzip") -> tuple[RecordingSink, FlattenReport, list[bytes]]:
    tars = [layer_bytes(layer) for layer in case.layers]
    sink = RecordingSink()
    report = flatten([BlobLayer.of(t, compression) for t in tars], sink)
    return sink, report, tars


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_rule(case: Case) -> None:
    sink, report, _ = run_case(case)
    for path, want in case.expect.items():
        assert summary(sink, path) == (want.encode("latin-1").decode("latin-1") if want else None), path
    assert not any(b".wh." in p for p in sink.nodes), "a whiteout reached the sink"
    kinds = {i.kind for i in report.fidelity}
    assert set(case.fidelity) <= kinds


def reference_tree(case: Case, tars: list[bytes], tmp_path: Path) -> Path:
    """Unpack the case's image with the independent tool; the root of its tree."""
    if case.reference == "gnutar":
        assert len(tars) == 1
        require_or_skip(shutil.which("tar") is not None, "GNU tar is not installed")
        root = tmp_path / "tar-root"
        root.mkdir()
        subprocess.run(["tar", "-x", "-f", "-", "--numeric-owner", "--xattrs",
                        "--xattrs-include=*", "-C", str(root)], input=tars[0], check=True)
        return root
    require_or_skip(shutil.which("umoci") is not None, "umoci is not installed")
    write_oci_layout(tmp_path / "image", tars, compression="gzip")
    return umoci_unpack(tmp_path / "image", tmp_path / "bundle")


@pytest.mark.parametrize("case", [c for c in CASES if c.reference], ids=lambda c: c.name)
def test_rule_matches_independent_unpacker(case: Case, tmp_path: Path) -> None:
    require_or_skip(os.geteuid() == 0, "unpacking keeps owners and devices only as root")
    sink, _, tars = run_case(case)
    rootfs = reference_tree(case, tars, tmp_path)
    expected, actual = tree_from_dir(rootfs), tree_from_sink(sink)
    explicit_root = sink.nodes[b""].meta is not None
    assert differences(expected, actual, root_meta=explicit_root) == []


@pytest.mark.parametrize("compression", ["tar", "gzip", "zstd"])
def test_every_compression_gives_the_same_tree(compression: str) -> None:
    case = next(c for c in CASES if c.name == "test_hardlink_target_removed_by_upper_whiteout_keeps_data")
    sink, report, _ = run_case(case, compression)
    assert summary(sink, b"b") == "file:data"
    assert report.second_passes == 1
