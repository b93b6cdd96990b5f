"""Recompile a new version of an image after the last one (issue 24); write RESULTS-recompile.md.

Run: ``python bench/bench_recompile.py [--runs 3] [--scale 1.0] [--workdir DIR]``.

The versions pair is made without network or root from this machine's own files, like
the devel image: ``v1`` is a base of three gzip layers (a bottom layer of the first
160 MB of regular files under /usr/lib, a middle layer of 40 MB of /usr/share, a 4 MB
top layer of /usr/bin files), ``v2`` changes 5 files of the top layer, and ``v3`` changes 5
files of the bottom layer (so its bottom layer's digest differs). A changed file gets
generated text appended. Files are taken in sorted path order, so the images are the
same on each run on one machine (not across machines: the figures are ratios).

For each setting (the defaults, and ``--compression gzip --level 9``), in alternating
pairs (the order reversed every other round), each a child process running
``ocisquash compile``:

* ``cold``: v2 (or v3) into an empty cache;
* ``after v1``: v2 (or v3) into a copy of a cache that holds only v1 (compiled once per
  setting, untimed; the copy, of hard links, is made untimed before each run).

Every recompiled image is compared byte for byte with the cold compile of the same round.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

EPOCH = 1747699200
CREATED = "2025-05-20T00:00:00Z"


def _pool(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 10)))
             for _ in range(3000)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=64)) + b"\n"
    return bytes(out[:size])


_TEXT = _pool(1, 8 << 20)


def _content(seed: int, size: int) -> bytes:
    """Text-like runs from the pool at random places, and one part in four random bytes."""
    rng = random.Random(seed)
    parts = []
    left = size
    while left > 0:
        n = min(left, rng.randint(4 << 10, 256 << 10))
        if rng.random() < 0.25:
            parts.append(rng.randbytes(n))
        else:
            at = rng.randrange(len(_TEXT) - n)
            parts.append(_TEXT[at:at + n])
        left -= n
    return b"".join(parts)


def _layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(p).parent) for p in files} - {"."})
        for d in dirs:
            for i in range(1, len(Path(d).parts) + 1):
                name = str(Path(*Path(d).parts[:i]))
                if name in tar.getnames():
                    continue
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
                tar.addfile(info)
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(files[path]), 0o644, EPOCH
            tar.addfile(info, io.BytesIO(files[path]))
    return buf.getvalue()


def _files(root: str, total: int) -> dict[str, bytes]:
    """Regular files under ``root`` in sorted path order, up to ``total`` bytes."""
    found: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if total <= 0:
                return found
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            try:
                data = Path(path).read_bytes()
            except OSError:
                continue
            if len(data) > min(total, 32 << 20):
                continue
            found[path.lstrip("/")] = data
            total -= len(data)
    return found


def _changed(files: dict[str, bytes], seed: int, count: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    out = dict(files)
    for path in rng.sample(sorted(files), count):
        out[path] = files[path] + _content(seed * 7 + len(path), 100)
    return out


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_layout(layout: Path, tars: list[bytes]) -> None:
    shutil.rmtree(layout, ignore_errors=True)
    (layout / "blobs" / "sha256").mkdir(parents=True)
    layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
               **_blob(layout, gzip.compress(t, 6, mtime=0))} for t in tars]
    config = {"created": CREATED, "architecture": "amd64", "os": "linux",
              "rootfs": {"type": "layers",
                         "diff_ids": [f"sha256:{hashlib.sha256(t).hexdigest()}" for t in tars]}}
    cdesc = {"mediaType": "application/vnd.oci.image.config.v1+json",
             **_blob(layout, json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": cdesc, "layers": layers}
    mdesc = _blob(layout, json.dumps(manifest).encode())
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **mdesc,
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def build_versions(work: Path, scale: float) -> dict[str, Path]:
    """The layouts v1, v2 (top layer changed) and v3 (bottom layer changed)."""
    names = {v: work / "layouts" / v for v in ("v1", "v2", "v3")}
    marker = work / "layouts" / f".done-{scale}"
    if marker.exists():
        return names
    bottom = _files("/usr/lib", int(scale * (160 << 20)))
    middle = _files("/usr/share", int(scale * (40 << 20)))
    top = _files("/usr/bin", 4 << 20)
    t_bottom, t_middle = _layer(bottom), _layer(middle)
    write_layout(names["v1"], [t_bottom, t_middle, _layer(top)])
    write_layout(names["v2"], [t_bottom, t_middle, _layer(_changed(top, 30, 5))])
    write_layout(names["v3"], [_layer(_changed(bottom, 10, 5)), t_middle, _layer(top)])
    marker.touch()
    return names


#: The compiles' environment: with bytecode cached (an installed ocisquash has its .pyc
#: files; compiling its modules again in each run cost 0.2 s of CPU, a third of a
#: recompile), kept apart from the source tree.
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def compile_once(layout: Path, cache: Path, out: Path,
                 args: list[str]) -> tuple[float, float, int]:
    """Wall and CPU (user + system of the compile process) seconds of one compile, and
    its peak resident memory in bytes."""
    cmd = [sys.executable, "-m", "ocisquash", "compile", f"oci:{layout}:latest", "-o", str(out),
           "--force", "--cache-dir", str(cache), *args]
    os.sync()
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_ENV)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return took, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def index_share(cache: Path, layout: Path) -> tuple[int, int]:
    """Bytes of the layer indexes of the one image in ``cache``, and of its layer blobs."""
    indexes = sum(p.stat().st_size for p in cache.glob("images/*/layer-*.idx"))
    manifest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    doc = json.loads((layout / "blobs" / "sha256" / manifest.split(":")[1]).read_text())
    blobs = sum(int(d["size"]) for d in doc["layers"])
    return indexes, blobs


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="size of the base (1.0: 200 MB)")
    ap.add_argument("--workdir", type=Path,
                    default=Path(os.environ.get("OCISQUASH_BENCH_DIR", "/work/benchdata"))
                    / "recompile")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS-recompile.md")
    args = ap.parse_args()
    work: Path = args.workdir
    _ENV["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    layouts = build_versions(work, args.scale)
    tmp = work / "tmp"
    settings = {"defaults": [], "gzip 9": ["--compression", "gzip", "--level", "9"]}
    rows = []
    shares = []
    for label, flags in settings.items():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        base = tmp / "cache-v1"
        compile_once(layouts["v1"], base, tmp / "v1.sqfs", flags)
        shares.append((label, *index_share(base, layouts["v1"])))
        for change, version in (("top layer", "v2"), ("bottom layer", "v3")):
            cold_t: list[float] = []
            warm_t: list[float] = []
            cold_cpu: list[float] = []
            warm_cpu: list[float] = []
            peak = {"cold": 0, "warm": 0}
            same = True
            for run in range(args.runs):
                for kind in (("cold", "warm") if run % 2 == 0 else ("warm", "cold")):
                    cache = tmp / f"{kind}-{run}"
                    shutil.rmtree(cache, ignore_errors=True)
                    if kind == "warm":
                        # hard links: a cache entry whose image has another inode than
                        # the one recorded counts as damaged and is not reused
                        shutil.copytree(base, cache, copy_function=os.link)
                    took, cpu, rss = compile_once(layouts[version], cache,
                                                  tmp / f"{kind}.sqfs", flags)
                    peak[kind] = max(peak[kind], rss)
                    (warm_t if kind == "warm" else cold_t).append(took)
                    (warm_cpu if kind == "warm" else cold_cpu).append(cpu)
                same = same and sha(tmp / "cold.sqfs") == sha(tmp / "warm.sqfs")
                shutil.rmtree(tmp / f"cold-{run}", ignore_errors=True)
                shutil.rmtree(tmp / f"warm-{run}", ignore_errors=True)
                print(f"{label} {change} round {run + 1}: cold {cold_t[-1]:.2f} s "
                      f"({cold_cpu[-1]:.2f} s CPU), after v1 {warm_t[-1]:.2f} s "
                      f"({warm_cpu[-1]:.2f} s CPU), identical {same}", flush=True)
            ratios = [w / c for w, c in zip(warm_t, cold_t, strict=True)]
            cpu_ratios = [w / c for w, c in zip(warm_cpu, cold_cpu, strict=True)]
            rows.append((label, change, statistics.median(cold_t), statistics.median(warm_t),
                         statistics.median(ratios), min(ratios), max(ratios),
                         statistics.median(cold_cpu), statistics.median(warm_cpu),
                         statistics.median(cpu_ratios), peak["cold"], peak["warm"], same))
    shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in (layouts["v1"] / "blobs" / "sha256").iterdir())
    lines = [
        "# Recompile after the last version (`bench/bench_recompile.py`)",
        "",
        f"Versions pair from this machine's /usr (`--scale {args.scale}`): v1 of 3 gzip layers "
        f"({size / 1e6:.0f} MB of blobs), v2 changes 5 files of its 4 MB top layer, v3 "
        "changes 5 files of its bottom layer. Median of "
        f"{args.runs} alternating pairs; ratio = after v1 / cold, per pair (min-max); CPU = "
        "user + system seconds of the compile process, its ratio the median per pair; peak "
        "= the largest peak resident memory of the runs.",
        "",
        "| setting | change | cold (s) | after v1 (s) | ratio | min-max | cold CPU (s) "
        "| after v1 CPU (s) | CPU ratio | peak cold / after v1 (MiB) | identical |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, change, c, w, r, lo, hi, ccpu, wcpu, rcpu, pc, pw, same in rows:
        lines.append(f"| {label} | {change} | {c:.2f} | {w:.2f} | {r:.2f} | "
                     f"{lo:.2f}-{hi:.2f} | {ccpu:.2f} | {wcpu:.2f} | {rcpu:.2f} | "
                     f"{pc / 2**20:.0f} / {pw / 2**20:.0f} | {'yes' if same else 'NO'} |")
    lines += ["", "Layer indexes of v1 (their share of the layer blobs, the issue's bound is "
              "2 %):", ""]
    for label, indexes, blobs in shares:
        lines.append(f"* {label}: {indexes / 1e3:.0f} kB for {blobs / 1e6:.1f} MB of layer "
                     f"blobs, {100 * indexes / blobs:.2f} %")
    text = "\n".join(lines) + "\n"
    print(text)
    args.results.write_text(text)
    return 0 if all(row[-1] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
