"""SIGTERM is handled like Ctrl-C: the staging directory and the temporary output are removed,
the downloads keep their bytes as partials, and the exit status is 143. ``cache prune`` finds
what a SIGKILL leaves once it is an hour old (issue 28, item 14)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Site, cli_source_args
from .kit import cache_state, run_cli
from .proxy import SlowProxy


def _wait_for(found: object, proc: subprocess.Popen[bytes], what: str) -> None:
    """Wait until ``found()`` is true while ``proc`` runs (bounded by the test's timeout)."""
    deadline = time.monotonic() + 60
    while not found():  # type: ignore[operator]
        assert proc.poll() is None, f"the compile ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within 60 s"
        time.sleep(0.005)


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no-cache"])
def test_sigterm_cleans_up_and_exits_143(site: Site, slow_proxy: SlowProxy, tmp_path: Path,
                                         cached: bool) -> None:
    big = site.big_blob()
    slow_proxy.trickle(f"/blobs/{big}", chunk=16 << 10, delay=0.05)
    cache, out = tmp_path / "cache", tmp_path / "out" / "o.squashfs"
    out.parent.mkdir()
    cmd = [sys.executable, "-m", "ocisquash", "compile", site.ref("big", slow_proxy.host),
           "-o", str(out), *cli_source_args(cache), *(() if cached else ("--no-cache",))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def building() -> bool:
        staged = cache_state(cache)["tmp"] if cached else os.listdir(out.parent)
        return bool(staged) and slow_proxy.sent(f"/blobs/{big}") > 0

    _wait_for(building, proc, "a build under way")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.decode().strip().splitlines()[-1] == "ocisquash: terminated"
    assert b"Traceback" not in err
    assert cache_state(cache)["tmp"] == [], "SIGTERM left a staging directory"
    assert os.listdir(out.parent) == [], "SIGTERM left a temporary output"
    assert cache_state(cache)["images"] == []
    # The download's bytes stay as a partial that the next run resumes.
    slow_proxy.clear_trickle()
    done = run_cli("compile", site.ref("big", slow_proxy.host), "-o", str(out),
                   *cli_source_args(cache))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == site.reference["big"]


def test_prune_removes_hour_old_partials_and_staging_but_not_live_ones(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run_cli("cache", "--cache-dir", str(cache), "ls")
    partial = cache / "blobs" / "partial"
    old, held, fresh = (partial / f"sha256-{n * 64}.part" for n in "abc")
    for p in (old, held, fresh):
        p.write_bytes(b"x")
    stale_stage, live_stage = cache / "tmp" / "build-stale", cache / "tmp" / "build-live"
    for d in (stale_stage, live_stage):
        d.mkdir()
        (d / "image.squashfs").write_bytes(b"y")
    two_hours_ago = time.time() - 2 * 3600
    for p in (old, held, stale_stage, stale_stage / "image.squashfs", live_stage):
        os.utime(p, (two_hours_ago, two_hours_ago))
    # A download that is still running holds its lock (its partial may sit still for a
    # while); a build that is still running keeps its image's mtime fresh.
    lock = os.open(held.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        out = run_cli("cache", "--cache-dir", str(cache), "prune").stdout
    finally:
        os.close(lock)
    assert "2 leftover" in out, out
    assert not old.exists() and not stale_stage.exists()
    assert held.exists() and fresh.exists() and live_stage.exists()
