"""``TarSink`` keeps a layer's sparse files sparse (PAX sparse format 1.0): GNU tar,
Python's tarfile, umoci (Go's archive/tar) and our own reader get the same bytes
back, and the holes are never read nor written."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from ocisquash.flatten import flatten
from ocisquash.layers import read_layer
from ocisquash.tarout import TarSink, _sparse_plan
from reliability.kit import sha256, write_raw_layout

from .layerkit import BlobLayer
from .treecmp import umoci_unpack
from conftest import require_or_skip

MIB = 1 << 20
TIB = 1 << 40
TAR_MEDIA = "application/vnd.oci.image.layer.v1.tar"


def _sparse_tree(root: Path) -> dict[str, bytes]:
    """Sparse files on disk (holes at 512-aligned and unaligned places), their bytes."""
    root.mkdir()
    (root / "d").mkdir()
    layouts: dict[str, tuple[list[tuple[int, bytes]], int]] = {
        "middle-hole": ([(0, b"start"), (20497, b"end")], 20500),
        "d/leading-hole": ([(3 * MIB + 5, b"after a hole")], 3 * MIB + 100),
        "trailing-hole": ([(0, os.urandom(10000))], 2 * MIB - 1),
        "many-holes": ([(i * 12289 + i, b"%d" % i * 100) for i in range(40)], 40 * 12289 + 5000),
        "only-hole": ([], MIB),
    }
    out = {}
    for name, (writes, size) in layouts.items():
        with open(root / name, "wb") as f:
            for at, data in writes:
                f.seek(at)
                f.write(data)
            f.truncate(size)
        out[name] = (root / name).read_bytes()
    return out


def _gnu_sparse_tar(root: Path) -> bytes:
    require_or_skip(shutil.which("tar") is not None, "GNU tar is not installed")
    return subprocess.run(["tar", "-c", "-f", "-", "--sparse", "--format=pax", "-C", str(root),
                           "."], check=True, capture_output=True).stdout


def _tar_output(layer: bytes) -> bytes:
    out = io.BytesIO()
    sink = TarSink(out)
    flatten([BlobLayer.of(layer, "tar")], sink)
    sink.finish()
    return out.getvalue()


@pytest.mark.parametrize(("regions", "size", "plan"), [
    ([0, 5, 20497, 3], 20500, [0, 512, 20480, 20]),     # widened to 512, to the size
    ([0, 5, 600, 5], 20500, [0, 1024, 20500, 0]),       # merged; the file ends in a hole
    ([], 4096, [4096, 0]),                              # all hole
    ([0, 4096], 4096, None),                            # no hole: a plain file
    ([0, 0, 1024, 512, 1536, 1], 4096, [1024, 1024, 4096, 0]),  # empty regions dropped
])
def test_sparse_regions_are_widened_to_tar_blocks(regions: list[int], size: int,
                                                   plan: list[int] | None) -> None:
    got = _sparse_plan(regions, size)
    assert (list(got) if got is not None else None) == plan


def test_sparse_files_come_back_from_gnu_tar_python_and_our_reader(tmp_path: Path) -> None:
    files = _sparse_tree(tmp_path / "src")
    out = _tar_output(_gnu_sparse_tar(tmp_path / "src"))
    # The holes are not in the tar: the data regions of GNU tar's map (4 KiB blocks,
    # as the file system reports them), headers and maps.
    assert len(out) < 1 * MIB
    dest = tmp_path / "gnu"
    dest.mkdir()
    subprocess.run(["tar", "-x", "-f", "-", "-C", str(dest)], input=out, check=True)
    with tarfile.open(fileobj=io.BytesIO(out)) as tf:
        python = {m.name.removeprefix("./"): tf.extractfile(m).read()  # type: ignore[union-attr]
                  for m in tf.getmembers() if m.isfile()}
    ours = {}
    for entry, data in read_layer(BlobLayer.of(out, "tar")):
        if entry.kind == "file":
            assert data is not None
            ours[entry.path.decode()] = data if isinstance(data, bytes) else data.read()
    for name, data in files.items():
        assert (dest / name).read_bytes() == data, name
        assert python[name] == data, name
        assert ours[name] == data, name
    # GNU tar made the files sparse again.
    assert os.stat(dest / "only-hole").st_blocks == 0


def test_umoci_unpacks_the_sparse_members(tmp_path: Path) -> None:
    """Go's archive/tar (umoci, applying the tar as a layer) reads the same bytes."""
    require_or_skip(shutil.which("umoci") is not None, "umoci is not installed")
    files = _sparse_tree(tmp_path / "src")
    out = _tar_output(_gnu_sparse_tar(tmp_path / "src"))
    layout = write_raw_layout(tmp_path / "layout", layers=[out], diff_ids=[sha256(out)],
                              layer_media=TAR_MEDIA)
    rootfs = umoci_unpack(layout, tmp_path / "bundle")
    for name, data in files.items():
        assert (rootfs / name).read_bytes() == data, name


def test_a_terabyte_sparse_member_is_a_small_tar(tmp_path: Path) -> None:
    """A layer declaring a 1 TiB file: a tar of a few KiB, which GNU tar unpacks to a
    sparse 1 TiB file (umoci would write the terabyte: Go does not make holes)."""
    root = tmp_path / "tib"
    root.mkdir()
    with open(root / "big", "wb") as f:
        f.write(b"start")
        f.seek(TIB - 3)
        f.write(b"end")
    layer = _gnu_sparse_tar(root)
    (root / "big").unlink()
    out = _tar_output(layer)
    assert len(out) < 64 * 1024
    dest = tmp_path / "gnu"
    dest.mkdir()
    subprocess.run(["tar", "-x", "-f", "-", "-C", str(dest)], input=out, check=True)
    big = dest / "big"
    assert big.stat().st_size == TIB
    assert big.stat().st_blocks < 1024
    with open(big, "rb") as f:
        assert f.read(5) == b"start"
        f.seek(TIB // 2)
        assert f.read(MIB) == bytes(MIB)
        f.seek(TIB - 3)
        assert f.read() == b"end"


def test_a_file_stored_in_full_stays_in_full(tmp_path: Path) -> None:
    """Zeros a layer stored as data are written as data (found only by reading)."""
    root = tmp_path / "src"
    root.mkdir()
    data = b"x" + bytes(64 * 1024) + b"y"
    (root / "f").write_bytes(data)
    require_or_skip(shutil.which("tar") is not None, "GNU tar is not installed")
    plain = subprocess.run(["tar", "-c", "-f", "-", "--format=pax", "-C", str(root), "."],
                           check=True, capture_output=True).stdout
    out = _tar_output(plain)
    with tarfile.open(fileobj=io.BytesIO(out)) as tf:
        (member,) = [m for m in tf.getmembers() if m.isfile()]
        assert member.name == "f" and not member.pax_headers.get("GNU.sparse.major")
        assert hashlib.sha256(tf.extractfile(member).read()).digest() == \
            hashlib.sha256(data).digest()  # type: ignore[union-attr]
