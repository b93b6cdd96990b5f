#!/usr/bin/env python3
"""Benchmark ``ocisquash pack`` against ``mksquashfs`` on the same tree.

Both tools get the same compressor, level, block size and number of threads, and run
alternately (ocisquash, mksquashfs, ocisquash, ...) so that background load hits both
alike. Each run is a child process; its peak RSS comes from ``os.wait4``. Reported:
median wall time, the time ratio, image sizes and their ratio, peak RSS.

    python bench/bench_pack.py --source /usr --compression gzip zstd --runs 3

``--baseline REV`` also runs ocisquash as of git revision REV (its ``src`` tree,
exported to a temporary directory), alternating with the other two, to measure a
change before and after on the same machine in the same run.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: default level of each compressor in both tools
DEFAULT_LEVELS = {"gzip": 9, "zstd": 15, "xz": None, "lz4": None, "lzo": None}


@dataclass
class Run:
    tool: str
    seconds: float
    cpu_seconds: float
    max_rss_mib: float
    size: int


def _measure(argv: list[str], output: Path, tool: str) -> Run:
    if output.exists():
        output.unlink()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{tool} failed ({status}):\n{stderr}")
    return Run(
        tool=tool,
        seconds=seconds,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        max_rss_mib=usage.ru_maxrss / 1024,
        size=output.stat().st_size,
    )


def _ocisquash_argv(
    src: Path,
    out: Path,
    comp: str,
    level: int | None,
    bs: int,
    workers: int,
    code: Path | None = None,
) -> list[str]:
    # The pack subcommand exactly as the console script runs it; invoked through its
    # module so the benchmark does not depend on the other subcommands importing.
    # ``code``: a src directory to import ocisquash from instead of the installed one.
    runner = (
        "import argparse, sys\n"
        + (f"sys.path.insert(0, {str(code)!r})\n" if code is not None else "")
        + "import ocisquash\n"
        + (
            f"assert ocisquash.__file__.startswith({str(code)!r}), ocisquash.__file__\n"
            if code is not None
            else ""
        )
        + "from ocisquash.commands import pack\n"
        "p = argparse.ArgumentParser(prog='ocisquash'); pack.add_parser(p.add_subparsers())\n"
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
    )
    argv = [sys.executable, "-c", runner, "pack", str(src), str(out), "--quiet"]
    argv += ["--compression", comp, "--block-size", str(bs), "--workers", str(workers)]
    argv += ["--mkfs-time", "0"]
    if level is not None:
        argv += ["--level", str(level)]
    return argv


def _mksquashfs_argv(
    src: Path, out: Path, comp: str, level: int | None, bs: int, workers: int
) -> list[str]:
    argv = ["mksquashfs", str(src), str(out), "-noappend", "-no-progress", "-quiet"]
    argv += ["-comp", comp, "-b", str(bs), "-processors", str(workers), "-mkfs-time", "0"]
    if level is not None:
        argv += ["-Xcompression-level", str(level)]
    return argv


def _warm(src: Path) -> None:
    """Read the tree once so the first timed run does not pay for a cold page cache."""
    subprocess.run(
        [
            "sh",
            "-c",
            f"find {shlex_quote(str(src))} -xdev -type f -print0 | xargs -0 cat > /dev/null",
        ],
        stderr=subprocess.DEVNULL,
        check=False,
    )


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _export_revision(rev: str, dest: Path) -> Path:
    """Export ``src`` of git revision ``rev`` of this repository below ``dest``."""
    repo = Path(__file__).resolve().parent.parent
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", rev, "src"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    # Byte-compile as an install would, so no run pays for compiling (nor writes
    # bytecode, under PYTHONDONTWRITEBYTECODE, and compiles again).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(dest / "src")], check=True)
    return dest / "src"


def bench(
    src: Path,
    comp: str,
    level: int | None,
    bs: int,
    workers: int,
    runs: int,
    tmp: Path,
    baseline: Path | None = None,
) -> list[Run]:
    results: list[Run] = []
    ours, theirs = tmp / "ocisquash.sqfs", tmp / "mksquashfs.sqfs"
    before = tmp / "baseline.sqfs"
    for i in range(runs):
        print(f"  {comp} run {i + 1}/{runs}", file=sys.stderr, flush=True)
        if baseline is not None:
            argv = _ocisquash_argv(src, before, comp, level, bs, workers, baseline)
            results.append(_measure(argv, before, "baseline"))
        results.append(
            _measure(_ocisquash_argv(src, ours, comp, level, bs, workers), ours, "ocisquash")
        )
        results.append(
            _measure(_mksquashfs_argv(src, theirs, comp, level, bs, workers), theirs, "mksquashfs")
        )
    return results


def summarize(
    comp: str,
    level: int | None,
    results: list[Run],
    baseline_rev: str | None = None,
    identical: bool = False,
) -> str:
    def pick(tool: str) -> list[Run]:
        return [r for r in results if r.tool == tool]

    ours, theirs = pick("ocisquash"), pick("mksquashfs")
    t_ours = statistics.median(r.seconds for r in ours)
    t_theirs = statistics.median(r.seconds for r in theirs)
    s_ours, s_theirs = ours[-1].size, theirs[-1].size
    rss_ours = max(r.max_rss_mib for r in ours)
    rss_theirs = max(r.max_rss_mib for r in theirs)
    lines = [
        f"### {comp} (level {level if level is not None else 'default'})",
        "",
        "| tool | wall s (runs) | median wall s | median CPU s | image bytes | peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    rows = [("ocisquash", ours), ("mksquashfs", theirs)]
    before = pick("baseline")
    if before:
        rows.insert(0, (f"ocisquash @ {baseline_rev}", before))
    for tool, rs in rows:
        walls = ", ".join(f"{r.seconds:.1f}" for r in rs)
        cpu = statistics.median(r.cpu_seconds for r in rs)
        lines.append(
            f"| {tool} | {walls} | {statistics.median(r.seconds for r in rs):.1f} | {cpu:.1f} "
            f"| {rs[-1].size} | {max(r.max_rss_mib for r in rs):.0f} |"
        )
    lines += [
        "",
        f"time ratio ocisquash/mksquashfs: **{t_ours / t_theirs:.2f}**; "
        f"size ratio: **{s_ours / s_theirs:.4f}**; "
        f"peak RSS: ocisquash {rss_ours:.0f} MiB, mksquashfs {rss_theirs:.0f} MiB",
        "",
    ]
    if before:
        t_before = statistics.median(r.seconds for r in before)
        cpu_ratio = statistics.median(r.cpu_seconds for r in ours) / statistics.median(
            r.cpu_seconds for r in before
        )
        same = "byte-identical" if identical else "different"
        lines += [
            f"baseline {baseline_rev}: time ratio to mksquashfs {t_before / t_theirs:.2f}; "
            f"ocisquash / baseline: wall {t_ours / t_before:.2f}, CPU {cpu_ratio:.2f}; "
            f"images {same}",
            "",
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=Path("/usr"))
    parser.add_argument("--compression", nargs="+", default=["gzip", "zstd"])
    parser.add_argument("--level", type=int, help="override the level for every compressor")
    parser.add_argument("--block-size", type=int, default=131072)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tmp", type=Path, help="directory for the images (default: a temp dir)")
    parser.add_argument("--markdown", type=Path, help="append the report to this file")
    parser.add_argument(
        "--baseline", metavar="REV", help="also run ocisquash as of this git revision"
    )
    args = parser.parse_args()
    if not shutil.which("mksquashfs"):
        raise SystemExit("mksquashfs is not installed")

    tree_bytes = int(
        subprocess.run(
            ["du", "-sb", "-x", str(args.source)], capture_output=True, text=True
        ).stdout.split()[0]
    )
    header = [
        f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — {args.source} "
        f"({tree_bytes / 2**30:.2f} GiB)",
        "",
        f"machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, "
        + subprocess.run(
            ["mksquashfs", "-version"], capture_output=True, text=True
        ).stdout.splitlines()[0],
        f"settings: block size {args.block_size}, {args.workers} threads, {args.runs} alternating runs, "
        "defaults otherwise (fragments, dedup, xattrs, export table on in both)",
        "",
    ]
    report = "\n".join(header)
    print(report, flush=True)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(report + "\n")
    _warm(args.source)
    with tempfile.TemporaryDirectory(prefix="bench-pack-", dir=args.tmp) as tmp:
        baseline = (
            _export_revision(args.baseline, Path(tmp) / "baseline") if args.baseline else None
        )
        for comp in args.compression:
            level = args.level if args.level is not None else DEFAULT_LEVELS.get(comp)
            results = bench(
                args.source,
                comp,
                level,
                args.block_size,
                args.workers,
                args.runs,
                Path(tmp),
                baseline,
            )
            identical = baseline is not None and filecmp.cmp(
                Path(tmp) / "baseline.sqfs", Path(tmp) / "ocisquash.sqfs", shallow=False
            )
            section = summarize(comp, level, results, args.baseline, identical)
            print(section, flush=True)
            if args.markdown:  # section by section, so a long run leaves partial results
                with open(args.markdown, "a") as f:
                    f.write("\n" + section + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
