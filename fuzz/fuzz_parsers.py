#!/usr/bin/env python3
"""Long-running fuzzer of ocisquash's parsers of untrusted input, for a given time.

    python fuzz/fuzz_parsers.py --seconds 600 [--memory-mb 2048] [--seed N] [--crash-dir DIR]

Targets, taken in turn: image references and specs, manifests and indexes (JSON),
image configs (JSON), layer streams (tar in ustar/GNU/PAX dialects with whiteouts,
long names, xattrs, hard links; plain, gzip and zstd; flattened into a real
squashfs), and whole ``ocisquash compile`` runs of the CLI on mutated OCI layouts.
Inputs are seeds mutated at random (byte flips, splices, truncation, JSON values
replaced in the tree).

Every input must end in success or an ``OcisquashError`` (the CLI: exit status ≠ 0
and one ``ocisquash:`` line). Anything else is a crash: another exception, a hang
(more than ``--timeout`` seconds for one input), a ``MemoryError`` under the address
space limit (``RLIMIT_AS``, ``--memory-mb``), or a write outside the fuzzer's temporary
directory (an audit hook sees every ``open`` for writing, rename, mkdir, unlink… of the
process, and refuses those outside). Crashes are printed (and saved in ``--crash-dir`` if given);
the exit status is 1 if there was any. The last line is a summary: inputs per target
and crashes.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import resource
import signal
import sys
import tarfile
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from ocisquash import cli
from ocisquash.digest import Digest, VerifyingReader
from ocisquash.errors import OcisquashError
from ocisquash.flatten import flatten
from ocisquash.model import Descriptor, ImageConfig, parse_manifest_or_index
from ocisquash.reference import parse_image_spec, parse_reference
from ocisquash.squashfs import SquashfsWriter, WriterOptions

MEDIA = {"tar": "application/vnd.oci.image.layer.v1.tar",
         "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
         "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}
CAP = bytes.fromhex("0100000200200000000000000000000000000000")


class Hang(Exception):
    """One input took longer than the per-input timeout."""


# --- seeds ------------------------------------------------------------------------------

REFERENCES = ["alpine", "alpine:3.20", "docker.io/library/alpine:3.20",
              "127.0.0.1:5000/a/b:c", "ghcr.io/o/r@sha256:" + "a" * 64,
              "localhost/x:y@sha256:" + "b" * 64, "oci:/tmp/layout:tag", "oci-archive:f.tar",
              "docker-archive:f.tar:img:1", "docker://quay.io/x/y:z", "[::1]:5000/r:t"]


def _tar(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **kw: Any) -> None:
            ti = tarfile.TarInfo(name)
            ti.type = kind
            ti.size = len(data)
            ti.mtime = 1_700_000_000
            for k, v in kw.items():
                setattr(ti, k, v)
            tf.addfile(ti, io.BytesIO(data) if data else None)

        add("etc", tarfile.DIRTYPE, mode=0o755)
        long = "etc/" + "p" * 120 + "/" + "n" * 90  # ustar: prefix + name; GNU/PAX: long name
        add("etc/" + "p" * 120, tarfile.DIRTYPE, mode=0o700)
        add(long, data=b"long name\n" * 20)
        add("etc/hard", tarfile.LNKTYPE,
            linkname=long if fmt != tarfile.USTAR_FORMAT else "etc/sym")
        add("etc/sym", tarfile.SYMTYPE,
            linkname="/" + "t" * (120 if fmt != tarfile.USTAR_FORMAT else 90))
        add("etc/.wh.gone")
        add("opt/.wh..wh..opq")
        add("opt/kept", data=b"kept")
        add("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("bin/ping", data=b"\x7fELF" + bytes(3000), mode=0o4755,
            uid=3_000_000 if fmt != tarfile.USTAR_FORMAT else 1000,
            pax_headers={"SCHILY.xattr.security.capability": CAP.decode("latin-1")}
            if fmt == tarfile.PAX_FORMAT else {})
        add(".wh.", data=b"")
        add("a/b/../c", data=b"dotdot")
    return buf.getvalue()


TARS = [_tar(tarfile.USTAR_FORMAT), _tar(tarfile.GNU_FORMAT), _tar(tarfile.PAX_FORMAT)]


def _hostile_tar() -> bytes:
    """The patterns that were quadratic or unbounded (timed by bench/bench_hostile.py):
    PAX global headers before every few entries, hard links and directories replaced
    later in their own layer, a sparse map of many regions."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> None:
            ti = tarfile.TarInfo(name)
            ti.type, ti.size, ti.linkname = kind, len(data), link
            tf.addfile(ti, io.BytesIO(data) if data else None)

        add("a", data=b"x")
        for i in range(8):
            buf.write(tarfile.TarInfo._create_pax_generic_header(  # type: ignore[attr-defined]
                {f"SCHILY.xattr.user.g{i}": "v", "comment": "c" * 100}, tarfile.XGLTYPE,
                "utf-8"))
            tf.offset = buf.tell()
            add(f"l{i}", tarfile.LNKTYPE, link="a")
            add(f"d{i}", tarfile.DIRTYPE)
            add(f"d{i}/x", tarfile.LNKTYPE, link="a")
        for i in reversed(range(8)):
            add(f"l{i}", data=b"y")
            add(f"d{i}", data=b"f")
    return buf.getvalue()


LAYER_TARS = [*TARS, _hostile_tar()]


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _documents() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    config = {"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
              "config": {"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "x"], "Env": ["A=1"],
                         "Labels": {"a": "b"}, "ExposedPorts": {"80/tcp": {}},
                         "Volumes": {"/data": {}}, "WorkingDir": "/", "User": "0:0"},
              "rootfs": {"type": "layers", "diff_ids": [_sha(TARS[0])]}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": _sha(b"{}"), "size": 2},
                "layers": [{"mediaType": MEDIA["gzip"], "digest": _sha(b"x"), "size": 1,
                            "annotations": {"k": "v"}, "urls": ["http://x"]}]}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "digest": _sha(b"m"), "size": 1,
                            "platform": {"os": "linux", "architecture": "arm64", "variant": "v8",
                                         "os.features": ["f"], "os.version": "1"}}]}
    return manifest, config, index


# --- mutators ---------------------------------------------------------------------------

def mutate_bytes(rnd: random.Random, data: bytes, limit: int | None = None) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.randint(1, 8)):
        span = min(len(b), limit) if limit else len(b)
        op = rnd.random()
        if op < 0.45 and span:
            b[rnd.randrange(span)] = rnd.randrange(256)
        elif op < 0.6 and span:
            b[rnd.randrange(span)] ^= 1 << rnd.randrange(8)
        elif op < 0.7:
            pos = rnd.randrange(len(b) + 1)
            b[pos:pos] = rnd.choice([b"\0" * 512, b"\xff" * 8, b"99999999999", b"ustar\x00",
                                     b"path=", b"\n", rnd.randbytes(rnd.randint(1, 64))])
        elif op < 0.8 and len(b) > 1:
            i, j = sorted(rnd.sample(range(len(b)), 2))
            del b[i:j]
        elif op < 0.9 and b:
            i = rnd.randrange(len(b))
            b[i:i] = b[rnd.randrange(len(b)):][: rnd.randint(1, 600)]
        else:
            b = b[: rnd.randrange(len(b) + 1)]
    return bytes(b)


def _weird_value(rnd: random.Random) -> Any:
    return rnd.choice([None, True, 0, -1, 2**64, 1e308, "", "x" * 300, [], {}, [[[]]],
                       {"a": {"b": {}}}, "sha256:" + "0" * 64, "sha256:zz", "md5:00",
                       "application/vnd.oci.image.index.v1+json", "\udcff"[:0] + "\u0000",
                       [1, "a", None], rnd.randint(-10, 10)])


def mutate_json(rnd: random.Random, obj: Any) -> Any:
    """Replace, delete or add values at random places of a JSON tree."""
    obj = json.loads(json.dumps(obj))
    for _ in range(rnd.randint(1, 4)):
        node, parents = obj, []
        while isinstance(node, dict | list) and node and rnd.random() < 0.7:
            key = rnd.choice(list(node)) if isinstance(node, dict) else rnd.randrange(len(node))
            parents.append((node, key))
            node = node[key]
        if not parents:
            continue
        parent, key = parents[-1]
        r = rnd.random()
        if r < 0.6:
            parent[key] = _weird_value(rnd)
        elif r < 0.8 and isinstance(parent, dict):
            del parent[key]
        elif isinstance(parent, dict):
            parent[rnd.choice(["mediaType", "digest", "size", "manifests", "layers",
                               "config", "platform", "os.features", "schemaVersion"])] = \
                _weird_value(rnd)
        else:
            parent.append(_weird_value(rnd))
    return obj


# --- targets ----------------------------------------------------------------------------

class MemLayer:
    def __init__(self, blob: bytes, diff_id: Digest | None, media_type: str) -> None:
        self.blob = blob
        self._diff_id = diff_id
        self._desc = Descriptor(media_type, Digest.of(blob), len(blob))

    @property
    def descriptor(self) -> Descriptor:
        return self._desc

    @property
    def diff_id(self) -> Digest | None:
        return self._diff_id

    def open(self) -> BinaryIO:
        return VerifyingReader(io.BytesIO(self.blob), self._desc.digest,  # type: ignore[return-value]
                               self._desc.size, what="layer")


def _compress(tar: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(tar, mtime=0)
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(tar)
    return tar


class Fuzzer:
    def __init__(self, rnd: random.Random, work: Path) -> None:
        self.rnd = rnd
        self.work = work
        self.manifest, self.config, self.index = _documents()
        self.n = 0

    def references(self) -> bytes:
        text = mutate_bytes(self.rnd, self.rnd.choice(REFERENCES).encode()).decode(
            "utf-8", "surrogateescape")
        with contextlib.suppress(OcisquashError):
            parse_reference(text)
        with contextlib.suppress(OcisquashError):
            parse_image_spec(text)
        return text.encode("utf-8", "surrogateescape")

    def _json_input(self, seed: Any) -> bytes:
        r = self.rnd.random()
        if r < 0.6:
            return json.dumps(mutate_json(self.rnd, seed)).encode()
        if r < 0.9:
            return mutate_bytes(self.rnd, json.dumps(seed).encode())
        return b"[" * self.rnd.randint(900, 5000) + b"{}" + b"]" * self.rnd.randint(0, 5000)

    def manifests(self) -> bytes:
        raw = self._json_input(self.rnd.choice([self.manifest, self.index]))
        media = self.rnd.choice(["", "application/vnd.docker.distribution.manifest.list.v2+json",
                                 "application/vnd.docker.distribution.manifest.v1+prettyjws"])
        with contextlib.suppress(OcisquashError):
            parse_manifest_or_index(raw, media)
        return raw

    def configs(self) -> bytes:
        raw = self._json_input(self.config)
        with contextlib.suppress(OcisquashError):
            cfg = ImageConfig.parse(raw)
            str(cfg.platform)
        return raw

    def layers(self) -> bytes:
        tar = self.rnd.choice(LAYER_TARS)
        how = self.rnd.choice(["tar", "gzip", "zstd"])
        if self.rnd.random() < 0.7:  # damage the tar, keep the compression valid
            tar = mutate_bytes(self.rnd, tar, limit=4096)
            blob = _compress(tar, how)
        else:  # damage the compressed stream
            blob = mutate_bytes(self.rnd, _compress(tar, how))
        diff_id = Digest.of(tar) if self.rnd.random() < 0.9 else None
        layers = [MemLayer(blob, diff_id, MEDIA[how])]
        if self.rnd.random() < 0.3:  # under or over a clean layer: whiteouts cross layers
            clean = MemLayer(_compress(TARS[2], "gzip"), Digest.of(TARS[2]), MEDIA["gzip"])
            layers = [clean, *layers] if self.rnd.random() < 0.5 else [*layers, clean]
        out = self.work / "layer.squashfs"
        try:
            with SquashfsWriter(out, WriterOptions(workers=1)) as w:
                flatten(layers, w)
        except OcisquashError:
            pass
        finally:
            with contextlib.suppress(FileNotFoundError):
                out.unlink()
        return blob

    def cli(self) -> bytes:
        """A whole compile of a mutated layout, digests recomputed so damage reaches parsers."""
        tar = TARS[self.rnd.randrange(3)]
        layer = _compress(tar, "gzip")
        config = json.loads(json.dumps(self.config))
        config["rootfs"]["diff_ids"] = [_sha(tar)]
        config_raw = json.dumps(config).encode()
        target = self.rnd.choice(["manifest", "config", "layer", "index"])
        if target == "config":
            config_raw = self._json_input(config)
        if target == "layer":
            layer = mutate_bytes(self.rnd, layer)
        manifest = {**self.manifest,
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": _sha(config_raw), "size": len(config_raw)},
                    "layers": [{"mediaType": MEDIA["gzip"], "digest": _sha(layer),
                                "size": len(layer)}]}
        manifest_raw = (self._json_input(manifest) if target == "manifest"
                        else json.dumps(manifest).encode())
        index = {"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": _sha(manifest_raw), "size": len(manifest_raw),
            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
        index_raw = self._json_input(index) if target == "index" else json.dumps(index).encode()
        layout = self.work / "layout"
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)
        for data in (layer, config_raw, manifest_raw):
            (blobs / _sha(data).split(":")[1]).write_bytes(data)
        (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        (layout / "index.json").write_bytes(index_raw)
        out = self.work / "out.squashfs"
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = cli.main(["compile", f"oci:{layout}:latest", "-o", str(out), "--cache-dir",
                               str(self.work / "cache"), "--quiet", "--workers", "1"])
        lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("ocisquash:")]
        if status == 0:
            assert out.is_file(), "exit status 0 without an output"
        else:
            assert len(lines) == 1 and not out.exists(), f"status {status}: {err.getvalue()!r}"
        import shutil

        shutil.rmtree(layout)
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
        return index_raw + b"\n--\n" + manifest_raw + b"\n--\n" + config_raw


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
#: audit event → (how many leading arguments are paths, positions of its dir_fd arguments)
_PATH_EVENTS: dict[str, tuple[int, tuple[int, ...]]] = {
    "os.rename": (2, (2, 3)), "os.mkdir": (1, (2,)), "os.remove": (1, (1,)),
    "os.rmdir": (1, (1,)), "os.link": (2, (2, 3)), "os.symlink": (2, (2,)),
    "os.truncate": (1, ()), "os.chmod": (1, (2,)), "os.chown": (1, (3,)),
    "os.utime": (1, (3,)), "shutil.rmtree": (1, ()), "shutil.copyfile": (2, ()),
    "shutil.move": (2, ())}


class WriteGuard:
    """An audit hook that refuses (and records) any write of this process outside ``allowed``."""

    def __init__(self, allowed: list[Path]) -> None:
        self.allowed = [os.path.realpath(p) for p in allowed]
        self.violations: list[str] = []
        self.active = False

    def _inside(self, path: object) -> bool:
        if isinstance(path, int) or path is None:
            return True  # an fd, or a dir_fd-relative call: opened (and checked) before
        p = os.path.realpath(os.fsdecode(path))  # type: ignore[arg-type]
        return p.startswith("/dev/") or any(p == a or p.startswith(a + os.sep)
                                             for a in self.allowed)

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        paths: tuple[Any, ...] = ()
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writes:
                paths = (path,)
        elif event in _PATH_EVENTS:
            n, dir_fds = _PATH_EVENTS[event]
            if any(i < len(args) and isinstance(args[i], int) and args[i] >= 0
                   for i in dir_fds):
                return  # relative to a directory fd (shutil.rmtree): checked when opened
            paths = args[:n]
        for p in paths:
            if not self._inside(p):
                self.active = False  # no recursion while we report
                self.violations.append(f"{event} {p!r}")
                self.active = True
                raise PermissionError(f"fuzz guard: {event} {p!r} is outside the temp dir")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to run (default 60)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    ap.add_argument("--memory-mb", type=int, default=2048, help="address space limit (RLIMIT_AS)")
    ap.add_argument("--timeout", type=int, default=20, help="seconds one input may take")
    ap.add_argument("--crash-dir", type=Path, default=None, help="save crashing inputs here")
    ap.add_argument("--targets", default="references,manifests,configs,layers,cli")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rnd = random.Random(seed)
    limit = args.memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def on_alarm(signum: int, frame: object) -> None:
        raise Hang(f"one input took more than {args.timeout}s")

    signal.signal(signal.SIGALRM, on_alarm)
    sys.dont_write_bytecode = True  # lazily imported modules must not write .pyc files
    counts: Counter[str] = Counter()
    crashes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ocisquash-fuzz-") as tmp:
        work = Path(tmp)
        # Anything that would go to a default place goes to the temporary directory.
        os.environ["XDG_CACHE_HOME"] = str(work / "xdg-cache")
        os.environ["TMPDIR"] = str(work / "tmp")
        (work / "tmp").mkdir()
        tempfile.tempdir = None
        # The cache opens its files by name relative to a directory fd, and the "open" audit
        # event does not carry that fd: run in the temporary directory, so such a name
        # resolves inside it (the directory itself was opened under XDG_CACHE_HOME).
        os.chdir(work)
        guard = WriteGuard([work, *([args.crash_dir] if args.crash_dir else [])])
        sys.addaudithook(guard)
        fuzzer = Fuzzer(rnd, work)
        targets: dict[str, Callable[[], bytes]] = {
            name: getattr(fuzzer, name) for name in args.targets.split(",")}
        deadline = time.monotonic() + args.seconds
        i = 0
        while time.monotonic() < deadline:
            name = list(targets)[i % len(targets)]
            i += 1
            signal.alarm(args.timeout)
            guard.active = True
            try:
                targets[name]()
                counts[name] += 1
            except Exception as e:  # a crash: not OcisquashError
                counts[name] += 1
                report = f"{name}: {type(e).__name__}: {e}\n{traceback.format_exc()}"
                crashes.append(report)
                print(f"CRASH {report}", file=sys.stderr)
                if args.crash_dir:
                    args.crash_dir.mkdir(parents=True, exist_ok=True)
                    (args.crash_dir / f"crash-{seed}-{i}.txt").write_text(report)
            finally:
                guard.active = False
                signal.alarm(0)
        if guard.violations:
            crashes.append(f"writes outside the temporary directory: {guard.violations}")
    total = sum(counts.values())
    print(f"fuzz seed {seed}: {total} inputs in {args.seconds:.0f}s "
          f"({', '.join(f'{k} {v}' for k, v in counts.items())}); {len(crashes)} crash(es)")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
