"""Images from tar archives: ``oci-archive:FILE[:TAG]`` and ``docker-archive:FILE[:REF]``.

Nothing is extracted. The tar is indexed once (member name → offset and size)
and every blob is read straight from its region of the file, so layers stream
with ``os.pread`` and several can be read at once. A compressed archive (gzip,
zstd, bzip2, xz — sniffed from its first bytes) is first decompressed into one
anonymous temporary file, which the operating system removes when it is closed; runs
of zeros are left as holes, and it is held to the layers' ratio limit
(``Limits.max_ratio`` past ``Limits.ratio_floor``), so a small bomb can fill neither
memory nor the disk.

An OCI archive is a tar of an OCI layout and is resolved like one. A ``docker
save`` archive has ``manifest.json`` (``[{Config, RepoTags, Layers}]``) and no
registry manifest, so one is synthesised: an OCI manifest naming the config blob
and each layer file as stored (media type sniffed from its magic bytes), written
as canonical JSON so that the same archive always gives the same digest.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import posixpath
import re
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import zstandard

from ..digest import Digest
from ..errors import (
    CacheError,
    DigestMismatchError,
    ImageNotFoundError,
    IntegrityError,
    LimitExceededError,
    ManifestError,
    OcisquashError,
    UnsupportedError,
    UsageError,
)
from ..model import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    ImageConfig,
    Manifest,
    Platform,
    parse_manifest_or_index,
)
from ..reference import DockerArchiveSpec, OciArchiveSpec, Reference, parse_reference
from ..rules import DEFAULT_LIMITS, MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE, check_layer_count
from ..sniff import SNIFF_BYTES, sniff_compression
from .oci_layout import (
    LocalImage,
    build_image,
    list_tags,
    missing_blob,
    open_regular,
    resolve_layout,
)
from .options import SourceOptions

#: How many symbolic or hard links a member name may pass through.
_MAX_LINK_HOPS = 16
_BLOB_PATH = re.compile(r"blobs/(sha256|sha512)/([0-9a-f]+)")
_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)


def _normalize(name: str) -> str:
    # Member names are looked up, never written to disk, so '..' merely folds away.
    return posixpath.normpath("/" + name).lstrip("/")


@dataclass(frozen=True, slots=True)
class _Member:
    name: str
    offset: int
    size: int
    type: bytes
    linkname: str


class _RegionReader(io.RawIOBase):
    """Reads ``size`` bytes at ``offset`` of an open file with ``pread``; keeps its own position."""

    def __init__(self, file: IO[bytes], offset: int, size: int) -> None:
        super().__init__()
        self._file = file
        self._pos = offset
        self._end = offset + size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._end - self._pos)
        if n <= 0:
            return 0
        if self._file.closed:
            raise ValueError("the archive was closed")
        data = os.pread(self._file.fileno(), n, self._pos)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


class TarArchive:
    """Random access to the members of a tar file, indexed on first use and never extracted."""

    def __init__(self, path: Path, *, temp_dir: Path | None = None, what: str = "archive") -> None:
        self.path = path
        self.what = what
        self._temp_dir = temp_dir
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._members: dict[str, _Member] = {}

    @property
    def where(self) -> str:
        return f"{self.what} {self.path}"

    def _load(self) -> IO[bytes]:
        with self._lock:
            if self._file is None:
                self._file = self._open()
                try:
                    self._index(self._file)
                except BaseException:
                    self._file.close()
                    self._file = None
                    raise
            return self._file

    def _open(self) -> IO[bytes]:
        try:
            f: IO[bytes] = open_regular(self.path, "the archive", self.where)
        except FileNotFoundError:
            raise ImageNotFoundError("no such file", context=self.where) from None
        except OSError as e:
            raise ImageNotFoundError(f"cannot open: {e.strerror}", context=self.where) from None
        compression = sniff_compression(f.read(SNIFF_BYTES))
        f.seek(0)
        if compression == "tar":
            return f
        with f:
            return self._decompress(f, compression)

    def _decompress(self, f: IO[bytes], compression: str) -> IO[bytes]:
        if self._temp_dir is not None:
            self._temp_dir.mkdir(parents=True, exist_ok=True)
        # Anonymous: the kernel frees it when closed, even if we crash.
        out = tempfile.TemporaryFile(dir=self._temp_dir)  # noqa: SIM115
        stream: BinaryIO
        if compression == "gzip":
            stream = cast(BinaryIO, gzip.GzipFile(fileobj=f))
        elif compression == "zstd":
            stream = cast(BinaryIO, zstandard.ZstdDecompressor().stream_reader(f))
        elif compression == "bzip2":
            stream = cast(BinaryIO, bz2.BZ2File(f))
        else:
            stream = cast(BinaryIO, lzma.LZMAFile(f))  # noqa: SIM115 - closed below
        limits = DEFAULT_LIMITS
        total = 0
        try:
            with stream:
                while chunk := stream.read(_CHUNK):
                    total += len(chunk)
                    if total > limits.ratio_floor and \
                            total > limits.max_ratio * max(f.tell(), 1):
                        raise LimitExceededError(
                            f"archive expands more than {limits.max_ratio}× ({f.tell()} "
                            f"compressed bytes gave {total})", context=self.where,
                            hint="a decompression bomb? layers and archives are held to "
                                 "the same ratio")
                    self._spool(out, chunk)
            self._spool(out, None, total)
        except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError) as e:
            out.close()
            raise IntegrityError(f"{compression} stream is corrupt: {e}", context=self.where) from None
        except BaseException:
            out.close()
            raise
        out.flush()
        out.seek(0)
        return out

    def _spool(self, out: IO[bytes], chunk: bytes | None, total: int = 0) -> None:
        """Append ``chunk`` to the unpacked archive (None: end it at ``total`` bytes).
        Zeros (tar padding, a bomb) become a hole, which takes no disk."""
        try:
            if chunk is None:
                out.truncate(total)
            elif chunk == _ZEROS[:len(chunk)]:
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)
        except OSError as e:
            raise CacheError(
                f"cannot unpack the archive into {self._temp_dir or tempfile.gettempdir()}: "
                f"{e.strerror}", context=self.where,
                hint="a compressed archive is unpacked there first; free some space, or "
                     "decompress the archive yourself") from None

    def _index(self, f: IO[bytes]) -> None:
        try:
            with tarfile.open(fileobj=f, mode="r:") as tf:
                for ti in tf:
                    if ti.isdir():
                        continue
                    name = _normalize(ti.name)
                    self._members[name] = _Member(name, ti.offset_data, ti.size, ti.type, ti.linkname)
        except tarfile.ReadError as e:
            if self._members:
                raise IntegrityError(f"the tar archive is damaged or cut short ({e})",
                                     context=self.where) from None
            raise UnsupportedError(
                f"not a tar archive ({e})", context=self.where,
                hint="expected a tar file, optionally compressed with gzip, zstd, bzip2 or xz",
            ) from None

    def _resolve(self, name: str) -> _Member | None:
        self._load()
        name = _normalize(name)
        for _ in range(_MAX_LINK_HOPS):
            m = self._members.get(name)
            if m is None:
                return None
            if m.type == tarfile.SYMTYPE:
                base = "" if m.linkname.startswith("/") else posixpath.dirname(name)
                name = _normalize(posixpath.join(base, m.linkname))
            elif m.type == tarfile.LNKTYPE:
                name = _normalize(m.linkname)
            elif m.type in tarfile.REGULAR_TYPES:
                return m
            else:
                return None
        return None

    def member_name(self, name: str) -> str | None:
        """The regular member ``name`` leads to (through links), or ``None``."""
        m = self._resolve(name)
        return m.name if m else None

    def size(self, name: str) -> int | None:
        m = self._resolve(name)
        return m.size if m else None

    def open(self, name: str) -> BinaryIO | None:
        """A stream of member ``name``'s bytes, or ``None`` when there is no such file."""
        m = self._resolve(name)
        if m is None:
            return None
        return cast(BinaryIO, io.BufferedReader(_RegionReader(self._load(), m.offset, m.size), _CHUNK))

    def read(self, name: str, limit: int) -> bytes | None:
        """Member ``name`` whole (``None`` if absent); ``LimitExceededError`` above ``limit`` bytes."""
        m = self._resolve(name)
        if m is None:
            return None
        if m.size > limit:
            raise LimitExceededError(f"{name} is {m.size} bytes, more than the {limit} allowed",
                                     context=self.where)
        with _RegionReader(self._load(), m.offset, m.size) as r:
            data = r.read(m.size) or b""
        if len(data) != m.size:
            raise IntegrityError(f"{name} is cut short ({len(data)} of {m.size} bytes)",
                                 context=self.where)
        return data

    def head(self, name: str, n: int) -> bytes:
        m = self._resolve(name)
        if m is None:
            return b""
        return os.pread(self._load().fileno(), min(n, m.size), m.offset)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
                self._members.clear()


class _TarBlobs:
    """A ``BlobStore`` over an OCI layout stored in a tar archive."""

    def __init__(self, archive: TarArchive) -> None:
        self.archive = archive

    @property
    def where(self) -> str:
        return self.archive.where

    def read_index(self) -> bytes:
        data = self.archive.read("index.json", MAX_MANIFEST_SIZE)
        if data is None:
            raise ImageNotFoundError("no index.json: not an OCI archive", context=self.where,
                                     hint="create one with 'skopeo copy IMAGE oci-archive:FILE:TAG'")
        return data

    @staticmethod
    def _name(digest: Digest) -> str:
        return f"blobs/{digest.algorithm}/{digest.hex}"

    def has_blob(self, digest: Digest) -> bool:
        return self.archive.size(self._name(digest)) is not None

    def open_blob(self, digest: Digest) -> BinaryIO:
        stream = self.archive.open(self._name(digest))
        if stream is None:
            raise missing_blob(digest, self.where)
        return stream


def _temp_dir(options: SourceOptions | None) -> Path | None:
    return options.cache_dir / "tmp" if options and options.cache_dir else None


class OciArchiveSource:
    """An image in a tar of an OCI layout; ``tag`` may be left out when it holds one image."""

    def __init__(self, file: Path | str, tag: str | None = None, *,
                 options: SourceOptions | None = None) -> None:
        self.path = Path(file)
        self.tag = tag
        self._archive = TarArchive(self.path, temp_dir=_temp_dir(options), what="OCI archive")
        self._store = _TarBlobs(self._archive)

    def tags(self) -> list[str]:
        return list_tags(self._store)

    def resolve(self, platform: Platform | None = None) -> LocalImage:
        """Find the manifest for ``platform`` (default: the host's, when there is a choice)."""
        return resolve_layout(self._store, self.tag, platform,
                              lambda tag: str(OciArchiveSpec(self.path, tag)))

    def close(self) -> None:
        """Close the archive; layers opened before must not be read afterwards."""
        self._archive.close()

    def __enter__(self) -> OciArchiveSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- docker save archives ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SaveEntry:
    config: str
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]


class _DockerArchiveBlobs:
    """A ``BlobStore`` whose blobs are the config and layer files a ``manifest.json`` names."""

    def __init__(self, archive: TarArchive) -> None:
        self.archive = archive
        self.names: dict[Digest, str] = {}

    @property
    def where(self) -> str:
        return self.archive.where

    def read_index(self) -> bytes:  # pragma: no cover - docker archives have no index here
        raise ImageNotFoundError("no index.json", context=self.where)

    def has_blob(self, digest: Digest) -> bool:
        return digest in self.names

    def open_blob(self, digest: Digest) -> BinaryIO:
        name = self.names.get(digest)
        stream = self.archive.open(name) if name is not None else None
        if stream is None:
            raise missing_blob(digest, self.where)
        return stream


class DockerArchiveSource:
    """An image in a ``docker save`` archive.

    ``ref`` picks the image whose ``RepoTags`` include it and ``index`` the n-th
    entry of ``manifest.json``; with neither the archive must hold one image.
    """

    def __init__(self, file: Path | str, ref: Reference | str | None = None, *,
                 index: int | None = None, options: SourceOptions | None = None) -> None:
        if ref is not None and index is not None:
            raise UsageError("give a reference or an index into the archive, not both")
        self.path = Path(file)
        self.ref = parse_reference(ref) if isinstance(ref, str) else ref
        self.index = index
        self._archive = TarArchive(self.path, temp_dir=_temp_dir(options), what="docker archive")

    @property
    def where(self) -> str:
        return self._archive.where

    def _entries(self) -> list[_SaveEntry]:
        raw = self._archive.read("manifest.json", MAX_MANIFEST_SIZE)
        if raw is None:
            raise ImageNotFoundError(
                "no manifest.json: not a docker save archive", context=self.where,
                hint="create one with 'docker save' or 'skopeo copy IMAGE docker-archive:FILE:NAME:TAG'",
            )
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ManifestError(f"manifest.json is not valid JSON: {e}", context=self.where) from None
        if not isinstance(obj, list):
            raise ManifestError("manifest.json is not a JSON list", context=self.where)
        entries = []
        for i, item in enumerate(obj):
            if not isinstance(item, dict):
                raise ManifestError(f"manifest.json entry {i} is not an object", context=self.where)
            config, tags, layers = item.get("Config"), item.get("RepoTags") or [], item.get("Layers")
            if not isinstance(config, str) or not isinstance(layers, list) \
                    or not all(isinstance(x, str) for x in layers) \
                    or not isinstance(tags, list) or not all(isinstance(x, str) for x in tags):
                raise ManifestError(
                    f"manifest.json entry {i} needs Config (string), Layers and RepoTags (lists of strings)",
                    context=self.where,
                )
            entries.append(_SaveEntry(config, tuple(tags), tuple(layers)))
        if not entries:
            raise ImageNotFoundError("the archive holds no images (manifest.json is empty)",
                                     context=self.where)
        return entries

    def _choose(self, entries: list[_SaveEntry]) -> tuple[_SaveEntry, Reference | None]:
        if self.index is not None:
            if not 0 <= self.index < len(entries):
                raise ImageNotFoundError(
                    f"no image @{self.index}; the archive holds {len(entries)} (@0 to @{len(entries) - 1})",
                    context=self.where,
                )
            entry = entries[self.index]
            return entry, _first_ref(entry)
        if self.ref is not None:
            for entry in entries:
                for text in entry.repo_tags:
                    ref = _try_parse(text)
                    if ref is not None and ref.name == self.ref.name and ref.tag == self.ref.tag:
                        return entry, ref
            raise ImageNotFoundError(
                f"no image tagged {self.ref.familiar}; tags: {_all_tags(entries)}", context=self.where,
            )
        if len(entries) > 1:
            raise ImageNotFoundError(
                f"the archive holds {len(entries)} images; name one by tag: {_all_tags(entries)}",
                context=self.where, hint="append :NAME:TAG or :@INDEX to the archive path",
            )
        return entries[0], _first_ref(entries[0])

    def resolve(self, platform: Platform | None = None) -> LocalImage:
        """Synthesise the image's manifest; check ``platform`` only when one is asked for."""
        if self._archive.size("manifest.json") is None and self._archive.size("index.json") is not None:
            # An OCI layout in a tar under the docker-archive name: read it as one.
            return resolve_layout(_TarBlobs(self._archive), None, platform,
                                  lambda tag: str(DockerArchiveSpec(self.path, None, self.index)))
        entry, ref = self._choose(self._entries())
        store = _DockerArchiveBlobs(self._archive)
        manifest = self._synthesise(entry, store)
        spec = DockerArchiveSpec(self.path, ref, None if ref else self.index)
        return build_image(store, manifest, None, platform, None, str(spec))

    def _synthesise(self, entry: _SaveEntry, store: _DockerArchiveBlobs) -> Manifest:
        archive = self._archive
        check_layer_count(len(entry.layers), context=f"{self.where}: manifest.json")
        config_name = archive.member_name(entry.config)
        if config_name is None:
            raise ImageNotFoundError(f"config file {entry.config!r} is missing", context=self.where)
        config_raw = archive.read(config_name, MAX_CONFIG_SIZE) or b""
        config_digest = Digest.of(config_raw)
        named = _digest_in_name(entry.config) or _digest_in_name(config_name)
        if named is not None and named != config_digest:
            raise DigestMismatchError(
                f"config file {entry.config!r} has digest {config_digest.short}, its name says {named.short}",
                context=self.where,
            )
        store.names[config_digest] = config_name
        diff_ids = _diff_ids(config_raw, self.where)
        layers: list[dict[str, Any]] = []
        for i, layer in enumerate(entry.layers):
            name = archive.member_name(layer)
            size = archive.size(layer)
            if name is None or size is None:
                raise ImageNotFoundError(f"layer file {layer!r} is missing", context=self.where)
            compression = sniff_compression(archive.head(name, SNIFF_BYTES))
            media_type = {"tar": OCI_LAYER_TAR, "gzip": OCI_LAYER_GZIP,
                          "zstd": OCI_LAYER_ZSTD}.get(compression)
            if media_type is None:
                raise UnsupportedError(f"layer file {layer!r} is {compression}-compressed",
                                       context=self.where, hint="layers may be plain, gzip or zstd tars")
            # A blobs/ALGO/HEX name is the content digest; a plain tar's digest is its
            # diff_id. Either way open() checks it at EOF. Anything else is hashed now.
            digest = _blob_digest(layer) or _blob_digest(name)
            if digest is None and compression == "tar" and i < len(diff_ids):
                digest = diff_ids[i]
            if digest is None:
                digest = self._hash_member(name)
            store.names[digest] = name
            layers.append({"mediaType": media_type, "digest": str(digest), "size": size})
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": str(config_digest), "size": len(config_raw)},
            "layers": layers,
        }
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        manifest = parse_manifest_or_index(raw, OCI_MANIFEST)
        assert isinstance(manifest, Manifest)
        return manifest

    def _hash_member(self, name: str) -> Digest:
        stream = self._archive.open(name)
        assert stream is not None
        h = Digest.of(b"").hasher()
        with stream:
            while chunk := stream.read(_CHUNK):
                h.update(chunk)
        return Digest("sha256", h.hexdigest())

    def close(self) -> None:
        """Close the archive; layers opened before must not be read afterwards."""
        self._archive.close()

    def __enter__(self) -> DockerArchiveSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _blob_digest(name: str) -> Digest | None:
    """The digest an OCI blob path ``blobs/ALGO/HEX`` spells."""
    m = _BLOB_PATH.fullmatch(_normalize(name))
    if m is None:
        return None
    try:
        return Digest.parse(f"{m.group(1)}:{m.group(2)}")
    except ManifestError:
        return None


def _digest_in_name(name: str) -> Digest | None:
    """The digest a config file's name spells: ``blobs/sha256/HEX`` or ``HEX.json``."""
    m = re.fullmatch(r"([0-9a-f]{64})\.json", _normalize(name))
    return Digest("sha256", m.group(1)) if m else _blob_digest(name)


def _diff_ids(config_raw: bytes, where: str) -> list[Digest]:
    try:
        return list(ImageConfig.parse(config_raw).diff_ids)
    except OcisquashError as e:
        raise e.with_context(f"{where}: config") from None


def _try_parse(text: str) -> Reference | None:
    try:
        return parse_reference(text)
    except OcisquashError:
        return None


def _first_ref(entry: _SaveEntry) -> Reference | None:
    for text in entry.repo_tags:
        if (ref := _try_parse(text)) is not None:
            return ref
    return None


def _all_tags(entries: list[_SaveEntry]) -> str:
    tags = [t for e in entries for t in e.repo_tags]
    return ", ".join(tags) or "none (use :@INDEX)"

