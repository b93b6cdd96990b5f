"""Pack a directory tree of the local filesystem into a squashfs or EROFS image.

The tree is walked with ``os.scandir`` and ``lstat``, never following symlinks, in
name order (depth first, like mksquashfs, so file data lands in the same order).
Owners, permission bits (setuid/setgid/sticky included), mtimes, device numbers and
``user.``/``trusted.``/``security.`` xattrs are kept; other xattr namespaces (e.g.
``system.posix_acl_*``) cannot be stored in squashfs and are skipped, and mtimes
outside 0..2^32-1 are clamped; both are counted, with examples, in the ``fidelity``
collector a caller passes (the command line prints them as warnings). Hard links are
found by ``(st_dev, st_ino)``.

Reading runs ahead of writing: one walker thread lists directories, stats entries,
reads xattrs and symlink targets and reads whole every file of at most
:data:`READ_AHEAD_FILE` bytes, handing the entries over in walk order, while the
calling thread feeds them to the writer. The syscalls (which release the GIL) thus
overlap with the writer's Python work and with compression. One walker keeps the
order, so the image is byte-identical to a sequential walk; file contents held
between the two threads never exceed :data:`READ_AHEAD_BYTES` (plus one file). Larger
files are opened and streamed block by block by the calling thread, a sparse one's
holes skipped rather than read (:class:`_Holes`). The Python work of
both threads still takes turns on the GIL, so the gain is modest, and none when
compression is the bottleneck (figures: ``bench/README.md``).

A file whose size changes between its ``lstat`` and its reading is an error (its
image would be a mix of two states), as is an entry that vanishes while the tree is
packed.

The image is written as ``ocisquash.output`` says of every output: to a temporary file
with a random name beside the output, renamed into place only when complete (so an
error never leaves a half-written image under the final name), into a directory that
must exist, and over an existing file only when the caller allows it. A dm-verity hash
tree (:func:`pack_image` with ``verity``) is made from that temporary file, through its
descriptor, before the rename.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final, cast

from .entry import EntryMeta
from .errors import OcisquashError, SquashfsError, UsageError
from .interpreter import collector_paused, switches_shortened
from .output import check_output, open_file_path
from .rules import KEPT_XATTR_NAMESPACES, Fidelity, clamp_mtime
from .squashfs import SquashfsWriter, WriterOptions, WriteSummary

if TYPE_CHECKING:
    from .erofs import ErofsOptions, ErofsSummary
    from .flatten import TreeSink
    from .verity import VerityInfo, VerityOptions


#: Files up to this size are read whole by the walker thread (a few blocks at most).
READ_AHEAD_FILE = 1 << 20
#: Bound on file contents read ahead and not yet handed to the writer.
READ_AHEAD_BYTES = 16 << 20
#: Entries per hand-over between the threads: fewer lock round trips than one by one.
_BATCH_ENTRIES = 256
_BATCH_BYTES = 4 << 20

_HINT_CHANGED = "the tree changed while it was packed; pack a tree nobody is modifying"

# Entry kinds handed from the walker to the writer thread.
_DIR, _FILE, _STREAM, _LINK, _SYMLINK, _CHAR, _BLOCK, _FIFO, _SOCK, _SPARSE = range(10)


#: placeholder metadata of hard-link entries
_LINK_META: Final = EntryMeta()


class _Entry:
    """One walked entry: what the writer thread needs to add it."""

    __slots__ = ("image_path", "kind", "meta", "path", "size", "value")

    def __init__(
        self,
        kind: int,
        path: bytes,
        image_path: bytes,
        meta: EntryMeta,
        value: bytes = b"",
        size: int = 0,
    ) -> None:
        self.kind = kind
        #: absolute source path (errors, streamed files)
        self.path = path
        self.image_path = image_path
        #: unused for hard links, which take the first name's inode
        self.meta = meta
        #: contents read ahead (_FILE), symlink target, or first name (_LINK)
        self.value = value
        #: file size at lstat (_FILE, _STREAM); device number (_CHAR, _BLOCK)
        self.size = size


def _changed(path: bytes, was: int, now: str) -> SquashfsError:
    return SquashfsError(
        f"file changed size while being read: {was} bytes at lstat, {now}",
        context=os.fsdecode(path),
        hint=_HINT_CHANGED,
    )


def _read_error(path: bytes, e: OSError) -> SquashfsError:
    hint = _HINT_CHANGED if e.errno == errno.ENOENT else ""
    return SquashfsError(f"cannot read: {e.strerror or e}", context=os.fsdecode(path), hint=hint)


def _read_whole(path: bytes, size: int) -> bytes:
    """Read a file of ``size`` bytes (its size at lstat) and check it still has that size."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        # One byte more than expected: a file that grew shows up in the same call.
        data = os.read(fd, size + 1)
        if len(data) < size:
            parts = [data]
            got = len(data)
            while got <= size:
                more = os.read(fd, size + 1 - got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
    finally:
        os.close(fd)
    if len(data) != size:
        raise _changed(path, size, "fewer now" if len(data) < size else "more now")
    return data


class _Walker:
    """Walks the tree in a thread of its own; :meth:`next_batch` hands its entries
    over in order.

    File contents read ahead are accounted until the consumer takes their batch; the
    walker waits while the total would exceed the budget (a single batch always passes,
    so a budget smaller than one file cannot stall it).
    """

    def __init__(
        self, src: bytes, options: WriterOptions | ErofsOptions, skip: set[tuple[int, int]], budget: int,
        fidelity: Fidelity | None = None,
    ) -> None:
        self._src = src
        #: what the image cannot hold (noted by the walker thread only)
        self._fidelity = fidelity if fidelity is not None else Fidelity()
        self._xattrs = options.xattrs
        self._skip = skip
        self._budget = budget
        self._cond = threading.Condition()
        self._ready: deque[tuple[list[_Entry], int]] = deque()
        self._held = 0  # bytes in self._ready
        self._done = False
        self._error: BaseException | None = None
        self._cancelled = False
        #: EntryMeta of xattr-less entries, shared: most entries repeat a few of them
        self._metas: dict[tuple[int, int, int, int], EntryMeta] = {}
        #: devices whose filesystem has no xattr support: listxattr is not asked again
        self._no_xattrs: set[int] = set()
        self._thread = threading.Thread(target=self._run, name="ocisquash-walk", daemon=True)

    # -- consumer side ----------------------------------------------------------------

    def __enter__(self) -> _Walker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._cancelled = True
            self._ready.clear()
            self._cond.notify_all()
        self._thread.join()

    def next_batch(self) -> list[_Entry] | None:
        """The next batch of entries, or None after the last; re-raises the walker's
        error once every entry walked before it has been taken."""
        with self._cond:
            while not self._ready and not self._done:
                self._cond.wait()
            if self._ready:
                batch, held = self._ready.popleft()
                self._held -= held
                self._cond.notify_all()
                return batch
            if self._error is not None:
                raise self._error
            return None

    # -- walker side ------------------------------------------------------------------

    def _put(self, batch: list[_Entry], held: int) -> None:
        with self._cond:
            while self._held and self._held + held > self._budget and not self._cancelled:
                self._cond.wait()
            if self._cancelled:
                raise _Cancelled
            self._ready.append((batch, held))
            self._held += held
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            self._walk()
        except _Cancelled:
            pass
        except BaseException as e:  # handed to the consumer, raised there
            self._error = e
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def root_meta(self, st: os.stat_result) -> EntryMeta:
        """Metadata of the tree's root directory (read before the walk starts)."""
        return self._meta(self._src, st)

    def _meta(self, path: bytes, st: os.stat_result) -> EntryMeta:
        mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        mtime = int(st.st_mtime)
        if clamp_mtime(mtime) != mtime:
            mtime = clamp_mtime(mtime)
            self._fidelity.note("mtime-clamped", self._image_path(path))
        xattrs = self._read_xattrs(path, st.st_dev) if self._xattrs else ()
        if xattrs:
            return EntryMeta(mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=xattrs)
        key = (mode, uid, gid, mtime)
        meta = self._metas.get(key)
        if meta is None:
            meta = self._metas[key] = EntryMeta(mode=mode, uid=uid, gid=gid, mtime=mtime)
        return meta

    def _image_path(self, path: bytes) -> bytes:
        """``path`` (below the source directory) as a path in the image."""
        return path[len(self._src):].lstrip(b"/")

    def _read_xattrs(self, path: bytes, dev: int) -> tuple[tuple[bytes, bytes], ...]:
        if dev in self._no_xattrs:
            return ()
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError as e:
            if e.errno == errno.ENOTSUP:  # the whole filesystem has none
                self._no_xattrs.add(dev)
            return ()
        if not names:
            return ()
        found = []
        dropped = False
        for name in names:
            raw = os.fsencode(name)
            if not raw.startswith(KEPT_XATTR_NAMESPACES):
                dropped = True
                continue
            try:
                value = os.getxattr(path, name, follow_symlinks=False)
            except OSError:  # removed meanwhile, or unreadable
                continue
            found.append((raw, value))
        if dropped:
            self._fidelity.note("xattr-dropped", self._image_path(path))
        return tuple(sorted(found))

    def _walk(self) -> None:
        links: dict[tuple[int, int], bytes] = {}
        skip = self._skip
        small = READ_AHEAD_FILE
        batch_bytes = min(_BATCH_BYTES, self._budget)
        batch_entries = _BATCH_ENTRIES
        batch: list[_Entry] = []
        held = 0
        # (absolute directory path, image path) pairs still to list.
        stack: list[tuple[bytes, bytes]] = [(self._src, b"")]
        while stack:
            directory, prefix = stack.pop()
            try:
                with os.scandir(directory) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                self._put(batch, held)
                raise SquashfsError(
                    f"cannot list directory: {e.strerror}", context=os.fsdecode(directory)
                ) from e
            subdirs: list[tuple[bytes, bytes]] = []
            for entry in entries:
                path = entry.path
                image_path = prefix + b"/" + entry.name if prefix else entry.name
                try:
                    st = entry.stat(follow_symlinks=False)
                    key = (st.st_dev, st.st_ino)
                    if key in skip:
                        continue
                    mode = st.st_mode
                    if stat.S_ISDIR(mode):
                        batch.append(_Entry(_DIR, path, image_path, self._meta(path, st)))
                        subdirs.append((path, image_path))
                        continue
                    if st.st_nlink > 1:
                        first = links.get(key)
                        if first is not None:
                            batch.append(_Entry(_LINK, path, image_path, _LINK_META, first))
                            continue
                        links[key] = image_path
                    meta = self._meta(path, st)
                    if stat.S_ISREG(mode):
                        size = st.st_size
                        if size > small:
                            # Fewer blocks than its size: it has holes (see _Holes).
                            kind = _SPARSE if st.st_blocks * 512 < size else _STREAM
                            batch.append(_Entry(kind, path, image_path, meta, b"", size))
                        else:
                            # Empty files are not opened, as mksquashfs does not.
                            data = _read_whole(path, size) if size else b""
                            batch.append(_Entry(_FILE, path, image_path, meta, data, size))
                            held += size
                    elif stat.S_ISLNK(mode):
                        target = os.readlink(path)
                        batch.append(_Entry(_SYMLINK, path, image_path, meta, target))
                    elif stat.S_ISCHR(mode):
                        batch.append(_Entry(_CHAR, path, image_path, meta, b"", st.st_rdev))
                    elif stat.S_ISBLK(mode):
                        batch.append(_Entry(_BLOCK, path, image_path, meta, b"", st.st_rdev))
                    elif stat.S_ISFIFO(mode):
                        batch.append(_Entry(_FIFO, path, image_path, meta))
                    elif stat.S_ISSOCK(mode):
                        batch.append(_Entry(_SOCK, path, image_path, meta))
                except OcisquashError:
                    self._put(batch, held)  # what came before the error, first
                    raise
                except OSError as e:
                    self._put(batch, held)
                    raise _read_error(path, e) from e
                if len(batch) >= batch_entries or held >= batch_bytes:
                    self._put(batch, held)
                    batch, held = [], 0
            if batch:
                self._put(batch, held)
                batch, held = [], 0
            # Depth first in name order: push in reverse so the first name is listed next.
            stack.extend(reversed(subdirs))


class _Cancelled(Exception):
    """The consumer stopped: the walker thread ends quietly."""


def _add_tree(
    writer: TreeSink,
    src: bytes,
    src_st: os.stat_result,
    options: WriterOptions | ErofsOptions,
    skip: set[tuple[int, int]],
    fidelity: Fidelity | None,
) -> None:
    """Add ``src`` (a directory, as the image root) and everything below it."""
    walker = _Walker(src, options, skip, READ_AHEAD_BYTES, fidelity)
    writer.add_directory(b"", walker.root_meta(src_st))
    with walker:
        while (batch := walker.next_batch()) is not None:
            for e in batch:
                kind = e.kind
                if kind == _FILE:
                    writer.add_file(e.image_path, e.meta, e.value, size=e.size)
                elif kind == _DIR:
                    writer.add_directory(e.image_path, e.meta)
                elif kind == _LINK:
                    writer.add_hardlink(e.image_path, e.value)
                elif kind in (_STREAM, _SPARSE):
                    _stream_file(writer, e)
                elif kind == _SYMLINK:
                    writer.add_symlink(e.image_path, e.meta, e.value)
                elif kind == _CHAR:
                    writer.add_device(e.image_path, e.meta, "char", *_split_device(e.size))
                elif kind == _BLOCK:
                    writer.add_device(e.image_path, e.meta, "block", *_split_device(e.size))
                elif kind == _FIFO:
                    writer.add_fifo(e.image_path, e.meta)
                else:
                    writer.add_socket(e.image_path, e.meta)


def _split_device(rdev: int) -> tuple[int, int]:
    return os.major(rdev), os.minor(rdev)


class _Holes:
    """A sparse file read as an ``entry.HoleReader``: ``lseek(SEEK_DATA)`` says where
    its next data is, so the writers skip its holes instead of reading their zeros (a
    1 TiB file with a few MiB of data costs its data, as a sparse tar member does).
    The image is the same either way: the writers store a zero block read in full as a
    hole too. A filesystem without holes answers SEEK_DATA with the position itself,
    and SEEK_HOLE with the file's end: all data."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._fd = f.fileno()
        self._size = size
        self._pos = 0
        #: the data region known to hold the position: [start, end)
        self._data = (0, 0)

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def zeros_ahead(self) -> int:
        pos = self._pos
        start, end = self._data
        if start <= pos < end:
            return 0
        fd = self._fd
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
            start = end = self._size  # no data after pos: a hole to the end
        finally:
            os.lseek(fd, pos, os.SEEK_SET)  # SEEK_DATA and SEEK_HOLE moved it
        self._data = (start, end)
        return max(0, min(start, self._size) - pos)

    def skip_zeros(self, n: int) -> None:
        if not 0 <= n <= self.zeros_ahead():
            raise ValueError(f"skip_zeros({n}) past the hole")
        self._pos += n
        os.lseek(self._fd, self._pos, os.SEEK_SET)


def _stream_file(writer: TreeSink, e: _Entry) -> None:
    """Add a file too large to read ahead, streaming it block by block (a sparse one
    without reading its holes)."""
    try:
        with open(e.path, "rb", buffering=0) as f:
            # The writer reads exactly the lstat size and says so when the file is
            # shorter; a longer one is caught here.
            # The writers take any object with read(); they ask a HoleReader for holes.
            source = cast(BinaryIO, _Holes(f, e.size)) if e.kind == _SPARSE else f
            writer.add_file(e.image_path, e.meta, source, size=e.size)
            if f.read(1):
                raise _changed(e.path, e.size, "more now")
    except OcisquashError:
        raise  # OutputError is an OSError too, and names the image
    except OSError as err:
        raise _read_error(e.path, err) from err


def _write(out: BinaryIO, src: bytes, root_st: os.stat_result,
           options: WriterOptions | ErofsOptions, skip: set[tuple[int, int]],
           fidelity: Fidelity | None) -> WriteSummary | ErofsSummary:
    if isinstance(options, WriterOptions):
        with switches_shortened(), SquashfsWriter(out, options) as writer:
            _add_tree(writer, src, root_st, options, skip, fidelity)
            return writer.finish()
    from .erofs import ErofsWriter

    with switches_shortened(), ErofsWriter(out, options) as ewriter:
        _add_tree(ewriter, src, root_st, options, skip, fidelity)
        return ewriter.finish()


@dataclass(frozen=True)
class PackedImage:
    """What :func:`pack_image` wrote."""

    summary: WriteSummary | ErofsSummary
    #: the dm-verity hash tree written with the image, if one was asked for
    verity: VerityInfo | None = None


def pack_directory(src: Path, output: Path, options: WriterOptions | ErofsOptions,
                   fidelity: Fidelity | None = None, *,
                   overwrite: bool = True) -> WriteSummary | ErofsSummary:
    """Write the tree below ``src`` as an image at ``output``; return the summary. The
    image is EROFS when ``options`` are ``ErofsOptions``, else squashfs.

    ``output`` must be a regular file whose directory exists; an existing one is replaced
    only with ``overwrite`` (on by default here; the CLI's ``--force``). What the image
    cannot hold (xattrs outside user./trusted./security., mtimes out of range) is noted
    in ``fidelity`` when one is given."""
    return pack_image(src, output, options, fidelity, overwrite=overwrite).summary


def pack_image(src: Path, output: Path, options: WriterOptions | ErofsOptions,
               fidelity: Fidelity | None = None, *,
               verity: VerityOptions | None = None, overwrite: bool = True) -> PackedImage:
    """:func:`pack_directory`, and with ``verity`` a dm-verity hash tree for the image
    (``verity.add_verity``), made before the image takes its name. With no manifest to
    name the image, the seed of its salt is the image's own sha256."""
    if verity is not None:
        verity.check()
    src_bytes = os.fsencode(src)
    try:
        root_st = os.stat(src_bytes)
    except OSError as e:
        raise UsageError(f"cannot read source directory: {e.strerror}", context=str(src)) from e
    if not stat.S_ISDIR(root_st.st_mode):
        raise UsageError("source is not a directory", context=str(src))
    dest = check_output(output, overwrite=overwrite)
    dest.require_file("pack")
    assert dest.path is not None
    info = None
    with dest.open() as out:
        tmp_st = os.fstat(out.fileno())
        # Never pack the image being written into itself, nor the file it replaces.
        skip = {(tmp_st.st_dev, tmp_st.st_ino)}
        if (out_st := _stat_or_none(dest.path)) is not None:
            skip.add((out_st.st_dev, out_st.st_ino))
        with collector_paused():
            summary = _write(out, src_bytes, root_st, options, skip, fidelity)
        out.flush()
        if verity is not None:
            from .verity import add_verity, image_digest, sidecar_paths, verity_seed

            # The temporary file itself, whatever its name in the directory now is.
            tmp = open_file_path(out)
            seed = verity_seed(image_digest(tmp), {})
            info = add_verity(tmp, verity, seed, sidecars=sidecar_paths(dest.path),
                              spill_dir=dest.path.parent)
    return PackedImage(summary, info)


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None
