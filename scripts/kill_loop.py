#!/usr/bin/env python3
"""Kill ``ocisquash compile`` at random points, many times, and check every recovery.

    python scripts/kill_loop.py --count 200 [--seconds S] [--mode local|registry|both] [--seed N]

``local`` compiles an OCI layout (layer reading, flattening, squashfs writing,
publishing, placing the output); ``registry`` pulls through a slow proxy in front of a
real ``docker-registry`` (downloads too). Each round starts a compile, sends SIGKILL
(or, one round in five, SIGINT) after a random delay spread over the whole compile
time, then checks:

* the cache holds only whole entries, and every blob and compiled image hashes right
  (``ImageCache.verify``); no blob is published under its digest unless it is whole;
* the output is absent or byte-identical to a reference compile;
* a SIGINT run exits 130 with one ``ocisquash: interrupted`` line and leaves no staging
  directory;
* the next compile finishes with the reference bytes (a "clean recovery"), and in
  registry mode resumes a partial download with a ``Range`` request.

One round in four keeps the previous round's cache entry, so kills also land on the
cached path (placing the output). The last lines sum up each mode, e.g.
``local: 200 kills (170 mid-compile, 30 after the end; 41 SIGINT): 200 clean recoveries``;
the exit status is 1 when any check failed. Needs ``docker-registry`` and ``skopeo``
for the registry mode; everything is written below a temporary directory.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from ocisquash.cache import ImageCache  # noqa: E402
from ocisquash.digest import Digest  # noqa: E402

from imagebuilder import Entry, write_oci_layout  # noqa: E402


def sha256_file(path: Path) -> str:
    return Digest.of_file(path).hex


def compile_cmd(image: str, out: Path, cache: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "ocisquash", "compile", image, "-o", str(out), "--force",
            "--cache-dir", str(cache), "--quiet", *extra]


def check_cache(cache: Path) -> list[str]:
    """What is wrong with ``cache`` at rest (empty: nothing)."""
    if not cache.exists():
        return []
    problems = []
    images = cache / "images"
    # A kill while the cache was being created may leave its root without images/:
    # nothing is published yet, and the next compile makes the rest.
    for e in images.iterdir() if images.is_dir() else ():
        for name in ("image.squashfs", "info.json", "manifest.json", "config.json"):
            if not (e / name).is_file():
                problems.append(f"entry {e.name[:12]} lacks {name}")
    problems += ImageCache(cache).verify()
    return problems


class Round:
    """One kind of compile to kill: its command, reference output and extra checks."""

    def __init__(self, name: str, image: str, extra: list[str], work: Path) -> None:
        self.name = name
        self.image = image
        self.extra = extra
        self.work = work
        self.cache = work / f"{name}-cache"
        self.out = work / f"{name}-out.squashfs"
        ref = work / f"{name}-reference.squashfs"
        t0 = time.monotonic()
        subprocess.run(compile_cmd(image, ref, work / f"{name}-ref-cache", extra), check=True,
                       capture_output=True)
        self.duration = time.monotonic() - t0
        self.want = sha256_file(ref)
        self.stats: Counter[str] = Counter()
        self.failures: list[str] = []

    def forget_downloads(self) -> None:
        """Drop downloaded blobs so the round downloads again (registry mode)."""

    def before_kill(self) -> None:
        """Called just before a round starts (registry mode slows the proxy down)."""

    def after_kill(self, partial: int) -> None:
        """Called before the recovery compile, with the bytes a partial download holds."""

    def check_recovery(self, partial: int) -> list[str]:
        return []

    def tmp_listing(self) -> set[str]:
        d = self.cache / "tmp"
        return {p.name for p in d.iterdir()} if d.is_dir() else set()

    def partial_bytes(self) -> int:
        d = self.cache / "blobs" / "partial"
        return sum(p.stat().st_size for p in d.glob("*.part")) if d.is_dir() else 0

    def one(self, rnd: random.Random) -> None:
        if rnd.random() >= 0.25 and (self.cache / "images").is_dir():
            for e in (self.cache / "images").iterdir():
                ImageCache(self.cache).remove(e.name)
            self.forget_downloads()
        self.out.unlink(missing_ok=True)
        sig = signal.SIGINT if rnd.random() < 0.2 else signal.SIGKILL
        self.before_kill()
        tmp_before = self.tmp_listing()
        # A shell's background job inherits SIGINT ignored; give the child the default back.
        p = subprocess.Popen(compile_cmd(self.image, self.out, self.cache, self.extra),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(rnd.uniform(0.02, 1.1) * self.duration)
        alive = p.poll() is None
        p.send_signal(sig)
        try:
            _, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            self.failures.append(f"{sig.name}: the process did not end within 120 s")
        self.stats["kills"] += 1
        self.stats["mid-compile" if alive else "after the end"] += 1
        self.stats[sig.name] += 1
        problems = check_cache(self.cache)
        if self.out.exists() and sha256_file(self.out) != self.want:
            problems.append("the output exists but is not the reference image")
        if alive and sig == signal.SIGINT:
            text = err.decode(errors="replace")
            lines = text.strip().splitlines()
            if p.returncode == -signal.SIGINT and "Traceback" not in text and \
                    "ocisquash: interrupted" not in text:
                # The signal's default action ended the interpreter: it came before
                # Python installed its handler, or after Python removed it on the way out
                # (main() had returned). The cache and output checks above still apply.
                self.stats["SIGINT outside the interpreter's handler"] += 1
            elif "Traceback" in text and not re.search(r"ocisquash/cli\.py\", line \d+, in main",
                                                       text):
                # Ctrl-C while the interpreter was still starting (importing ocisquash.cli),
                # before main() and its handler ran: Python's own traceback, no work begun.
                self.stats["SIGINT during interpreter start-up"] += 1
            elif p.returncode not in (130, -signal.SIGINT) or \
                    lines[-1:] != ["ocisquash: interrupted"]:
                problems.append(f"SIGINT: exit {p.returncode}, stderr {lines[-3:]}")
            left = self.tmp_listing() - tmp_before
            if left:
                problems.append(f"SIGINT left staging files {sorted(left)}")
        partial = self.partial_bytes()
        self.after_kill(partial)
        rec = subprocess.run(compile_cmd(self.image, self.out, self.cache, self.extra),
                             capture_output=True, text=True, timeout=300)
        if rec.returncode != 0:
            problems.append(f"recovery failed: {rec.stderr.strip()[-300:]}")
        elif sha256_file(self.out) != self.want:
            problems.append("recovery gave a different image")
        problems += self.check_recovery(partial)
        problems += check_cache(self.cache)
        if problems:
            self.failures.append(f"round {self.stats['kills']} ({sig.name}): {problems}")
        else:
            self.stats["clean recoveries"] += 1

    def summary(self) -> str:
        s = self.stats
        extra = f", {s['resumed with Range']} resumed with Range" if "resumed with Range" in s \
            else ""
        startup = (f", {s['SIGINT during interpreter start-up']} of them during interpreter "
                   "start-up" if "SIGINT during interpreter start-up" in s else "")
        return (f"{self.name}: {s['kills']} kills ({s['mid-compile']} mid-compile, "
                f"{s['after the end']} after the end; {s['SIGINT']} SIGINT"
                f"{startup}): "
                f"{s['clean recoveries']} clean recoveries{extra}, {len(self.failures)} failures")


def local_round(work: Path) -> Round:
    rnd = random.Random(5)
    files = [Entry(f"d/f{i:03d}", data=rnd.randbytes(60_000) + bytes(60_000)) for i in range(80)]
    layout = work / "layout"
    write_oci_layout(layout, [[Entry("d", "dir"), *files[:40]], [*files[40:]]],
                     compression=["gzip", "zstd"])
    return Round("local", f"oci:{layout}:latest", [], work)


class RegistryRound(Round):
    def __init__(self, work: Path) -> None:
        from registry.servers import RegistryProcess, skopeo_copy
        from reliability.proxy import SlowProxy

        rnd = random.Random(11)
        layers = [[Entry("etc", "dir"), Entry("etc/os-release", data=b"ID=kill-loop\n")],
                  [Entry("data", "dir"), *(Entry(f"data/c{i:02d}", data=rnd.randbytes(128 << 10))
                                           for i in range(16))]]
        layout = work / "registry-layout"
        self.built = write_oci_layout(layout, layers, compression="gzip")
        (work / "storage").mkdir()
        self.registry = RegistryProcess(work / "registry", work / "storage")
        skopeo_copy(f"oci:{layout}:latest", f"docker://{self.registry.host}/kill:1")
        self.proxy = SlowProxy(self.registry.host)
        self.blob = f"/blobs/{self.built.layer_digests[1]}"
        super().__init__("registry", f"{self.proxy.host}/kill:1",
                         ["--plain-http", "--auth-file", str(work / "no-auth.json")], work)
        self.before_kill()
        t0 = time.monotonic()
        probe = work / "probe-cache"
        subprocess.run(compile_cmd(self.image, work / "probe.squashfs", probe, self.extra),
                       check=True, capture_output=True)
        self.duration = time.monotonic() - t0  # the slow download is most of a round

    def forget_downloads(self) -> None:
        for p in (self.cache / "blobs" / "sha256").glob("*"):
            p.unlink()

    def before_kill(self) -> None:
        self.proxy.clear_trickle()
        self.proxy.trickle(self.blob, chunk=32 << 10, delay=0.015)

    def after_kill(self, partial: int) -> None:
        self.proxy.clear_trickle()
        self.proxy.seen.clear()

    def check_recovery(self, partial: int) -> list[str]:
        if not partial:
            return []
        ranges = [s.headers.get("range") for s in self.proxy.requests(path=self.blob)]
        if ranges and ranges[0] and ranges[0].startswith("bytes="):
            self.stats["resumed with Range"] += 1
            return []
        return [f"a partial of {partial} bytes was not resumed (requests: {ranges})"]

    def close(self) -> None:
        self.proxy.close()
        self.registry.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=50, help="kills per mode (default 50)")
    ap.add_argument("--seconds", type=float, default=None, help="stop after this long instead")
    ap.add_argument("--mode", choices=("local", "registry", "both"), default="both")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rnd = random.Random(seed)
    modes = ["local", "registry"] if args.mode == "both" else [args.mode]
    if "registry" in modes and not (shutil.which("docker-registry") and shutil.which("skopeo")):
        print("kill_loop: registry mode needs docker-registry and skopeo", file=sys.stderr)
        return 2
    failed = False
    with tempfile.TemporaryDirectory(prefix="ocisquash-kill-loop-") as tmp:
        work = Path(tmp)
        rounds: list[Round] = []
        try:
            for mode in modes:
                (work / mode).mkdir()
                rounds.append(local_round(work / mode) if mode == "local"
                              else RegistryRound(work / mode))
            deadline = time.monotonic() + args.seconds if args.seconds else None
            i = 0
            while True:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if deadline is None and i >= args.count * len(rounds):
                    break
                r = rounds[i % len(rounds)]
                r.one(rnd)
                i += 1
        finally:
            for r in rounds:
                if isinstance(r, RegistryRound):
                    r.close()
        print(f"kill loop seed {seed}")
        for r in rounds:
            for f in r.failures:
                print(f"FAILED {r.name} {f}", file=sys.stderr)
            failed |= bool(r.failures)
            print(r.summary())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
