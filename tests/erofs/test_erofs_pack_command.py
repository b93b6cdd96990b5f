"""``ocisquash pack DIR OUT --format erofs``: the command line, judged by fsck.erofs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ._util import dump_super, erofs_mounted, fsck, require_erofs_features


def _cli(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ocisquash", *map(str, argv)],
                          capture_output=True, text=True)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub/file").write_bytes(b"content\n" * 1000)
    (src / "same").write_bytes(b"content\n" * 1000)
    os.symlink("sub/file", src / "link")
    os.setxattr(src / "same", "user.tag", b"v")
    return src


def test_pack_format_erofs_writes_an_image_fsck_accepts(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.erofs"
    proc = _cli("pack", source, out, "--format", "erofs", "-c", "none",
                "--mkfs-time", "1700000000", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["compression"] == "none"
    assert summary["files"] == 2 and summary["duplicates"] == 1
    assert summary["bytes_written"] == out.stat().st_size
    fsck(out)
    assert int(dump_super(out)["Filesystem inode count"]) == summary["inodes"] == 5


@pytest.mark.parametrize(("argv", "message"), [
    (["--format", "erofs", "-c", "gzip"], "EROFS cannot compress with gzip"),
    (["-c", "none"], "squashfs cannot compress with none"),
    (["-c", "deflate"], "squashfs cannot compress with deflate"),
    (["--format", "erofs", "-c", "lz4", "--level", "5"], "lz4 has no level 5"),
])
def test_a_compressor_the_format_lacks_is_one_usage_line(source: Path, tmp_path: Path,
                                                         argv: list[str], message: str) -> None:
    proc = _cli("pack", source, tmp_path / "o", *argv)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"ocisquash: {message}")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_pack_erofs_fragments_flag(source: Path, tmp_path: Path) -> None:
    require_erofs_features("fragments", since="6.1")
    for i in range(5):  # distinct small files: each a block of its own without fragments
        (source / f"f{i}").write_bytes(b"line %d\n" % i * 700)
    out, plain = tmp_path / "f.erofs", tmp_path / "p.erofs"
    for image, extra in ((out, ["--erofs-fragments"]), (plain, [])):
        proc = _cli("pack", source, image, "--format", "erofs", "--mkfs-time", "0", *extra)
        assert proc.returncode == 0, proc.stderr
    # With fragments the compressed files share one block.
    assert out.stat().st_size < plain.stat().st_size
    with erofs_mounted(out, tmp_path / "m") as m:
        assert (m / "sub/file").read_bytes() == b"content\n" * 1000
        assert (m / "f3").read_bytes() == b"line 3\n" * 700
        assert os.getxattr(m / "same", "user.tag") == b"v"


@pytest.mark.parametrize(("kernel", "compression", "flags"), [
    ("6.1", "lz4hc", ["--erofs-fragments"]),
    ("6.12.9-amd64", "lz4hc", ["--erofs-fragments"]),
    ("5.17", "lz4hc", ["--erofs-ztailpacking"]),
    ("5.15", "lz4hc", []),
    ("5.13", "none", ["--erofs-no-holes"]),
    ("5.4", "none", ["--erofs-no-holes"]),
])
def test_erofs_kernel_picks_the_features_that_kernel_reads(
        source: Path, tmp_path: Path, kernel: str, compression: str, flags: list[str]) -> None:
    for i in range(5):
        (source / f"f{i}").write_bytes(b"line %d\n" % i * 700)
    # A zero 4 KiB chunk: stored as a hole from 5.15 on (uncompressed images).
    (source / "sparse").write_bytes(b"head" + bytes(3 * 4096) + b"tail")
    by_kernel, by_flags, plain = (tmp_path / n for n in ("k.erofs", "f.erofs", "p.erofs"))
    for image, extra in ((by_kernel, ["--erofs-kernel", kernel]), (by_flags, flags),
                         (plain, [])):
        proc = _cli("pack", source, image, "--format", "erofs", "-c", compression,
                    "--mkfs-time", "0", *extra)
        assert proc.returncode == 0, proc.stderr
    assert by_kernel.read_bytes() == by_flags.read_bytes()
    assert (by_kernel.read_bytes() == plain.read_bytes()) == (not flags)
    if "--erofs-fragments" not in flags:  # erofs-utils 1.5 cannot read fragments
        fsck(by_kernel)


@pytest.mark.parametrize(("argv", "message"), [
    (["--erofs-kernel", "5.10"],
     "Linux 5.10 cannot mount EROFS images compressed with lz4hc (it needs Linux 5.13+)"),
    (["--erofs-kernel", "6.1", "-c", "zstd"],
     "Linux 6.1 cannot mount EROFS images compressed with zstd (it needs Linux 6.10+)"),
    (["--erofs-kernel", "5.15", "--erofs-fragments"],
     "Linux 5.15 cannot mount EROFS images with fragments (it needs Linux 6.1+)"),
    (["--erofs-kernel", "4.19", "-c", "none"], "Linux 4.19 cannot mount EROFS images"),
    (["--erofs-kernel", "six"], "invalid kernel version 'six'"),
])
def test_erofs_kernel_refuses_what_that_kernel_cannot_mount(
        source: Path, tmp_path: Path, argv: list[str], message: str) -> None:
    proc = _cli("pack", source, tmp_path / "o", "--format", "erofs", *argv)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"ocisquash: {message}"), proc.stderr
    assert "hint:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
