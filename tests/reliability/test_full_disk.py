"""Full disk: the cache or the output on a small tmpfs that fills midway, and a file size
limit (RLIMIT_FSIZE) that makes writes fail at chosen offsets.

Each run ends with one ``ocisquash:`` line naming the path that could not be written,
a non-zero exit, no partial entry or output, and earlier cached entries intact.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Site, cli_source_args
from .kit import assert_cache_whole, cache_state, clean_error_line, file_sha256, run_cli
from conftest import require_or_skip
from imagebuilder import Entry, write_oci_layout


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    require_or_skip(os.geteuid() == 0, "mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    # mode=0755: a fresh tmpfs is world-writable (1777), which a cache must not be.
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           str(path)],
                          capture_output=True, text=True)
    require_or_skip(proc.returncode == 0, f"mount -t tmpfs is not permitted: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("full-disk-layouts")
    rnd = random.Random(3)
    write_oci_layout(base / "small", [[Entry("etc", "dir"), Entry("etc/hostname", data=b"small\n")]])
    write_oci_layout(base / "big", [[Entry("d", "dir"), *(
        Entry(f"d/f{i:02d}", data=rnd.randbytes(300_000)) for i in range(10))]])
    return {"small": base / "small", "big": base / "big"}


def _compile(layout: Path, out: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("compile", f"oci:{layout}:latest", "-o", str(out), "--cache-dir", str(cache),
                   "--quiet", "--force")


def _earlier_entry_intact(cache: Path, small: Path, out: Path) -> None:
    assert_cache_whole(cache)
    again = run_cli("compile", f"oci:{small}:latest", "-o", str(out), "--cache-dir", str(cache),
                    "--pull", "never", "--quiet", "--force")
    assert again.returncode == 0, again.stderr


def test_full_cache_while_writing_the_squashfs(layouts: dict[str, Path], tmp_path: Path) -> None:
    with tmpfs(tmp_path / "cache") as cache:
        assert _compile(layouts["small"], tmp_path / "small.squashfs", cache).returncode == 0
        before = cache_state(cache)["images"]
        proc = _compile(layouts["big"], tmp_path / "big.squashfs", cache)
        line = clean_error_line(proc)
        assert str(cache) in line and "No space left on device" in line, line
        assert not (tmp_path / "big.squashfs").exists()
        state = cache_state(cache)
        assert state["images"] == before and state["tmp"] == []
        _earlier_entry_intact(cache, layouts["small"], tmp_path / "small2.squashfs")


def test_full_cache_while_downloading(site: Site, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "cache") as cache:
        small = run_cli("compile", site.ref("small-a"), "-o", str(tmp_path / "a.squashfs"),
                        *cli_source_args(cache))
        assert small.returncode == 0, small.stderr
        before = cache_state(cache)["images"]
        proc = run_cli("compile", site.ref("big"), "-o", str(tmp_path / "big.squashfs"),
                       *cli_source_args(cache))
        line = clean_error_line(proc)
        assert str(cache) in line and "No space left on device" in line, line
        assert not (tmp_path / "big.squashfs").exists()
        assert cache_state(cache)["images"] == before
        assert_cache_whole(cache)
        again = run_cli("compile", site.ref("small-a"), "-o", str(tmp_path / "a2.squashfs"),
                        *cli_source_args(cache), "--pull", "never")
        assert again.returncode == 0, again.stderr
        assert (tmp_path / "a2.squashfs").read_bytes() == site.reference["small-a"]


def test_full_output_filesystem(layouts: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with tmpfs(tmp_path / "out") as outdir:
        proc = _compile(layouts["big"], outdir / "big.squashfs", cache)
        line = clean_error_line(proc)
        assert str(outdir / "big.squashfs") in line and "No space left" in line, line
        assert os.listdir(outdir) == [], "a partial output was left"
        tar = run_cli("compile", f"oci:{layouts['big']}:latest", "--format", "tar", "-o",
                      str(outdir / "big.tar"), "--cache-dir", str(cache), "--quiet")
        line = clean_error_line(tar)
        assert str(outdir / "big.tar") in line and "No space left" in line, line
        assert os.listdir(outdir) == [], "a partial tar was left"
    assert_cache_whole(cache)  # the cache entry itself was whole and stays usable
    ok = _compile(layouts["big"], tmp_path / "big.squashfs", cache)
    assert ok.returncode == 0, ok.stderr


def test_cache_filling_at_every_stage_of_publishing(layouts: dict[str, Path],
                                                    tmp_path: Path) -> None:
    """Free space swept around the image's size: the squashfs, its manifest, config and
    info record, and the rename into place each meet a full disk in some run."""
    ref = tmp_path / "ref.squashfs"
    assert _compile(layouts["big"], ref, tmp_path / "ref-cache").returncode == 0
    size = ref.stat().st_size
    results = {"ok": 0, "clean error": 0}
    with tmpfs(tmp_path / "cache", size="4m") as cache:
        assert _compile(layouts["small"], tmp_path / "small.squashfs", cache).returncode == 0
        base = shutil.disk_usage(cache).used
        for extra in range(-1, 4):
            filler = cache / "filler"
            with contextlib.suppress(FileNotFoundError):
                filler.unlink()
            total = shutil.disk_usage(cache).total
            fill = total - base - (size + extra * 4096)
            with open(filler, "wb") as f:
                f.write(b"\0" * max(fill, 0))
                f.flush()
                os.fsync(f.fileno())
            proc = _compile(layouts["big"], tmp_path / "big.squashfs", cache)
            if proc.returncode == 0:
                results["ok"] += 1
                assert file_sha256(tmp_path / "big.squashfs") == file_sha256(ref)
                run_cli("cache", "--cache-dir", str(cache), "rm", f"oci:{layouts['big']}:latest")
            else:
                results["clean error"] += 1
                line = clean_error_line(proc)
                assert str(cache) in line, line
            assert cache_state(cache)["tmp"] == []
            filler.unlink()
            _earlier_entry_intact(cache, layouts["small"], tmp_path / "small2.squashfs")
    print(f"fill sweep: {results}")
    assert results["clean error"] >= 2, results


def _fsize_limit(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_writes_failing_at_random_offsets(layouts: dict[str, Path], tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes any write past ``limit`` bytes of one file fail (EFBIG): the
    squashfs (data, fragments, tables, superblock) or a downloaded blob."""
    ref = tmp_path / "ref.squashfs"
    assert _compile(layouts["big"], ref, tmp_path / "ref-cache").returncode == 0
    size = ref.stat().st_size
    rnd = random.Random(9)
    limits = [0, *sorted(rnd.randrange(size) for _ in range(2)), size - 2000, size - 100]
    cache = tmp_path / "cache"
    for limit in limits:
        proc = subprocess.run(
            [sys.executable, "-m", "ocisquash", "compile", f"oci:{layouts['big']}:latest", "-o",
             str(tmp_path / "out.squashfs"), "--cache-dir", str(cache), "--quiet"],
            capture_output=True, text=True, preexec_fn=lambda limit=limit: _fsize_limit(limit),
            timeout=120)
        line = clean_error_line(proc)
        assert "File too large" in line and str(cache) in line, (limit, line)
        assert cache_state(cache)["images"] == [] and cache_state(cache)["tmp"] == []
        assert not (tmp_path / "out.squashfs").exists()
    assert _compile(layouts["big"], tmp_path / "out.squashfs", cache).returncode == 0
    assert file_sha256(tmp_path / "out.squashfs") == file_sha256(ref)


def test_full_output_stops_the_downloads(site: Site, tmp_path: Path) -> None:
    """A full output disk ends the compile at once: the downloads stop at their next piece
    and keep what they have as a partial, instead of going on to the end first."""
    from .proxy import SlowProxy

    big = site.big_blob()
    proxy = SlowProxy(site.registry.host)
    try:
        # 256 KiB every 3 s: the whole layer would take about 25 s more.
        proxy.trickle(f"/blobs/{big}", chunk=256 << 10, delay=3.0)
        cache = tmp_path / "cache"
        with tmpfs(tmp_path / "out", size="64k") as out:
            proc = run_cli("compile", site.ref("big", proxy.host), "-o", str(out / "o.squashfs"),
                           "--no-cache", *cli_source_args(cache))
            line = clean_error_line(proc)
            assert "No space left on device" in line and str(out) in line, line
            assert os.listdir(out) == []
        state = cache_state(cache)
        assert state["partial"] == [f"sha256-{big.split(':')[1]}.part"], state
        assert big.split(":")[1] not in state["blobs"]
    finally:
        proxy.close()
