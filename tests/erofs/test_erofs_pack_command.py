"""``ocisquash pack DIR OUT --format erofs``: the command line, judged by fsck.erofs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ._util import dump_super, fsck


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
    (["-c", "lz4hc"], "squashfs cannot compress with lz4hc"),
])
def test_a_compressor_the_format_lacks_is_one_usage_line(source: Path, tmp_path: Path,
                                                         argv: list[str], message: str) -> None:
    proc = _cli("pack", source, tmp_path / "o", *argv)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"ocisquash: {message}")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
