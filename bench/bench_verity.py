"""What ``--verity`` adds to a cold compile (issue 21's target: at most +10 %).

Run: ``python bench/bench_verity.py [--src DIR ...] [--rounds 3] [--workdir DIR]``.

Each ``--src`` directory becomes a one-layer (zstd) OCI layout; each round compiles it
cold (a fresh cache) with the default options, once without ``--verity`` and once with
it, in alternating order (wall and CPU seconds), and then times the verity step alone
(``verity.add_verity`` on a copy of the image, which the compile has just written, so
it is read from the page cache as in a compile). Prints a Markdown table of medians.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from images import write_layout

ROOT = Path(__file__).resolve().parents[1]


def _layout(src: Path, workdir: Path) -> Path:
    name = src.as_posix().strip("/").replace("/", "-") or "root"
    layout = workdir / f"layout-{name}"
    if (layout / "index.json").exists():
        return layout
    tar = workdir / f"{name}.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as t:
        t.add(src, arcname=".", recursive=True)
    write_layout(layout, [tar], "zstd")
    tar.unlink()
    return layout


def _compile(layout: Path, workdir: Path, verity: bool) -> tuple[float, float, Path]:
    """Wall and CPU (user + system) seconds of one cold compile, and its output."""
    cache = Path(tempfile.mkdtemp(dir=workdir, prefix="cache-"))
    out = workdir / ("v.sqfs" if verity else "p.sqfs")
    argv = [sys.executable, "-m", "ocisquash", "compile", f"oci:{layout}:latest", "-o",
            str(out), "--cache-dir", str(cache), "-q"] + (["--verity"] if verity else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run(["sync"], check=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env)
    took = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    shutil.rmtree(cache)
    return took, cpu, out


def _verity_step(image: Path, workdir: Path) -> float:
    sys.path.insert(0, str(ROOT / "src"))
    from ocisquash.verity import VerityOptions, add_verity

    copy = workdir / "step.sqfs"
    shutil.copyfile(image, copy)
    start = time.perf_counter()
    add_verity(copy, VerityOptions(), "bench", sync=False)  # as compile calls it
    took = time.perf_counter() - start
    copy.unlink()
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", type=Path,
                        help="directory to make an image of (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    sources = args.src or [Path("/usr/lib/python3"), Path("/usr/lib/x86_64-linux-gnu")]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-verity-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()[0]:.1f} (1 min), cores: {os.cpu_count()}")
    print()
    print("| image | output MB | compile s | compile --verity s | wall ratio | CPU s "
          "| CPU s with --verity | CPU ratio | verity step s | step / compile |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for src in sources:
        layout = _layout(src, workdir)
        plain, verity, step, ratios = [], [], [], []
        cpu_plain, cpu_verity, cpu_ratios = [], [], []
        size = 0
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            took, cpu = {}, {}
            for with_verity in order:
                took[with_verity], cpu[with_verity], out = _compile(layout, workdir,
                                                                    with_verity)
                if not with_verity:
                    size = out.stat().st_size
            plain.append(took[False])
            verity.append(took[True])
            ratios.append(took[True] / took[False])
            cpu_plain.append(cpu[False])
            cpu_verity.append(cpu[True])
            cpu_ratios.append(cpu[True] / cpu[False])
            step.append(_verity_step(workdir / "p.sqfs", workdir))
        p, vt, s, cp, cv = (statistics.median(x)
                            for x in (plain, verity, step, cpu_plain, cpu_verity))
        print(f"| {src} | {size / 1e6:.1f} | {p:.2f} | {vt:.2f} | "
              f"{statistics.median(ratios):.3f} | {cp:.2f} | {cv:.2f} | "
              f"{statistics.median(cpu_ratios):.3f} | {s:.3f} | {s / p:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
