"""What each of ocisquash's performance mechanisms buys: compiles with it on and off.

Run: ``python bench/bench_mechanisms.py --layout /work/benchdata/layouts/manyfiles
[--mechanisms gc,switch,cffi,hashbehind] [--pairs 4]``.

Each compile runs in a fresh interpreter (``--one``), from an OCI layout without the
cache, so that nothing is warm but the page cache. The runs alternate, off/on then
on/off, so that load from other work on the machine falls on both sides. Prints one
JSON line per run and then, per mechanism, the wall and CPU ranges and in how many
pairs the mechanism's side was faster. Results: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MECHANISMS = ("gc", "switch", "cffi", "hashbehind")


def switch_off(mechanism: str) -> None:
    """Turn ``mechanism`` off in this interpreter, before the compile starts."""
    from ocisquash import digest, interpreter
    from ocisquash.squashfs import compressor

    unchanged: interpreter.HeldSetting[Any] = interpreter.HeldSetting(
        lambda: None, lambda _v: None, lambda was: was)
    if mechanism == "gc":
        interpreter._COLLECTOR = unchanged
    elif mechanism == "switch":
        interpreter._SWITCH = unchanged
    elif mechanism == "cffi":
        compressor._zstd_in_one_call = lambda level: None
    elif mechanism == "hashbehind":
        digest.HASH_BEHIND = False
    else:
        raise SystemExit(f"unknown mechanism {mechanism!r}")


def one(mechanism: str, on: bool, layout: Path) -> dict[str, Any]:
    """One compile in this interpreter; what it took."""
    from ocisquash import digest
    from ocisquash.compile import compile_image
    from ocisquash.sources.options import SourceOptions

    if on and mechanism == "hashbehind":
        digest.HASH_BEHIND = True  # whatever the core count
    elif not on:
        switch_off(mechanism)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.sqfs"
        start = time.monotonic()
        compile_image(f"oci:{layout}:latest", out, use_cache=False,
                      source_options=SourceOptions(cache_dir=Path(tmp) / "cache"))
        wall = time.monotonic() - start
        size = out.stat().st_size
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"mechanism": mechanism, "on": on, "image": layout.name, "wall": round(wall, 3),
            "cpu": round(ru.ru_utime + ru.ru_stime, 3), "voluntary_switches": ru.ru_nvcsw,
            "size": size}


def summary(rows: list[dict[str, Any]]) -> str:
    pairs = [rows[i:i + 2] for i in range(0, len(rows) - 1, 2)]

    def side(on: bool, key: str) -> str:
        values = [r[key] for r in rows if r["on"] is on]
        return f"{min(values):.2f}-{max(values):.2f}"

    def won(key: str) -> int:
        return sum(1 for p in pairs
                   if next(r[key] for r in p if r["on"]) < next(r[key] for r in p if not r["on"]))

    return (f"{rows[0]['mechanism']:<11} {rows[0]['image']:<12} wall on {side(True, 'wall')} s, "
            f"off {side(False, 'wall')} s (on faster in {won('wall')}/{len(pairs)}); "
            f"CPU on {side(True, 'cpu')} s, off {side(False, 'cpu')} s "
            f"(on less in {won('cpu')}/{len(pairs)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layout", type=Path, action="append", required=True,
                    help="an OCI layout to compile (tag latest); repeat for several")
    ap.add_argument("--mechanisms", default=",".join(MECHANISMS))
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--one", nargs=2, metavar=("MECHANISM", "on|off"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1] == "on", args.layout[0])))
        return 0
    report = []
    for layout in args.layout:
        for mechanism in args.mechanisms.split(","):
            rows = []
            for i in range(args.pairs):
                for on in ((False, True) if i % 2 == 0 else (True, False)):
                    proc = subprocess.run(
                        [sys.executable, __file__, "--layout", str(layout),
                         "--one", mechanism, "on" if on else "off"],
                        check=True, capture_output=True, text=True, env=dict(os.environ))
                    print(proc.stdout.strip(), flush=True)
                    rows.append(json.loads(proc.stdout))
            report.append(summary(rows))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
