"""Build the benchmark images of issue 5 as OCI layouts and serve them from a local registry.

Run: ``python bench/images.py --images debian,bigfile [--workdir /work/benchdata] [--push]``.

Images (each one OCI layout under ``WORKDIR/layouts/NAME``, tag ``latest``):

* ``debian``: a Debian bookworm minbase root filesystem made by ``mmdebstrap``, one gzip layer;
* ``debian-zstd``: the same root filesystem as one zstd layer;
* ``devel``: four gzip layers made with ``buildah`` (overlay storage driver): the
  Debian base; build tools, Python and Boost headers (a real diff of a bigger
  ``mmdebstrap`` tree); a layer that deletes the docs (whiteouts); a layer that
  replaces directories (opaque markers ``.wh..wh..opq``);
* ``manyfiles``: about 100,000 small files in one gzip layer (generated, deterministic);
* ``millionfiles``: 1,000,000 files of 16 to 512 bytes in 10,000 directories, one gzip
  layer (generated, deterministic): the scale at which per-entry memory shows;
* ``bigfile``: one 1 GiB file of half-compressible data in one gzip layer (deterministic);
* ``devel-v2``, ``devel-v3``: the next versions of ``devel`` (issue 24): the same layers
  (the same blobs) except that a few files of the top layer (v2) or of the bottom layer
  (v3) have other bytes, chosen and changed by a seeded generator.

Only the Debian package archive is used from the network (by ``mmdebstrap``). Built
layouts are kept: a layout with its ``.bench-done`` marker is not built again.

``Registry`` starts ``/usr/bin/docker-registry`` on 127.0.0.1 with filesystem storage
under ``WORKDIR/registry`` and pushes layouts to it with ``skopeo copy``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import typing
import urllib.request
from collections.abc import Iterator
from pathlib import Path

DEFAULT_WORKDIR = Path(os.environ.get("OCISQUASH_BENCH_DIR", "/work/benchdata"))
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
#: Fixed timestamp for generated files and the image configs (2025-05-20).
EPOCH = 1747699200
CREATED = "2025-05-20T00:00:00Z"
TAG = "latest"
DEVEL_PACKAGES = (
    "build-essential,python3-dev,python3-pip,git,cmake,gdb,libssl-dev,libboost-dev,curl"
)

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


def log(msg: str) -> None:
    print(f"[images {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload,no-any-return]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- layout writer


def _put_blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def _compress_layer(layout: Path, tar: Path, compression: str) -> dict[str, object]:
    """Compress ``tar`` into a blob of ``layout``; returns the descriptor plus its diff_id."""
    tmp = layout / "blobs" / "sha256" / ".tmp-layer"
    if compression == "gzip":
        cmd = ["pigz", "-6", "-n", "-c", str(tar)]  # -n: no name/mtime, so it is reproducible
    else:
        cmd = ["zstd", "-3", "-T0", "-q", "-c", str(tar)]
    with tmp.open("wb") as out:
        run(cmd, stdout=out)
    digest = sha256_file(tmp)
    tmp.rename(layout / "blobs" / "sha256" / digest)
    return {
        "mediaType": MT_LAYER[compression],
        "digest": f"sha256:{digest}",
        "size": (layout / "blobs" / "sha256" / digest).stat().st_size,
        "diff_id": f"sha256:{sha256_file(tar)}",
    }


def write_layout(layout: Path, layer_tars: list[Path], compression: str = "gzip") -> None:
    """Write an OCI image layout with one layer per uncompressed tar in ``layer_tars``."""
    if layout.exists():
        shutil.rmtree(layout)
    (layout / "blobs" / "sha256").mkdir(parents=True)
    layers = [_compress_layer(layout, t, compression) for t in layer_tars]
    config = {
        "created": CREATED,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/bash"],
        },
        "rootfs": {"type": "layers", "diff_ids": [ly.pop("diff_id") for ly in layers]},
        "history": [{"created": CREATED, "created_by": f"bench/images.py {t.name}"}
                    for t in layer_tars],
    }
    cdigest, csize = _put_blob(layout, json.dumps(config, indent=2).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": cdigest, "size": csize},
        "layers": layers,
    }
    mdigest, msize = _put_blob(layout, json.dumps(manifest, indent=2).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MT_MANIFEST, "digest": mdigest, "size": msize,
            "annotations": {"org.opencontainers.image.ref.name": TAG},
        }],
    }
    (layout / "index.json").write_text(json.dumps(index, indent=2))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def layout_layers(layout: Path) -> list[tuple[Path, str]]:
    """(blob path, media type) of each layer of the ``latest`` image of an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    mdesc = index["manifests"][0]
    manifest = json.loads(
        (layout / "blobs" / "sha256" / mdesc["digest"].split(":", 1)[1]).read_text())
    return [(layout / "blobs" / "sha256" / ly["digest"].split(":", 1)[1], ly["mediaType"])
            for ly in manifest["layers"]]


# --------------------------------------------------------------------------- root filesystems


def mmdebstrap_tar(out: Path, include: str | None = None) -> Path:
    """A bookworm minbase tree as a tar (device nodes under /dev left out, like Docker's images)."""
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.tar")
    cmd = ["mmdebstrap", "--variant=minbase", "--mode=root", "--skip=output/dev",
           "--format=tar"]
    if include:
        cmd.append(f"--include={include}")
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH))
    run([*cmd, SUITE, str(tmp), MIRROR], env=env)
    tmp.rename(out)
    return out


def _text_words(rnd: random.Random) -> list[bytes]:
    alphabet = b"abcdefghijklmnopqrstuvwxyz"
    return [bytes(rnd.choice(alphabet) for _ in range(rnd.randint(2, 10))) for _ in range(4000)]


def manyfiles_tar(out: Path, count: int = 100_000) -> Path:
    """``count`` small files (64 B to 8 KiB, text-like, 5% duplicates) in 1,000 directories."""
    if out.exists():
        return out
    rnd = random.Random(5)
    words = _text_words(rnd)
    tmp = out.with_suffix(".tmp.tar")
    dup: list[bytes] = []
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        def add_dir(name: str) -> None:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tf.addfile(ti)

        add_dir("data")
        for d in range(count // 100):
            add_dir(f"data/d{d:04d}")
            for i in range(100):
                if dup and rnd.random() < 0.05:
                    data = rnd.choice(dup)
                else:
                    size = int(rnd.lognormvariate(6.5, 1.0)) % 8192 + 64
                    data = b" ".join(rnd.choices(words, k=size // 6 + 1))[:size]
                    if len(dup) < 500:
                        dup.append(data)
                ti = tarfile.TarInfo(f"data/d{d:04d}/f{i:03d}.txt")
                ti.size, ti.mode, ti.mtime = len(data), 0o644, EPOCH
                tf.addfile(ti, io.BytesIO(data))
    tmp.rename(out)
    return out


def _ustar_header(name: bytes, size: int, typeflag: bytes, mode: int) -> bytes:
    """A ustar header for a short ``name`` (root-owned, ``EPOCH``), checksum filled in."""
    head = (name.ljust(100, b"\0") + b"%07o\0" % mode + b"0000000\0" * 2
            + b"%011o\0" % size + b"%011o\0" % EPOCH + b" " * 8 + typeflag
            + bytes(100) + b"ustar\x0000" + bytes(64) + bytes(16) + bytes(167))
    assert len(head) == 512
    chksum = b"%06o\0 " % sum(head)
    return head[:148] + chksum + head[156:]


def millionfiles_tar(out: Path, count: int = 1_000_000) -> Path:
    """``count`` files of 16 to 512 bytes (slices of one text) in ``count // 100``
    directories. The headers are written directly: ``tarfile`` takes minutes here."""
    if out.exists():
        return out
    rnd = random.Random(7)
    text = b" ".join(rnd.choices(_text_words(rnd), k=20_000))
    tmp = out.with_suffix(".tmp.tar")
    with open(tmp, "wb") as f:
        f.write(_ustar_header(b"data/", 0, b"5", 0o755))
        for d in range(count // 100):
            parts = [_ustar_header(b"data/d%05d/" % d, 0, b"5", 0o755)]
            for i in range(100):
                size = rnd.randint(16, 512)
                at = rnd.randrange(len(text) - size)
                parts.append(_ustar_header(b"data/d%05d/f%03d.txt" % (d, i), size, b"0", 0o644))
                parts.append(text[at:at + size] + bytes(-size % 512))
            f.write(b"".join(parts))
        f.write(bytes(1024))
    tmp.rename(out)
    return out


def bigfile_tar(out: Path, size: int = 1 << 30) -> Path:
    """One ``size``-byte file: each 64 KiB is a quarter random bytes and three quarters text, so ~2:1."""
    if out.exists():
        return out
    rnd = random.Random(7)
    words = _text_words(rnd)
    text = b" ".join(rnd.choices(words, k=400_000))  # ~2.4 MB to slice text from
    tmp = out.with_suffix(".tmp.tar")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("data")
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, EPOCH
        tf.addfile(ti)
        ti = tarfile.TarInfo("data/big.bin")
        ti.size, ti.mode, ti.mtime = size, 0o644, EPOCH

        class Gen(io.RawIOBase):
            def __init__(self) -> None:
                self.left = size

            def readable(self) -> bool:
                return True

            def readinto(self, b: memoryview) -> int:  # type: ignore[override]
                n = min(len(b), self.left, 1 << 20)
                parts = []
                for _ in range((n + 65535) // 65536):
                    off = rnd.randrange(0, len(text) - 49152)
                    parts.append(rnd.randbytes(16384) + text[off:off + 49152])
                data = b"".join(parts)[:n]
                b[:n] = data
                self.left -= n
                return n

        tf.addfile(ti, io.BufferedReader(Gen(), 1 << 20))
    tmp.rename(out)
    return out


# --------------------------------------------------------------------------- devel via buildah


def _buildah(workdir: Path, *args: str, capture: bool = False) -> str:
    cmd = ["buildah", "--root", str(workdir / "containers" / "storage"),
           "--runroot", str(workdir / "containers" / "run"),
           "--storage-driver", "overlay", *args]
    res = run(cmd, stdout=subprocess.PIPE if capture else None)
    return res.stdout.decode().strip() if capture else ""


def _changed_members(base: Path, full: Path, out: Path) -> Path:
    """Names of ``full``'s entries that are new or differ from ``base`` (what apt would write).

    Files are compared by content, not mtime: the two trees come from separate mmdebstrap runs.
    """
    def entries(path: Path) -> dict[str, tuple[object, ...]]:
        res: dict[str, tuple[object, ...]] = {}
        with tarfile.open(path) as t:
            for ti in t:
                h = ""
                if ti.isreg():
                    f = t.extractfile(ti)
                    assert f is not None
                    h = hashlib.sha256(f.read()).hexdigest()
                res[ti.name] = (ti.type, ti.mode, ti.uid, ti.gid, ti.linkname, h)
        return res

    old = entries(base)
    names = [n for n, k in entries(full).items()
             if not n.startswith("./dev/") and old.get(n) != k]
    out.write_text("".join(f"{n}\n" for n in names))
    log(f"{len(names)} of the devel tree's entries are new or changed")
    return out


def build_devel(workdir: Path, layout: Path) -> None:
    """Four layers by buildah's overlay driver: base, tools (diff), docs removed, dirs replaced."""
    src = workdir / "src"
    full = mmdebstrap_tar(src / "devel-full.tar", DEVEL_PACKAGES)
    changed = _changed_members(src / "debian-minbase.tar", full, src / "devel-changed.list")
    base = workdir / "layouts" / "debian"
    if not (base / ".bench-done").exists():
        build_image("debian", workdir)
    steps: list[tuple[str, str]] = [
        # layer 2: the bigger tree over the base; buildah diffs it against the base layer
        ("tools", f"tar -C \"$M\" -xpf {full} --no-recursion --verbatim-files-from -T {changed}"),
        # layer 3: delete docs and manuals (whiteouts, and whole-directory whiteouts)
        ("nodocs", "rm -rf \"$M\"/usr/share/doc/* \"$M\"/usr/share/man \"$M\"/usr/share/info"
                   " \"$M\"/usr/share/locale/[a-m]*"),
        # layer 4: replace directories (overlayfs marks a removed and recreated dir opaque)
        ("replace", "rm -rf \"$M\"/usr/share/zoneinfo \"$M\"/etc/apt/apt.conf.d"
                    " \"$M\"/usr/lib/python3/dist-packages"
                    " && mkdir -p \"$M\"/usr/share/zoneinfo \"$M\"/etc/apt/apt.conf.d"
                    " \"$M\"/usr/lib/python3/dist-packages"
                    " && echo UTC > \"$M\"/usr/share/zoneinfo/README"
                    " && echo 'APT::Install-Recommends \"0\";' > \"$M\"/etc/apt/apt.conf.d/90bench"
                    " && cp -a \"$M\"/usr/lib/python3.11/json"
                    " \"$M\"/usr/lib/python3/dist-packages/benchjson"),
    ]
    image = f"oci:{base}:{TAG}"
    for i, (name, script) in enumerate(steps):
        ctr = _buildah(workdir, "from", "--pull-never" if i else "--pull", image, capture=True)
        mnt = _buildah(workdir, "mount", ctr, capture=True)
        run(["sh", "-euc", script], env=dict(os.environ, M=mnt))
        image = f"localhost/bench-devel-{name}"
        _buildah(workdir, "umount", ctr)
        _buildah(workdir, "commit", "--rm", "--timestamp", str(EPOCH), ctr, image)
    if layout.exists():
        shutil.rmtree(layout)
    # buildah pushes gzip layers to an OCI layout (its default compression for oci: too)
    _buildah(workdir, "push", "--format", "oci", "--compression-format", "gzip",
             image, f"oci:{layout}:{TAG}")


# --------------------------------------------------------------------------- versions of devel

#: The versions of devel: which layer differs (0 the bottom, -1 the top) and the seed that
#: picks and changes its files. The other layers are devel's own blobs, byte for byte, so
#: a cache that holds devel holds them too.
VERSIONS = {"devel-v2": ("devel", -1, 24), "devel-v3": ("devel", 0, 25)}
#: How many files of the layer a version changes.
CHANGED_FILES = 5
#: How many bytes of each changed file are replaced (all of a shorter one).
CHANGED_SPAN = 256


def _changed_layer(tar: Path, out: Path, seed: int) -> list[str]:
    """Copy the layer ``tar`` to ``out`` with CHANGED_FILES of its regular files changed.

    The files are drawn by ``seed`` from those of at least CHANGED_SPAN bytes, and in each
    CHANGED_SPAN bytes at a drawn place get drawn bytes. Sizes, headers and the order of
    the members stay as they were: only the file contents differ, as in a rebuild that
    changes a few files in place. Returns the changed names.
    """
    rnd = random.Random(seed)
    with tarfile.open(tar) as t:
        files = sorted((ti.name, ti.offset_data, ti.size) for ti in t
                       if ti.isreg() and not ti.issparse() and ti.size >= CHANGED_SPAN)
    picked = rnd.sample(files, min(CHANGED_FILES, len(files)))
    tmp = out.with_suffix(".tmp.tar")
    shutil.copyfile(tar, tmp)
    with tmp.open("r+b") as f:
        for _name, offset, size in picked:
            f.seek(offset + rnd.randrange(size - CHANGED_SPAN + 1))
            f.write(rnd.randbytes(CHANGED_SPAN))
    tmp.rename(out)
    return sorted(name for name, _, _ in picked)


def _blob_json(layout: Path, digest: str) -> dict[str, typing.Any]:
    data: dict[str, typing.Any] = json.loads(
        (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes())
    return data


def build_version(name: str, workdir: Path, layout: Path) -> None:
    """The layout of version ``name`` (see VERSIONS): its base's manifest and config with
    one layer replaced; the other layers' blobs are hard links to the base's."""
    base_name, which, seed = VERSIONS[name]
    base = build_image(base_name, workdir)
    mdesc = json.loads((base / "index.json").read_text())["manifests"][0]
    manifest = _blob_json(base, mdesc["digest"])
    config = _blob_json(base, manifest["config"]["digest"])
    if layout.exists():
        shutil.rmtree(layout)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layer = manifest["layers"][which]
    if not layer["mediaType"].endswith("gzip"):
        raise SystemExit(f"{name}: the layer to change is not gzip: {layer['mediaType']}")
    for ly in manifest["layers"]:
        if ly is not layer:
            os.link(base / "blobs" / "sha256" / ly["digest"].split(":", 1)[1],
                    blobs / ly["digest"].split(":", 1)[1])
    src = workdir / "src"
    plain = src / f"{name}-layer.tar"
    with plain.open("wb") as f:
        run(["pigz", "-dc", str(base / "blobs" / "sha256" / layer["digest"].split(":", 1)[1])],
            stdout=f)
    changed_tar = src / f"{name}-layer-changed.tar"
    changed_tar.unlink(missing_ok=True)
    changed = _changed_layer(plain, changed_tar, seed)
    log(f"{name}: changed in layer {which}: {', '.join(changed)}")
    new = _compress_layer(layout, changed_tar, "gzip")
    config["rootfs"]["diff_ids"][which] = new.pop("diff_id")
    manifest["layers"][which] = {**layer, "digest": new["digest"], "size": new["size"]}
    cdigest, csize = _put_blob(layout, json.dumps(config, indent=2).encode())
    manifest["config"] = {**manifest["config"], "digest": cdigest, "size": csize}
    mdigest, msize = _put_blob(layout, json.dumps(manifest, indent=2).encode())
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": manifest.get("mediaType", MT_MANIFEST), "digest": mdigest, "size": msize,
        "annotations": {"org.opencontainers.image.ref.name": TAG}}]}, indent=2))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    plain.unlink()
    changed_tar.unlink()


# --------------------------------------------------------------------------- the images


def build_image(name: str, workdir: Path = DEFAULT_WORKDIR) -> Path:
    """Build image ``name`` unless its layout is already there; returns the layout path."""
    layout = workdir / "layouts" / name
    if (layout / ".bench-done").exists():
        return layout
    src = workdir / "src"
    src.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    log(f"building {name}")
    if name == "debian":
        write_layout(layout, [mmdebstrap_tar(src / "debian-minbase.tar")], "gzip")
    elif name == "debian-zstd":
        write_layout(layout, [mmdebstrap_tar(src / "debian-minbase.tar")], "zstd")
    elif name == "devel":
        build_devel(workdir, layout)
    elif name == "manyfiles":
        write_layout(layout, [manyfiles_tar(src / "manyfiles.tar")], "gzip")
    elif name == "millionfiles":
        write_layout(layout, [millionfiles_tar(src / "millionfiles.tar")], "gzip")
    elif name == "bigfile":
        write_layout(layout, [bigfile_tar(src / "bigfile.tar")], "gzip")
    elif name in VERSIONS:
        build_version(name, workdir, layout)
    else:
        raise SystemExit(f"unknown image {name!r}; known: {', '.join(IMAGES)}")
    (layout / ".bench-done").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    log(f"built {name} in {time.monotonic() - t0:.0f} s: {describe(layout)}")
    return layout


IMAGES = ("debian", "debian-zstd", "devel", "manyfiles", "millionfiles", "bigfile",
          *VERSIONS)


def describe(layout: Path) -> str:
    layers = layout_layers(layout)
    total = sum(p.stat().st_size for p, _ in layers)
    return f"{len(layers)} layer(s), {total / 1e6:.0f} MB compressed"


# --------------------------------------------------------------------------- registry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    """A ``docker-registry`` on 127.0.0.1 with storage under ``WORKDIR/registry``."""

    def __init__(self, workdir: Path = DEFAULT_WORKDIR) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Registry:
        storage = self.workdir / "registry"
        storage.mkdir(parents=True, exist_ok=True)
        config = self.workdir / f"registry-config-{self.port}.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n"
        )
        self.logfile = (self.workdir / "registry.log").open("ab")
        self.proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(config)],
                                     stdout=self.logfile, stderr=self.logfile)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"docker-registry did not start; see {self.logfile.name}") from None
                time.sleep(0.1)
        log(f"registry on {self.host}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
        self.logfile.close()
        (self.workdir / f"registry-config-{self.port}.yml").unlink(missing_ok=True)

    def ref(self, name: str) -> str:
        return f"{self.host}/bench/{name}:{TAG}"

    def push(self, name: str, layout: Path) -> str:
        """Copy ``layout`` to the registry as ``bench/NAME:latest``; returns HOST/bench/NAME:latest."""
        run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
             f"oci:{layout}:{TAG}", f"docker://{self.ref(name)}"])
        return self.ref(name)


@contextlib.contextmanager
def serving(names: list[str], workdir: Path = DEFAULT_WORKDIR) -> Iterator[tuple[Registry, dict[str, str]]]:
    """Build ``names``, start a registry and push them; yields it and {name: reference}."""
    layouts = {n: build_image(n, workdir) for n in names}
    with Registry(workdir) as reg:
        yield reg, {n: reg.push(n, layouts[n]) for n in names}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", default="debian,bigfile",
                    help=f"comma-separated subset of {','.join(IMAGES)} (or 'all')")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--push", action="store_true", help="also push them to a local registry once")
    args = ap.parse_args()
    names = list(IMAGES) if args.images == "all" else args.images.split(",")
    for n in names:
        build_image(n, args.workdir)
    if args.push:
        with serving(names, args.workdir) as (_, refs):
            for n, r in refs.items():
                print(n, r)
    for n in names:
        print(f"{n}: {args.workdir / 'layouts' / n} ({describe(args.workdir / 'layouts' / n)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
