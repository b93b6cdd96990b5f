"""Block size and zstd level: what they cost to compile and what they cost to read (issue 5).

Run (as root: it loop-mounts and drops the page cache):
``python bench/bench_blocks.py --images debian,devel --runs 3``

For each image (built by ``bench/images.py``) and each setting, alternating within a
round (the order reversed every other round):

* compile from the image's OCI layout with ``--no-cache``: wall, CPU (user+sys of the
  child), output size;
* mount the output with the kernel (``mount -o loop``) and with ``squashfuse``, and,
  each time after ``sync`` and ``echo 3 > /proc/sys/vm/drop_caches``:

  * ``small``: read the first 4 KiB of 2,000 files picked at random (seeded) - what
    starting a program costs, with its many small files in fragment blocks;
  * ``random``: 2,000 reads of 4 KiB at random offsets of the files over 1 MiB - a
    page fault in a large library or a database's read;
  * ``scan``: read every regular file whole, in path order - ``grep -r``, a checksum
    pass, a copy.

  The time is the reader's wall time; the CPU is the reader's (the kernel decompresses
  in the reading process) plus, for squashfuse, the squashfuse process's.

Writes bench/RESULTS-blocks.md: medians over the runs, and each setting's ratios to the
first setting's (the same round).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import images

HERE = Path(__file__).resolve().parent
OCISQUASH = [sys.executable, "-m", "ocisquash"]
#: block size, compressor, level; the first is the reference for the ratios.
SETTINGS = ("128K:zstd:5", "256K:zstd:3", "512K:zstd:3", "1M:zstd:3", "128K:gzip:9")
READS = 2000
TESTS = ("small", "random", "scan")
#: one compile of one setting and its reads, as measured
Row = dict[str, Any]
#: the files the read tests open: small, random (file, offset), scan
Plan = tuple[list[Path], list[tuple[Path, int]], list[Path]]


def log(msg: str) -> None:
    print(f"[blocks {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def compile_one(layout: Path, setting: str, out: Path) -> dict[str, float]:
    bs, comp, level = setting.split(":")
    out.unlink(missing_ok=True)
    subprocess.run(["sync"], check=True)
    c0, t0 = children_cpu(), time.perf_counter()
    subprocess.run([*OCISQUASH, "compile", f"oci:{layout}:latest", "-o", str(out), "--no-cache",
                    "-q", "--compression", comp, "--level", level, "--block-size", bs], check=True)
    return {"wall": time.perf_counter() - t0, "cpu": children_cpu() - c0,
            "size": out.stat().st_size}


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def pick(mnt: Path, seed: int) -> Plan:
    """The files each read test opens: the same for every setting of an image."""
    files: list[tuple[Path, int]] = []
    for d, dirs, names in os.walk(mnt):
        dirs.sort()
        for n in sorted(names):
            p = Path(d, n)
            st = os.lstat(p)
            if st.st_mode & 0o170000 == 0o100000:
                files.append((p.relative_to(mnt), st.st_size))
    rnd = random.Random(seed)
    small = [rnd.choice(files)[0] for _ in range(READS)]
    big = [f for f in files if f[1] > 1 << 20]
    rand = []
    for _ in range(READS if big else 0):
        p, size = rnd.choice(big)
        rand.append((p, rnd.randrange(0, size - 4096) & ~4095))
    return small, rand, [p for p, _ in files]


def read_tests(mnt: Path, plan: Plan,
               helper_cpu: Callable[[], float] | None = None) -> dict[str, tuple[float, float]]:
    small, rand, scan = plan
    res: dict[str, tuple[float, float]] = {}
    for test in TESTS:
        if test == "random" and not rand:
            continue
        drop_caches()
        h0 = helper_cpu() if helper_cpu else 0.0
        c0, t0 = self_cpu(), time.perf_counter()
        if test == "small":
            for p in small:
                with open(mnt / p, "rb") as f:
                    f.read(4096)
        elif test == "random":
            for p, off in rand:
                fd = os.open(mnt / p, os.O_RDONLY)
                try:
                    os.pread(fd, 4096, off)
                finally:
                    os.close(fd)
        else:
            for p in scan:
                with open(mnt / p, "rb") as f:
                    while f.read(1 << 20):
                        pass
        wall = time.perf_counter() - t0
        cpu = self_cpu() - c0 + ((helper_cpu() - h0) if helper_cpu else 0.0)
        res[test] = (wall, cpu)
    return res


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kernel_reads(img: Path, mnt: Path,
                 plan_for: Callable[[Path], Plan]) -> dict[str, tuple[float, float]]:
    subprocess.run(["mount", "-o", "loop,ro", "-t", "squashfs", str(img), str(mnt)], check=True)
    try:
        return read_tests(mnt, plan_for(mnt))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def fuse_reads(img: Path, mnt: Path,
               plan_for: Callable[[Path], Plan]) -> dict[str, tuple[float, float]]:
    proc = subprocess.Popen(["squashfuse", "-f", str(img), str(mnt)])
    try:
        for _ in range(100):
            if os.path.ismount(mnt):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("squashfuse did not mount")
        return read_tests(mnt, plan_for(mnt), lambda: proc_cpu(proc.pid))
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], check=False)
        proc.wait()


def bench_image(name: str, settings: list[str], runs: int, tmp: Path,
                mounts: list[str]) -> list[Row]:
    layout = images.build_image(name)
    plans: list[Plan] = []

    def plan_for(mnt: Path) -> Plan:
        if not plans:
            plans.append(pick(mnt, seed=5))
        return plans[0]

    rows: list[Row] = []
    mnt = tmp / "mnt"
    mnt.mkdir(exist_ok=True)
    for r in range(runs):
        order = settings if r % 2 == 0 else settings[::-1]
        for setting in order:
            out = tmp / f"{name}-{setting.replace(':', '-')}.sqfs"
            row: Row = {"image": name, "setting": setting, "round": r}
            row.update(compile_one(layout, setting, out))
            for how in mounts:
                reads = (kernel_reads if how == "kernel" else fuse_reads)(out, mnt, plan_for)
                for test, (wall, cpu) in reads.items():
                    row[f"{how}-{test}"] = wall
                    row[f"{how}-{test}-cpu"] = cpu
            log(f"{name} round {r + 1} {setting}: " + ", ".join(
                f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                if k not in ("image", "setting", "round")))
            rows.append(row)
            out.unlink()
    return rows


def _median(rows: list[Row], key: str) -> str:
    xs = [float(r[key]) for r in rows if key in r]
    return f"{statistics.median(xs):.2f}" if xs else "–"


def _ratio(rows: list[Row], ref: dict[int, Row], key: str) -> str:
    """The median over rounds of each row's ``key`` against the reference's, same round."""
    xs = [float(r[key]) / float(ref[r["round"]][key]) for r in rows
          if key in r and r["round"] in ref and float(ref[r["round"]].get(key, 0))]
    return f"{statistics.median(xs):.2f}" if xs else "–"


def report(rows: list[Row], settings: list[str], mounts: list[str], started: str,
           out: Path) -> None:
    lines = [
        "# Block size and zstd level: compile and read costs (issue 5)",
        "",
        f"By `python bench/bench_blocks.py` (see its docstring), {started} UTC, python "
        f"{sys.version.split()[0]} ({sys.executable}). Medians over the rounds; the ratio "
        f"columns are the median of each round's ratio to `{settings[0]}` in the same round "
        "(wall, then CPU: a cold read's wall time is mostly this shared machine's disk). "
        "Reads are cold (page cache dropped before each); `small` = first 4 KiB of "
        f"{READS} random files, `random` = {READS} random 4 KiB reads in files over 1 MiB, "
        "`scan` = every file whole in path order. Times in seconds; CPU includes the kernel's "
        "decompression (the reader's sys time) and squashfuse's own CPU.",
        "",
    ]
    tests = [f"{m}-{t}" for m in mounts for t in TESTS]
    head = ["image", "setting", "compile s", "ratio", "compile CPU s", "size MB", "size ratio"]
    for c in tests:
        head += [f"{c} s", f"{c} CPU s", "ratio", "CPU ratio"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for name in dict.fromkeys(r["image"] for r in rows):
        mine = [r for r in rows if r["image"] == name]
        ref = {r["round"]: r for r in mine if r["setting"] == settings[0]}
        for setting in settings:
            rs = [r for r in mine if r["setting"] == setting]
            if not rs:
                continue
            cells = [name, f"`{setting}`", _median(rs, "wall"), _ratio(rs, ref, "wall"),
                     _median(rs, "cpu"), f"{float(rs[0]['size']) / 1e6:.1f}",
                     _ratio(rs, ref, "size")]
            for c in tests:
                cells += [_median(rs, c), _median(rs, f"{c}-cpu"), _ratio(rs, ref, c),
                          _ratio(rs, ref, f"{c}-cpu")]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    out.write_text("\n".join(lines))
    log(f"wrote {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", default="debian,devel")
    ap.add_argument("--settings", default=",".join(SETTINGS),
                    help="comma-separated BLOCK:COMPRESSOR:LEVEL; the first is the reference")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mounts", default="kernel,squashfuse")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS-blocks.md")
    ap.add_argument("--workdir", type=Path, default=images.DEFAULT_WORKDIR,
                    help="where the measurements are kept (blocks.json)")
    ap.add_argument("--report", action="store_true",
                    help="only write the report from WORKDIR/blocks.json")
    args = ap.parse_args()
    saved = args.workdir / "blocks.json"
    if args.report:
        data = json.loads(saved.read_text())
        report(data["rows"], data["settings"], data["mounts"], data["started"], args.out)
        return 0
    if os.geteuid() != 0:
        ap.error("needs root: it loop-mounts images and drops the page cache")
    settings = args.settings.split(",")
    mounts = args.mounts.split(",")
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ocisquash-blocks-") as t:
        for name in args.images.split(","):
            rows += bench_image(name, settings, args.runs, Path(t), mounts)
    saved.write_text(json.dumps({"rows": rows, "settings": settings, "mounts": mounts,
                                 "started": started}))
    report(rows, settings, mounts, started, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
