"""Content digests and a reader that verifies hash and size at end of stream.

A blob is trusted only after every byte of it has been hashed and counted; the
check runs when the wrapped stream reaches EOF, so callers must read to the end
(``drain()`` does that for them).
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import threading
import weakref
from dataclasses import dataclass
from typing import BinaryIO

from .errors import DigestMismatchError, ManifestError, SizeMismatchError

_ALGORITHMS = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A content digest such as ``sha256:e3b0…``; only sha256 and sha512 are accepted."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``ALGO:HEX``; raise ``ManifestError`` when it is not a valid digest."""
        m = _DIGEST_RE.match(text)
        if not m:
            raise ManifestError(f"invalid digest {text!r}")
        algorithm, hexpart = m.group(1), m.group(2)
        length = _ALGORITHMS.get(algorithm)
        if length is None:
            raise ManifestError(f"unsupported digest algorithm {algorithm!r} in {text!r}")
        if len(hexpart) != length or not re.fullmatch(r"[0-9a-f]+", hexpart):
            raise ManifestError(f"invalid {algorithm} digest {text!r}")
        return cls(algorithm, hexpart)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of ``data``."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    @classmethod
    def of_file(cls, path: str | os.PathLike[str], algorithm: str = "sha256") -> Digest:
        """The digest of a file's contents, read in 1 MiB pieces."""
        h = hashlib.new(algorithm)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return cls(algorithm, h.hexdigest())

    def matches_file(self, path: str | os.PathLike[str]) -> bool:
        """Whether the file at ``path`` has this digest."""
        return Digest.of_file(path, self.algorithm) == self

    def hasher(self) -> hashlib._Hash:
        """A fresh hash object of this digest's algorithm."""
        return hashlib.new(self.algorithm)

    @property
    def short(self) -> str:
        """``sha256:0123456789ab`` — for messages."""
        return f"{self.algorithm}:{self.hex[:12]}"

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def verify_bytes(data: bytes, digest: Digest, size: int | None = None, *, what: str = "blob") -> None:
    """Raise ``SizeMismatchError``/``DigestMismatchError`` unless ``data`` matches."""
    if size is not None and len(data) != size:
        raise SizeMismatchError(
            f"size is {len(data)} bytes, expected {size}", context=f"{what} {digest.short}"
        )
    actual = hashlib.new(digest.algorithm, data).hexdigest()
    if actual != digest.hex:
        raise DigestMismatchError(
            f"content has digest {digest.algorithm}:{actual[:12]}…, expected {digest}",
            context=f"{what} {digest.short}",
        )


#: Whether long streams are hashed on a thread of their own (see :class:`HashBehind`):
#: on two cores both already compress at the defaults, and the hand-overs cost more than
#: they give (``bench/README.md``, "Mechanisms and what they buy").
HASH_BEHIND = (os.cpu_count() or 1) >= 4


class HashBehind:
    """A hash of a long stream, computed behind the thread that feeds it.

    A layer's gzip stream is one serial chain: read the blob, hash it, decode it, hash
    the tar, and a big layer's compile waits for that chain; the two hashes are about a
    third of it. With ``behind`` (default :data:`HASH_BEHIND`), ``update`` hands the
    bytes to a hashing thread of its own and returns; the pieces are hashed in order
    there (hashlib lets the GIL go while it hashes). Without it, or for a stream shorter
    than ``BATCH``, ``update`` hashes at once and no thread is started. What it buys:
    ``bench/README.md``.

    ``update`` takes ``bytes`` only, never a buffer that is reused. ``hexdigest`` waits
    for what is queued. ``close`` (or losing the object) ends the thread; after it,
    ``update`` hashes at once and ``hexdigest`` still answers, so a feeder closes it as
    soon as its stream ends or breaks, not only when it is closed itself: a reader
    held by an exception's traceback would otherwise keep an idle thread.
    """

    #: bytes gathered before they are handed to the hashing thread
    BATCH = 1 << 20
    #: batches queued ahead of the hashing thread
    QUEUED = 4

    def __init__(self, algorithm: str, *, behind: bool | None = None) -> None:
        self.name = algorithm
        self._hash = hashlib.new(algorithm)
        self._behind = HASH_BEHIND if behind is None else behind
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._queue: queue.Queue[list[bytes] | None] | None = None
        self._failed: list[BaseException] = []
        self._stop: weakref.finalize[..., HashBehind] | None = None

    def update(self, data: bytes) -> None:
        if not self._behind:
            self._hash.update(data)
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= self.BATCH:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._queue is None:
            q: queue.Queue[list[bytes] | None] = queue.Queue(self.QUEUED)
            self._queue = q
            thread = threading.Thread(target=_hash_batches, args=(q, self._hash, self._failed),
                                      name="ocisquash-hash", daemon=True)
            thread.start()
            self._stop = weakref.finalize(self, _stop_hashing, q, thread)
            self._stop.atexit = False  # a daemon thread; nothing to wait for at exit
        self._queue.put(self._pending)
        self._pending = []
        self._pending_size = 0

    def hexdigest(self) -> str:
        if self._queue is not None:
            self._queue.join()
        if self._failed:
            raise self._failed[0]
        for data in self._pending:
            self._hash.update(data)
        self._pending = []
        self._pending_size = 0
        return self._hash.hexdigest()

    def close(self) -> None:
        if self._stop is not None:
            self._stop()
        self._behind = False  # anything more is hashed at once


def _hash_batches(q: queue.Queue[list[bytes] | None], h: hashlib._Hash,
                  failed: list[BaseException]) -> None:
    # Holds the queue and the hash, not the HashBehind, so that losing it stops this.
    # After a failure it goes on taking batches, so that the feeder is never stuck.
    while True:
        batch = q.get()
        try:
            if batch and not failed:
                for data in batch:
                    h.update(data)
        except BaseException as e:  # raised again by hexdigest()
            failed.append(e)
        finally:
            q.task_done()
        if batch is None:
            return


def _stop_hashing(q: queue.Queue[list[bytes] | None], thread: threading.Thread) -> None:
    q.put(None)
    if thread is not threading.current_thread():
        thread.join()


class VerifyingReader:
    """Wrap a binary stream; hash and count what is read; check both at EOF.

    Reading past ``size`` bytes raises at once (a longer body is as wrong as a
    shorter one). At EOF a wrong size or digest raises from ``read()``, so a
    caller that reads to the end cannot miss the check. ``verified`` tells
    whether the check has passed.
    """

    def __init__(
        self, raw: BinaryIO, digest: Digest | None, size: int | None = None, *, what: str = "blob"
    ) -> None:
        self._raw = raw
        self.digest = digest
        self.size = size
        self.what = what
        self._hash = HashBehind(digest.algorithm if digest else "sha256")
        self.count = 0
        self.verified = False
        self._eof = False

    def _context(self) -> str:
        return f"{self.what} {self.digest.short}" if self.digest else self.what

    def read(self, n: int = -1) -> bytes:
        if self._eof:
            return b""
        if n is None or n < 0:
            chunks = []
            while chunk := self.read(1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        want = n
        if self.size is not None:
            # Ask for one byte more than allowed so that an over-long body is noticed.
            want = min(n, self.size - self.count + 1) or 1
        try:
            data = self._raw.read(want)
        except BaseException:
            self._hash.close()  # a broken stream: its hashing thread need not wait for more
            raise
        if data:
            self.count += len(data)
            if self.size is not None and self.count > self.size:
                self._hash.close()
                raise SizeMismatchError(
                    f"stream is longer than the expected {self.size} bytes",
                    context=self._context(),
                )
            self._hash.update(data)
            return data
        self._eof = True
        self._hash.close()  # the end: what is queued is hashed, and the thread ends
        self._check()
        return b""

    def abort(self) -> None:
        """End a read that waits for bytes, when the stream can (a blob read as it
        downloads)."""
        abort = getattr(self._raw, "abort", None)
        if abort is not None:
            abort()

    def _check(self) -> None:
        if self.size is not None and self.count != self.size:
            raise SizeMismatchError(
                f"stream ended after {self.count} of {self.size} bytes", context=self._context()
            )
        if self.digest is not None and self._hash.hexdigest() != self.digest.hex:
            raise DigestMismatchError(
                f"content has digest {self.digest.algorithm}:{self._hash.hexdigest()[:12]}…, "
                f"expected {self.digest}",
                context=self._context(),
            )
        self.verified = True

    def computed(self) -> Digest:
        """The digest of what has been read so far."""
        return Digest(self._hash.name, self._hash.hexdigest())

    def drain(self) -> None:
        """Read and discard the rest of the stream, so that the check runs."""
        while self.read(1 << 20):
            pass

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._hash.close()
        self._raw.close()

    def __enter__(self) -> VerifyingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
