"""What the squashfs and EROFS path readers share (``squashfs/reader.py``,
``erofs/reader.py``): the image file opened for reading, reads bounded by its size, and
the walk of one path with its symlinks followed inside the image, as a runtime resolves
them from the container's root; and telling the two formats apart. Each format supplies
its inodes: the root, a directory's child by name, and what kind an inode is.

Every inconsistency is the format's error class saying the image is damaged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import BinaryIO, Generic, Literal, Protocol, Self, TypeVar

from .errors import LimitExceededError, OcisquashError

#: Linux follows at most 40 symlinks when it resolves one path (``MAXSYMLINKS``).
MAX_SYMLINKS = 40



class _Kinded(Protocol):
    """What the shared code reads of a format's inode: its type, in the format's own
    enum, and its size (a regular file's bytes)."""

    @property
    def kind(self) -> Enum: ...

    @property
    def size(self) -> int: ...


_Inode = TypeVar("_Inode", bound=_Kinded)


@dataclass(frozen=True, slots=True)
class Stat:
    """An entry's type (the format's own: squashfs's basic inode type, EROFS's file
    type), permission bits and owner, and whether it is a directory."""

    kind: Enum
    mode: int
    uid: int
    gid: int
    directory: bool


class ImageReader(Generic[_Inode]):
    """An image file opened for path lookups; subclasses read its format."""

    #: the error every problem with the image raises
    error: type[OcisquashError] = OcisquashError
    #: the format's inode types of a directory and a regular file
    _DIR: Enum
    _FILE: Enum

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._f: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise self.error(f"cannot open {self.path}: {e.strerror or e}") from e
        try:
            self._size = os.fstat(self._f.fileno()).st_size
            self._open()
        except BaseException:
            self._f.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    # -- the format's part ---------------------------------------------------------

    def _open(self) -> None:
        """Read the superblock (the file is open and ``_size`` known)."""
        raise NotImplementedError

    def _root(self) -> _Inode:
        raise NotImplementedError

    def _child(self, directory: _Inode, name: bytes) -> _Inode | None:
        """The entry ``name`` of ``directory``, or None."""
        raise NotImplementedError

    def _target(self, inode: _Inode) -> bytes | None:
        """A symlink's target, None for anything else."""
        raise NotImplementedError

    def _file_data(self, inode: _Inode) -> bytes:
        raise NotImplementedError

    def _owner(self, inode: _Inode) -> tuple[int, int, int]:
        """The inode's permission bits, uid and gid."""
        raise NotImplementedError

    # -- lookups -------------------------------------------------------------------

    def read_file(self, path: str, *, limit: int = 16 << 20) -> bytes | None:
        """The contents of the regular file at ``path`` (symlinks followed inside the
        image, as a runtime resolves them from the container's root), or None when
        nothing is there. A file larger than ``limit`` bytes is a LimitExceededError;
        a path that names a directory or a device is the format's error."""
        inode = self._resolve(path)
        if inode is None:
            return None
        if inode.kind is not self._FILE:
            raise self.error(f"{path} in {self.path} is not a regular file")
        size = inode.size
        if size > limit:
            raise LimitExceededError(f"{path} in {self.path} is {size} bytes, more than {limit}")
        return self._file_data(inode)

    def stat(self, path: str) -> Stat | None:
        """Type, mode and owner of ``path`` (symlinks followed), or None when absent."""
        inode = self._resolve(path)
        if inode is None:
            return None
        mode, uid, gid = self._owner(inode)
        return Stat(inode.kind, mode, uid, gid, inode.kind is self._DIR)

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` (symlinks followed) is a directory in the image."""
        inode = self._resolve(path)
        return inode is not None and inode.kind is self._DIR

    def _resolve(self, path: str) -> _Inode | None:
        """The inode at ``path`` with every symlink followed inside the image (an
        absolute target starts again at the image's root, ``..`` stops at the root)."""
        root = self._root()
        pending = [p for p in path.encode("utf-8", "surrogateescape").split(b"/")
                   if p not in (b"", b".")]
        pending.reverse()
        trail: list[_Inode] = [root]
        followed = 0
        while pending:
            name = pending.pop()
            if name == b".":
                continue
            if name == b"..":
                if len(trail) > 1:
                    trail.pop()
                continue
            here = trail[-1]
            if here.kind is not self._DIR:
                return None
            inode = self._child(here, name)
            if inode is None:
                return None
            target = self._target(inode)
            if target is not None:
                followed += 1
                if followed > MAX_SYMLINKS:
                    raise self.error(f"{path} in {self.path}: too many levels of symlinks")
                pending.extend(reversed([p for p in target.split(b"/") if p]))
                if target.startswith(b"/"):
                    trail = [root]
                continue
            trail.append(inode)
        return trail[-1]

    # -- reading -------------------------------------------------------------------

    def _damaged(self, what: str) -> OcisquashError:
        return self.error(f"{self.path} is damaged: {what}",
                          hint="compile the image again (the cache repairs itself with "
                               "'ocisquash cache verify --repair')")

    def _read_at(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0 or offset + n > self._size:
            raise self._damaged(f"a reference to bytes {offset}..{offset + n} lies outside "
                                f"the image ({self._size} bytes)")
        self._f.seek(offset)
        data = self._f.read(n)
        if len(data) != n:
            raise self._damaged(f"short read at {offset}")
        return data


def image_format(path: str | os.PathLike[str]) -> Literal["squashfs", "erofs"] | None:
    """Which image the file at ``path`` is, by its superblock's magic (``has_magic`` of
    either format); None when it is neither. OSError when it cannot be read."""
    from .erofs import format as erofs
    from .squashfs import format as squashfs

    with open(path, "rb") as f:
        head = f.read(erofs.SUPER_OFFSET + 4)
    if squashfs.has_magic(head):
        return "squashfs"
    if erofs.has_magic(head):
        return "erofs"
    return None


__all__ = ["MAX_SYMLINKS", "ImageReader", "Stat", "image_format"]
