"""Hostile layers: clean errors, and nothing ever written outside the output —
proved by unpacking our squashfs and tar outputs with unsquashfs and GNU tar inside a
directory whose surroundings are watched."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ocisquash.errors import OcisquashError
from ocisquash.flatten import flatten
from ocisquash.squashfs.writer import SquashfsWriter, WriterOptions
from ocisquash.tarout import TarSink

from ..layerkit import BlobLayer, RecordingSink
from .corpus import CORPUS, ESCAPE, Hostile
from conftest import require_or_skip


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its type and content hash (symlinks not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[str(p)] = "dir"
    return out


@pytest.fixture
def watched(tmp_path: Path) -> Path:
    """An output directory nested in a sentinel tree that must never change."""
    sentinel = tmp_path / "sentinel"
    (sentinel / "etc").mkdir(parents=True)
    (sentinel / "etc" / "shadow").write_text("secret")
    out = sentinel / "a" / "b" / "c" / "out"
    out.mkdir(parents=True)
    return out


@pytest.mark.parametrize("item", CORPUS, ids=lambda h: h.name)
def test_hostile_layer_fails_cleanly_or_applies_inside_the_root(item: Hostile) -> None:
    layers = [BlobLayer.of(t, "tar") for t in item.layers]
    sink = RecordingSink()
    if item.error is not None:
        with pytest.raises(item.error) as info:
            flatten(layers, sink)
        assert "layer sha256:" in str(info.value)
        return
    flatten(layers, sink)
    for path in item.inside:
        assert sink.nodes[path].kind == "file"
    for path in sink.nodes:
        assert not path.startswith(b"/") and b".." not in path.split(b"/")


@pytest.mark.parametrize("item", [h for h in CORPUS if h.error is None], ids=lambda h: h.name)
def test_unpacking_our_outputs_writes_nothing_outside(item: Hostile, watched: Path) -> None:
    require_or_skip(os.geteuid() == 0, "unsquashfs restores owners only as root")
    require_or_skip(shutil.which("unsquashfs") is not None, "unsquashfs is not installed")
    require_or_skip(shutil.which("tar") is not None, "GNU tar is not installed")
    sentinel = watched.parents[3]
    before = snapshot(sentinel)
    escape = Path("/", ESCAPE)
    assert not escape.exists()

    image = watched / "image.sqfs"
    with SquashfsWriter(image, WriterOptions(mkfs_time=0, workers=1)) as writer:
        flatten([BlobLayer.of(t, "tar") for t in item.layers], writer)
    subprocess.run(["unsquashfs", "-no-progress", "-d", str(watched / "sq"), str(image)],
                   check=True, capture_output=True)
    out = io.BytesIO()
    tar_sink = TarSink(out)
    flatten([BlobLayer.of(t, "tar") for t in item.layers], tar_sink)
    tar_sink.finish()
    (watched / "tar").mkdir()
    subprocess.run(["tar", "-x", "-f", "-", "-C", str(watched / "tar")], input=out.getvalue(),
                   check=True, capture_output=True)

    for path in item.inside:
        p = watched / "sq" / os.fsdecode(path)
        assert p.is_file() and not p.is_symlink(), p
        # GNU tar creates absolute symlinks last, so where one layer lists a name twice
        # (symlink, then file) the tar may unpack to the symlink: still inside the root.
        t = watched / "tar" / os.fsdecode(path)
        assert t.is_symlink() or t.resolve().is_relative_to((watched / "tar").resolve())
    after = {k: v for k, v in snapshot(sentinel).items() if not k.startswith(str(watched))}
    assert after == {k: v for k, v in before.items() if not k.startswith(str(watched))}
    assert not escape.exists()


def test_errors_are_ocisquash_errors_with_one_line_messages() -> None:
    for item in CORPUS:
        if item.error is None:
            continue
        with pytest.raises(OcisquashError) as info:
            flatten([BlobLayer.of(t, "tar") for t in item.layers], RecordingSink())
        assert "\n" not in str(info.value), item.name
