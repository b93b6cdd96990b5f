"""Compile end to end: the CLI and the Python API, the cache, concurrency and interruption.

The expected trees come from ``umoci unpack`` (an independent implementation of the
layer rules); our squashfs is read back with ``unsquashfs``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ocisquash.compile import compile_image
from ocisquash.errors import ImageNotFoundError, OcisquashError
from ocisquash.sources.options import SourceOptions

from conftest import require_or_skip, run_ocisquash_as_nobody
from imagebuilder import Entry, write_oci_layout

ROOT = Path(__file__).resolve().parents[2]
CAP = bytes.fromhex("0000000220000000000000000000000000000000")


def run_cli(*args: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "ocisquash", *args],
                          capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise AssertionError(f"ocisquash {' '.join(args)} failed:\n{proc.stderr}")
    return proc  # type: ignore[no-any-return]


def tree_of(root: Path) -> dict[str, tuple[object, ...]]:
    """Path → (type, mode, uid, gid, size/content hash, link target, rdev, xattrs, inode group)."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            content: object = None
            target = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(p)
            try:
                names = sorted(os.listxattr(p, follow_symlinks=False))
                xattrs = tuple((n, os.getxattr(p, n, follow_symlinks=False)) for n in names)
            except OSError:
                xattrs = ()
            group = None
            if stat.S_ISREG(st.st_mode):
                group = inodes.setdefault((st.st_dev, st.st_ino), rel)
            rdev = st.st_rdev if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) else 0
            mtime = int(st.st_mtime) if not stat.S_ISDIR(st.st_mode) else None
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, content, target,
                        rdev, xattrs, group, mtime)
    # A hardlink group is named by its first path; a file alone in the tree has no group
    # (st_nlink is not used: overlayfs counts names that upper layers hid).
    sizes: dict[str, int] = {}
    for rec in out.values():
        if rec[8] is not None:
            sizes[str(rec[8])] = sizes.get(str(rec[8]), 0) + 1
    return {p: (*r[:8], r[8] if r[8] is not None and sizes[str(r[8])] > 1 else None, r[9])
            for p, r in out.items()}


def rule_layers() -> list[list[Entry]]:
    """Layers exercising whiteouts, opaque dirs, type changes, hardlinks, devices, xattrs."""
    return [
        [
            Entry("etc", "dir", mode=0o755),
            Entry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
            Entry("etc/gone", data=b"to be whited out\n"),
            Entry("opt", "dir", mode=0o755),
            Entry("opt/lower-1", data=b"one\n"),
            Entry("opt/sub", "dir", mode=0o750, uid=7, gid=8),
            Entry("opt/sub/deep", data=b"deep\n"),
            Entry("srv", "dir", mode=0o755),
            Entry("srv/becomes-file", "dir", mode=0o755),
            Entry("srv/becomes-file/child", data=b"hidden by type change\n"),
            Entry("srv/becomes-dir", data=b"a file first\n"),
            Entry("bin", "dir", mode=0o755),
            Entry("bin/tool", data=b"#!/bin/sh\necho tool\n" * 100, mode=0o4755),
            Entry("bin/tool-link", "hardlink", linkname="bin/tool"),
            Entry("dev", "dir"),
            Entry("dev/zero", "char", mode=0o666, devmajor=1, devminor=5),
            Entry("dev/sda", "block", mode=0o660, devmajor=8, devminor=0, gid=6),
            Entry("dev/fifo", "fifo", mode=0o600),
            Entry("tmp", "dir", mode=0o1777),
        ],
        [
            Entry("etc/.wh.gone"),
            Entry("opt/new-before-marker", data=b"same layer, before the marker\n"),
            Entry("opt/.wh..wh..opq"),
            Entry("opt/new-after-marker", data=b"same layer, after the marker\n"),
            Entry("srv/becomes-file", data=b"now a file\n", mode=0o600),
            Entry("srv/becomes-dir", "dir", mode=0o711),
            Entry("srv/becomes-dir/inside", data=b"inside\n"),
            Entry("bin/.wh.tool"),
            Entry("bin/ping", data=b"ping\n", mode=0o755, xattrs={"security.capability": CAP}),
            Entry("bin/sh", "symlink", linkname="/bin/busybox"),
            Entry("home/user/.profile", data=b"PS1='$ '\n", uid=1000, gid=1000),
            Entry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"),
        ],
    ]


@pytest.fixture(scope="module")
def rules_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "layout"
    write_oci_layout(path, rule_layers(), compression="gzip")
    return path


def unsquash(image: Path, dest: Path) -> dict[str, tuple[object, ...]]:
    subprocess.run(["unsquashfs", "-quiet", "-no-progress", "-d", str(dest), str(image)],
                   check=True, capture_output=True)
    return tree_of(dest)


def test_compile_matches_umoci_unpack(rules_image: Path, tmp_path: Path) -> None:
    require_or_skip(os.geteuid() == 0, "comparing owners and devices needs root")
    require_or_skip(shutil.which("umoci") is not None, "umoci is not installed")
    out = tmp_path / "out.squashfs"
    run_cli("compile", f"oci:{rules_image}:latest", "-o", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--quiet")
    ours = unsquash(out, tmp_path / "ours")
    subprocess.run(["umoci", "unpack", "--image", f"{rules_image}:latest", str(tmp_path / "bundle")],
                   check=True, capture_output=True)
    theirs = tree_of(tmp_path / "bundle" / "rootfs")
    assert sorted(ours) == sorted(theirs)
    for path in theirs:
        assert ours[path] == theirs[path], path
    # The rules really were exercised:
    assert "etc/gone" not in ours and "opt/lower-1" not in ours and "opt/sub" not in ours
    assert "opt/new-before-marker" in ours and "opt/new-after-marker" in ours
    assert "bin/tool" not in ours and ours["bin/tool-link"][1] == 0o4755
    assert ours["bin/ping"][7] == (("security.capability", CAP),)


def test_second_compile_comes_from_cache(rules_image: Path, tmp_path: Path) -> None:
    opts = SourceOptions(cache_dir=tmp_path / "cache")
    first = compile_image(f"oci:{rules_image}:latest", tmp_path / "a.squashfs", source_options=opts)
    second = compile_image(f"oci:{rules_image}:latest", tmp_path / "b.squashfs", source_options=opts)
    assert not first.cached and second.cached
    assert first.digest == second.digest
    assert (tmp_path / "a.squashfs").read_bytes() == (tmp_path / "b.squashfs").read_bytes()
    assert len(list((tmp_path / "cache" / "images").iterdir())) == 1


def test_pull_never_uses_only_the_cache(rules_image: Path, tmp_path: Path) -> None:
    opts = SourceOptions(cache_dir=tmp_path / "cache")
    with pytest.raises(ImageNotFoundError):
        compile_image(f"oci:{rules_image}:latest", tmp_path / "x.squashfs", source_options=opts,
                      pull="never")
    compile_image(f"oci:{rules_image}:latest", None, source_options=opts)
    again = compile_image(f"oci:{rules_image}:latest", tmp_path / "y.squashfs",
                          source_options=opts, pull="never")
    assert again.cached and (tmp_path / "y.squashfs").stat().st_size == again.size


def test_same_image_gives_identical_bytes_across_caches(rules_image: Path, tmp_path: Path) -> None:
    a = compile_image(f"oci:{rules_image}:latest", tmp_path / "a.squashfs",
                      source_options=SourceOptions(cache_dir=tmp_path / "c1"))
    b = compile_image(f"oci:{rules_image}:latest", tmp_path / "b.squashfs",
                      source_options=SourceOptions(cache_dir=tmp_path / "c2"))
    compile_image(f"oci:{rules_image}:latest", tmp_path / "c.squashfs", use_cache=False,
                      source_options=SourceOptions(cache_dir=tmp_path / "c3"))
    assert not a.cached and not b.cached
    data = (tmp_path / "a.squashfs").read_bytes()
    assert data == (tmp_path / "b.squashfs").read_bytes() == (tmp_path / "c.squashfs").read_bytes()


def test_json_summary(rules_image: Path, tmp_path: Path) -> None:
    proc = run_cli("compile", f"oci:{rules_image}:latest", "-o", str(tmp_path / "o.squashfs"),
                   "--cache-dir", str(tmp_path / "cache"), "--json")
    summary = json.loads(proc.stdout)
    assert summary["digest"].startswith("sha256:")
    assert summary["output"] == str(tmp_path / "o.squashfs")
    assert summary["size"] == (tmp_path / "o.squashfs").stat().st_size
    assert summary["config"]["cmd"] == ["/bin/sh"]
    assert summary["cached"] is False and isinstance(summary["fidelity"], list)


def test_corrupted_layer_is_a_clear_error_and_leaves_no_entry(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    built = write_oci_layout(layout, [[Entry("a", data=b"x" * 5000)]], compression="gzip")
    blob = layout / "blobs" / "sha256" / built.layer_digests[0].split(":")[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    proc = run_cli("compile", f"oci:{layout}:latest", "-o", str(tmp_path / "o.squashfs"),
                   "--cache-dir", str(tmp_path / "cache"), check=False)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ocisquash:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert built.layer_digests[0].split(":")[1][:12] in lines[0]
    assert not (tmp_path / "o.squashfs").exists()
    assert list((tmp_path / "cache" / "images").iterdir()) == []
    with pytest.raises(OcisquashError):
        compile_image(f"oci:{layout}:latest", tmp_path / "p.squashfs",
                      source_options=SourceOptions(cache_dir=tmp_path / "cache"))


def test_cache_verify_finds_a_flipped_byte(rules_image: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    res = compile_image(f"oci:{rules_image}:latest", None,
                        source_options=SourceOptions(cache_dir=cache))
    assert res.path is not None
    ok = run_cli("cache", "--cache-dir", str(cache), "verify")
    assert "0 problem" in ok.stdout
    os.chmod(res.path, 0o644)
    with open(res.path, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 1]))
    bad = run_cli("cache", "--cache-dir", str(cache), "verify", check=False)
    assert bad.returncode == 1 and "does not match" in bad.stderr
    run_cli("cache", "--cache-dir", str(cache), "verify", "--repair")
    assert run_cli("cache", "--cache-dir", str(cache), "ls").stdout.strip() == ""


def big_image(path: Path) -> Path:
    """An image large enough that a compile takes a noticeable moment."""
    import random

    rnd = random.Random(7)
    files = [Entry(f"data/f{i:04d}", data=rnd.randbytes(200_000)) for i in range(60)]
    write_oci_layout(path, [[Entry("data", "dir"), *files]], compression="gzip")
    return path


def test_concurrent_compiles_build_once(tmp_path: Path) -> None:
    layout = big_image(tmp_path / "layout")
    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen([sys.executable, "-m", "ocisquash", "compile", f"oci:{layout}:latest",
                          "-o", str(tmp_path / f"out{i}.squashfs"), "--cache-dir", str(cache),
                          "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sum(1 for r in results if not r["cached"]) == 1
    blobs = {(tmp_path / f"out{i}.squashfs").read_bytes() for i in range(4)}
    assert len(blobs) == 1
    assert len(list((cache / "images").iterdir())) == 1


def test_killed_compile_leaves_no_entry_and_next_succeeds(tmp_path: Path) -> None:
    layout = big_image(tmp_path / "layout")
    cache = tmp_path / "cache"
    args = [sys.executable, "-m", "ocisquash", "compile", f"oci:{layout}:latest",
            "-o", str(tmp_path / "out.squashfs"), "--force", "--cache-dir", str(cache),
            "--compression", "xz"]
    killed_midway = 0
    for delay in (0.3, 0.6, 1.0):
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if p.poll() is None:
            killed_midway += 1
        p.send_signal(signal.SIGKILL)
        p.wait()
        entries = list((cache / "images").iterdir()) if (cache / "images").exists() else []
        for e in entries:  # a published entry must be whole
            assert (e / "image.squashfs").exists() and (e / "info.json").exists()
    assert killed_midway >= 1
    assert not (tmp_path / "out.squashfs").exists() or subprocess.run(
        ["unsquashfs", "-s", str(tmp_path / "out.squashfs")], capture_output=True).returncode == 0
    run_cli(*args[3:])
    subprocess.run(["unsquashfs", "-lln", str(tmp_path / "out.squashfs")], check=True,
                   capture_output=True)
    proc = run_cli("cache", "--cache-dir", str(cache), "verify")
    assert "0 problem" in proc.stdout


def test_rootless_compile_is_byte_identical(rules_image: Path, tmp_path: Path) -> None:
    """An unprivileged user gets the same bytes: owners, devices and capabilities included."""
    require_or_skip(os.geteuid() == 0, "switching to an unprivileged user needs root")
    require_or_skip(shutil.which("setpriv") is not None, "setpriv is not installed")
    as_root = compile_image(f"oci:{rules_image}:latest", tmp_path / "root.squashfs",
                            source_options=SourceOptions(cache_dir=tmp_path / "c-root"))
    work = Path(tempfile.mkdtemp(prefix="ocisquash-rootless-"))
    try:
        os.chmod(work, 0o777)
        shutil.copytree(rules_image, work / "layout")
        subprocess.run(["chmod", "-R", "a+rX", str(work / "layout")], check=True)
        proc = run_ocisquash_as_nobody(
            "compile", f"oci:{work / 'layout'}:latest", "-o", str(work / "user.squashfs"),
            "--cache-dir", str(work / "cache"), env={**os.environ, "HOME": str(work)}, cwd=work)
        assert proc.returncode == 0, proc.stderr
        assert (work / "user.squashfs").stat().st_uid == 65534
        assert (work / "user.squashfs").read_bytes() == Path(as_root.path or "").read_bytes()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_unknown_tag_names_what_exists(rules_image: Path, tmp_path: Path) -> None:
    proc = run_cli("compile", f"oci:{rules_image}:nope", "-o", str(tmp_path / "o.squashfs"),
                   "--cache-dir", str(tmp_path / "cache"), check=False)
    assert proc.returncode != 0 and "latest" in proc.stderr and "Traceback" not in proc.stderr


def test_fidelity_losses_are_named_in_warning_and_json(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, [[
        Entry("acl", data=b"x", xattrs={"system.posix_acl_access": b"\x02\x00\x00\x00"}),
        Entry("future", data=b"y", mtime=2**33),
        Entry("fine", data=b"z", xattrs={"user.kept": b"1"}),
    ]])
    args = ["compile", f"oci:{layout}", "-o", str(tmp_path / "o.squashfs"),
            "--cache-dir", str(tmp_path / "cache")]
    proc = run_cli(*args)
    assert "warning: 1 entries: extended attributes outside" in proc.stderr and "/acl" in proc.stderr
    assert "modification times outside" in proc.stderr and "/future" in proc.stderr
    summary = json.loads(run_cli(*args, "--json", "--force").stdout)
    kinds = {f["kind"]: f for f in summary["fidelity"]}
    assert kinds["xattr-dropped"]["examples"] == ["acl"]
    assert kinds["mtime-clamped"]["count"] == 1
    listing = subprocess.run(["unsquashfs", "-lln", str(tmp_path / "o.squashfs")],
                             capture_output=True, text=True, check=True).stdout
    assert "2106-02-07" in listing  # clamped to 2**32-1, not wrapped


@pytest.mark.root
def test_tar_output_on_a_full_disk_is_one_clear_line(tmp_path: Path) -> None:
    require_or_skip(os.geteuid() == 0, "mounting a small tmpfs needs root")
    layout = big_image(tmp_path / "layout")
    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)],
                             capture_output=True)
    require_or_skip(mounted.returncode == 0, "tmpfs mounts are not permitted here")
    try:
        proc = run_cli("compile", f"oci:{layout}", "--format", "tar", "-o", str(full / "t.tar"),
                       "--cache-dir", str(tmp_path / "cache"), "-q", check=False)
        assert proc.returncode == 1
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("ocisquash: ")
        assert str(full / "t.tar") in lines[0] and "No space left on device" in lines[0]
        assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
        assert list(full.iterdir()) == []
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_prune_removes_old_partials_and_staging_but_keeps_fresh_ones(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run_cli("cache", "--cache-dir", str(cache), "ls")
    partial = cache / "blobs" / "partial"
    old_part, new_part = partial / "sha256-old.part", partial / "sha256-new.part"
    old_stage = cache / "tmp" / "build-old"
    for p in (old_part, new_part):
        p.write_bytes(b"x")
    old_stage.mkdir()
    two_days_ago = time.time() - 2 * 86400
    os.utime(old_part, (two_days_ago, two_days_ago))
    os.utime(old_stage, (two_days_ago, two_days_ago))
    out = run_cli("cache", "--cache-dir", str(cache), "prune").stdout
    assert "2 leftover" in out
    assert not old_part.exists() and not old_stage.exists() and new_part.exists()
