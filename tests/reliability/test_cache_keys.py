"""What a cache hit must respect: the platform asked for (by tag, by digest, with
``--pull never`` and through the API) and ``SOURCE_DATE_EPOCH`` (issue 26, items 1 and 2)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ocisquash.compile import compile_image
from ocisquash.errors import PlatformNotFoundError

from .conftest import Site, cli_source_args, options
from .kit import clean_error_line, run_cli
from imagebuilder import Entry, write_oci_layout

ARM = "linux/arm64"


def test_cache_hit_respects_the_platform(site: Site, tmp_path: Path) -> None:
    """small-a is a single linux/amd64 manifest: asked for as arm64 it is refused, warm as
    cold, whichever way the cache is asked."""
    cold = run_cli("compile", site.ref("small-a"), "--platform", ARM, "-o",
                   str(tmp_path / "cold.squashfs"), *cli_source_args(tmp_path / "cold"))
    cold_line = clean_error_line(cold)
    assert "no image for platform linux/arm64/v8; the image has: linux/amd64" in cold_line

    cache, out = tmp_path / "cache", tmp_path / "arm.squashfs"
    first = run_cli("compile", site.ref("small-a"), "-o", str(tmp_path / "amd.squashfs"),
                    *cli_source_args(cache), "--json")
    assert first.returncode == 0, first.stderr
    digest = json.loads(first.stdout)["digest"]
    pinned = f"{site.registry.host}/small-a@{digest}"
    assert run_cli("compile", pinned, "-o", str(tmp_path / "amd2.squashfs"),
                   *cli_source_args(cache)).returncode == 0
    for ref, extra in ((site.ref("small-a"), ()), (pinned, ()), (pinned, ("--pull", "never")),
                       (site.ref("small-a"), ("--pull", "never"))):
        proc = run_cli("compile", ref, "--platform", ARM, "-o", str(out), *cli_source_args(cache),
                       *extra)
        line = clean_error_line(proc)
        assert "no image for platform linux/arm64/v8" in line or "not in the cache" in line, \
            (ref, extra, line)
        assert not out.exists()
    for ref in (site.ref("small-a"), pinned):
        with pytest.raises(PlatformNotFoundError, match="no image for platform linux/arm64/v8"):
            compile_image(ref, out, platform=ARM, source_options=options(cache))
    # The platform it has is still a hit.
    same = run_cli("compile", pinned, "--platform", "linux/amd64", "-o", str(out),
                   *cli_source_args(cache), "--pull", "never", "--json")
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["cached"] is True
    assert out.read_bytes() == site.reference["small-a"]


def _mkfs_time(image: Path) -> str:
    out = subprocess.run(["unsquashfs", "-s", str(image)], capture_output=True, text=True,
                         check=True, env={**os.environ, "TZ": "UTC"}).stdout
    return next(line for line in out.splitlines() if line.startswith("Creation or last append"))


def _listing(image: Path) -> str:
    return subprocess.run(["unsquashfs", "-lln", str(image)], capture_output=True, text=True,
                          check=True, env={**os.environ, "TZ": "UTC"}).stdout


def test_source_date_epoch_is_part_of_the_cache_key(tmp_path: Path) -> None:
    """SOURCE_DATE_EPOCH changes the image's bytes (its time), so a compile under another
    value is not a hit. It sets the image's own time only: the files keep the times their
    layers give them (README, "The cache")."""
    layout = write_oci_layout(tmp_path / "layout", [[
        Entry("etc", "dir", mtime=1_600_000_000),
        Entry("etc/hostname", data=b"epoch\n", mtime=1_600_000_000)]]).path
    cache = tmp_path / "cache"
    runs = {}
    for epoch in ("1000000000", "2000000000", ""):
        out = tmp_path / f"o{epoch or 'unset'}.squashfs"
        proc = run_cli("compile", f"oci:{layout}:latest", "-o", str(out), "--cache-dir",
                       str(cache), "--json", env={"SOURCE_DATE_EPOCH": epoch})
        assert proc.returncode == 0, proc.stderr
        runs[epoch] = (json.loads(proc.stdout)["cached"], _mkfs_time(out), _listing(out))
    assert [cached for cached, _, _ in runs.values()] == [False, False, False]
    assert "Sun Sep  9 01:46:40 2001" in runs["1000000000"][1], runs["1000000000"][1]
    assert "Wed May 18 03:33:20 2033" in runs["2000000000"][1], runs["2000000000"][1]
    # Empty is unset: the image config's date (2024-01-01), never "now".
    assert "Mon Jan  1 00:00:00 2024" in runs[""][1], runs[""][1]
    assert runs["1000000000"][2] == runs["2000000000"][2] == runs[""][2]
    assert "2020-09-13" in runs[""][2]  # the layer's own mtime, 1_600_000_000
    again = run_cli("compile", f"oci:{layout}:latest", "-o", str(tmp_path / "again.squashfs"),
                    "--cache-dir", str(cache), "--json", env={"SOURCE_DATE_EPOCH": "2000000000"})
    assert json.loads(again.stdout)["cached"] is True
    assert (tmp_path / "again.squashfs").read_bytes() == (tmp_path / "o2000000000.squashfs").read_bytes()
