"""Measure streaming gzip decoders on a generated ~100 MB layer tar.

Run: ``python bench/bench_gunzip.py [--mib 100] [--repeat 3]``. The tar mixes
compressible text-like files and incompressible random data, like a real layer;
it is gzipped once (stdlib, level 6) and then each candidate decoder reads it
back in 1 MiB chunks from a file object, as ``ocisquash.layers`` does. The gzip
stream is written as two members, so every decoder must handle multi-member
gzip. Prints MB/s of decompressed output per decoder, best of ``--repeat``.

Measured on the 2-core development VM (105 MB tar, 64.5 MB gzip, best of 2):

    stdlib gzip                 208 MB/s
    isal.igzip                  534 MB/s
    isal.igzip_threaded         553 MB/s   <- ocisquash.layers uses this
    zlib_ng.gzip_ng             510 MB/s
    zlib_ng.gzip_ng_threaded    371 MB/s

The threaded isal reader also decodes beside the tar parser, in its own thread.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import random
import tarfile
import time
from collections.abc import Callable
from typing import BinaryIO, Protocol

CHUNK = 1 << 20


def make_tar(mib: int) -> bytes:
    rnd = random.Random(1234)
    words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 10)))
             for _ in range(5000)]
    buf = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        i = 0
        while total < mib << 20:
            if i % 5 == 0:
                data = os.urandom(rnd.randint(1, 2 << 20))
            else:
                data = b" ".join(rnd.choices(words, k=rnd.randint(100, 200_000)))
            ti = tarfile.TarInfo(f"usr/share/f{i}")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
            total += len(data)
            i += 1
    return buf.getvalue()


class Reader(Protocol):
    """What a decoder must offer here."""

    def read(self, n: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


def read_all(f: Reader) -> int:
    n = 0
    while chunk := f.read(CHUNK):
        n += len(chunk)
    return n


def candidates() -> dict[str, Callable[[BinaryIO], Reader]]:
    out: dict[str, Callable[[BinaryIO], Reader]] = {
        "stdlib gzip": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    }
    try:
        from isal import igzip, igzip_threaded

        out["isal.igzip"] = lambda raw: igzip.IGzipFile(  # type: ignore[no-untyped-call]
            fileobj=raw, mode="rb")
        out["isal.igzip_threaded"] = lambda raw: igzip_threaded.open(  # type: ignore[no-untyped-call]
            raw, "rb", threads=1)
    except ImportError:
        pass
    try:
        from zlib_ng import gzip_ng, gzip_ng_threaded

        # zlib-ng is optional here: without it mypy sees Any, and the ignore is unused.
        out["zlib_ng.gzip_ng"] = lambda raw: gzip_ng.GzipNGFile(  # type: ignore[no-untyped-call, unused-ignore]
            fileobj=raw, mode="rb")
        out["zlib_ng.gzip_ng_threaded"] = lambda raw: gzip_ng_threaded.open(  # type: ignore[no-untyped-call, unused-ignore]
            raw, "rb", threads=1)
    except ImportError:
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tar = make_tar(args.mib)
    half = len(tar) // 2
    gz = gzip.compress(tar[:half], 6, mtime=0) + gzip.compress(tar[half:], 6, mtime=0)
    print(f"tar {len(tar) / 1e6:.1f} MB, gzip {len(gz) / 1e6:.1f} MB (2 members)")
    for name, opener in candidates().items():
        best = float("inf")
        for _ in range(args.repeat):
            raw = io.BytesIO(gz)
            t0 = time.perf_counter()
            f = opener(raw)
            try:
                n = read_all(f)
            finally:
                f.close()
            best = min(best, time.perf_counter() - t0)
            assert n == len(tar), (name, n, len(tar))
        print(f"{name:26s} {len(tar) / best / 1e6:8.1f} MB/s  ({best:.3f} s)")


if __name__ == "__main__":
    main()
