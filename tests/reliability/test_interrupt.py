"""Interrupted work: SIGKILL and Ctrl-C during download, layer processing, squashfs writing
and publishing leave no corrupt blob and no half entry; the next run resumes and finishes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Site, cli_source_args
from .kit import (
    assert_cache_whole,
    cache_state,
    clean_error_line,
    default_sigint,
    file_sha256,
    run_cli,
)
from .proxy import SlowProxy
from imagebuilder import Entry, write_oci_layout


def _compile_cmd(image: str, out: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ocisquash", "compile", image, "-o", str(out),
            *cli_source_args(cache), *extra]


def _wait_for_bytes(proxy: SlowProxy, path: str, n: int, proc: subprocess.Popen[bytes],
                    timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while proxy.sent(path) < n:
        assert proc.poll() is None, "the compile ended before the cut point"
        assert time.monotonic() < deadline, f"only {proxy.sent(path)} of {n} bytes sent"
        time.sleep(0.005)


def _blob_names(cache: Path) -> set[str]:
    d = cache / "blobs" / "sha256"
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_download_resumes_with_a_range_request(
        site: Site, slow_proxy: SlowProxy, tmp_path: Path, sig: signal.Signals) -> None:
    big = site.big_blob()
    blob_path = f"/blobs/{big}"
    slow_proxy.trickle(blob_path, chunk=16 << 10, delay=0.02)  # ~2.6 s for the 2 MiB
    cache, out = tmp_path / "cache", tmp_path / "out.squashfs"
    rnd = random.Random(sig)
    size = len((site.layouts["big"].path / "blobs" / "sha256" / big.split(":")[1]).read_bytes())
    cut = rnd.randrange(size // 10, size * 8 // 10)
    proc = subprocess.Popen(_compile_cmd(site.ref("big", slow_proxy.host), out, cache),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=default_sigint)
    _wait_for_bytes(slow_proxy, blob_path, cut, proc)
    proc.send_signal(sig)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=30)
    if sig == signal.SIGINT:
        # running downloads stop at their next chunk instead of finishing first
        assert time.monotonic() - t0 < 1.5, f"Ctrl-C took {time.monotonic() - t0:.1f}s"
        assert proc.returncode == 130, err
        assert err.decode().strip().splitlines()[-1] == "ocisquash: interrupted"
        assert cache_state(cache)["tmp"] == [], "Ctrl-C left a staging directory"
    else:
        assert proc.returncode == -signal.SIGKILL
    state = cache_state(cache)
    assert state["images"] == [] and not out.exists()
    assert_cache_whole(cache)  # whatever blobs are there hash right
    part = cache / "blobs" / "partial" / f"sha256-{big.split(':')[1]}.part"
    assert big.split(":")[1] not in _blob_names(cache), "a half blob was published"
    assert part.is_file() and 0 < part.stat().st_size <= size
    kept = part.stat().st_size

    slow_proxy.seen.clear()
    done = run_cli("compile", site.ref("big", slow_proxy.host), "-o", str(out),
                   *cli_source_args(cache), "--json")
    assert done.returncode == 0, done.stderr
    ranges = [s.headers.get("range") for s in slow_proxy.requests(path=blob_path)]
    assert ranges[0] == f"bytes={kept}-", ranges
    assert out.read_bytes() == site.reference["big"]
    assert_cache_whole(cache)
    assert cache_state(cache)["partial"] == []


def _local_big_image(path: Path) -> Path:
    """A local image whose compile takes long enough (about a second) to be killed anywhere."""
    rnd = random.Random(5)
    files = [Entry(f"d/f{i:03d}", data=rnd.randbytes(60_000) + bytes(60_000)) for i in range(80)]
    write_oci_layout(path, [[Entry("d", "dir"), *files[:40]], [*files[40:]]],
                     compression=["gzip", "zstd"])
    return path


def test_kill_at_random_points_of_a_compile_leaves_nothing_half_done(tmp_path: Path) -> None:
    """Kills spread over the whole compile: layer reading, squashfs writing, publishing."""
    layout = _local_big_image(tmp_path / "layout")
    ref_out = tmp_path / "reference.squashfs"
    t0 = time.monotonic()
    first = run_cli("compile", f"oci:{layout}:latest", "-o", str(ref_out), "--cache-dir",
                    str(tmp_path / "ref-cache"), "--quiet")
    assert first.returncode == 0, first.stderr
    duration = time.monotonic() - t0
    want = file_sha256(ref_out)
    cache, out = tmp_path / "cache", tmp_path / "out.squashfs"
    rnd = random.Random(int(os.environ.get("OCISQUASH_KILL_SEED", "1")))
    kills = int(os.environ.get("OCISQUASH_KILLS", "4"))
    outcomes = {"killed": 0, "finished": 0}
    # A compile that finished before its kill still checks the cache, but does not count:
    # the machine got faster than the first run, so the kill points move earlier.
    while outcomes["killed"] < kills and outcomes["finished"] < 3 * kills:
        if (cache / "images").is_dir():
            for e in (cache / "images").iterdir():  # make every run a build
                run_cli("cache", "--cache-dir", str(cache), "rm", e.name[:12])
        p = subprocess.Popen(_compile_cmd(f"oci:{layout}:latest", out, cache),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0.05, 1.0) * duration)
        if p.poll() is None:
            outcomes["killed"] += 1
        else:
            outcomes["finished"] += 1
            duration *= 0.7
        p.kill()
        p.wait()
        assert_cache_whole(cache)
        if out.exists():  # an output is only ever the whole image
            assert file_sha256(out) == want
    assert outcomes["killed"] == kills, outcomes
    done = run_cli("compile", f"oci:{layout}:latest", "-o", str(out), "--cache-dir", str(cache),
                   "--quiet", "--force")
    assert done.returncode == 0, done.stderr
    assert file_sha256(out) == want
    assert_cache_whole(cache)


def test_ctrl_c_during_squashfs_writing_cleans_up(tmp_path: Path) -> None:
    layout = _local_big_image(tmp_path / "layout")
    cache, out = tmp_path / "cache", tmp_path / "out.squashfs"
    p = subprocess.Popen(_compile_cmd(f"oci:{layout}:latest", out, cache, "--compression", "xz"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         preexec_fn=default_sigint)
    deadline = time.monotonic() + 30
    # wait until the staging directory holds a squashfs being written
    while not any((cache / "tmp").glob("build-*/image.squashfs")) if (cache / "tmp").is_dir() \
            else True:
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    proc = subprocess.CompletedProcess(p.args, p.returncode, "", err.decode())
    assert clean_error_line(proc) == "ocisquash: interrupted"
    assert cache_state(cache)["images"] == [] and cache_state(cache)["tmp"] == []
    assert not out.exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


@pytest.mark.parametrize("damaged", [False, True])
def test_stopped_between_last_byte_and_publishing(site: Site, slow_proxy: SlowProxy,
                                                  tmp_path: Path, damaged: bool) -> None:
    """A partial that already holds every byte (killed just before the rename) is verified
    and published without asking for bytes past its end; a damaged one is fetched again."""
    cache, out = tmp_path / "cache", tmp_path / "out.squashfs"
    built = site.layouts["big"]
    for digest in (built.config_digest, built.layer_digests[1]):
        data = bytearray((built.path / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())
        if damaged:
            data[len(data) // 2] ^= 0x01
        part = cache / "blobs" / "partial" / f"sha256-{digest.split(':')[1]}.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(bytes(data))
    done = run_cli("compile", site.ref("big", slow_proxy.host), "-o", str(out),
                   *cli_source_args(cache), timeout=60)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == site.reference["big"]
    for digest in (built.config_digest, built.layer_digests[1]):
        got = slow_proxy.requests(path=f"/blobs/{digest}")
        if damaged:  # dropped and downloaded afresh, from byte 0
            assert [s.headers.get("range") for s in got] == [None], got
        else:
            assert got == [], "asked the registry for bytes it already had"
    assert_cache_whole(cache)
    assert cache_state(cache)["partial"] == []
