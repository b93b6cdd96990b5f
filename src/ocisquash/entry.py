"""Metadata of one filesystem entry, as it crosses from the layer reader to the writers.

Paths everywhere in ocisquash are ``bytes``: relative to the image root, no leading
``/``, components joined by ``b"/"``, the root itself is ``b""``. Bytes keep names
that are not UTF-8 exactly as the layer had them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

#: Permission bits a mode may carry: rwx for all three classes plus setuid, setgid, sticky.
PERMISSION_MASK = 0o7777


@dataclass(frozen=True, slots=True)
class EntryMeta:
    """Owner, permissions, time and extended attributes of one entry.

    ``mode`` holds only permission bits (``0o7777``), never the file type: the type
    is given by which ``add_*`` method of a writer receives the entry.
    ``xattrs`` is sorted by name; names carry their namespace prefix
    (``b"security.capability"``).
    """

    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    xattrs: tuple[tuple[bytes, bytes], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.mode & ~PERMISSION_MASK:
            raise ValueError(f"mode {self.mode:#o} has bits outside {PERMISSION_MASK:#o}")
        if not (0 <= self.uid < 2**32 and 0 <= self.gid < 2**32):
            raise ValueError(f"uid/gid {self.uid}/{self.gid} outside 0..2**32-1")


@runtime_checkable
class HoleReader(Protocol):
    """A file's data that knows where its holes are (a sparse file in a layer).

    A writer may skip a hole instead of reading its zeros, so that a hole costs
    nothing however large it is declared."""

    def read(self, n: int = -1) -> bytes: ...

    def zeros_ahead(self) -> int:
        """How many bytes from the current position are zeros of a hole."""
        ...

    def skip_zeros(self, n: int) -> None:
        """Move past ``n`` bytes, at most :meth:`zeros_ahead`."""
        ...


@runtime_checkable
class SparseSource(HoleReader, Protocol):
    """A sparse file's data that lists where its data is before any of it is read (a
    sparse tar member): a tar writer needs the whole map before the data."""

    def regions(self) -> Sequence[int] | None:
        """Offset, length, offset, length… of the data regions, in order, the rest of
        the file (up to its size) holes; None when the file has no holes. Valid
        before the first read."""
        ...
