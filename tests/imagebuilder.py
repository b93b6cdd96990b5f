"""Build small test images from data generated in the tests.

``LayerSpec`` entries become a layer tar (built with ``tarfile``), compressed as
asked; ``write_oci_layout`` writes an OCI image layout directory, and
``write_docker_archive`` a ``docker save`` archive, from a list of layers.
Everything is deterministic (fixed mtimes, sorted JSON).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA = {
    "tar": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


@dataclass
class Entry:
    """One tar member. ``kind``: file, dir, symlink, hardlink, char, block, fifo."""

    path: str | bytes
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 1_700_000_000
    linkname: str | bytes = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    uname: str = ""
    gname: str = ""


_KINDS = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def _s(x: str | bytes) -> str:
    return x.decode("utf-8", "surrogateescape") if isinstance(x, bytes) else x


def make_tar(entries: Sequence[Entry], *, format: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar stream of ``entries`` in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=format, encoding="utf-8",
                      errors="surrogateescape") as tf:
        for e in entries:
            ti = tarfile.TarInfo(_s(e.path))
            ti.type = _KINDS[e.kind]
            ti.mode = e.mode
            ti.uid, ti.gid = e.uid, e.gid
            ti.uname, ti.gname = e.uname, e.gname
            ti.mtime = e.mtime
            ti.linkname = _s(e.linkname)
            ti.devmajor, ti.devminor = e.devmajor, e.devminor
            if e.xattrs:
                ti.pax_headers = {
                    f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                    for k, v in e.xattrs.items()
                }
            if e.kind == "file":
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "tar":
        return data
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    raise ValueError(compression)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class BuiltImage:
    """What ``write_oci_layout`` wrote: digests a test may want to check."""

    path: Path
    manifest_digest: str
    config_digest: str
    layer_digests: list[str]
    diff_ids: list[str]
    manifest: bytes
    config: bytes


def _blob(root: Path, data: bytes) -> str:
    d = _digest(data)
    p = root / "blobs" / "sha256" / d.split(":", 1)[1]
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return d


def make_config(diff_ids: Sequence[str], *, architecture: str = "amd64", os_: str = "linux",
                variant: str = "", config: dict[str, object] | None = None) -> bytes:
    obj: dict[str, object] = {
        "architecture": architecture,
        "os": os_,
        "created": "2024-01-01T00:00:00Z",
        "config": config if config is not None else {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }
    if variant:
        obj["variant"] = variant
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def write_oci_layout(
    root: Path,
    layers: Sequence[bytes | Sequence[Entry]],
    *,
    compression: str | Sequence[str] = "gzip",
    tag: str = "latest",
    architecture: str = "amd64",
    variant: str = "",
    config: dict[str, object] | None = None,
    extra_platforms: Sequence[tuple[str, str]] = (),
) -> BuiltImage:
    """Write an OCI layout at ``root`` with one image (or an index with several platforms).

    ``layers`` items are tar bytes or entry lists. ``extra_platforms`` adds more
    manifests (``(arch, variant)``) with the same layers to a multi-platform index,
    whose tag is ``tag``.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    comps = [compression] * len(layers) if isinstance(compression, str) else list(compression)
    layer_descs, diff_ids, layer_digests = [], [], []
    for layer, comp in zip(layers, comps, strict=True):
        tar = layer if isinstance(layer, bytes) else make_tar(layer)
        diff_ids.append(_digest(tar))
        blob = compress(tar, comp)
        d = _blob(root, blob)
        layer_digests.append(d)
        layer_descs.append({"mediaType": LAYER_MEDIA[comp], "digest": d, "size": len(blob)})

    def one(arch: str, var: str) -> tuple[bytes, bytes, str]:
        cfg = make_config(diff_ids, architecture=arch, variant=var, config=config)
        cd = _blob(root, cfg)
        man = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": len(cfg)},
            "layers": layer_descs,
        }, sort_keys=True, separators=(",", ":")).encode()
        return man, cfg, _blob(root, man)

    man, cfg, md = one(architecture, variant)
    if extra_platforms:
        entries = []
        for arch, var in [(architecture, variant), *extra_platforms]:
            m, _c, d = one(arch, var)
            plat: dict[str, str] = {"architecture": arch, "os": "linux"}
            if var:
                plat["variant"] = var
            entries.append({"mediaType": OCI_MANIFEST, "digest": d, "size": len(m), "platform": plat})
        idx = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries},
                         sort_keys=True, separators=(",", ":")).encode()
        idd = _blob(root, idx)
        top = {"mediaType": OCI_INDEX, "digest": idd, "size": len(idx)}
    else:
        top = {"mediaType": OCI_MANIFEST, "digest": md, "size": len(man)}
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (root / "index.json").write_text(json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]}, sort_keys=True))
    return BuiltImage(root, md, _digest(cfg), layer_digests, diff_ids, man, cfg)


def write_docker_archive(path: Path, layers: Sequence[bytes | Sequence[Entry]], *,
                         repo_tag: str = "example.com/test/image:latest",
                         gzip_layers: bool = False) -> None:
    """Write a ``docker save``-style archive (manifest.json + config + layer tars)."""
    tars = [lay if isinstance(lay, bytes) else make_tar(lay) for lay in layers]
    diff_ids = [_digest(t) for t in tars]
    cfg = make_config(diff_ids)
    members: list[tuple[str, bytes]] = []
    layer_names = []
    for t in tars:
        name = f"{_digest(t).split(':')[1]}/layer.tar"
        members.append((name, gzip.compress(t, mtime=0) if gzip_layers else t))
        layer_names.append(name)
    cfg_name = _digest(cfg).split(":")[1] + ".json"
    members.append((cfg_name, cfg))
    manifest = [{"Config": cfg_name, "RepoTags": [repo_tag], "Layers": layer_names}]
    members.append(("manifest.json", json.dumps(manifest).encode()))
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 0
            tf.addfile(ti, io.BytesIO(data))
