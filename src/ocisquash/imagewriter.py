"""What the squashfs and EROFS writers share: the entry interface the flattener and
``pack`` feed, the checks on each entry that both formats make the same way, and the
open/finish/abort life cycle.

Rules enforced here, for both formats:

* a symlink target is 1 to ``rules.MAX_SYMLINK_TARGET`` bytes without NUL (the kernel
  refuses longer targets for either format);
* a device number fits Linux's ``new_encode_dev`` (major below 4096, minor below 2**20),
  which both formats store (squashfs's ``rdev``, EROFS's ``i_u.rdev``);
* an entry added after :meth:`finish` or :meth:`abort` is an error;
* a hard link names an existing non-directory.

Each writer keeps what differs: how it stores file data, how it keeps metadata, the
format's name-length rule (:meth:`_check_path`), and the finish sequence.
"""

from __future__ import annotations

import contextlib
import errno
import os
from types import TracebackType
from typing import BinaryIO, ClassVar, Generic, Literal, Protocol, Self, TypeVar

from .entry import EntryMeta
from .errors import OcisquashError, OutputError
from .rules import MAX_SYMLINK_TARGET
from .squashfs.format import InodeType, encode_device
from .squashfs.tree import Node, SpecialNode, SymlinkNode

_SPECIAL_KINDS = {"char": InodeType.CHAR_DEV, "block": InodeType.BLOCK_DEV}

#: what a writer's :meth:`ImageWriter.finish` returns
SummaryT = TypeVar("SummaryT")


class WriterTree(Protocol):
    """How a writer keeps its entries (``squashfs/tree.py``, ``erofs/tree.py``)."""

    def add_directory(self, path: bytes, meta: EntryMeta) -> None: ...

    def put(self, path: bytes, node: Node, *, checked: bool = False) -> None:
        """Place a non-directory, replacing what was at ``path``."""
        ...

    def get(self, path: bytes) -> Node | int | None:
        """The entry at ``path`` (an int: a short file's record), or None."""
        ...


class ImageWriter(Generic[SummaryT]):
    """The base of ``SquashfsWriter`` and ``ErofsWriter``; not used on its own."""

    #: the format's error type, raised for a bad entry
    error: ClassVar[type[OcisquashError]]
    _tree: WriterTree
    _closed: bool
    #: the output's name, for messages
    _name: str
    _out: BinaryIO
    #: whether the writer opened the output (and so closes it, and removes it on abort)
    _owned: bool
    #: the output's path when the writer opened it
    _path: str | bytes | None

    # -- what each writer provides ----------------------------------------------------

    def _meta(self, meta: EntryMeta) -> EntryMeta:
        """The metadata as the format keeps it (one object per distinct value)."""
        raise NotImplementedError

    def _check_path(self, path: bytes) -> None:
        """Refuse a path the format cannot name (beyond the tree's own rules)."""

    def _write_rest(self) -> SummaryT:
        """Write everything that follows the file data (tables, inodes, superblock) and
        stop the writer's threads and spools."""
        raise NotImplementedError

    def _stop(self) -> None:
        """Stop the writer's threads and spools without writing more."""
        raise NotImplementedError

    # -- adding entries ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise self.error("the writer is already finished or aborted")

    def add_directory(self, path: bytes, meta: EntryMeta) -> None:
        """Create the directory ``path``, or update the metadata of an existing one
        (its children are kept)."""
        self._check_open()
        self._check_path(path)
        self._tree.add_directory(path, self._meta(meta))

    def add_symlink(self, path: bytes, meta: EntryMeta, target: bytes) -> None:
        self._check_open()
        self._check_path(path)
        if len(target) > MAX_SYMLINK_TARGET:
            # The kernel refuses symlink inodes whose target exceeds a page.
            raise self.error(f"symlink target is {len(target)} bytes; Linux allows "
                             f"{MAX_SYMLINK_TARGET}", context=repr(path))
        if not target or b"\0" in target:
            raise self.error(f"symlink target {target!r} is empty or has NUL",
                             context=repr(path))
        self._tree.put(path, SymlinkNode(self._meta(meta), target))

    def add_device(self, path: bytes, meta: EntryMeta, kind: Literal["char", "block"],
                   major: int, minor: int) -> None:
        self._check_open()
        self._check_path(path)
        if kind not in _SPECIAL_KINDS:
            raise self.error(f"device kind {kind!r} is not 'char' or 'block'",
                             context=repr(path))
        if not (0 <= major < 1 << 12 and 0 <= minor < 1 << 20):
            raise self.error(f"device {major}:{minor} does not fit the format "
                             "(major < 4096, minor < 2**20)", context=repr(path))
        self._tree.put(path, SpecialNode(self._meta(meta), _SPECIAL_KINDS[kind],
                                         encode_device(major, minor)))

    def add_fifo(self, path: bytes, meta: EntryMeta) -> None:
        self._check_open()
        self._check_path(path)
        self._tree.put(path, SpecialNode(self._meta(meta), InodeType.FIFO))

    def add_socket(self, path: bytes, meta: EntryMeta) -> None:
        self._check_open()
        self._check_path(path)
        self._tree.put(path, SpecialNode(self._meta(meta), InodeType.SOCKET))

    def _link_target(self, path: bytes, target: bytes) -> Node | int:
        """The tree's entry for ``target`` of a hard link at ``path``: it must exist and
        not be a directory."""
        self._check_open()
        self._check_path(path)
        node = self._tree.get(target)
        if node is None:
            raise self.error(f"hard link target {target!r} does not exist", context=repr(path))
        if isinstance(node, Node) and node.type is InodeType.DIR:
            raise self.error(f"hard link target {target!r} is a directory", context=repr(path))
        return node

    def exists(self, path: bytes) -> bool:
        return self._tree.get(path) is not None

    # -- finishing --------------------------------------------------------------------

    def finish(self) -> SummaryT:
        """Write the rest of the image and close it; return the writer's summary. On any
        failure the image is discarded (see :meth:`abort`)."""
        self._check_open()
        try:
            summary = self._write_rest()
            if self._owned:
                self._out.close()
        except OSError as e:
            self.abort()
            raise self._write_error(e) from e
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return summary

    def abort(self) -> None:
        """Stop the writer and discard the image being written."""
        if self._closed:
            return
        self._closed = True
        self._stop()
        if self._owned:
            # Flushing what is buffered may fail again (a full disk): the image is
            # discarded anyway, and the error that made us abort is the one to report.
            with contextlib.suppress(OSError):
                self._out.close()
        if self._path is not None:
            # A half-written image must not look like one.
            with contextlib.suppress(OSError):
                os.unlink(self._path)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.finish()

    def _write_error(self, e: OSError, path: bytes | None = None) -> OutputError:
        """The error for a failed write of the image (a full disk, most often)."""
        what = f" (adding {path.decode('utf-8', 'replace')})" if path is not None else ""
        full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        return OutputError(f"cannot write the image{what}: {e.strerror or e}",
                           context=self._name,
                           hint="free space on that filesystem or write elsewhere" if full else "")


def readable(out: BinaryIO) -> bool:
    """Whether the image being written can be read back (to check a duplicate, or to key
    a file late): not when the writer was handed a write-only stream."""
    try:
        return bool(out.readable())
    except (AttributeError, ValueError, OSError):
        return False
