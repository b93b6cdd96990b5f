"""Time hostile layer patterns at two sizes: the cost per entry must not grow with n.

Run: ``python bench/bench_hostile.py [--entries 20000] [--factor 4] [--format erofs
[--compression none] | --format tar]``. Each pattern is built as layers in memory at
``n`` and ``factor × n`` entries and flattened into a squashfs (an EROFS image, a tar)
written to /dev/null-like scratch space; the script prints the time per entry at both
sizes and the larger image's size, and fails (exit 1) when the larger run costs more
than twice as much per entry, which is what a step that is linear in the entries seen
so far (a quadratic run) does. Tests check these layers' results; their time is bounded here.

The patterns are the ones issue 28 found slow or large: PAX global headers read
again for every entry, a directory replaced by a file in its own layer, hard links
to a name replaced later, a lower non-directory under an upper directory, hard links
whose target an upper layer removed, and a sparse file declaring 1 TiB of holes.
"""

from __future__ import annotations

import argparse
import gzip
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, cast

from ocisquash.digest import Digest
from ocisquash.erofs import ErofsCompression, ErofsOptions, ErofsWriter
from ocisquash.flatten import flatten
from ocisquash.model import OCI_LAYER_GZIP, Descriptor
from ocisquash.squashfs import SquashfsWriter
from ocisquash.tarout import TarSink


class MemoryLayer:
    """A gzip layer held in memory (the ``Layer`` protocol)."""

    def __init__(self, tar: bytes) -> None:
        self.blob = gzip.compress(tar, compresslevel=1)
        self.descriptor = Descriptor(OCI_LAYER_GZIP, Digest.of(self.blob), len(self.blob))
        self.diff_id = Digest.of(tar)

    def open(self) -> BinaryIO:
        return cast(BinaryIO, io.BytesIO(self.blob))


def tar(members: list[tarfile.TarInfo], *, pax: dict[str, str] | None = None,
        head: bytes = b"") -> bytes:
    buf = io.BytesIO()
    buf.write(head)
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers=pax or {}) as tf:
        for ti in members:
            tf.addfile(ti, io.BytesIO(b"x" * ti.size) if ti.isfile() else None)
    return buf.getvalue()


def ti(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0) -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type, t.linkname, t.size = kind, link, size if kind == tarfile.REGTYPE else 0
    return t


def global_comment(n: int) -> list[bytes]:
    # A 16 MiB global header before n entries (issue 28: 300 entries took 77 s).
    big = tarfile.TarInfo._create_pax_generic_header(  # type: ignore[attr-defined]
        {"comment": "c" * ((16 << 20) - 64)}, tarfile.XGLTYPE, "utf-8")
    return [tar([ti(f"f{i}", size=1) for i in range(n)], head=big)]


def global_xattrs(n: int) -> list[bytes]:
    # As many global xattr fields as the reader keeps, applied to every entry.
    fields = {f"SCHILY.xattr.user.g{i}": "v" * 300 for i in range(100)}
    return [tar([ti(f"f{i}", size=1) for i in range(n)], pax=fields)]


def dir_replaced_by_file(n: int) -> list[bytes]:
    members = []
    for i in range(n // 3):
        members += [ti(f"d{i}", tarfile.DIRTYPE), ti(f"d{i}/x", size=1), ti(f"d{i}", size=1)]
    return [tar(members)]


def links_replaced(n: int) -> list[bytes]:
    members = [ti("a", size=1)] + [ti(f"l{i}", tarfile.LNKTYPE, "a") for i in range(n // 2)]
    members += [ti(f"l{i}", size=1) for i in range(n // 2)]
    return [tar(members)]


def links_replaced_backwards(n: int) -> list[bytes]:
    members = [ti("a", size=1)] + [ti(f"l{i}", tarfile.LNKTYPE, "a") for i in range(n // 2)]
    members += [ti(f"l{i}", size=1) for i in reversed(range(n // 2))]
    return [tar(members)]


def file_under_upper_directory(n: int) -> list[bytes]:
    # The lower layer puts a file where the upper layer has a directory, between
    # entries elsewhere, again and again.
    lower = []
    for i in range(n // 2):
        lower += [ti(f"x{i}", size=1), ti("d", size=1)]
    return [tar(lower), tar([ti("d", tarfile.DIRTYPE), ti("d/top", size=1)])]


def deep_directories(n: int) -> list[bytes]:
    # Entries alternating between two directories 200 levels deep.
    deep = "/".join(["d"] * 200)
    return [tar([ti(f"{deep}/{'ab'[i % 2]}/f{i}", size=1) for i in range(n)])]


def created_then_deleted(n: int) -> list[bytes]:
    # An upper directory; the lower layer makes entries under it and then a file in
    # its place, again and again.
    lower = []
    for i in range(n // 2):
        lower += [ti(f"d/f{i}", size=1), ti("d", size=1)]
    return [tar(lower), tar([ti("d", tarfile.DIRTYPE), ti("d/top", size=1)])]


def hidden_link_targets(n: int) -> list[bytes]:
    # Links whose target an upper layer removes wait for a second pass; then the same
    # layer replaces them.
    lower = [ti("a", size=1)] + [ti(f"l{i}", tarfile.LNKTYPE, "a") for i in range(n // 2)]
    lower += [ti(f"l{i}", size=1) for i in range(n // 2)]
    return [tar(lower), tar([ti(".wh.a", size=0)])]


def sparse_terabyte(n: int) -> list[bytes]:
    with tempfile.TemporaryDirectory() as d:
        for i in range(max(n // 10000, 1)):
            with open(Path(d, f"big{i}"), "wb") as f:
                f.write(b"start")
                f.seek((1 << 40) - 3)
                f.write(b"end")
        return [subprocess.run(["tar", "-c", "-f", "-", "--sparse", "--format=pax", "-C", d, "."],
                               check=True, capture_output=True).stdout]


PATTERNS: dict[str, Callable[[int], list[bytes]]] = {
    "pax-global-16mib-comment": global_comment,
    "pax-global-xattrs": global_xattrs,
    "dir-replaced-by-file": dir_replaced_by_file,
    "hardlinks-replaced": links_replaced,
    "hardlinks-replaced-backwards": links_replaced_backwards,
    "file-under-upper-directory": file_under_upper_directory,
    "deep-directories": deep_directories,
    "created-then-deleted": created_then_deleted,
    "hidden-link-targets": hidden_link_targets,
    "sparse-1tib": sparse_terabyte,
}


def run(layers: list[bytes], make: Callable[[BinaryIO], SquashfsWriter | ErofsWriter | TarSink]) -> tuple[float, int]:
    """Seconds to flatten ``layers`` into a fresh image, and the image's size."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        writer = make(out)
        flatten([MemoryLayer(t) for t in layers], writer)
        writer.finish()
        return time.perf_counter() - start, out.seek(0, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=20000)
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--only", help="comma-separated pattern names")
    ap.add_argument("--format", choices=("squashfs", "erofs", "tar"), default="squashfs")
    ap.add_argument("--compression", choices=[c.value for c in ErofsCompression],
                    default="lz4hc", help="with --format erofs")
    args = ap.parse_args()
    make: Callable[[BinaryIO], SquashfsWriter | ErofsWriter | TarSink]
    if args.format == "erofs":
        options = ErofsOptions(compression=ErofsCompression(args.compression), mkfs_time=0)
        make = lambda out: ErofsWriter(out, options)  # noqa: E731
    elif args.format == "tar":
        make = TarSink
    else:
        make = SquashfsWriter
    names = args.only.split(",") if args.only else list(PATTERNS)
    failed = []
    print(f"{'pattern':30} {'n':>8} {'µs/entry':>9} {'n×' + str(args.factor):>9} {'µs/entry':>9}"
          f" {'MB':>8}")
    for name in names:
        small, large = args.entries, args.entries * args.factor
        t_small = run(PATTERNS[name](small), make)[0] / small * 1e6
        seconds, size = run(PATTERNS[name](large), make)
        t_large = seconds / large * 1e6
        flag = "" if t_large <= 2 * t_small + 5 else "  <- grows with n"
        if flag:
            failed.append(name)
        print(f"{name:30} {small:8} {t_small:9.1f} {large:9} {t_large:9.1f}"
              f" {size / 1e6:8.1f}{flag}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
