"""Load: 8 processes compiling a mix of images against one registry and one cache; and a
process killed while it holds the build lock leaves nothing that blocks the next one."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .conftest import Site, cli_source_args
from .kit import assert_cache_whole, cached_builds, run_cli
from .proxy import SlowProxy

MIX = ["big", "small-a", "big", "small-b", "small-a", "big", "small-b", "small-a"]


def test_eight_processes_build_each_image_once(site: Site, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "ocisquash", "compile", site.ref(name), "-o",
         str(tmp_path / f"out{i}.squashfs"), *cli_source_args(cache), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i, name in enumerate(MIX)]
    results: dict[str, list[dict[str, object]]] = {}
    for i, (name, p) in enumerate(zip(MIX, procs, strict=True)):
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        results.setdefault(name, []).append(json.loads(out))
        assert (tmp_path / f"out{i}.squashfs").read_bytes() == site.reference[name], (i, name)
    for name, rs in results.items():
        assert cached_builds(rs) == 1, (name, [r["cached"] for r in rs])
    assert len(list((cache / "images").iterdir())) == len(set(MIX))
    assert_cache_whole(cache)


def _locked(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_killed_lock_holder_leaves_no_lock_behind(site: Site, slow_proxy: SlowProxy,
                                                  tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    slow_proxy.trickle(f"/blobs/{site.big_blob()}", chunk=16 << 10, delay=0.02)
    ref = site.ref("big", slow_proxy.host)
    holder = subprocess.Popen(
        [sys.executable, "-m", "ocisquash", "compile", ref, "-o", str(tmp_path / "a.squashfs"),
         *cli_source_args(cache)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not any(_locked(p) for p in (cache / "locks").glob("*.lock")) \
            if (cache / "locks").is_dir() else True:
        assert holder.poll() is None and time.monotonic() < deadline, "never took the build lock"
        time.sleep(0.02)
    held = [p for p in (cache / "locks").glob("*.lock") if _locked(p)]
    waiter = subprocess.Popen(
        [sys.executable, "-m", "ocisquash", "compile", ref, "-o", str(tmp_path / "b.squashfs"),
         *cli_source_args(cache), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    time.sleep(0.5)
    assert waiter.poll() is None, "the second compile did not wait for the lock holder"
    holder.kill()
    holder.wait()
    out, err = waiter.communicate(timeout=60)  # bounded: the kernel dropped the dead holder's lock
    assert waiter.returncode == 0, err
    assert json.loads(out)["cached"] is False
    assert (tmp_path / "b.squashfs").read_bytes() == site.reference["big"]
    assert not any(_locked(p) for p in held)
    proc = run_cli("compile", ref, "-o", str(tmp_path / "c.squashfs"), *cli_source_args(cache),
                   "--json", timeout=30)
    assert proc.returncode == 0 and json.loads(proc.stdout)["cached"] is True
    assert_cache_whole(cache)
