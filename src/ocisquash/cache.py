"""The cache of compiled images, beside the blob store.

Layout under the cache root::

    images/<key>/image.squashfs   the compiled image (read-only)
    images/<key>/manifest.json    the platform manifest, as received
    images/<key>/config.json      the image config, as received
    images/<key>/info.json        its CacheRecord: source, digests, platform, sizes, time
    images/<key>/image.squashfs.verity, .roothash, .roothash.p7s   with --verity
    images/<key>/blocks.idx       the squashfs's block index, for recompiles (squashfs/reuse.py)
    images/<key>/layer-*.idx      an index of each layer it applied (squashfs/layerindex.py)
    refs/<ref-key>                a reference (+ platform + options) → entry key
    locks/<key>.lock              held (flock) while one process builds <key>

``<key>`` is the sha256 of the platform manifest's digest, the squashfs writer's
format version and the output options, so any change that alters the bytes of
the output gives a new key. An entry is built in ``tmp/`` and published by one
``rename`` of its directory, after its files are fsynced: readers see a whole entry
or none, and so does the next boot after a crash.

Every use of an entry checks it against its record first, cheaply: the record must
hash back to the key, the manifest to the record's digest, the config to the digest
the manifest names, and the image must have the recorded size, mtime and inode. An
entry that fails (a crash of a kernel that lost the data, a file removed or replaced
by hand, another entry's files moved in) is not used: compile builds it again, and
``cache verify``, which also hashes the image, reports it.

A cache copied whole (``cp -a``, ``rsync -a``, a restored backup) has every image under
another inode, and one copied without its times under another mtime too. Such an
entry is hashed once where it is looked up by its key (a compile's hit, ``--pull
never``, the offline fallback) and by ``cache verify --repair``: when its files still
match its record, the record takes the image's new inode and mtime and the entry is
used; otherwise it is damaged, as above. Listing every entry (the sources of a
recompile's blocks) hashes none: an entry not adopted yet is passed over there.

The build lock is an ``flock``, which the kernel drops when its holder dies, so a
killed compile never leaves a lock behind. The directories and the rules that keep
other users out are in :mod:`ocisquash.safedir`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .digest import Digest
from .errors import CacheError, ManifestError, OcisquashError, OutputError
from .rules import FidelityIssue
from .safedir import PrivateDir, wait_for_lock
from .store import BLOB_DIRS, BlobStore, CacheDirs, default_cache_dir

IMAGE_FILE = "image.squashfs"
INFO_FILE = "info.json"
MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.json"
#: manifest.json and config.json are read whole on every hit; no genuine one is near this
_SMALL_FILE_LIMIT = 16 << 20
_KEY_RE = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheRecord:
    """An entry's ``info.json``: what was compiled, from where, and what its files must
    hash to. :meth:`to_json` and :meth:`from_json` round-trip it; a record written
    before a field existed reads that field as its default."""

    reference: str
    source: str
    #: the platform-specific image manifest's digest (the key's manifest)
    digest: Digest
    manifest_digest: Digest
    config_digest: Digest
    platform: str
    format: str
    format_version: str
    #: the output options of the key, as JSON
    options: dict[str, Any]
    squashfs_size: int
    squashfs_sha256: str
    files: int
    layers: int
    layer_bytes: int
    fidelity: tuple[FidelityIssue, ...] = ()
    #: the flatten and writer numbers of ``CompiledImage.stats``
    stats: dict[str, Any] = field(default_factory=dict)
    #: seconds since 1970 when the entry was built
    created: float = 0.0
    #: the multi-platform index the image was chosen from, if any
    index_digest: Digest | None = None
    #: the dm-verity files' record (``verity.record``), with ``--verity``
    verity: dict[str, Any] | None = None
    #: "compiled" here, or "published": fetched from a registry (``publish.py``)
    origin: str = "compiled"
    #: the digest of the published artifact it was fetched from
    artifact: str | None = None
    #: set by :meth:`ImageCache.publish`
    key: str = ""
    #: the image file as published: a later write changes them
    squashfs_mtime_ns: int | None = None
    squashfs_ino: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``info.json`` holds."""
        out: dict[str, Any] = {
            "reference": self.reference, "source": self.source, "digest": str(self.digest),
            "manifest_digest": str(self.manifest_digest),
            "config_digest": str(self.config_digest), "platform": self.platform,
            "index_digest": str(self.index_digest) if self.index_digest else None,
            "format": self.format, "format_version": self.format_version,
            "options": self.options, "squashfs_size": self.squashfs_size,
            "squashfs_sha256": self.squashfs_sha256, "files": self.files,
            "layers": self.layers, "layer_bytes": self.layer_bytes,
            "fidelity": [i.to_json() for i in self.fidelity], "stats": self.stats,
            "created": self.created, "key": self.key,
        }
        if self.origin != "compiled":
            out["origin"] = self.origin
        for name, value in (("artifact", self.artifact), ("verity", self.verity),
                            ("squashfs_mtime_ns", self.squashfs_mtime_ns),
                            ("squashfs_ino", self.squashfs_ino)):
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_json(cls, doc: object) -> CacheRecord:
        """The record of an ``info.json``; ``CacheError`` when it is not one."""
        try:
            if not isinstance(doc, dict):
                raise TypeError("not an object")
            index = doc.get("index_digest")
            return cls(
                reference=str(doc.get("reference", "")), source=str(doc.get("source", "")),
                digest=Digest.parse(str(doc["digest"])),
                manifest_digest=Digest.parse(str(doc["manifest_digest"])),
                config_digest=Digest.parse(str(doc["config_digest"])),
                platform=str(doc.get("platform", "")),
                format=str(doc.get("format", "squashfs")),
                format_version=str(doc["format_version"]),
                options=dict(doc["options"]),
                squashfs_size=int(doc["squashfs_size"]),
                squashfs_sha256=str(doc["squashfs_sha256"]),
                files=int(doc.get("files", 0)), layers=int(doc.get("layers", 0)),
                layer_bytes=int(doc.get("layer_bytes", 0)),
                fidelity=tuple(FidelityIssue.from_json(i) for i in doc.get("fidelity", ())),
                stats=dict(doc.get("stats", {})), created=float(doc.get("created", 0)),
                index_digest=Digest.parse(str(index)) if index else None,
                verity=dict(doc["verity"]) if doc.get("verity") is not None else None,
                origin=str(doc.get("origin", "compiled")),
                artifact=str(doc["artifact"]) if doc.get("artifact") is not None else None,
                key=str(doc.get("key", "")),
                squashfs_mtime_ns=_int_or_none(doc.get("squashfs_mtime_ns")),
                squashfs_ino=_int_or_none(doc.get("squashfs_ino")))
        except (KeyError, TypeError, ValueError, OcisquashError) as e:
            raise CacheError(f"not a cache record: {e}") from None


def _int_or_none(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


@dataclass(frozen=True)
class CacheEntry:
    """One compiled image in the cache."""

    key: str
    path: Path
    record: CacheRecord
    _images: PrivateDir = field(repr=False, compare=False)

    @property
    def image(self) -> Path:
        return self.path / IMAGE_FILE

    @property
    def size(self) -> int:
        with _open_entry(self._images, self.key) as d:
            return sum(st.st_size for name in d.listdir()
                       if stat.S_ISREG((st := d.lstat(name)).st_mode))

    @property
    def created(self) -> float:
        return self.record.created

    def read(self, name: str) -> bytes:
        """One small file of the entry (``manifest.json``, ``config.json``)."""
        with _open_entry(self._images, self.key) as d:
            return d.read_bytes(name, _SMALL_FILE_LIMIT)


@dataclass(frozen=True)
class Pruned:
    """What :meth:`ImageCache.prune` removed."""

    images: int
    blobs: int
    #: staging directories and partial downloads left by killed processes
    temporary: int


def entry_key(manifest_digest: Digest, format_version: str, options: dict[str, Any]) -> str:
    """The cache key of a compile: manifest digest + writer format version + output options."""
    blob = json.dumps(
        {"manifest": str(manifest_digest), "format": format_version, "options": options},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class ImageCache:
    """Compiled images plus the blob store they share a root with.

    The root must belong to the user and be writable by nobody else (``CacheError``
    otherwise). ``lock_timeout`` bounds every wait for another process's build or
    download (None: no bound).
    """

    def __init__(self, root: Path | str | None = None, *,
                 lock_timeout: float | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.lock_timeout = lock_timeout
        self.dirs = CacheDirs(self.root, (*BLOB_DIRS, "images", "refs", "locks"))
        self.blobs = BlobStore(self.root, lock_timeout=lock_timeout, dirs=self.dirs)
        self._images = self.dirs.get("images")
        self._refs = self.dirs.get("refs")
        self._tmp = self.dirs.get("tmp")

    # -- entries -----------------------------------------------------------------
    def entry_path(self, key: str) -> Path:
        return self.root / "images" / key

    def get(self, key: str) -> CacheEntry | None:
        """The published entry for ``key``, or None (also when it is damaged, see
        :meth:`damage`). An entry whose image is another file than its record says (a
        copied cache) is hashed, and used when it still matches (see :meth:`adopt`)."""
        record, damage = self._glance(key)
        if record is not None and damage in _MAYBE_WHOLE:
            record = self.adopt(key, record)
            damage = None if record is not None else damage
        if record is None or damage is not None:
            return None
        return CacheEntry(key, self.entry_path(key), record, self._images)

    def adopt(self, key: str, record: CacheRecord) -> CacheRecord | None:
        """Hash the image of entry ``key``, whose inode or mtime is not its record's; if
        its files still match the record, record the image as it is now and return the
        new record, else None. The record's key fields are unchanged, so the entry
        stays the same entry."""
        from .progress import human_size

        if not self._image_matches_record(key, record):
            return None
        try:
            with _open_entry(self._images, key) as d:
                st = d.lstat(IMAGE_FILE)
                info = record.to_json()
                info.update(squashfs_mtime_ns=st.st_mtime_ns, squashfs_ino=st.st_ino)
                d.write_atomic(INFO_FILE, json.dumps(info, indent=2, sort_keys=True).encode(),
                               mode=0o444)
                adopted = _read_record(d)
                if adopted is None or _damage(d, key, adopted) is not None:
                    return None
        except (OSError, CacheError):
            return None
        log.info("cache entry %s was copied or moved (its image is another file than its "
                 "record said); its %s still match its record, so it is used",
                 key[:12], human_size(record.squashfs_size))
        return adopted

    def damage(self, key: str) -> str | None:
        """Why the entry directory of ``key`` cannot be used, or None when it is whole or
        absent."""
        try:
            self._images.lstat(key)
        except FileNotFoundError:
            return None
        except OSError as e:
            return f"it cannot be read: {e.strerror}"
        return self._glance(key)[1]

    def _glance(self, key: str) -> tuple[CacheRecord | None, str | None]:
        try:
            with _open_entry(self._images, key) as d:
                return _glance(d, key)
        except (OSError, CacheError):
            return None, "its directory cannot be opened"

    def keys(self) -> list[str]:
        """The keys of every entry directory, whole or damaged."""
        return self._images.listdir()

    def entries(self) -> list[CacheEntry]:
        """Every usable entry (damaged ones are left out; see :meth:`verify`)."""
        return self.listing()[0]

    def listing(self) -> tuple[list[CacheEntry], int]:
        """:meth:`entries`, and how many it leaves out only because their image is
        another file than their record says (a copied cache; see :meth:`adopt`): each
        entry glanced at once."""
        usable, unchecked = [], 0
        for key in self.keys():
            record, damage = self._glance(key)
            if record is not None and damage is None:
                usable.append(CacheEntry(key, self.entry_path(key), record, self._images))
            elif damage in _MAYBE_WHOLE:
                unchecked += 1
        return usable, unchecked

    @contextlib.contextmanager
    def build_lock(self, key: str, what: str = "") -> Iterator[None]:
        """Hold the build lock of ``key``; waits while another process holds it (saying so
        after a few seconds, giving up after ``lock_timeout``)."""
        name = f"{key}.lock"
        try:
            fd = self.dirs.get("locks").open_fd(name, os.O_RDWR | os.O_CREAT)
        except OSError as e:
            raise CacheError(f"cannot open lock {self.root / 'locks' / name}: "
                             f"{e.strerror}") from e
        try:
            wait_for_lock(fd, f"the build of {what or 'cache entry ' + key[:12]} "
                              f"({self.root / 'locks' / name})", self.lock_timeout)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh directory in ``tmp/`` to build an entry in; removed unless published."""
        name = f"build-{secrets.token_hex(8)}"
        try:
            os.mkdir(name, 0o700, dir_fd=self._tmp.fd)
        except OSError as e:
            raise OutputError(f"cannot create a staging directory in {self._tmp.path}: "
                              f"{e.strerror}") from e
        try:
            yield self._tmp.path / name
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(name, dir_fd=self._tmp.fd, ignore_errors=True)

    def publish(self, key: str, staged: Path, record: CacheRecord) -> CacheEntry:
        """Move a fully written staging directory into place as entry ``key``, with
        ``record`` as its ``info.json`` (its key, and its time when it has none, set)."""
        info = record.to_json()
        info.update(key=key, created=record.created or time.time())
        try:
            with _open_entry(self._tmp, staged.name) as d:
                for name in d.listdir():
                    fd = d.open_fd(name)
                    try:
                        os.fsync(fd)
                        if name == IMAGE_FILE:
                            st = os.fstat(fd)
                            # Any later write changes the mtime, also one through a hard
                            # link that -o made; a file put in its place has another inode.
                            info["squashfs_mtime_ns"] = st.st_mtime_ns
                            info["squashfs_ino"] = st.st_ino
                    finally:
                        os.close(fd)
                d.write_atomic(INFO_FILE, json.dumps(info, indent=2, sort_keys=True).encode())
                for name in d.listdir():
                    fd = d.open_fd(name)
                    try:
                        os.fchmod(fd, 0o444)
                    finally:
                        os.close(fd)
            try:
                os.rename(staged.name, key, src_dir_fd=self._tmp.fd, dst_dir_fd=self._images.fd)
                self._images.fsync()
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # Someone published the same key (same bytes); keep theirs.
                shutil.rmtree(staged.name, dir_fd=self._tmp.fd, ignore_errors=True)
        except OSError as e:
            raise OutputError(f"cannot publish cache entry in {self.root}: {e.strerror}") from e
        entry = self.get(key)
        if entry is None:
            raise CacheError(f"cache entry {key[:12]} vanished right after it was published")
        return entry

    def remove(self, key: str) -> bool:
        """Remove entry ``key`` (renamed away first, so readers never see half of it)."""
        doomed = f"rm-{secrets.token_hex(8)}"
        try:
            os.rename(key, doomed, src_dir_fd=self._images.fd, dst_dir_fd=self._tmp.fd)
        except FileNotFoundError:
            return False
        shutil.rmtree(doomed, dir_fd=self._tmp.fd, ignore_errors=True)
        for ref in self._refs.listdir():
            with contextlib.suppress(OSError):
                if self._refs.read_bytes(ref, 256).strip() == key.encode():
                    self._refs.unlink(ref)
        return True

    # -- reference → key records ------------------------------------------------
    @staticmethod
    def ref_key(reference: str, platform: str, options: dict[str, Any], format_version: str) -> str:
        blob = json.dumps([reference, platform, options, format_version], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def lookup_ref(self, ref_key: str) -> CacheEntry | None:
        try:
            key = self._refs.read_bytes(ref_key, 256).decode("ascii", "replace").strip()
        except OSError:
            return None
        return self.get(key) if _KEY_RE.fullmatch(key) else None

    def record_ref(self, ref_key: str, key: str) -> None:
        with contextlib.suppress(OSError):
            if self._refs.read_bytes(ref_key, 256) == key.encode():
                return  # a cache hit: no write, no fsync
        with contextlib.suppress(OSError):
            self._refs.write_atomic(ref_key, key.encode())

    # -- maintenance -------------------------------------------------------------
    def clean_tmp(self, older_than: float = 3600.0, partials_older_than: float = 3600.0) -> int:
        """Remove leftovers of killed processes: staging directories and temporary files
        untouched for ``older_than`` seconds, and partial downloads untouched for
        ``partials_older_than`` that no process is writing.

        Lock files stay: removing one that a live process holds would let a second
        process take a lock of its own on a new file.
        """
        n = 0
        now = time.time()
        partial = self.dirs.partial
        for name in partial.listdir():
            if not name.endswith(".part"):
                continue
            with contextlib.suppress(OSError):
                if now - partial.lstat(name).st_mtime > partials_older_than \
                        and not _locked(partial, name.removesuffix(".part") + ".lock"):
                    partial.unlink(name)
                    n += 1
        tmp = self._tmp
        for name in tmp.listdir():
            with contextlib.suppress(OSError):
                st = tmp.lstat(name)
                if stat.S_ISDIR(st.st_mode):
                    if now - _newest_mtime(tmp, name, st.st_mtime) > older_than:
                        shutil.rmtree(name, dir_fd=tmp.fd, ignore_errors=True)
                        n += 1
                elif now - st.st_mtime > older_than:
                    tmp.unlink(name)
                    n += 1
        return n

    def unused_blobs(self) -> list[Path]:
        """Blobs that no compiled image's manifest names (its config or a layer)."""
        used: set[str] = set()
        for entry in self.entries():
            try:
                man = json.loads(entry.read(MANIFEST_FILE))
                used.add(man["config"]["digest"])
                used.update(layer["digest"] for layer in man["layers"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return [p for d, p in self.blobs.iter_blobs() if str(d) not in used]

    def matching(self, target: str) -> list[CacheEntry]:
        """The entries ``target`` names (what ``cache rm`` removes): the reference or
        source as compiled, the image digest, or a prefix of the key or the digest."""
        return [e for e in self.entries()
                if target in (e.record.reference, e.record.source, str(e.record.digest))
                or e.key.startswith(target) or str(e.record.digest).startswith(target)]

    def prune(self, *, older_than: float | None = None, max_size: int | None = None,
              blobs: bool = False, now: float | None = None) -> Pruned:
        """Remove the entries built more than ``older_than`` seconds ago, then the oldest
        of the rest until they take at most ``max_size`` bytes; with ``blobs`` the blobs
        no remaining entry uses; and the leftovers of killed processes (``clean_tmp``)."""
        now = time.time() if now is None else now
        entries = sorted(self.entries(), key=lambda e: e.created, reverse=True)
        images = 0
        if older_than is not None:
            for e in [e for e in entries if now - e.created > older_than]:
                self.remove(e.key)
                entries.remove(e)
                images += 1
        if max_size is not None:
            total = 0
            for e in entries:  # the newest are kept
                total += e.size
                if total > max_size:
                    self.remove(e.key)
                    images += 1
        unused = 0
        if blobs:
            for path in self.unused_blobs():
                path.unlink(missing_ok=True)
                unused += 1
        return Pruned(images, unused, self.clean_tmp())

    def verify(self, *, repair: bool = False) -> list[str]:
        """Re-hash every blob and compiled image; return one line per problem found.

        An entry is checked against its record (the image's sha256, size, mtime and
        inode), its manifest against the digest its key was made from, and its config
        against the manifest. With ``repair``, damaged blobs and entries are removed.
        """
        problems: list[str] = []
        for digest, _path in self.blobs.iter_blobs():
            if not self.blobs.matches(digest):
                problems.append(f"blob {digest.short}: content does not match its digest")
                if repair:
                    with contextlib.suppress(OSError):
                        self.blobs.remove(digest)  # no chmod: unlinking needs none
        for key in self.keys():
            record, damage = self._glance(key)
            moved = damage in _MAYBE_WHOLE  # the content may still be whole: hash it
            if damage is not None and not moved:
                problems.append(f"compiled image {key[:12]}: {damage}")
            else:
                assert record is not None
                if not self._image_matches_record(key, record):
                    how = " (written to after it was built)" if damage == _WRITTEN else ""
                    problems.append(f"compiled image {key[:12]} ({record.reference or '?'}): "
                                    f"content does not match its record{how}")
                elif moved and not (repair and self.adopt(key, record)):
                    # Listing entries does not hash them: a recompile passes it over.
                    problems.append(f"compiled image {key[:12]}: {damage}; its content still "
                                    "matches its record ('cache verify --repair' records it "
                                    "as it is now)")
                    continue
                else:
                    entry = CacheEntry(key, self.entry_path(key), record, self._images)
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
            ImageCache._verify_layer_indexes(entry, index, problems, repair)
            return
        problems.append(f"compiled image {entry.key[:12]}: its block index is damaged "
                        f"({wrong}); compiles do not use it")
        if repair:
            with contextlib.suppress(OSError):
                index.unlink()

    @staticmethod
    def _verify_layer_indexes(entry: CacheEntry, index: Path, problems: list[str],
                              repair: bool) -> None:
        """Check the layer indexes beside a sound block index: each must read back whole,
        name only blocks the block index holds, and find each tail where it says. A
        damaged one is only a loss of speed (compiles decode that layer), and repairing
        removes it alone."""
        from .squashfs.layerindex import LAYER_INDEX_GLOB, check_layer_indexes

        paths = sorted(entry.path.glob(LAYER_INDEX_GLOB))
        for path, wrong in check_layer_indexes(entry.image, index, paths):
            problems.append(f"compiled image {entry.key[:12]}: its layer index {path.name} "
                            f"is damaged ({wrong}); compiles decode that layer instead")
            if repair:
                with contextlib.suppress(OSError):
                    path.unlink()

    def _image_matches_record(self, key: str, record: CacheRecord) -> bool:
        """Whether the entry's image (and its verity files) hash to what its record says."""
        try:
            with _open_entry(self._images, key) as d, \
                    os.fdopen(d.open_fd(IMAGE_FILE), "rb") as f:
                h = hashlib.sha256()
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except (OSError, CacheError):
            return False
        if record.squashfs_sha256 != h.hexdigest():
            return False
        if record.verity is not None:
            from .verity import record_damage

            return record_damage(record.verity, self.entry_path(key) / IMAGE_FILE,
                                 hash_files=True) is None
        return True


@contextlib.contextmanager
def _open_entry(parent: PrivateDir, name: str) -> Iterator[PrivateDir]:
    """The directory ``name`` in ``parent`` (not a symlink), opened for the block."""
    if not name or "/" in name or name in (".", ".."):
        raise FileNotFoundError(errno.ENOENT, "no such entry", name)
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                 dir_fd=parent.fd)
    d = PrivateDir(parent.path / name, fd)
    try:
        yield d
    finally:
        d.close()


def _locked(d: PrivateDir, lock_name: str) -> bool:
    """Whether a process holds the lock file ``lock_name`` of ``d``."""
    try:
        fd = os.open(lock_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d.fd)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _newest_mtime(parent: PrivateDir, name: str, own: float) -> float:
    """The newest mtime of a staging directory and the files in it: a build that is
    still writing its image keeps that file's mtime fresh."""
    newest = own
    with contextlib.suppress(OSError), _open_entry(parent, name) as d:
        for child in d.listdir():
            with contextlib.suppress(OSError):
                newest = max(newest, d.lstat(child).st_mtime)
    return newest


def _read_record(d: PrivateDir) -> CacheRecord | None:
    try:
        return CacheRecord.from_json(json.loads(d.read_bytes(INFO_FILE, _SMALL_FILE_LIMIT)))
    except (OSError, ValueError, CacheError):
        return None


_UNREADABLE = f"its {INFO_FILE} cannot be read"
_WRITTEN = f"its {IMAGE_FILE} was written to after it was built (its mtime changed)"
_MOVED = f"its {IMAGE_FILE} is another file than its record says (another inode)"
#: What a glance sees of an image that may still be whole: copied with the cache, or
#: touched; hashing it tells (see :meth:`ImageCache.adopt`).
_MAYBE_WHOLE = (_WRITTEN, _MOVED)


def _glance(d: PrivateDir, key: str) -> tuple[CacheRecord | None, str | None]:
    """An entry directory's record (None when unreadable) and what a glance shows wrong
    with the entry (None when nothing)."""
    record = _read_record(d)
    return record, (_UNREADABLE if record is None else _damage(d, key, record))


def _damage(d: PrivateDir, key: str, record: CacheRecord) -> str | None:
    """What a glance shows wrong with an entry, cheaply enough for every hit.

    * its image missing, not the size its record says (after a crash, a file whose
      data never reached the disk is short), written to since it was published (``-o``
      may have placed a hard link to it, and a user with root's rights can write
      through one despite its 0444 mode), or another file (another inode);
    * its record not the one its key was made from (the key is the hash of the
      manifest digest, format version and options the record names);
    * its manifest not hashing to that digest, or its config not to the digest the
      manifest names (or either missing).
    """
    try:
        st = d.lstat(IMAGE_FILE)
    except OSError:
        return f"its {IMAGE_FILE} is missing"
    if not stat.S_ISREG(st.st_mode):
        return f"its {IMAGE_FILE} is not a file"
    want = record.squashfs_size
    if st.st_size != want:
        return f"its {IMAGE_FILE} holds {st.st_size} bytes, its record says {want}"
    built = record.squashfs_mtime_ns  # absent in records written before it was kept
    if built is not None and st.st_mtime_ns != built:
        return _WRITTEN
    ino = record.squashfs_ino
    if ino is not None and st.st_ino != ino:
        return _MOVED
    manifest_digest = record.manifest_digest
    try:
        recorded_key = entry_key(manifest_digest, record.format_version, record.options)
    except (TypeError, ValueError):
        return f"its {INFO_FILE} names options that are not JSON"
    if recorded_key != key:
        return f"its {INFO_FILE} is the record of another image (its key would be {recorded_key[:12]})"
    try:
        manifest = d.read_bytes(MANIFEST_FILE, _SMALL_FILE_LIMIT)
    except OSError:
        return f"its {MANIFEST_FILE} is missing"
    if Digest.of(manifest, manifest_digest.algorithm) != manifest_digest:
        return f"its {MANIFEST_FILE} does not match the digest it was compiled from"
    try:
        config_digest = Digest.parse(json.loads(manifest)["config"]["digest"])
    except (ValueError, KeyError, TypeError, ManifestError):
        return f"its {MANIFEST_FILE} names no config"
    try:
        config = d.read_bytes(CONFIG_FILE, _SMALL_FILE_LIMIT)
    except OSError:
        return f"its {CONFIG_FILE} is missing"
    if Digest.of(config, config_digest.algorithm) != config_digest:
        return f"its {CONFIG_FILE} does not match the digest its manifest names"
    if record.verity is not None:
        from .verity import record_damage

        return record_damage(record.verity, d.path / IMAGE_FILE, hash_files=False)
    return None

