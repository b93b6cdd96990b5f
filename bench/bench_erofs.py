#!/usr/bin/env python3
"""Benchmark the EROFS writer (plain, with fragments, with ztailpacking, with fragments and a metabox): size against ``mksquashfs -comp lz4 -Xhc -b 131072`` and
Debian's ``mkfs.erofs -zlz4hc``, time against ocisquash's own squashfs writer at the
same settings (lz4hc level 9, 128 KiB of data per block or physical cluster).

Every run is a child process (its peak RSS and CPU time, user plus system, from
``os.wait4``); the tools alternate so background load hits them alike. On a shared
machine the CPU time is the steadier measure; both are reported. Prints a Markdown table (``--out`` writes it too).

    python bench/bench_erofs.py --source /usr/lib/python3/dist-packages --runs 3
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

_PACK = """
import sys
from pathlib import Path
from ocisquash.pack import pack_directory
from ocisquash.erofs import ErofsOptions, ErofsCompression
from ocisquash.squashfs import WriterOptions, Compression
fmt, src, out, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if fmt.startswith("erofs"):
    opts = ErofsOptions(compression=ErofsCompression.LZ4HC, level=9, mkfs_time=0,
                        workers=workers, fragments="fragments" in fmt,
                        ztailpacking=fmt == "erofs-ztailpacking", metabox="metabox" in fmt)
else:
    opts = WriterOptions(compression=Compression.LZ4, lz4_hc=True, level=9, mkfs_time=0,
                         workers=workers)
pack_directory(Path(src), Path(out), opts)
"""


def _run(argv: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MiB) of one child process."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - start
    if status != 0:
        raise SystemExit(f"{argv[0]} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _tools(src: Path, workers: int) -> dict[str, Callable[[str], list[str]]]:
    """Each tool's command line, given the output path."""
    def ours(fmt: str) -> Callable[[str], list[str]]:
        return lambda out: [sys.executable, "-c", _PACK, fmt, str(src), out, str(workers)]

    tools = {
        "ocisquash erofs lz4hc": ours("erofs"),
        "ocisquash erofs lz4hc --erofs-fragments": ours("erofs-fragments"),
        "ocisquash erofs lz4hc --erofs-ztailpacking": ours("erofs-ztailpacking"),
        "ocisquash erofs lz4hc --erofs-fragments --erofs-metabox": ours(
            "erofs-fragments-metabox"),
        "ocisquash squashfs lz4hc": ours("squashfs"),
        "mksquashfs -comp lz4 -Xhc -b 131072": lambda out: [
            "mksquashfs", str(src), out, "-comp", "lz4", "-Xhc", "-b", "131072",
            "-noappend", "-quiet", "-no-progress", "-processors", str(workers)],
    }
    if shutil.which("mkfs.erofs"):
        tools["mkfs.erofs -zlz4hc (Debian 1.5)"] = lambda out: [
            "mkfs.erofs", "-zlz4hc", "-T0", out, str(src)]
    return tools


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, action="append", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ocisquash-bench-erofs-") as tmp:
        for src in args.source:
            tools = _tools(src, args.workers)
            times: dict[str, list[float]] = {t: [] for t in tools}
            cpus: dict[str, list[float]] = {t: [] for t in tools}
            rss: dict[str, float] = {t: 0.0 for t in tools}
            sizes: dict[str, int] = {}
            for _ in range(args.runs):
                for i, (tool, argv) in enumerate(tools.items()):
                    out = os.path.join(tmp, f"out{i}")
                    with open(out, "wb"):
                        pass
                    seconds, cpu, peak = _run(argv(out))
                    times[tool].append(seconds)
                    cpus[tool].append(cpu)
                    rss[tool] = max(rss[tool], peak)
                    sizes[tool] = os.path.getsize(out)
                    os.unlink(out)
            ref_size = sizes["mksquashfs -comp lz4 -Xhc -b 131072"]
            ref_time = statistics.median(times["ocisquash squashfs lz4hc"])
            ref_cpu = statistics.median(cpus["ocisquash squashfs lz4hc"])
            for tool in tools:
                t = statistics.median(times[tool])
                c = statistics.median(cpus[tool])
                rows.append(f"| {src} | {tool} | {sizes[tool] / 1e6:.2f} | "
                            f"{sizes[tool] / ref_size:.3f} | {t:.2f} | {t / ref_time:.2f} | "
                            f"{c:.2f} | {c / ref_cpu:.2f} | {rss[tool]:.0f} |")
    head = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; {args.runs} runs each, median time; "
        f"{args.workers} workers.",
        "",
        "| tree | tool | MB | size / mksquashfs | s | time / ocisquash squashfs | CPU s "
        "| CPU / ocisquash squashfs | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    text = "\n".join(head + rows) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
