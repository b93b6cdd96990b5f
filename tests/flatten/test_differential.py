"""Differential test: random layer stacks (whiteouts, opaque markers, type changes,
hard links, duplicates) flattened by ocisquash and unpacked by umoci must agree path
by path. Stacks where the two deliberately differ (see flatten.py: ocisquash never
writes through symlinks, and refuses entries beneath a non-directory of their own
layer) or that umoci refuses are discarded. ``OCISQUASH_DIFF_EXAMPLES`` sets the
number of stacks (40 by default; run a few thousand after changing flatten.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ocisquash.errors import LayerError
from ocisquash.flatten import flatten

from .cases import D, F, H, O, S, W
from .layerkit import BlobLayer, RecordingSink
from .treecmp import differences, tree_from_dir, tree_from_sink, umoci_unpack
from conftest import require_or_skip
from imagebuilder import Entry, make_tar, write_oci_layout

DIRS = ["d", "d/e", "g"]
LEAVES = ["a", "b", "d/a", "d/b", "d/e/a", "g/a"]  # never a parent of another path
PATHS = DIRS + LEAVES


@st.composite
def layer(draw: st.DrawFn) -> list[Entry]:
    entries: list[Entry] = []
    files: list[str] = []
    for _ in range(draw(st.integers(1, 7))):
        op = draw(st.sampled_from(["file", "file", "dir", "symlink", "whiteout", "opaque",
                                   "hardlink", "hardlink", "special"]))
        mode = draw(st.sampled_from([0o644, 0o600, 0o4755, 0o750]))
        uid = draw(st.sampled_from([0, 1000]))
        mtime = draw(st.sampled_from([1_600_000_000, 1_700_000_000]))
        if op == "file":
            path = draw(st.sampled_from(PATHS))
            entries.append(F(path, draw(st.sampled_from([b"", b"one", b"two" * 50])), mode=mode,
                             uid=uid, mtime=mtime))
            files.append(path)
        elif op == "dir":
            entries.append(D(draw(st.sampled_from(DIRS)), mode, uid=uid, mtime=mtime))
        elif op == "symlink":
            path = draw(st.sampled_from(LEAVES))
            entries.append(S(path, draw(st.sampled_from(["x", "/a"]))))
            files.append(path)
        elif op == "special":
            path = draw(st.sampled_from(LEAVES))
            kind = draw(st.sampled_from(["fifo", "char"]))
            entries.append(Entry(path, kind, mode=mode, uid=uid, mtime=mtime, devmajor=1,
                                 devminor=draw(st.sampled_from([3, 5]))))
            files.append(path)
        elif op == "whiteout":
            entries.append(W(draw(st.sampled_from(PATHS))))
        elif op == "opaque":
            entries.append(O(draw(st.sampled_from(DIRS))))
        elif files:
            entries.append(H(draw(st.sampled_from(LEAVES)), draw(st.sampled_from(files))))
    return entries


@settings(max_examples=int(os.environ.get("OCISQUASH_DIFF_EXAMPLES", "40")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.lists(layer(), min_size=1, max_size=5))
def test_random_layer_stacks_match_umoci(layers: list[list[Entry]]) -> None:
    require_or_skip(shutil.which("umoci") is not None, "umoci is not installed")
    require_or_skip(os.geteuid() == 0, "umoci keeps owners only as root")
    for entries in layers:
        # A whiteout of a directory the same layer also puts entries in: the spec says
        # the whiteout removes the lower directory (so its metadata too); umoci keeps
        # the lower directory when the whiteout comes after the entries.
        # Likewise an opaque directory holding a directory the layer creates only as a
        # parent: umoci keeps the lower one (and its metadata) when the marker comes last.
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
        assume(False)  # a layer writing beneath its own non-directory, or a dangling link
        return
    assume(not report.fidelity)  # a lower symlink replaced by a directory: umoci follows it
    with tempfile.TemporaryDirectory() as tmp:
        write_oci_layout(Path(tmp, "image"), tars, compression="gzip")
        try:
            rootfs = umoci_unpack(Path(tmp, "image"), Path(tmp, "bundle"))
        except AssertionError:
            assume(False)  # umoci refuses (e.g. a file where it needs a directory)
            return
        expected = tree_from_dir(rootfs)
    actual = tree_from_sink(sink)
    explicit_root = sink.nodes[b""].meta is not None
    # umoci leaves a directory dated "now" when it creates a missing directory inside
    # it (it restores only the immediate parent's metadata), so directory mtimes are
    # compared by the rule table's targeted cases only.
    dirs = frozenset(p for p, r in actual.records.items() if r.kind == "dir")
    assert differences(expected, actual, root_meta=explicit_root, ignore_mtime=dirs) == []
