"""Time to a ready image on a second host: ``compile --use-published`` against a cold compile.

Run: ``python bench/bench_publish.py [--src DIR ...] [--rounds 3] [--workdir DIR]``.

Each ``--src`` directory becomes a one-layer zstd OCI layout, pushed to a local
docker-registry. A first host compiles it and publishes the compiled image
(``ocisquash push``, timed once). Then, in alternating order, each round gives a
"second host" (a fresh cache) the image twice: a cold compile from the layers, and
``compile --use-published`` (fetch the artifact, check it, place it in the cache);
``--verity`` is on for both, so the published path also recomputes the root hash.
Bytes transferred are the blobs each path downloads (layers and config for the compile;
the artifact's blobs for the published path) plus the manifests, from ``--json`` and
``inspect --json``. Prints a Markdown table of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from images import Registry, write_layout

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def _layout(src: Path, workdir: Path) -> Path:
    name = src.as_posix().strip("/").replace("/", "-") or "root"
    layout = workdir / f"layout-{name}"
    if (layout / "index.json").exists():
        return layout
    tar = workdir / f"{name}.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as t:
        t.add(src, arcname=".", recursive=True)
    write_layout(layout, [tar], "zstd")  # pigz is not on every machine
    tar.unlink()
    return layout


def _ocisquash(*args: str) -> tuple[float, dict[str, object]]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ocisquash", *args, "--json", "-q"],
                          check=True, capture_output=True, text=True, env=ENV)
    took = time.perf_counter() - start
    return took, json.loads(proc.stdout)


def _second_host(ref: str, workdir: Path, published: bool) -> tuple[float, int, str]:
    cache = Path(tempfile.mkdtemp(dir=workdir, prefix="host2-"))
    out = cache / "out.squashfs"
    extra = ["--use-published"] if published else []
    subprocess.run(["sync"], check=True)
    took, doc = _ocisquash("compile", ref, "-o", str(out), "--verity", "--cache-dir",
                           str(cache), *extra)
    if published:
        assert doc["source"] == "published", doc
        stats = doc["stats"]
        assert isinstance(stats, dict)
        moved = int(stats["published"]["bytes_downloaded"])
    else:
        assert doc["source"] == "compiled", doc
        moved = -1  # filled in from inspect by the caller
    digest = subprocess.run(["sha256sum", str(out)], check=True, capture_output=True,
                            text=True).stdout.split()[0]
    shutil.rmtree(cache)
    return took, moved, digest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", action="append", type=Path, default=[])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    srcs = args.src or [Path("/usr/lib/python3.11")]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-publish-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    with Registry(workdir) as reg:
        for src in srcs:
            layout = _layout(src, workdir)
            name = layout.name.removeprefix("layout-").lower()[:40]
            ref = reg.push(name, layout)
            push_time, pushed = _ocisquash("push", ref, "--verity", "--cache-dir",
                                           str(workdir / "host1"))
            _, inspected = _ocisquash("inspect", ref)
            layers = inspected["size"]
            assert isinstance(layers, int)
            cold: list[float] = []
            fetch: list[float] = []
            digests: set[str] = set()
            fetched_bytes = 0
            for i in range(args.rounds):
                for published in ((False, True) if i % 2 == 0 else (True, False)):
                    took, moved, digest = _second_host(ref, workdir, published)
                    (fetch if published else cold).append(took)
                    digests.add(digest)
                    if published:
                        fetched_bytes = moved
            assert len(digests) == 1, "the published image differs from the local compile"
            sent = pushed["bytes_sent"]
            assert isinstance(sent, int)
            rows.append((name, layers, cold, fetched_bytes, fetch, push_time, sent))
    print("| source | layers (zstd) | cold compile | bytes | --use-published | bytes | "
          "speed-up | push (first host) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, layers, cold, fbytes, fetch, push_time, sent in rows:
        c, f = statistics.median(cold), statistics.median(fetch)
        print(f"| {name} | {layers / 1e6:.1f} MB | {c:.2f} s | {layers / 1e6:.1f} MB | "
              f"{f:.2f} s | {fbytes / 1e6:.1f} MB | {c / f:.1f}x | {push_time:.2f} s, "
              f"{sent / 1e6:.1f} MB sent |")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
