"""Time registry → squashfs for ocisquash and its peer pipelines (issue 5); write bench/RESULTS.md.

Run: ``python bench/bench_compile.py --images debian,bigfile --runs 3``
(``--images all`` for the five images of ``bench/images.py``; see bench/README.md).

Contenders, run in the same process, alternating within each round (the order is
reversed every other round), each cold from a local ``docker-registry``:

* ``P1``: ``skopeo copy`` → ``umoci unpack`` → ``mksquashfs ROOTFS OUT -noappend -quiet``
  (mksquashfs's defaults: gzip level 9, 128 KiB blocks, all cores);
* ``P3``: ``skopeo copy`` → ``umoci unpack`` → ``tar -C ROOTFS -cf - . | tar2sqfs -c gzip -j NPROC``
  (tar2sqfs defaults to xz, so gzip is asked for; its gzip level defaults to 9);
* ``ocisquash-equal``: ``ocisquash compile --compression gzip --level 9 --block-size 128K``
  (fragments and duplicate detection on, all cores), empty cache directory;
* ``ocisquash-default``: ``ocisquash compile`` with its defaults, empty cache directory;
* ``ocisquash-erofs``: ``ocisquash compile --format erofs --compression lz4hc`` (level 9,
  128 KiB physical clusters: EROFS's defaults), empty cache directory;
* ``ocisquash-erofs-fragments``: the same with ``--erofs-fragments`` (Linux 6.1+): small
  files and each file's tail compressed together in the packed inode;
* ``ocisquash-erofs-small``: the same with ``--erofs-fragments --erofs-metabox``, the
  EROFS features that make images of small files small (Linux 6.17+);
* ``ocisquash-lz4hc``: the squashfs compile at the same settings, ``ocisquash compile
  --compression lz4hc`` (lz4 in its high-compression mode, level 9, 128 KiB blocks),
  empty cache directory: the same command as the EROFS contenders but for the format
  (issue 23 compares the two formats' compile times);
* ``warm-registry``: the same image again by tag from the registry, cache filled by the
  default run; ``warm-layout``: the same from the image's OCI layout.

The versions images (``devel-v2``, ``devel-v3`` of ``bench/images.py``: devel with a few
files of its top or bottom layer changed) run other rounds (issue 24): for each setting
(the defaults, and gzip 9 / 128 KiB), the version compiled into a copy of a cache that
holds only devel (``after``; the copy, of hard links, is made untimed before each run)
and into an empty cache (``cold``), alternating; the two outputs of a round are compared
with ``cmp``.

Each step runs as a child process reaped with ``os.wait4``: CPU is user+sys of all
steps (including their own children), peak RSS is the largest ``ru_maxrss`` of any
step. The page cache is never dropped (the machine is shared; every contender reads
the same registry blobs from the same warm cache). The floor of an image is the wall
time to decompress its layer blobs once (``pigz -dc`` / ``zstd -dc`` to /dev/null)
plus the CPU time to compress the flattened tree's blocks with ocisquash's own
compressor (one thread, fragments and duplicate files modelled like the writer's)
divided by the number of cores. It is measured in every round, as the contender
``floor``, between the others (the tree to compress is unpacked once, untimed), so
that wall / floor compares numbers taken minutes apart rather than hours: this shared
machine's speed drifts by 15-20 % over an hour, CPU seconds included.

Before each contender the benchmark calls ``sync`` (untimed), so that no contender pays
for writing back the tree that the one before it unpacked. Trees that the peers unpacked
are not deleted between contenders: they are moved aside and deleted when the image's
rounds are over. A peer must not pay for the benchmark's own clean-up: on ext4 without a
journal (this machine's root filesystem) the inode allocator skips inodes freed in the
last 60 s (300 s while their inode table block is dirty), reading each one's inode table
entry, so right after the previous contender's 100k-file tree was deleted ``umoci
unpack`` of the many-files image took 65-114 s, against 33 s in a settled state. So,
when run as root, every image gets a fresh filesystem for everything the contenders
write (WORKDIR/tmp: the peers' copies, trees and outputs, ocisquash's caches and
outputs): a new ext4 with a journal, as on a user's disk, made with its inode tables
written up front (no lazy init running during the rounds), on a loop device with direct
I/O over a sparse file in WORKDIR (:func:`scratch_fs`). Without root, WORKDIR/tmp stays
on the workdir's filesystem and the rounds start after :func:`settle` (``sync``, then a
wait of SETTLE_SECONDS), which removes most but not all of the effect.

Each step also records the CPU time the hypervisor took from this machine while it ran
(the ``steal`` column of ``/proc/stat``, summed over the cores): on a shared host a
runnable core can wait for seconds. The floor's compress part is CPU time, which
steal does not inflate, while every contender's wall time includes it, so the report
gives wall / floor both as measured and with the stolen time (divided by the cores)
taken out of the contender's wall and out of the floor's decompress wall.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import platform
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import images

HERE = Path(__file__).resolve().parent
NPROC = os.cpu_count() or 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONTENDERS = ("P1", "P3", "ocisquash-equal", "ocisquash-default", "ocisquash-erofs",
              "ocisquash-erofs-fragments", "ocisquash-erofs-small",
              "ocisquash-lz4hc", "warm-registry", "warm-layout", "floor")
EQUAL = ["--compression", "gzip", "--level", "9", "--block-size", "128K"]
#: EROFS at its defaults, spelled out: lz4hc level 9, 128 KiB physical clusters.
EROFS = ["--format", "erofs", "--compression", "lz4hc"]
EROFS_FRAGMENTS = [*EROFS, "--erofs-fragments"]
EROFS_SMALL = [*EROFS_FRAGMENTS, "--erofs-metabox"]
#: The EROFS contenders of issue 23's section: contender -> what its rows add to the name.
EROFS_ROWS = {"ocisquash-erofs": "", "ocisquash-erofs-fragments": ", fragments",
              "ocisquash-erofs-small": ", small"}
#: The squashfs compile at EROFS's settings (lz4hc level 9, 128 KiB blocks).
LZ4HC = ["--compression", "lz4hc"]
#: Settings of the recompile rounds of the versions images (label: compile options).
RECOMPILE = {"defaults": [], "gzip 9, 128K": EQUAL}
#: GNU time, for each step's own peak RSS (see step()).
TIME = "/usr/bin/time"
#: How ocisquash is run: ``python -m ocisquash`` from a snapshot of one commit (see snapshot()).
OCISQUASH = [sys.executable, "-m", "ocisquash"]


def snapshot(workdir: Path, rev: str) -> str:
    """Export ``rev``'s src/ to WORKDIR/ocisquash/SHA and put it first on the import path.

    The checkout is shared with engineers who commit while the benchmark runs; running the
    editable install would mix versions between rounds. Returns the short commit id.
    """
    sha = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", rev], check=True,
                         capture_output=True, text=True).stdout.strip()
    dest = workdir / "ocisquash" / sha
    if not (dest / "src" / "ocisquash").is_dir():
        tmp = dest.with_name(sha + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", sha, "src"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-C", str(tmp), "-xf", "-"], input=archive, check=True)
        # Byte-compile as `pip install` does: without it, and with PYTHONDONTWRITEBYTECODE
        # set (as on the project's machines), every run would compile every module again.
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tmp / "src")], check=True)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    src = str(dest / "src")
    os.environ["PYTHONPATH"] = src + os.pathsep + os.environ.get("PYTHONPATH", "")
    sys.path.insert(0, src)
    return sha


def compile_defaults() -> tuple[str, int | None]:
    """The compressor and level that ``ocisquash compile`` uses without options."""
    import importlib

    for mod in ("ocisquash.compile", "ocisquash.commands.compile"):
        m = importlib.import_module(mod)
        if hasattr(m, "DEFAULT_COMPRESSION"):
            return str(m.DEFAULT_COMPRESSION), getattr(m, "DEFAULT_ZSTD_LEVEL", None)
    return "zstd", None


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Measure:
    """One contender's run: wall seconds, CPU seconds, peak RSS bytes, output size, step walls."""

    wall: float = 0.0
    cpu: float = 0.0
    rss: int = 0
    size: int = 0
    steps: dict[str, float] = field(default_factory=dict)
    error: str = ""
    info: dict[str, object] = field(default_factory=dict)
    #: CPU seconds the hypervisor took from all cores during the run (None: not recorded)
    stolen: float | None = None


def stolen_seconds() -> float:
    """CPU seconds taken by the hypervisor from this machine's cores since boot."""
    with open("/proc/stat") as f:
        fields = f.readline().split()  # cpu user nice system idle iowait irq softirq steal
    return int(fields[8]) / CLK_TCK if len(fields) > 8 else 0.0


class StepFailed(Exception):
    pass


def step(m: Measure, name: str, cmds: list[list[str]], *, stdout_path: Path | None = None,
         capture: bool = False) -> bytes:
    """Run ``cmds`` as a pipeline (stdout of each into the next); account its rusage in ``m``.

    Each command runs under GNU ``time -f %M``, which reports its peak RSS: the
    ``ru_maxrss`` that ``wait4`` gives for a child of this process also counts this
    process's own high-water mark, which the child's memory map inherits at fork.
    """
    t0 = time.perf_counter()
    s0 = stolen_seconds()
    procs: list[subprocess.Popen[bytes]] = []
    errfiles: list[typing.IO[bytes]] = []
    rssfiles: list[str] = []
    prev = None
    out_f = stdout_path.open("wb") if stdout_path else None
    for i, cmd in enumerate(cmds):
        last = i == len(cmds) - 1
        stdout = (subprocess.PIPE if (not last or capture) else
                  (out_f if out_f else subprocess.DEVNULL))
        err_f = tempfile.TemporaryFile()  # noqa: SIM115 - closed after wait4
        fd, rssfile = tempfile.mkstemp(prefix="bench-rss-")
        os.close(fd)
        rssfiles.append(rssfile)
        p = subprocess.Popen([TIME, "-f", "%M", "-o", rssfile, *cmd], stdin=prev,
                             stdout=stdout, stderr=err_f)
        errfiles.append(err_f)
        if prev is not None:
            prev.close()  # so the reader sees EOF / the writer SIGPIPE
        prev = p.stdout if not last else None
        procs.append(p)
    out = b""
    if capture and procs[-1].stdout is not None:
        out = procs[-1].stdout.read()
    errs = []
    for p, cmd, done_f, rssfile in zip(procs, cmds, errfiles, rssfiles, strict=True):
        _, status, ru = os.wait4(p.pid, 0)
        done_f.seek(0)
        err = done_f.read()
        done_f.close()
        p.returncode = os.waitstatus_to_exitcode(status)
        m.cpu += ru.ru_utime + ru.ru_stime  # time's own CPU is negligible
        lines = [x for x in Path(rssfile).read_text().split() if x.isdigit()]
        os.unlink(rssfile)
        if lines:
            m.rss = max(m.rss, int(lines[-1]) * 1024)
        if p.returncode != 0:
            errs.append(f"{Path(cmd[0]).name} exited {p.returncode}: "
                        f"{err.decode(errors='replace').strip().splitlines()[-1:] or ''}")
    if out_f:
        out_f.close()
    dt = time.perf_counter() - t0
    m.stolen = (m.stolen or 0.0) + stolen_seconds() - s0
    m.steps[name] = m.steps.get(name, 0.0) + dt
    m.wall += dt
    if errs:
        raise StepFailed(f"{name}: " + "; ".join(errs))
    return out


# --------------------------------------------------------------------------- clean-up

#: ext4's RECENTCY_MIN (fs/ext4/ialloc.c) plus a second: how long a freed inode is skipped
#: by the allocator of an ext4 without a journal once its inode table block is written.
SETTLE_SECONDS = 61


def discard(path: Path, workdir: Path) -> None:
    """Move ``path`` (if it exists) into WORKDIR/tmp/trash, to be deleted by :func:`settle`
    rather than now, when the next contender would pay for the freed inodes."""
    if not path.exists():
        return
    trash = workdir / "tmp" / "trash"
    trash.mkdir(parents=True, exist_ok=True)
    path.rename(trash / f"{len(os.listdir(trash))}-{path.name}")


def settle(workdir: Path, wait: bool = True) -> None:
    """Delete what :func:`discard` kept, write everything back and (``wait``) let the
    freed inodes age past ext4's recently-deleted window."""
    shutil.rmtree(workdir / "tmp" / "trash", ignore_errors=True)
    os.sync()
    if wait:
        log(f"settling: {SETTLE_SECONDS} s for the freed inodes to age (see the docstring)")
        time.sleep(SETTLE_SECONDS)


#: The size of an image's fresh filesystem (a sparse file: only what is written takes space).
SCRATCH_BYTES = 64 << 30


@contextlib.contextmanager
def scratch_fs(workdir: Path, name: str) -> typing.Iterator[bool]:
    """Mount a fresh ext4 at WORKDIR/tmp for one image (see the module docstring); yields
    whether it did. Needs root, ``mkfs.ext4`` and ``losetup``; otherwise yields False and
    WORKDIR/tmp stays a plain directory."""
    tmp = workdir / "tmp"
    settle(workdir, wait=False)
    if os.geteuid() != 0 or not (shutil.which("mkfs.ext4") and shutil.which("losetup")):
        yield False
        return
    image = workdir / f"scratch-{name}.ext4"
    image.unlink(missing_ok=True)
    with open(image, "wb") as f:
        f.truncate(SCRATCH_BYTES)
    loop = ""
    mounted = False
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                        str(image)], check=True)
        loop = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", str(image)],
                              check=True, capture_output=True, text=True).stdout.strip()
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        subprocess.run(["mount", loop, str(tmp)], check=True)
        mounted = True
        log(f"{name}: a fresh ext4 at {tmp} ({loop}, {SCRATCH_BYTES >> 30} GiB sparse)")
        yield True
    finally:
        # Failures here are logged, not raised: an exception from the rounds goes first.
        if mounted and subprocess.run(["umount", str(tmp)], check=False).returncode:
            log(f"{name}: could not unmount {tmp}; unmount it before the next run")
        if loop and subprocess.run(["losetup", "-d", loop], check=False).returncode:
            log(f"{name}: could not detach {loop}")
        image.unlink(missing_ok=True)


# --------------------------------------------------------------------------- contenders


def run_peer(kind: str, ref: str, tmp: Path) -> Measure:
    m = Measure()
    out = tmp / "out.squashfs"
    try:
        step(m, "copy", [["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                          f"docker://{ref}", f"oci:{tmp / 'oci'}:bench"]])
        step(m, "unpack", [["umoci", "unpack", "--image", f"{tmp / 'oci'}:bench",
                            str(tmp / "bundle")]])
        rootfs = tmp / "bundle" / "rootfs"
        if kind == "P1":
            step(m, "pack", [["mksquashfs", str(rootfs), str(out), "-noappend", "-quiet",
                              "-no-progress"]])
        else:
            step(m, "pack", [["tar", "-C", str(rootfs), "-cf", "-", "."],
                             ["tar2sqfs", "-c", "gzip", "-j", str(NPROC), "-q", "-f", str(out)]])
        m.size = out.stat().st_size
    except StepFailed as e:
        m.error = str(e)
    return m


#: warm compiles per round (the round keeps their median)
WARM_REPEATS = 5


def interpreter_start() -> float:
    """The median wall time of ``python -c pass`` over WARM_REPEATS runs: what any Python
    command pays before its first line (site packages included)."""
    walls = []
    for _ in range(WARM_REPEATS):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        walls.append(time.perf_counter() - t0)
    return med(walls)


def keep_output(tmp: Path, workdir: Path, name: str, contender: str) -> None:
    """Keep a contender's output (each round replaces the one before) for
    :func:`same_filesystem`."""
    out = tmp / "out.squashfs"
    if out.exists():
        kept = workdir / "tmp" / "outputs"
        kept.mkdir(parents=True, exist_ok=True)
        out.rename(kept / f"{name}-{contender}.squashfs")


def same_filesystem(name: str, workdir: Path) -> dict[str, str]:
    """Compare each other output of the image's last round with P1's by ``sqfsdiff -T``
    (the entries, file contents, owners, permissions and mtimes; not how they are packed):
    "same", or the first lines of the differences."""
    kept = workdir / "tmp" / "outputs"
    p1 = kept / f"{name}-P1.squashfs"
    found: dict[str, str] = {}
    if not p1.exists():
        return found
    for c in ("P3", "ocisquash-equal", "ocisquash-default"):
        other = kept / f"{name}-{c}.squashfs"
        if not other.exists():
            continue
        r = subprocess.run(["sqfsdiff", "-T", "-a", str(p1), "-b", str(other)],
                           capture_output=True, text=True)
        lines = (r.stdout + r.stderr).strip().splitlines()
        found[c] = ("same" if r.returncode == 0 and not lines else
                    f"differs (sqfsdiff exit {r.returncode}, {len(lines)} lines): "
                    + " / ".join(lines[:3]))
        log(f"  {c} against P1 (sqfsdiff -T): {found[c]}")
    return found


def run_ocisquash(image: str, tmp: Path, cache: Path, extra: list[str]) -> Measure:
    m = Measure()
    out = tmp / "out.squashfs"
    try:
        res = step(m, "compile", [[*OCISQUASH, "compile", image, "-o", str(out),
                                   "--force", "--cache-dir", str(cache), "--json", *extra]], capture=True)
        info = json.loads(res)
        m.info = {"cached": info.get("cached"), "compression":
                  info.get("stats", {}).get("squashfs", {}).get("compression")}
        m.size = out.stat().st_size
    except (StepFailed, ValueError) as e:
        m.error = str(e)
    return m


# --------------------------------------------------------------------------- recompiles


def bench_version(name: str, refs: dict[str, str], runs: int, workdir: Path,
                  loads: list[str]) -> dict[str, list[Measure]]:
    """The recompile rounds of a versions image (see the module docstring). Results are
    keyed ``cold SETTING`` and ``after SETTING``; an ``after`` run's ``info["identical"]``
    says whether its output was byte for byte the cold one of its round."""
    base = images.VERSIONS[name][0]
    results: dict[str, list[Measure]] = {}
    tmp_root = workdir / "tmp"
    for label, flags in RECOMPILE.items():
        slug = "".join(ch if ch.isalnum() else "-" for ch in label)
        cold, after = results.setdefault(f"cold {label}", []), results.setdefault(f"after {label}", [])
        v1_cache = tmp_root / f"cache-{base}-{slug}"
        v1_tmp = tmp_root / f"{base}-{slug}"
        discard(v1_cache, workdir)
        discard(v1_tmp, workdir)
        v1_tmp.mkdir(parents=True)
        v1 = run_ocisquash(f"docker://{refs[base]}", v1_tmp, v1_cache, flags)
        discard(v1_tmp, workdir)
        log(f"{name} {label}: {base} into a cache: {v1.wall:.2f} s {v1.error}")
        if v1.error:
            after.append(Measure(error=f"compiling {base}: {v1.error}"))
            continue
        for r in range(runs):
            order = ("cold", "after") if r % 2 == 0 else ("after", "cold")
            loads.append(f"{os.getloadavg()[0]:.1f}")
            outs: dict[str, Path] = {}
            for kind in order:
                tmp = tmp_root / f"{name}-{kind}"
                cache = tmp_root / f"cache-{name}-{kind}"
                discard(tmp, workdir)
                discard(cache, workdir)
                tmp.mkdir(parents=True)
                if kind == "after":
                    # Hard links: a cache entry records its image's inode (a write through
                    # a link that -o placed is detected by it), so a copied entry counts
                    # as damaged and is passed over. Entries are never written in place.
                    subprocess.run(["cp", "-al", str(v1_cache), str(cache)], check=True)
                os.sync()
                m = run_ocisquash(f"docker://{refs[name]}", tmp, cache, flags)
                (after if kind == "after" else cold).append(m)
                if not m.error:
                    outs[kind] = tmp_root / f"out-{name}-{kind}.squashfs"
                    discard(outs[kind], workdir)
                    (tmp / "out.squashfs").rename(outs[kind])
                discard(tmp, workdir)
                discard(cache, workdir)
            if len(outs) == 2:
                same = subprocess.run(["cmp", "-s", str(outs["cold"]), str(outs["after"])],
                                      check=False).returncode == 0
                after[-1].info["identical"] = same
            for out in outs.values():
                discard(out, workdir)
            log(f"{name} {label} round {r + 1}/{runs} ({', '.join(order)}): cold "
                f"{cold[-1].wall:.2f} s, after {base} {after[-1].wall:.2f} s, identical "
                f"{after[-1].info.get('identical')}; load {loads[-1]} {cold[-1].error} "
                f"{after[-1].error}")
        discard(v1_cache, workdir)
    return results


# --------------------------------------------------------------------------- the floor


def decompress_seconds(layout: Path) -> float:
    total = 0.0
    for blob, mt in images.layout_layers(layout):
        tool = ["zstd", "-dcq"] if mt.endswith("zstd") else ["pigz", "-dc"]
        t0 = time.perf_counter()
        with blob.open("rb") as f:
            subprocess.run([*tool], stdin=f, stdout=subprocess.DEVNULL, check=True)
        total += time.perf_counter() - t0
    return total


def iter_files(root: Path):  # type: ignore[no-untyped-def]
    seen: set[tuple[int, int]] = set()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            yield p


def _decoder(compression: str):  # type: ignore[no-untyped-def]
    if compression == "gzip":
        import zlib
        return zlib.decompress
    if compression == "zstd":
        import zstandard
        d = zstandard.ZstdDecompressor()
        return lambda b: d.decompressobj().decompress(b)
    if compression == "lz4":
        import lz4.block
        return lambda b: lz4.block.decompress(b, uncompressed_size=1 << 20)
    import lzma
    return lzma.decompress


def compress_pass(root: Path, compression: str, level: int | None, bs: int = 131072,
                  decode: bool = False) -> tuple[float, int, int, float]:
    """Compress the tree's data like the writer (blocks, tails in fragments, duplicate files
    once) with ocisquash's compressor in this thread: (CPU s, bytes in, bytes out, decode CPU s)."""
    from ocisquash.squashfs import Compression
    from ocisquash.squashfs.compressor import make_compressor

    comp = make_compressor(Compression(compression), level=level, block_size=bs)
    dec = _decoder(compression) if decode else None
    cpu = dcpu = 0.0
    n_in = n_out = 0
    seen: set[bytes] = set()
    frag = bytearray()

    def one(block: bytes) -> None:
        nonlocal cpu, dcpu, n_in, n_out
        t0 = time.thread_time()
        packed = comp.compress(block)
        cpu += time.thread_time() - t0
        n_in += len(block)
        n_out += min(len(packed), len(block))
        if dec is not None and len(packed) < len(block):
            t0 = time.thread_time()
            dec(packed)
            dcpu += time.thread_time() - t0

    for p in iter_files(root):
        with open(p, "rb") as f:
            data = f.read()
        if not data:
            continue
        h = hashlib.sha256(data).digest()
        if h in seen:
            continue
        seen.add(h)
        full = len(data) - len(data) % bs
        for off in range(0, full, bs):
            one(data[off:off + bs])
        frag += data[full:]
        while len(frag) >= bs:
            one(bytes(frag[:bs]))
            del frag[:bs]
    if frag:
        one(bytes(frag))
    return cpu, n_in, n_out, dcpu


def compress_cpu(root: Path, compression: str, level: int | None, bs: int = 131072) -> float:
    """Thread CPU seconds to compress the tree's data like the writer."""
    return compress_pass(root, compression, level, bs)[0]


#: Settings of the ``--sweep`` measurement: (compressor, level).
SWEEP = (("gzip", 6), ("gzip", 9), ("zstd", 1), ("zstd", 3), ("zstd", 6), ("zstd", 9),
         ("zstd", 12), ("zstd", 15), ("zstd", 19), ("lz4", None), ("xz", 6))


def unpacked_tree(ref: str, layout: Path, tmp: Path) -> Path:
    """The image's flattened tree on disk: umoci's, or ocisquash's tar for zstd layers."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    m = Measure()
    try:
        step(m, "copy", [["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                          f"docker://{ref}", f"oci:{tmp / 'oci'}:bench"]])
        step(m, "unpack", [["umoci", "unpack", "--image", f"{tmp / 'oci'}:bench",
                            str(tmp / "bundle")]])
        return tmp / "bundle" / "rootfs"
    except StepFailed:
        # umoci 0.4.7 cannot read zstd layers: take the tree from ocisquash's tar output
        root = tmp / "rootfs"
        root.mkdir()
        step(m, "tar", [[*OCISQUASH, "compile", f"oci:{layout}:latest", "--format", "tar",
                         "-o", "-", "--no-cache", "--cache-dir", str(tmp / "cache")],
                        ["tar", "-C", str(root), "-xf", "-"]])
        return root


def sweep(name: str, ref: str, layout: Path, workdir: Path,
          settings: tuple[tuple[str, int | None], ...] = SWEEP) -> None:
    """One-thread compress/decode CPU and output size per setting; to WORKDIR/sweep-NAME.json,
    replacing the rows of the same settings measured before and keeping the others."""
    from ocisquash.squashfs import FORMAT_VERSION

    tmp = workdir / "tmp" / "sweep"
    saved = workdir / f"sweep-{name}.json"
    try:
        root = unpacked_tree(ref, layout, tmp)
        rows = [r for r in (json.loads(saved.read_text()) if saved.exists() else [])
                if (r["compression"], r["level"]) not in settings]
        for comp, level in settings:
            cpu, n_in, n_out, dcpu = compress_pass(root, comp, level, decode=True)
            rows.append({"compression": comp, "level": level, "cpu": cpu, "in": n_in,
                         "out": n_out, "decode_cpu": dcpu, "format_version": FORMAT_VERSION,
                         "when": time.strftime("%Y-%m-%d", time.gmtime())})
            log(f"sweep {name} {comp} {level}: {cpu:.1f} s CPU, {n_out / 1e6:.1f} MB, "
                f"decode {dcpu:.2f} s")
        saved.write_text(json.dumps(rows, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def floor_for(name: str, ref: str, layout: Path, default: tuple[str, int | None],
              workdir: Path) -> dict[str, float]:
    """Decompress seconds, and compress CPU seconds for gzip-9 and the default; cached by
    image digest and the writer's FORMAT_VERSION (bumped when a compressor changes)."""
    from ocisquash.squashfs import FORMAT_VERSION

    cache_file = workdir / "floor.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    digest = hashlib.sha256((layout / "index.json").read_bytes()).hexdigest()[:16]
    key = f"{name}:{digest}:format-{FORMAT_VERSION}"
    default_compression = f"{default[0]}-{default[1]}"
    if key in cache and cache[key].get("default_compression") == default_compression:
        return dict(cache[key])
    log(f"floor for {name}: decompressing layers, compressing the flattened tree")
    res: dict[str, float] = {"decompress": decompress_seconds(layout)}
    tmp = workdir / "tmp" / "floor"
    try:
        root = unpacked_tree(ref, layout, tmp)
        res["compress_gzip9"] = compress_cpu(root, "gzip", 9)
        res["compress_default"] = compress_cpu(root, default[0], default[1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["default_compression"] = default_compression  # type: ignore[assignment]
    cache[key] = res
    cache_file.write_text(json.dumps(cache, indent=2))
    return res


# --------------------------------------------------------------------------- the rounds


def measure_floor(layout: Path, root: Path, default: tuple[str, int | None]) -> Measure:
    """One round's floor: decompress wall plus compress CPU (gzip-9 and the default)."""
    m = Measure()
    s0 = stolen_seconds()
    dec = decompress_seconds(layout)
    m.stolen = stolen_seconds() - s0
    g9 = compress_cpu(root, "gzip", 9)
    dflt = compress_cpu(root, default[0], default[1])
    m.wall = dec + dflt / NPROC
    m.info = {"decompress": dec, "compress_gzip9": g9, "compress_default": dflt,
              "default_compression": f"{default[0]}-{default[1]}"}
    return m


def bench_image(name: str, ref: str, layout: Path, runs: int, workdir: Path,
                contenders: list[str], loads: list[str],
                default: tuple[str, int | None], fresh: bool,
                same: dict[str, str]) -> dict[str, list[Measure]]:
    """The rounds of one image; ``same`` gets :func:`same_filesystem`'s comparisons."""
    results: dict[str, list[Measure]] = {c: [] for c in contenders}
    cold = [c for c in contenders if not c.startswith("warm")]
    floor_tmp = workdir / "tmp" / "floor-rounds"
    root = unpacked_tree(ref, layout, floor_tmp) if "floor" in contenders else None
    settle(workdir, wait=not fresh)  # a fresh filesystem has no freed inodes to age
    try:
        for r in range(runs):
            order = cold if r % 2 == 0 else cold[::-1]
            log(f"{name} round {r + 1}/{runs}: {', '.join(order)}; "
                f"load {os.getloadavg()[0]:.2f}")
            loads.append(f"{os.getloadavg()[0]:.1f}")
            _round(name, ref, layout, workdir, contenders, order, results, root, default)
        same.update(same_filesystem(name, workdir))
    finally:
        discard(floor_tmp, workdir)
        discard(workdir / "tmp" / "outputs", workdir)
    return results


def _round(name: str, ref: str, layout: Path, workdir: Path, contenders: list[str],
           order: list[str], results: dict[str, list[Measure]], root: Path | None,
           default: tuple[str, int | None]) -> None:
    """One round: each cold contender in ``order``, then the warm ones."""
    cache_default = None
    for c in order:
        # Untimed: the dirty pages of the contender before (a peer's unpacked tree) are
        # written back now, not during this one.
        os.sync()
        if c == "floor":
            assert root is not None
            m = measure_floor(layout, root, default)
            log(f"  floor: {m.wall:.2f} s ({json.dumps(m.info)})")
            results[c].append(m)
            continue
        tmp = workdir / "tmp" / f"{name}-{c}"
        discard(tmp, workdir)
        tmp.mkdir(parents=True)
        cache = workdir / "tmp" / f"cache-{name}-{c}"
        discard(cache, workdir)
        if c in ("P1", "P3"):
            m = run_peer(c, ref, tmp)
        elif c == "ocisquash-equal":
            m = run_ocisquash(f"docker://{ref}", tmp, cache, EQUAL)
        elif c == "ocisquash-erofs":
            m = run_ocisquash(f"docker://{ref}", tmp, cache, EROFS)
        elif c == "ocisquash-erofs-fragments":
            m = run_ocisquash(f"docker://{ref}", tmp, cache, EROFS_FRAGMENTS)
        elif c == "ocisquash-erofs-small":
            m = run_ocisquash(f"docker://{ref}", tmp, cache, EROFS_SMALL)
        elif c == "ocisquash-lz4hc":
            m = run_ocisquash(f"docker://{ref}", tmp, cache, LZ4HC)
        else:
            m = run_ocisquash(f"docker://{ref}", tmp, cache, [])
            cache_default = cache
        log(f"  {c}: {m.wall:.2f} s, cpu {m.cpu:.1f} s, rss {m.rss / 2**20:.0f} MiB, "
            f"{m.size / 1e6:.1f} MB {m.error}")
        results[c].append(m)
        if not m.error:
            keep_output(tmp, workdir, name, c)
        discard(tmp, workdir)
        if c != "ocisquash-default":
            discard(cache, workdir)
    if cache_default is not None:
        for c, image in (("warm-registry", f"docker://{ref}"),
                         ("warm-layout", f"oci:{layout}:latest")):
            if c not in contenders:
                continue
            tmp = workdir / "tmp" / f"{name}-{c}"
            discard(tmp, workdir)
            tmp.mkdir(parents=True)
            # A warm compile takes a few tenths of a second, in which this machine's noise
            # is as large as the figure: the round keeps the median of WARM_REPEATS runs,
            # with the interpreter's own start measured beside them.
            runs = sorted((run_ocisquash(image, tmp, cache_default, [])
                           for _ in range(WARM_REPEATS)), key=lambda x: (bool(x.error), x.wall))
            m = runs[len(runs) // 2] if not runs[-1].error else runs[-1]
            m.info["repeats"] = [round(x.wall, 3) for x in runs]
            m.info["interpreter"] = interpreter_start()
            log(f"  {c}: {m.wall:.3f} s (of {m.info['repeats']}; python -c pass "
                f"{m.info['interpreter']:.3f} s), cached={m.info.get('cached')} {m.error}")
            results[c].append(m)
            discard(tmp, workdir)
        discard(cache_default, workdir)


# --------------------------------------------------------------------------- the report


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def machine(sha: str) -> dict[str, str]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]

    def ver(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    return {
        "cpu": f"{NPROC} × {model}",
        "ram": f"{int(mem) / 2**20:.1f} GiB",
        "kernel": platform.release(),
        "python": f"{platform.python_version()} ({interpreter()})",
        "ocisquash": f"{ver([*OCISQUASH, '--version'])} (commit {sha})",
        "skopeo": ver(["skopeo", "--version"]),
        "umoci": ver(["umoci", "--version"]),
        "mksquashfs": ver(["mksquashfs", "-version"]),
        "tar2sqfs": ver(["tar2sqfs", "--version"]),
        "docker-registry": ver(["docker-registry", "--version"]),
    }


def interpreter() -> str:
    """Which Python runs ocisquash: its path and whether libpython is a shared library.
    The machine's pyenv Python (libpython shared) ran the many-files compile 25-30 %
    slower than Debian's python3.11 (libpython linked in), see bench/README.md."""
    exe = os.path.realpath(sys.executable)
    try:
        linked = subprocess.run(["ldd", exe], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return exe
    return f"{exe}, libpython {'shared' if 'libpython' in linked else 'in the executable'}"


#: where results are kept under the workdir (another directory for a shaped link)
RESULTS = "results"
#: the ``--link-rate`` of this run, if any
LINK_RATE = ""


@contextlib.contextmanager
def shaped_link(port: int, rate: str) -> typing.Iterator[None]:
    """Limit what the registry on 127.0.0.1:``port`` sends to ``rate`` (a ``tc`` rate such as
    400mbit), with an htb qdisc on ``lo``; removed again at the end. Needs root."""
    have = subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True,
                          check=True).stdout
    if "htb" in have or "netem" in have:
        raise SystemExit(f"lo already has a qdisc ({have.strip()}); not touching it")
    cmds = [
        ["tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10"],
        ["tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate", rate],
        ["tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb",
         "rate", "100gbit"],
        ["tc", "filter", "add", "dev", "lo", "protocol", "ip", "parent", "1:", "prio", "1", "u32",
         "match", "ip", "sport", str(port), "0xffff", "flowid", "1:1"],
    ]
    # The root qdisc is ours to remove only once we have added it (lo may have another).
    subprocess.run(cmds[0], check=True, capture_output=True)
    try:
        for c in cmds[1:]:
            subprocess.run(c, check=True, capture_output=True)
        log(f"registry port {port} shaped to {rate}")
        yield
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True)


def save(workdir: Path, name: str, sha: str, runs: int, started: str, loads: list[str],
         results: dict[str, list[Measure]], floor: dict[str, float], scratch: str,
         same: dict[str, str]) -> None:
    """Keep one image's results in WORKDIR/results/NAME.json, so separate runs make one report."""
    d = workdir / RESULTS
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.json").write_text(json.dumps({
        "sha": sha, "runs": runs, "started": started, "scratch": scratch, "same_as_p1": same,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "loads": loads,
        "floor": floor, "results": {c: [asdict(m) for m in ms] for c, ms in results.items()},
    }, indent=1))


def load_saved(workdir: Path, sha: str) -> list[tuple[str, dict[str, typing.Any]]]:
    """Saved results of commit ``sha``, in the order of images.IMAGES. A versions image's
    recompile rounds are taken from whichever commit ran them last (the report names it):
    they can be measured again on newer code without a full run."""
    out = []
    for name in images.IMAGES:
        f = workdir / RESULTS / f"{name}.json"
        if f.exists():
            data = json.loads(f.read_text())
            if data["sha"] == sha or name in images.VERSIONS:
                out.append((name, data))
    return out


def report(workdir: Path, sha: str, out: Path) -> None:
    saved = load_saved(workdir, sha)
    all_results = {name: {c: [Measure(**m) for m in ms] for c, ms in d["results"].items()}
                   for name, d in saved}
    # a separate measurement may replace recorded peak RSS values (see its note)
    for name, d in saved:
        for c, rss in d.get("rss_override", {}).items():
            for m in all_results[name].get(c, []):
                m.rss = rss
    floors = {name: d["floor"] for name, d in saved if d["floor"]}
    mach = machine(sha)
    lines = [
        "# ocisquash compile vs. peer pipelines (issue 5)",
        "",
        "(`ocisquash pack` against mksquashfs, issue 2: `bench/RESULTS-pack.md`.)",
        "",
        "By `python bench/bench_compile.py --images IMAGES --runs N` (see bench/README.md); "
        "medians over the runs; ratios are the median of the per-round ratios to P1 "
        "(same round). Cold = empty ocisquash cache, fresh skopeo/umoci directories; the "
        "page cache was not dropped for anyone. Each contender starts after a `sync` "
        "(untimed); the peers' trees are kept until the image's rounds end. Each image's "
        "rounds start after a `sync`, on a fresh ext4 of their own when run as root, and "
        "otherwise after a 61 s wait (ext4 without a journal skips recently freed inodes; "
        "the run list below says which, and bench/README.md why).",
        "",
    ] + ([
        f"**Over a shaped link** (`--link-rate {LINK_RATE}`): the registry's answers "
        f"were limited to {LINK_RATE} by a `tc` htb class on its loopback port, as from a "
        "registry across a network; every contender pulls over it. No floor is measured.",
        "",
    ] if LINK_RATE else []) + [
        "Machine: " + "; ".join(f"{k} {v}" for k, v in mach.items()),
        "",
        "Runs (UTC) and the 1-min load average at each round's start (the machine is shared; "
        "2 cores):",
        "",
    ] + [f"- {name}: {d['runs']} runs, {d['started']} → {d['finished']}; load "
         + ", ".join(str(x) for x in d["loads"])
         + (f"; contenders wrote to {d['scratch']}" if d.get("scratch") else "")
         + (f"; commit {d['sha']}" if d["sha"] != sha else "")
         for name, d in saved] + [
        "",
        "| image | contender | wall s (median) | ratio to P1 | CPU s (user+sys) | stolen CPU s "
        "| peak RSS MiB | output MB | steps (median s) | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    verdicts: list[str] = []
    for name, res in all_results.items():
        if name in images.VERSIONS:
            continue  # a table of their own below
        p1 = res.get("P1", [])
        fl = floors.get(name, {})
        for c, ms in res.items():
            if c == "floor":
                continue  # rows of their own below
            ok = [m for m in ms if not m.error]
            if not ok:
                err = ms[0].error if ms else "not run"
                lines.append(f"| {name} | {c} | fails | | | | | | | {err[:120]} |")
                continue
            ratios = [m.wall / p.wall for m, p in zip(ms, p1, strict=False)
                      if not m.error and not p.error and p.wall > 0]
            steps = {k: med([m.steps.get(k, 0.0) for m in ok]) for k in ok[0].steps}
            notes = []
            if c.startswith("warm"):
                notes.append("cached=" + ",".join(str(m.info.get("cached")) for m in ok))
                starts = [float(m.info["interpreter"]) for m in ok  # type: ignore[arg-type]
                          if "interpreter" in m.info]
                if starts:
                    notes.append(f"each round's median of {WARM_REPEATS}; `python -c pass` "
                                 f"{med(starts):.3f} s")
            if c == "ocisquash-default" and ok[0].info.get("compression"):
                notes.append(f"compression {ok[0].info['compression']}")
            lines.append(
                f"| {name} | {c} | {med([m.wall for m in ok]):.2f} | "
                f"{f'{med(ratios):.3f}' if ratios else '–'} | {med([m.cpu for m in ok]):.1f} | "
                f"{stolen_text(ok)} | {rss_text(max(m.rss for m in ok))} | {med([m.size for m in ok]) / 1e6:.1f} | "
                + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()) + " | "
                + "; ".join(notes) + " |"
            )
        rounds = [m.info for m in res.get("floor", []) if not m.error]
        if rounds:
            for setting, key in (("gzip-9", "compress_gzip9"),
                                 (f"default {rounds[0].get('default_compression')}",
                                  "compress_default")):
                dec = med([float(i["decompress"]) for i in rounds])  # type: ignore[arg-type]
                cpu = med([float(i[key]) for i in rounds])  # type: ignore[arg-type]
                lines.append(
                    f"| {name} | floor ({setting}) | "
                    f"{med(floor_walls(res, key)):.2f} | | | | | | decompress {dec:.2f}, "
                    f"compress CPU {cpu:.1f} / {NPROC} | measured in each round |")
        elif fl:
            for setting, key in (("gzip-9", "compress_gzip9"),
                                 (f"default {fl.get('default_compression')}", "compress_default")):
                f = fl["decompress"] + fl[key] / NPROC
                lines.append(f"| {name} | floor ({setting}) | {f:.2f} | | | | | | decompress "
                             f"{fl['decompress']:.2f}, compress CPU {fl[key]:.1f} / {NPROC} | |")
        verdicts += targets(name, res, fl)
    notes = [f"- {name}: {n}" for name, d in saved for n in d.get("notes", [])]
    if notes:
        lines += ["", "Notes:", "", *notes]
    same = [(name, d["same_as_p1"]) for name, d in saved if d.get("same_as_p1")]
    if same:
        lines += ["", "## The same filesystem as P1's", "",
                  "Each image's last-round outputs against P1's, by `sqfsdiff -T` (squashfs-tools-ng: "
                  "the entries, file contents, owners, permissions and mtimes; not how they are "
                  "packed):", ""]
        lines += [f"- {name}: " + "; ".join(f"{c} {v}" for c, v in found.items())
                  for name, found in same]
    lines += ["", "## Targets of issue 5", ""] + [f"- {v}" for v in verdicts]
    lines += erofs_section(all_results)
    lines += recompile_section(saved, all_results)
    lines += bounds_section()
    lines += sweep_section(workdir)
    out.write_text("\n".join(lines) + "\n")
    log(f"wrote {out}")


def paired(a: list[Measure], b: list[Measure]) -> list[tuple[Measure, Measure]]:
    """The rounds in which both contenders ran without error, as (a, b) pairs."""
    return [(x, y) for x, y in zip(a, b, strict=False) if not x.error and not y.error]


def erofs_section(all_results: dict[str, dict[str, list[Measure]]]) -> list[str]:
    """EROFS against squashfs at the same settings (issue 23): time, CPU, memory, size."""
    rows = []
    verdicts = []
    for (name, res), erofs in itertools.product(all_results.items(), EROFS_ROWS):
        if erofs not in res:
            continue
        pairs = paired(res.get(erofs, []), res.get("ocisquash-lz4hc", []))
        label = name + EROFS_ROWS[erofs]
        if not pairs:
            for c in (erofs, "ocisquash-lz4hc"):
                bad = [m.error for m in res.get(c, []) if m.error]
                if bad:
                    rows.append(f"| {label} | {c} fails: {bad[0][:100]} | | | | | | |")
            continue
        ratios = [e.wall / q.wall for e, q in pairs]
        cpu_e, cpu_q = med([e.cpu for e, _ in pairs]), med([q.cpu for _, q in pairs])
        rss_e, rss_q = max(e.rss for e, _ in pairs), max(q.rss for _, q in pairs)
        size_e, size_q = med([e.size for e, _ in pairs]), med([q.size for _, q in pairs])
        rows.append(
            f"| {label} | {med([e.wall for e, _ in pairs]):.2f} / {med([q.wall for _, q in pairs]):.2f} "
            f"| {med(ratios):.3f} ({', '.join(f'{r:.2f}' for r in ratios)}) "
            f"| {cpu_e:.1f} / {cpu_q:.1f} ({cpu_e / cpu_q:.2f}) | {rss_text(rss_e)} / {rss_text(rss_q)} "
            f"| {size_e / 1e6:.1f} / {size_q / 1e6:.1f} ({size_e / size_q:.3f}) |")
        verdicts.append(f"{label}: EROFS time / squashfs time {med(ratios):.3f} "
                        f"(≤ 1: {'met' if med(ratios) <= 1 else 'NOT met'}); EROFS peak RSS "
                        f"{rss_e / 1e6:.0f} MB (< 200 MB: {'met' if rss_e < 200e6 else 'NOT met'})")
    if not rows:
        return []
    return [
        "", "## EROFS against squashfs at the same settings (issue 23)", "",
        "`ocisquash compile --format erofs --compression lz4hc` (level 9, 128 KiB physical "
        "clusters) against the squashfs compile at lz4hc level 9, 128 KiB blocks (`ocisquash "
        "compile --compression lz4hc`), both cold from the registry into an empty cache, in the same rounds as the table above. Ratio: EROFS / squashfs "
        "per round, then the median (each round's in brackets). Rows marked *fragments* add "
        "`--erofs-fragments` (Linux 6.1+), rows marked *small* "
        "`--erofs-fragments --erofs-metabox` (Linux 6.17+).", "",
        "| image | wall s, EROFS / squashfs (medians) | time ratio | CPU s, EROFS / squashfs "
        "| peak RSS MiB, EROFS / squashfs | output MB, EROFS / squashfs (ratio) |",
        "|---|---:|---:|---:|---:|---:|",
        *rows, "", *[f"- {v}" for v in verdicts],
    ]


#: Issue 24's bounds on after / cold: (versions image, setting) → bound.
RECOMPILE_TARGETS = {("devel-v2", "defaults"): 0.25, ("devel-v2", "gzip 9, 128K"): 0.15,
                     ("devel-v3", "defaults"): 1.05, ("devel-v3", "gzip 9, 128K"): 1.05}


def recompile_section(saved: list[tuple[str, dict[str, typing.Any]]],
                      all_results: dict[str, dict[str, list[Measure]]]) -> list[str]:
    """The recompile rounds of the versions images (issue 24)."""
    rows = []
    for name, data in saved:
        if name not in images.VERSIONS:
            continue
        which = images.VERSIONS[name][1]
        res = all_results[name]
        change = "bottom" if which == 0 else "top"
        for label in RECOMPILE:
            cold, after = res.get(f"cold {label}", []), res.get(f"after {label}", [])
            pairs = paired(after, cold)
            if not pairs:
                err = next((m.error for m in after + cold if m.error), "not run")
                rows.append(f"| {name} ({change} layer) | {label} | fails | | | | | | {err[:100]} |")
                continue
            ratios = [a.wall / c.wall for a, c in pairs]
            same = [a.info.get("identical") for a, _ in pairs]
            bound = RECOMPILE_TARGETS.get((name, label))
            verdict = (f"≤ {bound}: {'met' if med(ratios) <= bound else 'NOT met'}"
                       if bound is not None else "")
            rows.append(
                f"| {name} ({change} layer) | {label} | {med([c.wall for _, c in pairs]):.2f} "
                f"| {med([a.wall for a, _ in pairs]):.2f} | **{med(ratios):.3f}** "
                f"({', '.join(f'{r:.2f}' for r in ratios)}) "
                f"| {med([c.cpu for _, c in pairs]):.1f} / {med([a.cpu for a, _ in pairs]):.1f} "
                f"| {rss_text(max(c.rss for _, c in pairs))} / {rss_text(max(a.rss for a, _ in pairs))} "
                f"| {'yes' if all(same) else 'NO (' + ', '.join(str(x) for x in same) + ')'} "
                f"| {verdict}; commit {data['sha']}, load {', '.join(data['loads'])} |")
    if not rows:
        return []
    return [
        "", "## Recompile after the last version (issue 24)", "",
        "Each versions image compiled from the registry into a copy of a cache that holds "
        "only `devel` (after v1) and into an empty cache (cold), alternating within each "
        "round (the order reversed every other round); ratio: after / cold per round, then "
        "the median (each round's in brackets). Identical: `cmp` of the two outputs of every "
        "round. `devel-v2` changes 5 files of devel's top layer, `devel-v3` 5 files of its "
        "bottom layer (`bench/images.py`).", "",
        "| image (changed layer) | setting | cold s | after v1 s | ratio | CPU s, cold / after "
        "| peak RSS MiB, cold / after | identical | target; measured at |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
        *rows,
    ]


def bounds_section() -> list[str]:
    """README.md's "What bounds each image", so that the results carry it (the text is
    kept in one place, the README, and updated there with the figures)."""
    text = (HERE / "README.md").read_text()
    start = text.find("\n## What bounds each image\n")
    if start < 0:
        return []
    end = text.find("\n## ", start + 1)
    return ["", *text[start + 1:end if end > 0 else None].strip().splitlines()]


def stolen_text(ms: list[Measure]) -> str:
    """The median CPU time the hypervisor took during the runs, if they recorded it."""
    known = [m.stolen for m in ms if m.stolen is not None]
    return f"{med(known):.1f}" if known else "–"


def rss_text(rss: int) -> str:
    return f"{rss / 2**20:.0f}" if rss > 0 else "n/a"


def sweep_section(workdir: Path) -> list[str]:
    files = sorted(workdir.glob("sweep-*.json"))
    if not files:
        return []
    lines = [
        "", "## Compressor settings (`bench_compile.py --sweep`)", "",
        "One thread, ocisquash's compressor, 128 KiB blocks, tails packed, duplicate files "
        "once, over the image's flattened tree. MB/s are of uncompressed data; decode is "
        "the CPU to decompress every compressed block once (what a mount pays). Writer "
        "format 1 compressed gzip with zlib-ng, format 2 with libdeflate; format 3 codes each "
        "zstd block in 32 KiB parts, each with its own tables.", "",
        "| image | setting | compress CPU s | compress MB/s | output MB | ratio | decode CPU s "
        "| decode MB/s | writer format, measured |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for f in files:
        name = f.stem.removeprefix("sweep-")
        rows = sorted(json.loads(f.read_text()),
                      key=lambda r: (r["compression"], r["level"] if r["level"] is not None else -1))
        for r in rows:
            setting = f"{r['compression']} {r['level'] if r['level'] is not None else 'default'}"
            lines.append(
                f"| {name} | {setting} | {r['cpu']:.1f} | {r['in'] / 1e6 / max(r['cpu'], 1e-9):.0f} "
                f"| {r['out'] / 1e6:.1f} | {r['out'] / r['in']:.3f} | {r['decode_cpu']:.2f} "
                f"| {r['in'] / 1e6 / max(r['decode_cpu'], 1e-9):.0f} "
                f"| {r.get('format_version', '1')}, {r.get('when', '2026-11-27')} |")
    return lines


def floor_walls(res: dict[str, list[Measure]], key: str) -> list[float]:
    """Each round's floor for one setting: decompress wall + compress CPU / cores."""
    return [float(m.info["decompress"]) + float(m.info[key]) / NPROC  # type: ignore[arg-type]
            for m in res.get("floor", []) if not m.error]


def targets(name: str, res: dict[str, list[Measure]], fl: dict[str, float]) -> list[str]:
    v = []

    def ratio(c: str) -> float:
        return med([m.wall / p.wall for m, p in zip(res.get(c, []), res.get("P1", []), strict=False)
                    if not m.error and not p.error])

    def yes(ok: bool) -> str:
        return "met" if ok else "NOT met"

    def size(c: str) -> float:
        return med([m.size for m in res.get(c, []) if not m.error])

    p1_ok = any(not m.error for m in res.get("P1", []))
    if res.get("P1") and not p1_ok:
        v.append(f"{name}: P1 failed in every round ({res['P1'][0].error[:90]}…), so no ratios")
    if p1_ok and res.get("ocisquash-equal"):
        r, s = ratio("ocisquash-equal"), size("ocisquash-equal") / size("P1")
        v.append(f"{name}: equal settings ratio {r:.3f} (≤ 0.5: {yes(r <= 0.5)}), "
                 f"size {s:.3f}× mksquashfs (≤ 1.02: {yes(s <= 1.02)})")
    if p1_ok and res.get("ocisquash-default"):
        r, s = ratio("ocisquash-default"), size("ocisquash-default") / size("P1")
        v.append(f"{name}: defaults ratio {r:.3f} (≤ 0.15: {yes(r <= 0.15)}), "
                 f"size {s:.3f}× P1 (≤ 1: {yes(s <= 1.0)})")
    for c in ("warm-registry", "warm-layout"):
        ok = [m.wall for m in res.get(c, []) if not m.error]
        if ok:
            v.append(f"{name}: {c} {med(ok):.3f} s (≤ 0.3 s: {yes(med(ok) <= 0.3)})")
    # Issue 5's compiles only: the EROFS contenders and the squashfs compile they are
    # timed against (lz4hc) have their own lines in issue 23's section.
    rss = [m.rss for c in ("ocisquash-equal", "ocisquash-default") for m in res.get(c, [])
           if not m.error and m.rss > 0]
    if rss:
        v.append(f"{name}: ocisquash peak RSS {max(rss) / 1e6:.0f} MB (≤ 200 MB: "
                 f"{yes(max(rss) <= 200e6)})")
    if res.get("floor"):
        for c, key in (("ocisquash-equal", "compress_gzip9"), ("ocisquash-default", "compress_default")):
            floors = [fm for fm in res["floor"] if not fm.error]  # as floor_walls() pairs them
            triples = [(m, f, fm) for m, f, fm in zip(res.get(c, []), floor_walls(res, key),
                                                      floors, strict=False) if not m.error]
            pairs = [(m, f) for m, f, _ in triples]
            if pairs:
                r = med([m.wall / f for m, f in pairs])
                rounds = [m.info for m in res["floor"] if not m.error]
                fcpu = med([float(i["decompress"]) + float(i[key])  # type: ignore[arg-type]
                            for i in rounds])
                cpu = med([m.cpu for m, _ in pairs])
                unstolen = [(m.wall - m.stolen / NPROC) / (f - (fm.stolen or 0.0) / NPROC)
                            for m, f, fm in triples if m.stolen is not None]
                v.append(f"{name}: {c} wall / floor = {r:.2f}, the median of the rounds' "
                         f"ratios (" + ", ".join(f"{m.wall / f:.2f}" for m, f in pairs)
                         + f"; {floor_target(name, r)})"
                         + (f"; with the CPU time the hypervisor took (/ {NPROC}) out of both "
                            f"walls: {med(unstolen):.2f} (" + ", ".join(f"{x:.2f}" for x in unstolen)
                            + ")" if unstolen else "")
                         + f"; CPU / floor CPU (decompress + compress) = {cpu:.1f} / {fcpu:.1f} "
                         f"= {cpu / fcpu:.2f}")
    elif fl:
        for c, key in (("ocisquash-equal", "compress_gzip9"), ("ocisquash-default", "compress_default")):
            ok = [m.wall for m in res.get(c, []) if not m.error]
            if ok:
                f = fl["decompress"] + fl[key] / NPROC
                cpu = med([m.cpu for m in res.get(c, []) if not m.error])
                fcpu = fl["decompress"] + fl[key]
                v.append(f"{name}: {c} wall / floor = {med(ok) / f:.2f} ("
                         f"{floor_target(name, med(ok) / f)}); CPU / floor CPU (decompress "
                         f"+ compress, load-independent) = {cpu:.1f} / {fcpu:.1f} = {cpu / fcpu:.2f}")
    return v


def floor_target(name: str, ratio: float) -> str:
    """The wall / floor target's verdict: issue 5 sets it for devel and bigfile only."""
    if name in ("devel", "bigfile"):
        return f"≤ 1.15 on devel and bigfile: {'met' if ratio <= 1.15 else 'NOT met'}"
    return "the ≤ 1.15 target is for devel and bigfile only"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", default="debian,bigfile",
                    help=f"comma-separated subset of {','.join(images.IMAGES)} (or 'all')")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--contenders", default=",".join(CONTENDERS),
                    help=f"comma-separated subset of {','.join(CONTENDERS)}")
    ap.add_argument("--workdir", type=Path, default=images.DEFAULT_WORKDIR)
    ap.add_argument("--no-floor", action="store_true", help="skip the floor measurement")
    ap.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--results", default="results", metavar="DIR",
                    help="keep results in WORKDIR/DIR (default results), e.g. for a run of a "
                         "few contenders that should not replace a full run's")
    ap.add_argument("--rev", default="HEAD", help="the ocisquash commit to benchmark (default HEAD)")
    ap.add_argument("--report-only", action="store_true",
                    help="only write the report from the saved results of --rev")
    ap.add_argument("--refloor", action="store_true",
                    help="measure the floors of --rev's saved results again (e.g. after a "
                         "compressor change) and rewrite the report")
    ap.add_argument("--sweep-settings", metavar="C:L,...",
                    help="settings for --sweep, e.g. gzip:9,zstd:6 (default: a fixed list)")
    ap.add_argument("--link-rate", metavar="RATE",
                    help="limit the registry's answers to RATE (a tc rate, e.g. 400mbit) as "
                         "over a network; needs root and tc; results go to their own "
                         "report (default bench/RESULTS-link.md) and no floor is measured")
    ap.add_argument("--sweep", action="store_true",
                    help="instead of the rounds: measure compressor settings on each image's tree")
    args = ap.parse_args()
    names = list(images.IMAGES) if args.images == "all" else args.images.split(",")
    global RESULTS, LINK_RATE
    RESULTS = args.results
    if args.link_rate:
        LINK_RATE = args.link_rate
        if args.results == "results":  # a full run's results stay apart from the link's
            RESULTS = f"results-link-{args.link_rate}"
        args.no_floor = True
        if args.output == HERE / "RESULTS.md":
            args.output = HERE / "RESULTS-link.md"
        contenders = [c for c in args.contenders.split(",") if c != "floor"]
        args.contenders = ",".join(contenders)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the registry is stopped
    sha = snapshot(args.workdir, args.rev)
    defaults = compile_defaults()
    log(f"ocisquash {sha} from {os.environ['PYTHONPATH'].split(os.pathsep)[0]}; "
        f"compile's default: {defaults[0]} level {defaults[1]}")
    contenders = args.contenders.split(",")
    if args.report_only:
        report(args.workdir, sha, args.output)
        return 0
    served = names + [b for b in dict.fromkeys(images.VERSIONS[n][0] for n in names
                                               if n in images.VERSIONS) if b not in names]
    with images.serving(served, args.workdir) as (reg, refs), \
            (shaped_link(reg.port, args.link_rate) if args.link_rate
             else contextlib.nullcontext()):
        if args.sweep:
            for name in names:
                sweep(name, refs[name], args.workdir / "layouts" / name, args.workdir,
                      tuple((c, int(lv) if lv else None) for c, _, lv in
                            (x.partition(":") for x in args.sweep_settings.split(",")))
                      if args.sweep_settings else SWEEP)
            return 0
        if args.refloor:
            for name, data in load_saved(args.workdir, sha):
                if name in names:
                    load = os.getloadavg()[0]
                    data["floor"] = floor_for(name, refs[name], args.workdir / "layouts" / name,
                                              defaults, args.workdir)
                    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                    data.setdefault("notes", []).append(
                        f"floor measured again after the rounds ({when}, load {load:.1f}) with "
                        "this commit's compressors (`--refloor`)")
                    log(f"floor {name}: {data['floor']}")
                    path = args.workdir / RESULTS / f"{name}.json"
                    path.write_text(json.dumps(data, indent=1))
            report(args.workdir, sha, args.output)
            return 0
        for name in names:
            layout = args.workdir / "layouts" / name
            floor: dict[str, float] = {}
            if name in images.VERSIONS:
                with scratch_fs(args.workdir, name) as fresh:
                    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                    version_loads: list[str] = []
                    results = bench_version(name, refs, args.runs, args.workdir, version_loads)
                    settle(args.workdir, wait=False)
                save(args.workdir, name, sha, args.runs, started, version_loads, results, {},
                     "a fresh ext4 (journal, direct-I/O loop device) for this image"
                     if fresh else "WORKDIR/tmp on the workdir's filesystem", {})
                report(args.workdir, sha, args.output)
                continue
            with scratch_fs(args.workdir, name) as fresh:
                if not args.no_floor:
                    floor = floor_for(name, refs[name], layout, defaults, args.workdir)
                    log(f"floor {name}: {floor}")
                started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                loads: list[str] = []
                same: dict[str, str] = {}
                results = bench_image(name, refs[name], layout, args.runs, args.workdir,
                                      contenders, loads, defaults, fresh, same)
            save(args.workdir, name, sha, args.runs, started, loads, results, floor,
                 "a fresh ext4 (journal, direct-I/O loop device) for this image"
                 if fresh else f"WORKDIR/tmp on the workdir's filesystem, {SETTLE_SECONDS} s settle",
                 same)
            # write after every image, so a long run leaves its results behind
            report(args.workdir, sha, args.output)
        settle(args.workdir, wait=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
