"""A cached compile imports only what a cache hit needs.

Issue 5 wants a warm compile in 0.3 s, most of which is interpreter start and
imports. Timings are not deterministic, imports are: each test runs the real
command line in a fresh interpreter and records which modules the compile
imported (those loaded before it, e.g. by a site ``.pth``, do not count). A cold
compile of the same image is the control: it must import the writer, so the check
can fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocisquash.cli import build_parser
from ocisquash.commands._common import writer_options_from_args
from ocisquash.compile import (
    DEFAULT_COMPRESSION,
    DEFAULT_ZSTD_LEVEL,
    default_writer_options,
)

from conftest import require_or_skip
from imagebuilder import Entry, write_oci_layout

#: Imported only to build an image: the writer (and its compression threads), the
#: flattener, the layer readers.
BUILD_ONLY = (
    "ocisquash.squashfs.writer",
    "ocisquash.squashfs.blocks",
    "ocisquash.squashfs.compressor",
    "ocisquash.squashfs.format",
    "ocisquash.flatten",
    "ocisquash.layers",
    "concurrent.futures",
)
#: What a compile from a layout never needs: the HTTP stack, and progress events and
#: their renderer (stderr is no terminal here; the registry client imports the events
#: only to download).
NETWORK = ("urllib3", "http.client", "ocisquash.registry", "ocisquash.sources.registry",
           "ocisquash.progress")

#: Runs ``ocisquash ARGS…`` in this interpreter and writes what it imported to a file.
_RECORDER = """
import json, sys
before = set(sys.modules)
from ocisquash.cli import main
status = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump({"status": status, "imported": sorted(set(sys.modules) - before)}, f)
"""


def compile_recording(tmp_path: Path, *args: str) -> tuple[set[str], dict[str, object]]:
    """Run ``ocisquash compile --json ARGS`` in a fresh interpreter; (modules imported, JSON)."""
    record = tmp_path / "imported.json"
    proc = subprocess.run(
        [sys.executable, "-c", _RECORDER, str(record), "compile", "--json", *args],
        capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k != "OCISQUASH_DEBUG"},
    )
    assert proc.returncode == 0, proc.stderr
    recorded = json.loads(record.read_text())
    assert recorded["status"] == 0
    return set(recorded["imported"]), json.loads(proc.stdout)


def imported_of(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """The modules of ``modules`` that are one of ``names`` or inside one of them."""
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("warm") / "layout"
    write_oci_layout(root, [
        [Entry("etc", kind="dir", mode=0o755), Entry("etc/os-release", data=b"ID=warm\n")],
        [Entry("app/run.sh", data=b"#!/bin/sh\necho warm\n", mode=0o755)],
    ])
    return root


def test_cached_compile_of_a_layout_imports_neither_writer_nor_http(
        layout: Path, tmp_path: Path) -> None:
    cache, src = tmp_path / "cache", f"oci:{layout}:latest"
    cold_modules, cold = compile_recording(tmp_path, "--cache-dir", str(cache), src,
                                           "-o", str(tmp_path / "cold.squashfs"))
    assert cold["cached"] is False
    assert "ocisquash.squashfs.writer" in cold_modules  # the control: a build imports it
    # A build without --verity does not load the hash tree's module (a few per cent of
    # the start of a compile of many small files).
    assert imported_of(cold_modules, ("ocisquash.verity",)) == []

    warm_modules, warm = compile_recording(tmp_path, "--cache-dir", str(cache), src,
                                           "-o", str(tmp_path / "warm.squashfs"))
    assert warm["cached"] is True
    assert warm["digest"] == cold["digest"]
    assert (tmp_path / "warm.squashfs").read_bytes() == (tmp_path / "cold.squashfs").read_bytes()
    assert imported_of(warm_modules, BUILD_ONLY + NETWORK) == []
    assert "ocisquash.squashfs.version" in warm_modules
    # Only the compile command's parser is built.
    assert imported_of(warm_modules, ("ocisquash.commands",)) == [
        "ocisquash.commands", "ocisquash.commands._common", "ocisquash.commands._verity",
        "ocisquash.commands.compile"]


def test_cache_only_compile_imports_no_writer(layout: Path, tmp_path: Path) -> None:
    cache, src = tmp_path / "cache", f"oci:{layout}:latest"
    compile_recording(tmp_path, "-q", "--cache-dir", str(cache), src)
    modules, result = compile_recording(tmp_path, "--cache-dir", str(cache), "--pull", "never",
                                        src)
    assert result["cached"] is True
    assert imported_of(modules, BUILD_ONLY + NETWORK + ("ocisquash.sources",)) == [
        "ocisquash.sources", "ocisquash.sources.options"]


def test_explicit_default_options_hit_the_same_entry(layout: Path, tmp_path: Path) -> None:
    """``-c zstd --level 5 -b 128K`` spells out the defaults: the same key, so it finds
    the image compiled without them, and still imports no writer."""
    cache, src = tmp_path / "cache", f"oci:{layout}:latest"
    _, cold = compile_recording(tmp_path, "--cache-dir", str(cache), src)
    modules, warm = compile_recording(tmp_path, "--cache-dir", str(cache), src, "-c", "zstd",
                                      "--level", str(DEFAULT_ZSTD_LEVEL), "-b", "131072", "--workers", "1")
    assert warm["cached"] is True and warm["output"] == cold["output"]
    assert not {m for m in modules if m.startswith(BUILD_ONLY)}


def test_cache_hit_does_not_rewrite_the_reference_record(layout: Path, tmp_path: Path) -> None:
    cache, src = tmp_path / "cache", f"oci:{layout}:latest"
    compile_recording(tmp_path, "--cache-dir", str(cache), src)
    (ref,) = (cache / "refs").iterdir()
    before = ref.stat()
    _, warm = compile_recording(tmp_path, "--cache-dir", str(cache), src)
    after = ref.stat()
    assert warm["cached"] is True
    # write_atomic replaces the file: a rewrite shows as a new inode.
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_no_writer_flags_mean_the_options_compile_image_defaults_to() -> None:
    """Passing None instead of the options built from no flags changes nothing."""
    args = build_parser("compile").parse_args(["compile", "oci:x"])
    built = writer_options_from_args(args, default_compression=DEFAULT_COMPRESSION,
                                     default_level=DEFAULT_ZSTD_LEVEL)
    assert built == default_writer_options()


# -- from a registry, by tag --------------------------------------------------------------


@pytest.fixture(scope="module")
def registry_ref(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_or_skip(os.path.exists("/usr/bin/docker-registry")
                    or bool(shutil.which("docker-registry")),
                    "docker-registry (Debian package docker-registry) is not installed")
    require_or_skip(bool(shutil.which("skopeo")), "skopeo is not installed")
    from registry.servers import RegistryProcess, skopeo_copy

    base = tmp_path_factory.mktemp("warm-registry")
    reg = RegistryProcess(base / "registry", base / "storage")
    try:
        skopeo_copy(f"oci:{layout}:latest", f"docker://{reg.host}/warm/app:1")
        yield f"{reg.host}/warm/app:1"
    finally:
        reg.stop()


def test_cached_compile_by_tag_imports_no_writer(registry_ref: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cold_modules, cold = compile_recording(tmp_path, "--cache-dir", str(cache), registry_ref,
                                           "-o", str(tmp_path / "cold.squashfs"))
    assert cold["cached"] is False
    assert "concurrent.futures" in cold_modules  # the control: a pull downloads in parallel

    modules, warm = compile_recording(tmp_path, "--cache-dir", str(cache), registry_ref,
                                      "-o", str(tmp_path / "warm.squashfs"))
    assert warm["cached"] is True and warm["digest"] == cold["digest"]
    assert (tmp_path / "warm.squashfs").read_bytes() == (tmp_path / "cold.squashfs").read_bytes()
    assert imported_of(modules, BUILD_ONLY) == []
    assert "urllib3" in modules  # it did ask the registry for the tag's manifest
    assert "ocisquash.progress" in cold_modules  # the control: downloads report progress
    assert "ocisquash.progress" not in modules
