"""``TarSink``: the flattened tree as one tar stream, unpacked again by GNU tar."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from ocisquash.entry import EntryMeta
from ocisquash.flatten import flatten
from ocisquash.tarout import TarSink

from .cases import CASES, Case, layer_bytes
from .layerkit import BlobLayer, RecordingSink
from .treecmp import differences, tree_from_dir, tree_from_sink
from conftest import require_or_skip

#: cases where one layer replaces a non-empty directory by a file (the spec forbids
#: duplicate names in a layer): the tar holds both, extractors need --recursive-unlink.
NEEDS_RECURSIVE_UNLINK = {"test_same_layer_directory_then_file_last_entry_wins"}


def gnu_untar(data: bytes, dest: Path, *options: str) -> None:
    dest.mkdir()
    subprocess.run(["tar", "-x", "-f", "-", "--numeric-owner", "--xattrs", "--xattrs-include=*",
                    *options, "-C", str(dest)], input=data, check=True)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_tar_output_unpacks_to_the_flattened_tree(case: Case, tmp_path: Path) -> None:
    require_or_skip(os.geteuid() == 0, "unpacking keeps owners and devices only as root")
    require_or_skip(shutil.which("tar") is not None, "GNU tar is not installed")
    tars = [layer_bytes(layer) for layer in case.layers]
    recorded = RecordingSink()
    flatten([BlobLayer.of(t) for t in tars], recorded)
    out = io.BytesIO()
    sink = TarSink(out)
    flatten([BlobLayer.of(t) for t in tars], sink)
    sink.finish()
    gnu_untar(out.getvalue(), tmp_path / "x",
              *(["--recursive-unlink"] if case.name in NEEDS_RECURSIVE_UNLINK else []))
    explicit_root = recorded.nodes[b""].meta is not None
    assert differences(tree_from_dir(tmp_path / "x"), tree_from_sink(recorded),
                       root_meta=explicit_root) == []


def test_directory_metadata_settled_late_is_written_again_at_the_end() -> None:
    out = io.BytesIO()
    sink = TarSink(out)
    sink.add_file(b"d/f", EntryMeta(0o644), b"x")
    sink.add_directory(b"d", EntryMeta(0o700, uid=5, mtime=7))
    sink.finish()
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        members = [(m.name, m.type, m.mode, m.uid) for m in tf.getmembers()]
    assert members == [("d", tarfile.DIRTYPE, 0o755, 0), ("d/f", tarfile.REGTYPE, 0o644, 0),
                       ("d", tarfile.DIRTYPE, 0o700, 5)]


def test_file_data_is_streamed_not_buffered() -> None:
    class Counting(io.RawIOBase):
        def __init__(self, n: int) -> None:
            self.left, self.biggest = n, 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            n = self.left if n < 0 else min(n, self.left)
            self.biggest = max(self.biggest, n)
            self.left -= n
            return b"z" * n

    class Sink(io.RawIOBase):
        written = 0

        def writable(self) -> bool:
            return True

        def write(self, b: bytes) -> int:  # type: ignore[override]
            self.written += len(b)
            return len(b)

    size = 64 << 20
    src, dst = Counting(size), Sink()
    sink = TarSink(dst)  # type: ignore[arg-type]
    sink.add_file(b"big", EntryMeta(0o644), src, size)  # type: ignore[arg-type]
    sink.finish()
    assert dst.written >= size
    assert src.biggest <= 1 << 20


def test_with_a_shape_each_directory_is_written_once_with_its_final_metadata() -> None:
    from ocisquash.tarout import TreeShape

    def feed(sink: TreeShape | TarSink) -> None:
        # An upper layer creates d implicitly; a lower one lists it afterwards.
        sink.add_file(b"d/e/f", EntryMeta(0o644), b"x")
        sink.add_directory(b"d", EntryMeta(0o700, uid=5, mtime=7))
        sink.add_directory(b"d/e", EntryMeta(0o750, mtime=9))

    shape = TreeShape()
    feed(shape)
    out = io.BytesIO()
    sink = TarSink(out, shape=shape)
    feed(sink)
    sink.finish()
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        members = [(m.name, m.mode, m.uid, m.mtime) for m in tf.getmembers()]
    assert members == [("d", 0o700, 5, 7), ("d/e", 0o750, 0, 9), ("d/e/f", 0o644, 0, 0)]
    assert shape.inodes() == 4  # the root, d, d/e, d/e/f


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello" / "layout"


def test_example_tar_lists_each_path_once_and_sqfstar_builds_the_same_tree(
        tmp_path: Path) -> None:
    from ocisquash import compile_image
    from ocisquash.sources.options import SourceOptions

    require_or_skip(shutil.which("sqfstar") is not None and shutil.which("unsquashfs") is not None,
                    "sqfstar and unsquashfs (squashfs-tools) are not installed")
    options = SourceOptions(cache_dir=tmp_path / "cache")
    tar = compile_image(f"oci:{EXAMPLE}:latest", tmp_path / "x.tar", format="tar",
                        source_options=options)
    sqfs = compile_image(f"oci:{EXAMPLE}:latest", tmp_path / "x.sqfs", source_options=options)
    with tarfile.open(tmp_path / "x.tar") as tf:
        names = [m.name for m in tf.getmembers()]
    assert len(names) == len(set(names)), names
    for i, name in enumerate(names):
        parent = name.rpartition("/")[0]
        assert not parent or parent in names[:i], f"{name} comes before its parent"
    with open(tmp_path / "x.tar", "rb") as stdin:
        made = subprocess.run(["sqfstar", "-no-progress", str(tmp_path / "t.sqfs")],
                              stdin=stdin, capture_output=True, text=True, check=True)
    assert "already exists" not in made.stderr + made.stdout

    def listing(p: Path) -> list[str]:
        out = subprocess.run(["unsquashfs", "-lln", str(p)], capture_output=True, text=True,
                             check=True).stdout.splitlines()
        # The root: the tar lists none (sqfstar makes its own); everything else must agree.
        return [line for line in out if not line.rstrip().endswith("squashfs-root")]

    assert listing(tmp_path / "t.sqfs") == listing(tmp_path / "x.sqfs")
    assert tar.files == sqfs.files == 21
