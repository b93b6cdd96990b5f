"""Compile through a real registry: same bytes as from the OCI layout, one request when cached."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ocisquash.compile import compile_image
from ocisquash.sources.options import SourceOptions

from .faultproxy import FaultProxy


@pytest.mark.parametrize("tag", ["app:oci", "app:v2s2"])
def test_compile_from_registry_equals_compile_from_layout(
        registries: Any, tag: str, tmp_path: Path) -> None:
    from_layout = compile_image(f"oci:{registries.layout}:latest", tmp_path / "layout.squashfs",
                                source_options=SourceOptions(cache_dir=tmp_path / "c1"))
    from_registry = compile_image(f"{registries.plain.host}/{tag}", tmp_path / "registry.squashfs",
                                  source_options=SourceOptions(cache_dir=tmp_path / "c2"))
    assert not from_registry.cached
    assert (tmp_path / "layout.squashfs").read_bytes() == (tmp_path / "registry.squashfs").read_bytes()
    assert from_registry.config.config.entrypoint == from_layout.config.config.entrypoint == ("/bin/app",)
    listing = subprocess.run(["unsquashfs", "-lln", str(tmp_path / "registry.squashfs")],
                             capture_output=True, text=True, check=True).stdout
    assert "squashfs-root/hello.txt" in listing and "squashfs-root/big.bin" in listing


def test_second_compile_by_tag_costs_one_manifest_request(
        registries: Any, proxy: FaultProxy, tmp_path: Path) -> None:
    ref = f"{proxy.host}/app:oci"
    args = [sys.executable, "-m", "ocisquash", "compile", ref, "-o", str(tmp_path / "o.squashfs"),
            "--cache-dir", str(tmp_path / "cache"), "--quiet", "--force"]
    first = subprocess.run([*args, "--json"], check=True, capture_output=True, text=True)
    digest = json.loads(first.stdout)["digest"]
    before = len(proxy.requests())
    assert before > 3  # manifest, config and three layers at least
    subprocess.run(args, check=True, capture_output=True)
    second = proxy.requests()[before:]
    manifests = [s for s in second if "/manifests/" in s.path]
    assert len(manifests) == 1 and manifests[0].method in ("GET", "HEAD")
    assert [s for s in second if "/blobs/" in s.path] == []
    # Only the /v2/ probe may come with it, when the client first checks the API.
    assert all(s.path.rstrip("/") == "/v2" for s in second if s not in manifests)
    # A digest reference compiled before needs no request at all.
    digest_ref = f"{proxy.host}/app@{digest}"
    subprocess.run([*args[:4], digest_ref, *args[5:]], check=True, capture_output=True)
    mark = len(proxy.requests())
    subprocess.run([*args[:4], digest_ref, *args[5:]], check=True, capture_output=True)
    assert proxy.requests()[mark:] == []


def test_blob_damaged_in_the_cache_is_dropped_and_fetched_again(
        registries: Any, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ref = f"{registries.plain.host}/app:oci"
    first = compile_image(ref, tmp_path / "a.squashfs", source_options=SourceOptions(cache_dir=cache))
    layer = first.manifest.layers[0].digest
    blob = cache / "blobs" / layer.algorithm / layer.hex
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    # Other output options: a new compile that must read the damaged layer.
    from ocisquash.squashfs import Compression, WriterOptions

    second = compile_image(ref, tmp_path / "b.squashfs", source_options=SourceOptions(cache_dir=cache),
                           writer_options=WriterOptions(compression=Compression.GZIP))
    assert not second.cached
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == layer.hex  # fetched again, whole
    a = subprocess.run(["unsquashfs", "-lln", str(tmp_path / "a.squashfs")], capture_output=True,
                       text=True, check=True).stdout
    b = subprocess.run(["unsquashfs", "-lln", str(tmp_path / "b.squashfs")], capture_output=True,
                       text=True, check=True).stdout
    assert a == b
