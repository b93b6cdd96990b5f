"""Content digests and a reader that verifies hash and size at end of stream.

A blob is trusted only after every byte of it has been hashed and counted; the
check runs when the wrapped stream reaches EOF, so callers must read to the end
(``drain()`` does that for them).
"""

from __future__ import annotations

import hashlib
import os
import re
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
        self._hash = hashlib.new(digest.algorithm if digest else "sha256")
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
        data = self._raw.read(want)
        if data:
            self.count += len(data)
            if self.size is not None and self.count > self.size:
                raise SizeMismatchError(
                    f"stream is longer than the expected {self.size} bytes",
                    context=self._context(),
                )
            self._hash.update(data)
            return data
        self._eof = True
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
        self._raw.close()

    def __enter__(self) -> VerifyingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
