"""The cache of compiled images, beside the blob store.

Layout under the cache root::

    images/<key>/image.squashfs   the compiled image (read-only)
    images/<key>/manifest.json    the platform manifest, as received
    images/<key>/config.json      the image config, as received
    images/<key>/info.json        source reference, digests, platform, sizes, time
    images/<key>/image.squashfs.verity, .roothash, .roothash.p7s   with --verity
    images/<key>/blocks.idx       the squashfs's block index, for recompiles (squashfs/reuse.py)
    refs/<ref-key>                a reference (+ platform + options) → entry key
    locks/<key>.lock              held (flock) while one process builds <key>

``<key>`` is the sha256 of the platform manifest's digest, the squashfs writer's
format version and the output options, so any change that alters the bytes of
the output gives a new key. An entry is built in ``tmp/`` and published by one
``rename`` of its directory, after its files are fsynced: readers see a whole entry
or none, and so does the next boot after a crash. An entry whose image is missing
or differs in size from its record (a crash of a kernel that lost the data, a file
removed by hand) is not used: compile builds it again, ``cache verify`` reports it.
The build lock is an ``flock``, which the kernel drops when its holder dies, so a
killed compile never leaves a lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .digest import Digest
from .errors import CacheError, OutputError
from .store import BlobStore, default_cache_dir, fsync_dir, fsync_path, write_atomic

IMAGE_FILE = "image.squashfs"
INFO_FILE = "info.json"


@dataclass(frozen=True)
class CacheEntry:
    """One compiled image in the cache."""

    key: str
    path: Path
    info: dict[str, Any]

    @property
    def image(self) -> Path:
        return self.path / IMAGE_FILE

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())

    @property
    def created(self) -> float:
        return float(self.info.get("created", 0))


def entry_key(manifest_digest: Digest, format_version: str, options: dict[str, Any]) -> str:
    """The cache key of a compile: manifest digest + writer format version + output options."""
    blob = json.dumps(
        {"manifest": str(manifest_digest), "format": format_version, "options": options},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class ImageCache:
    """Compiled images plus the blob store they share a root with."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.blobs = BlobStore(self.root)
        try:
            for sub in ("images", "refs", "locks", "tmp"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"cannot create cache directory {self.root}: {e.strerror}") from e

    # -- entries -----------------------------------------------------------------
    def entry_path(self, key: str) -> Path:
        return self.root / "images" / key

    def get(self, key: str) -> CacheEntry | None:
        """The published entry for ``key``, or None (also when it is damaged, see
        :meth:`damage`)."""
        path = self.entry_path(key)
        info, damage = _glance(path)
        if info is None or damage is not None:
            return None
        return CacheEntry(key, path, info)

    def damage(self, key: str) -> str | None:
        """Why the entry directory of ``key`` cannot be used, or None when it is whole or
        absent."""
        path = self.entry_path(key)
        if not path.exists():
            return None
        return _glance(path)[1]

    def keys(self) -> list[str]:
        """The keys of every entry directory, whole or damaged."""
        return sorted(p.name for p in (self.root / "images").iterdir())

    def entries(self) -> list[CacheEntry]:
        """Every usable entry (damaged ones are left out; see :meth:`verify`)."""
        return [e for key in self.keys() if (e := self.get(key)) is not None]

    @contextlib.contextmanager
    def build_lock(self, key: str) -> Iterator[None]:
        """Hold the build lock of ``key``; waits while another process holds it."""
        fd = os.open(self.root / "locks" / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh directory in ``tmp/`` to build an entry in; removed unless published."""
        path = Path(tempfile.mkdtemp(prefix="build-", dir=self.root / "tmp"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def publish(self, key: str, staged: Path, info: dict[str, Any]) -> CacheEntry:
        """Move a fully written staging directory into place as entry ``key``."""
        info = {**info, "key": key, "created": info.get("created", time.time())}
        try:
            for p in staged.iterdir():
                fsync_path(p)
            with contextlib.suppress(FileNotFoundError):
                # Any later write changes it, also one through a hard link that -o made.
                info["squashfs_mtime_ns"] = (staged / IMAGE_FILE).stat().st_mtime_ns
            write_atomic(staged / INFO_FILE, json.dumps(info, indent=2, sort_keys=True).encode())
            for p in staged.iterdir():
                os.chmod(p, 0o444)
            final = self.entry_path(key)
            if final.exists():
                # Someone published the same key (same bytes); keep theirs.
                shutil.rmtree(staged, ignore_errors=True)
            else:
                os.rename(staged, final)
                fsync_dir(final.parent)
        except OSError as e:
            raise OutputError(f"cannot publish cache entry in {self.root}: {e.strerror}") from e
        entry = self.get(key)
        if entry is None:
            raise CacheError(f"cache entry {key[:12]} vanished right after it was published")
        return entry

    def remove(self, key: str) -> bool:
        """Remove entry ``key`` (renamed away first, so readers never see half of it)."""
        path = self.entry_path(key)
        if not path.exists():
            return False
        doomed = Path(tempfile.mkdtemp(prefix="rm-", dir=self.root / "tmp"))
        os.rename(path, doomed / "entry")
        shutil.rmtree(doomed, ignore_errors=True)
        for ref in (self.root / "refs").iterdir():
            with contextlib.suppress(OSError):
                if ref.read_text().strip() == key:
                    ref.unlink()
        return True

    # -- reference → key records ------------------------------------------------
    @staticmethod
    def ref_key(reference: str, platform: str, options: dict[str, Any], format_version: str) -> str:
        blob = json.dumps([reference, platform, options, format_version], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def lookup_ref(self, ref_key: str) -> CacheEntry | None:
        try:
            key = (self.root / "refs" / ref_key).read_text().strip()
        except OSError:
            return None
        return self.get(key)

    def record_ref(self, ref_key: str, key: str) -> None:
        path = self.root / "refs" / ref_key
        with contextlib.suppress(OSError):
            if path.read_bytes() == key.encode():
                return  # a cache hit: no write, no fsync
        with contextlib.suppress(OSError):
            write_atomic(path, key.encode())

    # -- maintenance -------------------------------------------------------------
    def clean_tmp(self, older_than: float = 3600.0, partials_older_than: float = 86400.0) -> int:
        """Remove leftovers of killed processes: staging files older than ``older_than``
        seconds, and resumable partial downloads untouched for ``partials_older_than``.

        Lock files stay: removing one that a live process holds would let a second
        process take a lock of its own on a new file.
        """
        n = 0
        now = time.time()
        for p in (self.root / "blobs" / "partial").glob("*.part"):
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime > partials_older_than:
                    p.unlink()
                    n += 1
        for p in (self.root / "tmp").iterdir():
            with contextlib.suppress(OSError):
                if now - p.lstat().st_mtime > older_than:
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink()
                    n += 1
        return n

    def unused_blobs(self) -> list[Path]:
        """Blobs that no compiled image's manifest names (its config or a layer)."""
        used: set[str] = set()
        for entry in self.entries():
            try:
                man = json.loads((entry.path / "manifest.json").read_bytes())
                used.add(man["config"]["digest"])
                used.update(layer["digest"] for layer in man["layers"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return [p for d, p in self.blobs.iter_blobs() if str(d) not in used]

    def verify(self, *, repair: bool = False) -> list[str]:
        """Re-hash every blob and compiled image; return one line per problem found.

        With ``repair``, damaged blobs and entries are removed.
        """
        problems: list[str] = []
        for digest, path in self.blobs.iter_blobs():
            if not digest.matches_file(path):
                problems.append(f"blob {digest.short}: content does not match its digest")
                if repair:
                    with contextlib.suppress(OSError):
                        os.chmod(path, 0o644)
                        path.unlink()
        for key in self.keys():
            path = self.entry_path(key)
            info, damage = _glance(path)
            written = damage == _WRITTEN  # the content may still be whole: hash it
            if damage is not None and not written:
                problems.append(f"compiled image {key[:12]}: {damage}")
            else:
                assert info is not None
                entry = CacheEntry(key, path, info)
                if not _matches_record(entry):
                    how = " (written to after it was built)" if written else ""
                    problems.append(f"compiled image {key[:12]} ({info.get('reference', '?')}): "
                                    f"content does not match its record{how}")
                elif written:
                    # Compile will not hand it out (it cannot hash every image it reuses).
                    problems.append(f"compiled image {key[:12]}: {_WRITTEN}; its content still "
                                    "matches its record")
                else:
                    self._verify_block_index(entry, problems, repair)
                    continue
            if repair:
                self.remove(key)
        return problems

    @staticmethod
    def _verify_block_index(entry: CacheEntry, problems: list[str], repair: bool) -> None:
        """Check the block index a squashfs entry keeps for recompiles; a damaged one is
        only a loss of speed (compiles pass it over), and repairing removes it alone."""
        from .squashfs.reuse import INDEX_FILE, check_index

        index = entry.path / INDEX_FILE
        if not index.is_file():
            return
        wrong = check_index(entry.image, index)
        if wrong is None:
            return
        problems.append(f"compiled image {entry.key[:12]}: its block index is damaged "
                        f"({wrong}); compiles do not use it")
        if repair:
            with contextlib.suppress(OSError):
                index.unlink()


def _read_info(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((path / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _matches_record(entry: CacheEntry) -> bool:
    """Whether the entry's image, manifest and config hash to what its record says."""
    if entry.info.get("squashfs_sha256") != Digest.of_file(entry.image).hex:
        return False
    if "verity" in entry.info:
        from .verity import record_damage

        if record_damage(entry.info["verity"], entry.image, hash_files=True) is not None:
            return False
    for name, field in (("manifest.json", "manifest_digest"), ("config.json", "config_digest")):
        p = entry.path / name
        if p.exists() and field in entry.info and str(Digest.of_file(p)) != entry.info[field]:
            return False
    return True


_UNREADABLE = f"its {INFO_FILE} cannot be read"
_WRITTEN = f"its {IMAGE_FILE} was written to after it was built (its mtime changed)"


def _glance(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """An entry directory's record (None when unreadable) and what a glance shows wrong
    with the entry (None when nothing)."""
    info = _read_info(path)
    return info, (_UNREADABLE if info is None else _damage(path, info))


def _damage(path: Path, info: dict[str, Any]) -> str | None:
    """What a glance shows wrong with an entry: its image missing, not the size its
    record says (after a crash, a file whose data never reached the disk is short), or
    written to since it was published (``-o`` may have placed a hard link to it, and a
    user with root's rights can write through one despite its 0444 mode)."""
    try:
        st = os.stat(path / IMAGE_FILE)
    except OSError:
        return f"its {IMAGE_FILE} is missing"
    if not stat.S_ISREG(st.st_mode):
        return f"its {IMAGE_FILE} is not a file"
    want = info.get("squashfs_size")
    if st.st_size != want:
        return f"its {IMAGE_FILE} holds {st.st_size} bytes, its record says {want}"
    built = info.get("squashfs_mtime_ns")  # absent in records written before it was kept
    if built is not None and st.st_mtime_ns != built:
        return _WRITTEN
    if "verity" in info:
        from .verity import record_damage

        return record_damage(info["verity"], path / IMAGE_FILE, hash_files=False)
    return None

