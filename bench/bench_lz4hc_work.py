#!/usr/bin/env python3
"""The lz4hc work of the squashfs compile and of EROFS compiles, replayed on one thread.

On a shared 2-core machine a compile's time moves by ±10 % from round to round, more
than the difference between two compiles that compress the same bytes. This benchmark
takes the compression out of the compile to compare it alone: each compile (the
squashfs compile at lz4hc level 9 and 128 KiB blocks, and the EROFS compiles named by
``--erofs``) runs once with every lz4hc call it makes recorded to a file (the call's
input and level, and for a fixed-output call its budget); then the recorded calls of
all the compiles are made again on one thread, in twenty slices taken in turn from
each compile, each slice timed ``--reps`` times (CPU time of the thread) and its
fastest run kept. The sum over the slices is the compile's lz4hc work in seconds; the
ratio to the squashfs compile's says how much more or less compressing the EROFS
compile does for the same image. The load's swings still reach it (±5 % from run to
run here), far less than a compile's own time.

An EROFS contender is ``NAME=FLAGS[;PRELUDE]``: the flags after
``--format erofs --compression lz4hc``, and a line of Python run before the compile
(a module constant set, as in ``bench_ab.py``).

    python bench/bench_lz4hc_work.py /work/benchdata/layouts/debian --reps 3 \\
        --erofs "small=--erofs-fragments --erofs-metabox" \\
        --erofs "small, packed 128K=--erofs-fragments --erofs-metabox;\\
import ocisquash.erofs.compress as C; C.PACKED_PCLUSTER_BYTES = 128 << 10"
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

#: One compile with its lz4hc calls recorded: argv is RECORD IMAGE OUT CACHE FLAGS...
#: Each record: kind (0 a whole call, 1 a fixed-output call), the input's length, the
#: level, the budget (fixed-output calls), then the input.
RECORD = """
import struct, sys, threading
{prelude}
import lz4.block
from ocisquash.erofs import compress
record, lock = open(sys.argv[1], "wb"), threading.Lock()
whole, fitted = lz4.block.compress, compress.Codec.fit
def compress_hc(data, mode="default", **kw):
    if mode == "high_compression":
        raw = bytes(data)
        with lock:
            record.write(struct.pack("<BIII", 0, len(raw), kw.get("compression") or 9, 0)
                         + raw)
    return whole(data, mode=mode, **kw)
def fit(self, data, budget, start=0, end=None):
    if self.name is compress.ErofsCompression.LZ4HC:
        raw = bytes(data[start:len(data) if end is None else end])
        with lock:
            record.write(struct.pack("<BIII", 1, len(raw), self._level or 9, budget) + raw)
    return fitted(self, data, budget, start, end)
lz4.block.compress, compress.Codec.fit = compress_hc, fit
from ocisquash.cli import main
try:
    sys.exit(main(["compile", sys.argv[2], "-o", sys.argv[3], "--cache-dir", sys.argv[4],
                   "--quiet", "--compression", "lz4hc", *sys.argv[5:]]))
finally:
    record.close()
"""

HEAD = struct.Struct("<BIII")
#: One recorded call: kind, level, budget, input.
Call = tuple[int, int, int, bytes]
SLICES = 20


def record(name: str, layout: Path, flags: list[str], prelude: str, rec: Path
           ) -> int:
    """Run one compile with its calls recorded to ``rec``; returns the image's size."""
    out, cache = rec.with_name("out"), rec.with_name("cache")
    out.unlink(missing_ok=True)
    shutil.rmtree(cache, ignore_errors=True)
    code = RECORD.format(prelude=prelude)
    proc = subprocess.run([sys.executable, "-c", code, str(rec), f"oci:{layout}:latest",
                           str(out), str(cache), *flags])
    if proc.returncode:
        raise SystemExit(f"{name}: the compile failed (exit {proc.returncode})")
    return out.stat().st_size


def load(path: Path) -> list[Call]:
    calls: list[Call] = []
    with open(path, "rb") as f:
        while head := f.read(HEAD.size):
            kind, n, level, budget = HEAD.unpack(head)
            calls.append((kind, level, budget, f.read(n)))
    return calls


def replay(calls: list[Call]) -> float:
    """CPU seconds of this thread to make ``calls`` again."""
    import lz4.block

    from ocisquash.erofs.compress import Codec
    from ocisquash.erofs.options import ErofsCompression

    codecs = {level: Codec(ErofsCompression.LZ4HC, level, 128 << 10)
              for level in {level for _, level, _, _ in calls}}
    start = time.thread_time()
    for kind, level, budget, raw in calls:
        if kind:
            codecs[level].fit(raw, budget)
        else:
            lz4.block.compress(raw, mode="high_compression", compression=level,
                               store_size=False)
    return time.thread_time() - start


def slices(calls: list[Call]) -> Iterator[list[Call]]:
    for s in range(SLICES):
        yield calls[len(calls) * s // SLICES:len(calls) * (s + 1) // SLICES]


def contender(spec: str) -> tuple[str, list[str], str]:
    name, _, rest = spec.partition("=")
    flags, _, prelude = rest.partition(";")
    return name, ["--format", "erofs", *shlex.split(flags)], prelude or "pass"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("layouts", type=Path, nargs="+", help="OCI layout directories")
    ap.add_argument("--erofs", action="append", required=True, metavar="NAME=FLAGS[;PRELUDE]")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tmp", type=Path, help="where the records go (default: the system's)")
    args = ap.parse_args()
    contenders = [("squashfs", [], "pass"), *map(contender, args.erofs)]
    print("| image | compile | lz4hc calls | input MB | lz4hc work s | work ratio "
          "| image MB | size ratio |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for layout in args.layouts:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            recs = [Path(tmp) / f"{i}.rec" for i in range(len(contenders))]
            sizes = [record(name, layout, flags, prelude, rec)
                     for (name, flags, prelude), rec in zip(contenders, recs, strict=True)]
            sets = []
            for rec in recs:
                sets.append(load(rec))
                os.unlink(rec)
        totals = [0.0] * len(sets)
        parts = [list(slices(calls)) for calls in sets]
        for s in range(SLICES):
            for i, sliced in enumerate(parts):
                totals[i] += min(replay(sliced[s]) for _ in range(args.reps))
        for (name, _, _), calls, total, size in zip(contenders, sets, totals, sizes, strict=True):
            mb = sum(len(raw) for *_, raw in calls) / 1e6
            print(f"| {layout.name} | {name} | {len(calls)} | {mb:.1f} | {total:.2f} "
                  f"| {total / totals[0]:.3f} | {size / 1e6:.2f} | {size / sizes[0]:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
