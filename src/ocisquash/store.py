"""Content-addressed blob store under the cache directory.

Layout (``ROOT`` is ``$XDG_CACHE_HOME/ocisquash`` unless overridden)::

    ROOT/blobs/sha256/<hex>          verified blobs, read-only once published
    ROOT/blobs/partial/<hex>.part    an interrupted download, resumed from its length
    ROOT/blobs/partial/<hex>.lock    held (``fcntl``) by the one writer of that blob
    ROOT/tmp/                        scratch of the image cache and of archives

A blob is written into its partial file, and published only after its digest and size
were checked, by fsyncing that file and renaming it onto its final name, so a crash
never leaves a half blob under a digest name. Only one writer at a time holds a
blob's partial (the lock): a second process downloading the same blob waits, then
finds it published, or resumes the partial the first one left. Small files outside
the blob store (``write_atomic``) go through a fsynced temporary file beside the
target and a rename.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .digest import Digest
from .errors import CacheError, DigestMismatchError, OutputError, SizeMismatchError
from .safedir import PrivateDir, wait_for_lock


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ocisquash``, else ``~/.cache/ocisquash``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ocisquash"


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fsync_path(path, os.O_DIRECTORY)


def fsync_path(path: Path, flags: int = 0) -> None:
    """Write the file (or, with ``os.O_DIRECTORY``, the directory) at ``path`` to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


class BlobWriter:
    """Receives one blob's bytes, hashing as it goes; ``commit()`` verifies and publishes.

    ``offset`` is how many bytes a previous, interrupted attempt already holds:
    a downloader asks the server for the rest with a ``Range`` request, or calls
    ``restart()`` when the server cannot resume.
    """

    def __init__(self, store: BlobStore, digest: Digest, size: int | None, part: Path, lock_fd: int) -> None:
        self._store = store
        self.digest = digest
        self.size = size
        self._part = part
        self._lock_fd = lock_fd
        self._hash = hashlib.new(digest.algorithm)
        fd = store.dirs.partial.open_fd(part.name, os.O_RDWR | os.O_CREAT | os.O_APPEND)
        # Unbuffered: every chunk goes to the file at once (compile reads the partial while
        # it grows), and a write that failed is never tried again behind our back on close.
        self._file: BinaryIO = os.fdopen(fd, "ab+", buffering=0)
        self._file.seek(0)
        while chunk := self._file.read(1 << 20):
            self._hash.update(chunk)
        self.offset = self._file.tell()
        #: some bytes came from an earlier request at some point (a downloader sets it when
        #: the server resumes): when the whole does not verify, they may be what was wrong
        self.resumed = self.offset > 0
        if size is not None and self.offset > size:
            self.restart()

    def restart(self) -> None:
        """Drop what an earlier attempt left; start from byte 0."""
        self._file.seek(0)
        self._file.truncate()
        self._hash = hashlib.new(self.digest.algorithm)
        self.offset = 0

    def write(self, data: bytes) -> None:
        if self.size is not None and self.offset + len(data) > self.size:
            self.restart()
            raise SizeMismatchError(
                f"blob is longer than the expected {self.size} bytes", context=f"blob {self.digest.short}"
            )
        try:
            # On disk before anyone hears of it: compile reads a layer from the partial
            # file while it downloads, up to the offset the progress events report.
            view = memoryview(data)
            while view:
                n = self._file.write(view)
                if not n:
                    raise OSError(errno.EIO, "the file took no bytes")
                view = view[n:]
        except OSError as e:
            self._cut_to_offset()
            raise OutputError(f"cannot write {self._part}: {e.strerror}") from e
        self._hash.update(data)
        self.offset += len(data)

    def _cut_to_offset(self) -> None:
        """After a failed write (a full disk), drop the part of the chunk that reached the
        file, so the partial ends where its hash does."""
        with contextlib.suppress(OSError, ValueError):
            os.ftruncate(self._file.fileno(), self.offset)

    def commit(self) -> Path:
        """Verify size and digest, then publish the blob; on mismatch drop the bytes and raise."""
        try:
            if self.size is not None and self.offset != self.size:
                raise SizeMismatchError(
                    f"blob ended after {self.offset} of {self.size} bytes",
                    context=f"blob {self.digest.short}",
                )
            got = self._hash.hexdigest()
            if got != self.digest.hex:
                self.restart()
                raise DigestMismatchError(
                    f"content has digest {self.digest.algorithm}:{got[:12]}…, "
                    f"expected {self.digest}",
                    context=f"blob {self.digest.short}",
                )
            dirs = self._store.dirs
            target = dirs.algorithm(self.digest.algorithm)
            try:
                self._file.flush()
                os.fchmod(self._file.fileno(), 0o444)
                os.fsync(self._file.fileno())
                self._file.close()
                os.rename(self._part.name, self.digest.hex, src_dir_fd=dirs.partial.fd,
                          dst_dir_fd=target.fd)
                target.fsync()
            except OSError as e:
                raise OutputError(f"cannot publish blob {self.digest.short} in {self._store.root}: {e.strerror}") from e
            return self._store.blob_path(self.digest)
        finally:
            self.close()

    def close(self) -> None:
        """Keep what was written as a resumable partial and release the lock."""
        if not self._file.closed:
            with contextlib.suppress(OSError):
                self._file.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


class CacheDirs:
    """The open, checked directories of a cache root (see :mod:`ocisquash.safedir`)."""

    def __init__(self, root: Path, names: tuple[str, ...]) -> None:
        self.root = PrivateDir.open(root)
        self._subs: dict[str, PrivateDir] = {}
        for name in names:
            self.get(name)

    def get(self, name: str) -> PrivateDir:
        """The subdirectory ``name`` (``a/b`` for nested ones), opened and checked once."""
        found = self._subs.get(name)
        if found is None:
            parent, _, leaf = name.rpartition("/")
            found = (self.get(parent) if parent else self.root).sub(leaf)
            self._subs[name] = found
        return found

    @property
    def partial(self) -> PrivateDir:
        return self.get("blobs/partial")

    @property
    def tmp(self) -> PrivateDir:
        return self.get("tmp")

    def algorithm(self, algorithm: str) -> PrivateDir:
        return self.get(f"blobs/{algorithm}")


class BlobStore:
    """Verified blobs, shared between images and processes.

    The cache directory must belong to the user and be writable by nobody else
    (``CacheError`` otherwise, see :mod:`ocisquash.safedir`). ``lock_timeout`` bounds
    the wait for a blob another process is downloading (None: no bound).
    """

    def __init__(self, root: Path | str | None = None, *, lock_timeout: float | None = None,
                 dirs: CacheDirs | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.lock_timeout = lock_timeout
        self.dirs = dirs if dirs is not None else CacheDirs(self.root, BLOB_DIRS)

    def blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def partial_path(self, digest: Digest) -> Path:
        """Where a download of ``digest`` keeps its bytes until they are verified."""
        return self.root / "blobs" / "partial" / f"{digest.algorithm}-{digest.hex}.part"

    def has(self, digest: Digest) -> bool:
        return self.dirs.algorithm(digest.algorithm).is_file(digest.hex)

    def open(self, digest: Digest) -> BinaryIO:
        """Open a stored blob for reading; ``FileNotFoundError`` when absent (also when a
        symlink stands in its place)."""
        try:
            fd = self.dirs.algorithm(digest.algorithm).open_fd(digest.hex)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise FileNotFoundError(errno.ENOENT, "a symlink, not a blob",
                                        str(self.blob_path(digest))) from e
            raise
        return os.fdopen(fd, "rb")

    def read_bytes(self, digest: Digest) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def matches(self, digest: Digest) -> bool:
        """Whether the stored blob is there and hashes to ``digest``."""
        try:
            with self.open(digest) as f:
                h = digest.hasher()
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except OSError:
            return False
        return h.hexdigest() == digest.hex

    def remove(self, digest: Digest) -> None:
        """Drop the stored blob (absent is fine)."""
        with contextlib.suppress(FileNotFoundError):
            self.dirs.algorithm(digest.algorithm).unlink(digest.hex)

    @contextlib.contextmanager
    def writer(self, digest: Digest, size: int | None = None) -> Iterator[BlobWriter]:
        """A writer for ``digest``; waits while another process writes the same blob.

        Leave the ``with`` block without ``commit()`` (or with an exception) and the
        bytes stay as a partial that the next writer resumes.
        """
        part = self.partial_path(digest)
        lock_name = part.with_suffix(".lock").name
        try:
            lock_fd = self.dirs.partial.open_fd(lock_name, os.O_RDWR | os.O_CREAT)
        except OSError as e:
            raise CacheError(f"cannot open lock {part.with_suffix('.lock')}: {e.strerror}") from e
        try:
            wait_for_lock(lock_fd, f"the download of blob {digest.short} "
                                   f"({part.with_suffix('.lock')})", self.lock_timeout)
            w = BlobWriter(self, digest, size, part, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise
        try:
            yield w
        finally:
            w.close()

    def put_stream(self, digest: Digest, size: int | None, stream: BinaryIO) -> Path:
        """Copy ``stream`` into the store, verifying it; return the blob's path."""
        if self.has(digest):
            return self.blob_path(digest)
        with self.writer(digest, size) as w:
            if self.has(digest):
                return self.blob_path(digest)
            w.restart()
            while chunk := stream.read(1 << 20):
                w.write(chunk)
            return w.commit()

    def put_bytes(self, digest: Digest, data: bytes) -> Path:
        """Store a small blob already in memory (a manifest or config), verifying it."""
        import io

        return self.put_stream(digest, len(data), io.BytesIO(data))

    def iter_blobs(self) -> Iterator[tuple[Digest, Path]]:
        for algo in ("sha256", "sha512"):
            d = self.dirs.algorithm(algo)
            for name in d.listdir():
                yield Digest(algo, name), d.path / name


#: the directories a blob store keeps under its root
BLOB_DIRS = ("blobs/sha256", "blobs/sha512", "blobs/partial", "tmp")
