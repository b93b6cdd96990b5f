"""``ocisquash pack``: options, summary output, atomic output file, errors."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from ocisquash.commands import pack as pack_command
from ocisquash.commands._common import parse_size
from ocisquash.errors import SquashfsError, UsageError
from ocisquash.pack import pack_directory
from ocisquash.squashfs import WriterOptions

from ._util import inode_type, run, unsquashfs_extract, unsquashfs_listing


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ocisquash")
    pack_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub/file").write_bytes(b"content\n" * 1000)
    (src / "same").write_bytes(b"content\n" * 1000)
    os.symlink("sub/file", src / "link")
    os.setxattr(src / "same", "user.tag", b"v")
    return src


@pytest.mark.parametrize(
    ("text", "value"), [("131072", 131072), ("128K", 131072), ("4k", 4096), ("1M", 1 << 20)]
)
def test_block_size_suffixes(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "12Q", "-4K", "nan"])
def test_bad_block_size_text_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


def test_fractional_block_size_is_refused_as_not_a_power_of_two() -> None:
    with pytest.raises(UsageError):
        WriterOptions(block_size=parse_size("1.5M"))


def test_json_summary_describes_the_image(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.squashfs"
    argv = ["pack", str(source), str(out), "--json", "--mkfs-time", "0", "--compression", "zstd"]
    assert _run([*argv, "--block-size", "64K", "--workers", "2", "--level", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["bytes_written"] == out.stat().st_size
    assert summary["compression"] == "zstd"
    assert summary["block_size"] == 65536
    assert (summary["files"], summary["directories"], summary["symlinks"]) == (2, 2, 1)
    assert summary["duplicates"] == 1
    assert "Compression zstd" in run("unsquashfs", "-s", out).stdout


def test_lz4hc_is_lz4_with_the_high_compression_flag(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # squashfs has no lz4hc compressor of its own: as mksquashfs -comp lz4 -Xhc, it is
    # lz4 with a flag in the compressor options, which unsquashfs reports.
    hc, plain = tmp_path / "hc.sqfs", tmp_path / "lz4.sqfs"
    argv = ["pack", str(source), str(hc), "--json", "--mkfs-time", "0", "-c", "lz4hc"]
    assert _run([*argv, "--level", "12"]) == 0
    assert json.loads(capsys.readouterr().out)["compression"] == "lz4hc"
    assert _run(["pack", str(source), str(plain), "--mkfs-time", "0", "-c", "lz4"]) == 0
    described = run("unsquashfs", "-s", hc).stdout
    assert "Compression lz4" in described and "(-Xhc)" in described
    assert "Compression lz4" in run("unsquashfs", "-s", plain).stdout
    assert "(-Xhc)" not in run("unsquashfs", "-s", plain).stdout
    extracted = tmp_path / "x"
    unsquashfs_extract(hc, extracted)
    assert (extracted / "sub/file").read_bytes() == (source / "sub/file").read_bytes()
    assert os.getxattr(extracted / "same", "user.tag") == b"v"


def test_one_line_summary_and_quiet(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["pack", str(source), str(tmp_path / "a.sqfs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wrote ")
    assert _run(["pack", str(source), str(tmp_path / "b.sqfs"), "--quiet"]) == 0
    assert capsys.readouterr().out == ""


def _posix_acl(uid: int) -> bytes:
    """A system.posix_acl_access value: owner rw, user ``uid`` r, group r, mask r, other r."""
    import struct

    entries = [(0x01, 6, 0xFFFFFFFF), (0x02, 4, uid), (0x04, 4, 0xFFFFFFFF),
               (0x10, 4, 0xFFFFFFFF), (0x20, 4, 0xFFFFFFFF)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def test_what_squashfs_cannot_hold_is_named_not_dropped_silently(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        os.setxattr(source / "sub/file", "system.posix_acl_access", _posix_acl(1000))
    except OSError as e:
        pytest.skip(f"the test directory's filesystem takes no POSIX ACLs: {e.strerror}")
    os.utime(source / "same", (0, -5))
    out = tmp_path / "o.sqfs"
    assert _run(["pack", str(source), str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert ("ocisquash: warning: 1 entries: extended attributes outside "
            "user./trusted./security. were dropped (e.g. /sub/file)") in err
    assert ("ocisquash: warning: 1 entries: modification times outside 0..2^32-1 "
            "were clamped (e.g. /same)") in err
    assert _run(["pack", str(source), str(out), "--json", "--force"]) == 0
    kinds = {i["kind"]: i for i in json.loads(capsys.readouterr().out)["fidelity"]}
    assert kinds["xattr-dropped"]["examples"] == ["sub/file"]
    assert kinds["mtime-clamped"]["count"] == 1
    # What squashfs can hold stays: the user. xattr, and time 0 for the clamped one.
    assert any("user.tag" in line for line in run("rdsquashfs", "-x", "/same", out)
               .stdout.splitlines())
    assert " 1970-01-01 00:00 " in next(
        line for line in unsquashfs_listing(out) if line.endswith("/same"))
    assert _run(["pack", str(source), str(out), "--quiet", "--force"]) == 0
    assert capsys.readouterr().err == ""


def test_flags_reach_the_image(source: Path, tmp_path: Path) -> None:
    os.chown(source / "sub/file", 1234, 5678)
    out = tmp_path / "o.sqfs"
    argv = ["pack", str(source), str(out), "-q", "--all-root", "--no-xattrs"]
    assert _run([*argv, "--no-fragments", "--no-dedup"]) == 0
    assert not any(" 1234/5678 " in line for line in unsquashfs_listing(out))
    assert inode_type(out, "/same") == "file"  # no xattrs: basic inode
    described = run("unsquashfs", "-s", out).stdout
    assert "Fragments are not stored" in described
    assert "Duplicates are not removed" in described


def test_output_inside_the_source_is_not_packed_into_itself(source: Path) -> None:
    out = source / "image.squashfs"
    out.write_bytes(b"old image")
    pack_directory(source, out, WriterOptions(mkfs_time=0))
    assert not any("image.squashfs" in line for line in unsquashfs_listing(out))
    assert not [p for p in source.iterdir() if p.name.startswith(".image.squashfs.")]


def test_failed_pack_leaves_no_output_and_no_temporary(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "o.sqfs"
    out.write_bytes(b"previous image")

    def broken(*args: object, **kwargs: object) -> None:
        raise SquashfsError("simulated failure")

    monkeypatch.setattr("ocisquash.squashfs.SquashfsWriter.add_symlink", broken)
    with pytest.raises(SquashfsError, match="simulated failure"):
        pack_directory(source, out, WriterOptions(mkfs_time=0))
    assert out.read_bytes() == b"previous image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.sqfs", "src"]


def test_source_that_is_not_a_directory_is_a_usage_error(source: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a directory"):
        pack_directory(source / "same", tmp_path / "o.sqfs", WriterOptions())
    with pytest.raises(UsageError):
        pack_directory(tmp_path / "missing", tmp_path / "o.sqfs", WriterOptions())


def test_packed_tree_extracts_equal(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.sqfs"
    pack_directory(source, out, WriterOptions(mkfs_time=0))
    extracted = tmp_path / "x"
    unsquashfs_extract(out, extracted)
    assert (extracted / "sub/file").read_bytes() == (source / "sub/file").read_bytes()
    assert os.readlink(extracted / "link") == "sub/file"
    assert os.getxattr(extracted / "same", "user.tag") == b"v"
