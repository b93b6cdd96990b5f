"""A ``TreeSink`` that writes the flattened tree as one tar stream (``--format tar``).

The output is a PAX tar (long and non-UTF-8 names, large ids, fractional-free
mtimes, ``SCHILY.xattr.*`` attributes), written strictly forward so it can go to a
pipe: file data is copied from the layer straight into the tar as it arrives, never
held whole in memory or spooled.

Entries reach a sink in flattening order, not tree order, and a directory's metadata
may be settled only after its children (a directory an upper layer creates
implicitly takes a lower layer's metadata later). So:

* a directory entry is written as soon as the directory is first needed, with the
  metadata known then (missing parents get the default: 0755, root, mtime 0), so
  every parent precedes its children in the stream;
* when a directory's metadata changes afterwards, the directory is written *again*
  by :meth:`TarSink.finish`, parents first; extractors apply the later entry, as
  they do for every duplicate name in a tar;
* a path added twice (a layer listing a name twice: the last entry wins) is simply
  written twice, in that order; a hard link is written after its target. When a
  layer replaces a non-empty directory by a file this way (the spec forbids
  duplicate names in a layer), GNU tar needs ``--recursive-unlink`` to apply it; and
  GNU tar creates absolute symlinks after everything else, so a symlink that such a
  layer replaces by a file may still win when GNU tar unpacks the stream.

Sockets cannot be stored in tar and are left out (layers, being tar, never hold any).
"""

from __future__ import annotations

import io
import tarfile
from typing import BinaryIO, Literal

from .entry import EntryMeta
from .errors import OutputError

_DEFAULT_DIR_META = EntryMeta(mode=0o755)


def _name(path: bytes) -> str:
    return path.decode("utf-8", "surrogateescape")


class TarSink:
    """Writes added entries to ``output`` (a writable binary stream) as a PAX tar.

    Call :meth:`finish` once everything is added; it writes the updated directory
    entries and the end-of-archive blocks, and leaves ``output`` open.
    """

    def __init__(self, output: BinaryIO, *, default_dir_meta: EntryMeta = _DEFAULT_DIR_META) -> None:
        self._out = output
        self._default = default_dir_meta
        try:
            self._tf = tarfile.open(  # noqa: SIM115 - closed by finish()
                fileobj=output, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                errors="surrogateescape")
        except OSError as e:
            raise OutputError(f"cannot write the tar stream: {e}") from e
        #: directory → (current metadata, whether the last written entry shows it)
        self._dirs: dict[bytes, tuple[EntryMeta, bool]] = {}
        self._others: set[bytes] = set()
        self._finished = False

    # -- TreeSink ----------------------------------------------------------------

    def add_directory(self, path: bytes, meta: EntryMeta) -> None:
        if path:
            self._parents(path)
        old = self._dirs.get(path)
        if old is not None:
            if old[0] != meta:
                self._dirs[path] = (meta, False)
            return
        self._others.discard(path)
        self._write_dir(path, meta)

    def add_file(self, path: bytes, meta: EntryMeta, data: BinaryIO | bytes,
                 size: int | None = None) -> None:
        stream: BinaryIO = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
        if size is None:
            # tar needs the size before the data: only in-memory data may omit it.
            if not isinstance(data, bytes | bytearray):
                raise OutputError("TarSink.add_file needs the size of a streamed file",
                                  context=_name(path))
            size = len(data)
        ti = self._info(path, tarfile.REGTYPE, meta)
        ti.size = size
        self._add(path, ti, stream)

    def add_symlink(self, path: bytes, meta: EntryMeta, target: bytes) -> None:
        ti = self._info(path, tarfile.SYMTYPE, meta)
        ti.linkname = _name(target)
        self._add(path, ti)

    def add_device(self, path: bytes, meta: EntryMeta, kind: Literal["char", "block"],
                   major: int, minor: int) -> None:
        ti = self._info(path, tarfile.CHRTYPE if kind == "char" else tarfile.BLKTYPE, meta)
        ti.devmajor, ti.devminor = major, minor
        self._add(path, ti)

    def add_fifo(self, path: bytes, meta: EntryMeta) -> None:
        self._add(path, self._info(path, tarfile.FIFOTYPE, meta))

    def add_socket(self, path: bytes, meta: EntryMeta) -> None:
        """Sockets have no tar representation; nothing is written."""

    def add_hardlink(self, path: bytes, target: bytes) -> None:
        if target not in self._others:
            raise OutputError(f"hard link target {_name(target)!r} was not added",
                              context=_name(path))
        ti = self._info(path, tarfile.LNKTYPE, EntryMeta())
        ti.linkname = _name(target)
        self._add(path, ti)

    def exists(self, path: bytes) -> bool:
        return path in self._dirs or path in self._others or not path

    # -- finishing -----------------------------------------------------------------

    def finish(self) -> None:
        """Write directories whose metadata changed, then the end of the archive."""
        if self._finished:
            return
        for path in sorted(p for p, (_, current) in self._dirs.items() if not current):
            self._write_dir(path, self._dirs[path][0])
        self._finished = True
        try:
            self._tf.close()
            self._out.flush()
        except OSError as e:
            self._abandon()
            raise OutputError(f"cannot write the tar stream: {e.strerror or e}") from e

    # -- helpers ---------------------------------------------------------------------

    def _parents(self, path: bytes) -> None:
        parts = path.split(b"/")
        for i in range(1, len(parts)):
            parent = b"/".join(parts[:i])
            if parent not in self._dirs:
                self._others.discard(parent)
                self._write_dir(parent, self._default)

    def _info(self, path: bytes, kind: bytes, meta: EntryMeta) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(_name(path) if path else "./")
        ti.type = kind
        ti.mode = meta.mode
        ti.uid, ti.gid = meta.uid, meta.gid
        ti.uname = ti.gname = ""
        ti.mtime = meta.mtime
        if meta.xattrs:
            ti.pax_headers = {
                "SCHILY.xattr." + _name(k): v.decode("utf-8", "surrogateescape")
                for k, v in meta.xattrs
            }
        return ti

    def _write_dir(self, path: bytes, meta: EntryMeta) -> None:
        ti = self._info(path, tarfile.DIRTYPE, meta)
        if path:
            ti.name += "/"
        self._write(ti)
        self._dirs[path] = (meta, True)

    def _add(self, path: bytes, ti: tarfile.TarInfo, data: BinaryIO | None = None) -> None:
        if not path:
            raise OutputError("the root of the tree must be a directory")
        self._parents(path)
        self._dirs.pop(path, None)
        self._write(ti, data)
        self._others.add(path)

    def _write(self, ti: tarfile.TarInfo, data: BinaryIO | None = None) -> None:
        if self._finished:
            raise OutputError("the tar stream is already finished")
        try:
            self._tf.addfile(ti, data)
        except OSError as e:
            self._abandon()
            raise OutputError(f"cannot write the tar stream: {e.strerror or e}",
                              context=ti.name) from e

    def _abandon(self) -> None:
        """After a failed write: never touch the output again (tarfile would flush on GC)."""
        self._finished = True
        self._tf.closed = True  # type: ignore[attr-defined]
        stream = getattr(self._tf, "fileobj", None)
        if stream is not None and hasattr(stream, "closed"):
            stream.closed = True
