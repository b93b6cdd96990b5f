"""Helpers of the reliability suite: run the CLI, judge its error output, build raw layouts.

``write_raw_layout`` writes an OCI layout from arbitrary manifest, config and layer
bytes with every digest in the chain correct, so hostile content reaches the
parsers instead of being stopped by a digest check.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ocisquash.cache import ImageCache
from ocisquash.digest import Digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def run_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """``python -m ocisquash ARGS``; never raises on a non-zero exit. A run that hangs
    fails with the Python stacks of the hung process (``py-spy dump``, when installed)."""
    cmd = [sys.executable, "-m", "ocisquash", *args]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, **(env or {})}, errors="replace") as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stacks = stack_dump(p.pid)
            p.kill()
            p.communicate()
            raise AssertionError(
                f"ocisquash {' '.join(args)} hung for {timeout}s:\n{stacks}") from None
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def stack_dump(pid: int) -> str:
    """The Python stacks of process ``pid``, or why they cannot be had."""
    if not shutil.which("py-spy"):
        return "(py-spy is not installed: no stacks)"
    proc = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True,
                          timeout=60)
    return proc.stdout + proc.stderr


def default_sigint() -> None:
    """``preexec_fn`` for children that get SIGINT: a shell's background job inherits SIGINT
    ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def clean_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert ``proc`` failed the way the CLI promises: exit ≠ 0, one ``ocisquash:`` line,
    no traceback. Return that line."""
    assert proc.returncode not in (0, None), f"expected a failure, got success:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ocisquash:")]
    assert len(lines) == 1, proc.stderr
    others = [ln for ln in proc.stderr.splitlines()
              if ln.strip() and not ln.startswith(("ocisquash:", "hint:"))]
    assert others == [], proc.stderr
    return lines[0]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    return Digest.of_file(path).hex


def put_blob(root: Path, data: bytes) -> str:
    d = sha256(data)
    p = root / "blobs" / "sha256" / d.split(":", 1)[1]
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return d


def write_raw_layout(root: Path, *, manifest: bytes | None = None, config: bytes | None = None,
                     layers: Sequence[bytes] = (), index: bytes | None = None,
                     layer_media: str = OCI_LAYER_GZIP, diff_ids: Sequence[str] | None = None,
                     tag: str = "latest") -> Path:
    """An OCI layout whose blobs are exactly the given bytes, digests all correct.

    Missing pieces are generated around the given ones: ``config`` defaults to one
    naming the layers' digests as diff_ids (wrong for compressed layers, right for
    plain tars), ``manifest`` to one naming the config and layers, ``index`` to one
    tagging the manifest.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    descs = [{"mediaType": layer_media, "digest": put_blob(root, b), "size": len(b)}
             for b in layers]
    if config is None:
        config = json.dumps({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers",
                       "diff_ids": list(diff_ids) if diff_ids is not None
                       else [d["digest"] for d in descs]},
        }).encode()
    cd = put_blob(root, config)
    if manifest is None:
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": len(config)},
            "layers": descs,
        }).encode()
    md = put_blob(root, manifest)
    if index is None:
        index = json.dumps({"schemaVersion": 2, "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": md, "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]}).encode()
    (root / "index.json").write_bytes(index)
    return root


def cache_state(cache: Path) -> dict[str, list[str]]:
    """What a cache holds, for before/after comparisons: entries, blobs, partials, temp."""
    def ls(sub: str) -> list[str]:
        d = cache / sub
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    return {"images": ls("images"), "blobs": ls("blobs/sha256"),
            "partial": [n for n in ls("blobs/partial") if n.endswith(".part")], "tmp": ls("tmp")}


def assert_cache_whole(cache: Path) -> None:
    """Every published entry is whole and every blob and image hashes right (``cache verify``)."""
    if not cache.exists():
        return
    c = ImageCache(cache)
    for e in (cache / "images").iterdir():
        assert (e / "image.squashfs").is_file() and (e / "info.json").is_file(), e
        assert (e / "manifest.json").is_file() and (e / "config.json").is_file(), e
    assert c.verify() == []


def cached_builds(results: Sequence[dict[str, object]]) -> int:
    """How many ``--json`` summaries report a build (not a cache hit)."""
    return sum(1 for r in results if not r["cached"])
