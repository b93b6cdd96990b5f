#!/usr/bin/env python3
"""Two variants of one EROFS compile against the squashfs compile at lz4hc, alternating.

Each round runs, in a fresh interpreter each, the squashfs compile at lz4hc level 9 and
128 KiB blocks (as ``bench_compile.py``'s ``ocisquash-lz4hc``) and two EROFS compiles
(``--format erofs --compression lz4hc`` plus the flags given) that differ only by a line
of Python run before ocisquash is imported: another checkout on ``sys.path``, or a
module constant set. The order is reversed every other round. Each compile reads the
image from an OCI layout into an empty cache; wall time and CPU (user + system, all
threads, from ``os.wait4``) are printed per round, then the medians of each variant's
per-round ratios to the squashfs compile. Small differences need many rounds on a
shared machine: one pair's ratio moved by ±10 % from round to round here.

    python bench/bench_ab.py /work/benchdata/layouts/manyfiles --rounds 8 \\
        --a "import sys; sys.path.insert(0, '/tmp/before/src')" --b "pass"
    python bench/bench_ab.py /work/benchdata/layouts/debian --rounds 8 \\
        --b "import ocisquash.erofs.compress as C; C.PACKED_PCLUSTER_BYTES = 256 << 10" \\
        -- --erofs-fragments
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
#: One compile through the CLI, after a line of Python (a variant's): argv is IMAGE OUT
#: CACHE FLAGS...
COMPILE = """
import sys
{prelude}
from ocisquash.cli import main
main(["compile", sys.argv[1], "-o", sys.argv[2], "--cache-dir", sys.argv[3], "--quiet",
      "--compression", "lz4hc", *sys.argv[4:]])
"""

#: One compile: wall seconds, CPU seconds, output bytes.
Run = tuple[float, float, int]


def run(code: str, layout: Path, work: Path, flags: list[str]) -> Run:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    subprocess.run(["sync"], check=True)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", code, f"oci:{layout}:latest",
                             str(work / "out"), str(work / "cache"), *flags])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    if status:
        raise SystemExit(f"a compile failed (wait status {status})")
    return wall, usage.ru_utime + usage.ru_stime, (work / "out").stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("layout", type=Path, help="an OCI layout directory (tag latest)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--a", default="pass", metavar="PYTHON", help="variant A's line")
    ap.add_argument("--b", default="pass", metavar="PYTHON", help="variant B's line")
    ap.epilog = "EROFS compile flags for both variants go after --."
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    args.flags = argv[cut + 1:]
    erofs = ["--format", "erofs", *args.flags]
    contenders = [("squashfs", COMPILE.format(prelude="pass"), []),
                  ("A", COMPILE.format(prelude=args.a), erofs),
                  ("B", COMPILE.format(prelude=args.b), erofs)]
    results: dict[str, list[Run]] = {name: [] for name, _, _ in contenders}
    with tempfile.TemporaryDirectory(prefix="ocisquash-ab-") as tmp:
        for r in range(args.rounds):
            for name, code, flags in contenders if r % 2 == 0 else contenders[::-1]:
                results[name].append(run(code, args.layout, Path(tmp) / "w", flags))
    for name, runs in results.items():
        print(f"{name}: wall {[round(w, 2) for w, _, _ in runs]} "
              f"cpu {[round(c, 2) for _, c, _ in runs]} bytes {runs[0][2]}")
    base = results["squashfs"]
    for name in ("A", "B"):
        runs = results[name]
        wall = statistics.median(w / s[0] for (w, _, _), s in zip(runs, base, strict=True))
        cpu = statistics.median(c / s[1] for (_, c, _), s in zip(runs, base, strict=True))
        print(f"{name}: time / squashfs {wall:.3f}, CPU / squashfs {cpu:.3f} "
              f"(median wall {statistics.median(w for w, _, _ in runs):.2f} s)")


if __name__ == "__main__":
    main()
