"""Where and how an output (``compile -o OUT``, ``pack DIR OUT``) is written.

The rules, checked by :func:`check_output` before any work starts and again when the
output is put in place:

* **A path names a regular file**, created or replaced whole. Its bytes go to a
  temporary file with a random name in OUT's own directory, created with
  ``O_CREAT|O_EXCL|O_NOFOLLOW`` (``mkstemp``) and only ever written through its open
  descriptor; it is synced and then renamed to OUT. A reader (or a crash) sees the
  old OUT or the whole new one, never half of it, and another user who can write in
  the directory cannot swap the temporary for a symlink and have the output, or a
  ``chmod``, land elsewhere: a temporary that is not the file written is detected
  after the rename, and the output is refused.
* **An existing OUT is replaced only when asked** (``overwrite=True``; the CLI's
  ``--force``). Without it, the last step is ``link(2)``, which fails when OUT
  appeared in the meantime, instead of a rename that would replace it. A symlink
  at OUT is replaced, never followed.
* **OUT's directory must exist**; it is never created.
* **A character device or a FIFO at OUT** (``/dev/null``, a named pipe) **is written
  into**, as a stream, and never replaced; so is a file descriptor named through
  ``/proc`` (``/dev/stdout``, ``/dev/fd/3``). A terminal is refused: an image is
  binary. Directories, block devices and sockets are refused. A squashfs built
  straight to OUT (``--no-cache``, ``pack``) needs a regular file, because the
  writer goes back to offset 0 for the superblock at the end.
* **From the cache** a compiled image is placed as a reflink (an independent copy
  sharing blocks, on filesystems that have them), else as a **hard link to the
  cache's file**, else as a copy. A hard link is what makes a warm compile cost a
  tenth of a second; it is read-only (mode 0444), and writing to it anyway (root
  can) changes the cached entry, which the next compile notices and builds again.
  ``copy=True`` (the CLI's ``--copy``) gives an independent, writable file (a
  reflink or a copy). Files ocisquash creates get mode ``0666 & ~umask``.
* **Failures** are one error each: what the caller asked for that cannot be done
  (OUT exists, its directory is missing or is not a directory, OUT is a directory,
  a block device, a socket or a terminal) is a :class:`~ocisquash.errors.UsageError`
  (exit 2), raised before any work; what the filesystem refuses (no permission, a
  read-only or full filesystem, an I/O error) is an
  :class:`~ocisquash.errors.OutputError` (exit 1) naming OUT. The temporary file is
  removed on every exception, ``KeyboardInterrupt`` and ``SystemExit`` (Ctrl-C,
  SIGTERM) included.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from .errors import OcisquashError, OutputError, UsageError

#: ``ioctl(dest, FICLONE, src)``: share the source's blocks (btrfs, xfs, bcachefs).
_FICLONE = 0x40049409
_COPY_CHUNK = 1 << 20
#: A path the kernel resolves to an open file descriptor, not to a name.
_FD_LINK = re.compile(r"/proc/(?:self|thread-self|\d+)/fd/\d+")
#: Character devices that are terminals: tty, console and /dev/tty, pseudo-terminals.
_TTY_MAJORS = frozenset({4, 5, *range(136, 144)})
#: ``link(2)`` errors of filesystems without hard links (vfat, some FUSE): the no-clobber
#: step falls back to a check and a rename.
_NO_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK,
                       errno.EXDEV})

Kind = Literal["file", "device", "stream"]


@dataclass(frozen=True)
class Destination:
    """An output checked by :func:`check_output`: a file path, a device path, or a stream."""

    kind: Kind
    #: the file or device (absolute); None for a caller's stream
    path: Path | None
    #: the caller's stream (kind "stream")
    stream: BinaryIO | None = None
    overwrite: bool = False
    copy: bool = False

    @property
    def name(self) -> str:
        """What messages call the output."""
        if self.path is not None:
            return str(self.path)
        return str(getattr(self.stream, "name", "the output stream"))

    @property
    def is_file(self) -> bool:
        """Whether the output is a regular file (seekable, written through a temporary)."""
        return self.kind == "file"

    def require_file(self, why: str) -> None:
        """Refuse a device or stream for an output that must be a regular file."""
        if not self.is_file:
            raise UsageError(f"{why} needs a regular file as output, not {self._what()}",
                             context=self.name,
                             hint="write to a file, then copy it where it should go")

    def _what(self) -> str:
        if self.kind == "stream":
            return "a stream"
        return "a character device or FIFO"

    # -- writing --------------------------------------------------------------------

    @contextlib.contextmanager
    def open(self) -> Iterator[BinaryIO]:
        """A binary stream to write the output to; it becomes the output when the block
        ends without an exception (a file is renamed into place) and is discarded otherwise.

        A file's stream is seekable and readable; a device's or caller's stream may not be.
        ``OSError`` from writes becomes :class:`OutputError` naming the output
        (``BrokenPipeError`` excepted: the reader left, which the CLI reports as such).
        """
        with _as_output_error(self.name):
            if self.kind == "stream":
                assert self.stream is not None
                yield self.stream
                self.stream.flush()
            elif self.kind == "device":
                with self._open_device() as f:
                    yield f
            else:
                with self._temporary() as (fd, tmp, f):
                    yield f
                    f.flush()
                    self._finish(fd, tmp)

    def place(self, image: Path) -> str:
        """Put the cached ``image`` at the output. Returns how: ``"reflink"``, ``"hardlink"``,
        ``"copy"`` or (for a device or stream) ``"written"``."""
        if self.kind != "file":
            with open(image, "rb") as src, self.open() as out:
                shutil.copyfileobj(src, out, _COPY_CHUNK)
            return "written"
        with _as_output_error(self.name), open(image, "rb") as src:
            if not self.copy:
                # Try the reflink first: as cheap as a link, and an independent file.
                with self._temporary() as (fd, tmp, _):
                    if _reflink(src.fileno(), fd):
                        self._finish(fd, tmp)
                        return "reflink"
                if self._hardlink(image):
                    return "hardlink"
            with self._temporary() as (fd, tmp, _):
                how = "reflink" if _reflink(src.fileno(), fd) else "copy"
                if how == "copy":
                    _copy(src.fileno(), fd)
                self._finish(fd, tmp)
                return how

    # -- the pieces -----------------------------------------------------------------

    @contextlib.contextmanager
    def _temporary(self) -> Iterator[tuple[int, str, BinaryIO]]:
        """A new file with a random name beside the output (``mkstemp``: ``O_EXCL``,
        ``O_NOFOLLOW``, mode 0600 until it is complete); removed unless committed."""
        assert self.path is not None
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                   dir=self.path.parent)
        f = open(fd, "w+b")  # noqa: SIM115 - closed below
        f.raw.name = str(self.path)  # type: ignore[attr-defined] # the writer's messages
        try:
            yield fd, tmp, f
        finally:
            try:
                f.close()
            finally:
                # Gone already once committed; never left behind otherwise.
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def _finish(self, fd: int, tmp: str) -> None:
        """Make the complete temporary ``tmp`` (open as ``fd``) the output: synced, given
        the mode of a new file (through its descriptor, never a path), renamed."""
        os.fsync(fd)
        os.fchmod(fd, 0o666 & ~umask())
        self._commit(tmp, os.fstat(fd))

    def _commit(self, tmp: str, st: os.stat_result) -> None:
        """Give the temporary ``tmp`` (whose file has the status ``st``) the output's name."""
        assert self.path is not None
        dest = self.path
        try:
            if self.overwrite:
                os.rename(tmp, dest)
                # rename(2) does nothing when both names are links to one file (a hard
                # link to the cache over the same link): the temporary name stays.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            else:
                try:
                    os.link(tmp, dest, follow_symlinks=False)
                except FileExistsError:
                    raise _exists(dest, "appeared while the output was written") from None
                except OSError as e:
                    if e.errno not in _NO_LINKS:
                        raise
                    if os.path.lexists(dest):
                        raise _exists(dest, "appeared while the output was written") from None
                    os.rename(tmp, dest)
                else:
                    os.unlink(tmp)
        except FileNotFoundError:
            raise _swapped(dest) from None  # the temporary was removed under us
        _check_placed(dest, st)

    def _hardlink(self, image: Path) -> bool:
        """Link the cache's ``image`` at the output; False when the filesystem cannot."""
        assert self.path is not None
        st = os.stat(image)
        for _ in range(100):
            # link(2) never follows or replaces what is at its new name: a random free
            # name is as safe as mkstemp's.
            tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp")
            try:
                os.link(image, tmp, follow_symlinks=False)
                break
            except FileExistsError:
                continue
            except OSError as e:
                if e.errno in _NO_LINKS:
                    return False
                raise
        else:
            raise OutputError("cannot find a free temporary name", context=str(self.path))
        try:
            self._commit(str(tmp), st)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return True

    @contextlib.contextmanager
    def _open_device(self) -> Iterator[BinaryIO]:
        """The device, FIFO or descriptor at the output, opened for writing (a FIFO waits
        for its reader, as ``cat > FIFO`` does)."""
        assert self.path is not None
        fd = os.open(self.path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if os.isatty(fd):
                raise _terminal(self.name)
            if stat.S_ISREG(st.st_mode):
                if not _is_fd_link(self.path):
                    # Swapped for a file since the check: never write into one by its name.
                    raise OutputError("changed from a device into a file while ocisquash ran",
                                      context=self.name)
                os.ftruncate(fd, 0)  # a file the shell opened for us (``> FILE``)
            elif not (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
                raise UsageError(f"is {_kind_name(st.st_mode)}", context=self.name)
        except BaseException:
            os.close(fd)
            raise
        f = open(fd, "wb")  # noqa: SIM115 - closed below
        try:
            yield f
            f.flush()
        finally:
            with contextlib.suppress(OSError):
                f.close()  # after an error the unwritten rest is dropped, not retried


def check_output(
    output: str | os.PathLike[str] | BinaryIO,
    *,
    overwrite: bool = False,
    copy: bool = False,
) -> Destination:
    """Check an output before any work starts; see the module's rules.

    Raises :class:`UsageError` for an output that cannot be what the caller asked
    for, :class:`OutputError` when the filesystem will not let it be written.
    """
    if not isinstance(output, str | os.PathLike):
        isatty = getattr(output, "isatty", None)
        if callable(isatty) and isatty():
            raise _terminal(str(getattr(output, "name", "the output stream")))
        return Destination("stream", None, output, overwrite, copy)
    path = Path(os.path.abspath(output))
    name = str(path)
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        lst = None
    except NotADirectoryError:
        raise _bad_parent(path) from None
    except PermissionError:
        lst = None  # a directory on the way cannot be searched: said below
    except OSError as e:
        raise OutputError(f"cannot look at it: {e.strerror}", context=name) from None
    if lst is not None:
        st: os.stat_result | None = lst
        if stat.S_ISLNK(lst.st_mode):
            try:
                st = os.stat(path)
            except OSError:
                st = None  # a dangling link: replaced like a file, with overwrite
            if _is_fd_link(path):
                return Destination("device", path, None, overwrite, copy)
        if st is not None:
            mode = st.st_mode
            if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
                if stat.S_ISCHR(mode) and os.major(st.st_rdev) in _TTY_MAJORS:
                    raise _terminal(name)
                return Destination("device", path, None, overwrite, copy)
            if stat.S_ISDIR(mode):
                raise UsageError("is a directory", context=name,
                                 hint="name the file to write, inside it")
            if not stat.S_ISREG(mode):
                raise UsageError(f"is {_kind_name(mode)}; ocisquash writes only files, "
                                 "character devices and FIFOs", context=name,
                                 hint="write to a file, then copy it (dd) where it should go")
        if not overwrite:
            raise _exists(path, "exists")
    _check_directory(path)
    return Destination("file", path, None, overwrite, copy)


@contextlib.contextmanager
def stdout_stream() -> Iterator[BinaryIO]:
    """Standard output as a binary stream, for ``-o -``; refused when it is a terminal.

    A write error (a full disk behind ``> FILE``) is an :class:`OutputError` naming
    stdout, and the unwritten rest is dropped: Python does not try again, noisily, at exit.
    """
    fd = sys.stdout.fileno()
    if os.isatty(fd):
        raise _terminal("stdout")
    sys.stdout.flush()
    f = open(fd, "wb", closefd=False)  # noqa: SIM115 - closed below
    f.raw.name = "stdout"  # type: ignore[attr-defined]
    try:
        with _as_output_error("stdout"):
            yield f
            f.flush()
    finally:
        with contextlib.suppress(OSError):
            f.close()


# -- helpers ------------------------------------------------------------------------


def _check_directory(path: Path) -> None:
    """OUT's directory exists, is a directory, and this process may create files in it."""
    parent = path.parent
    try:
        st = os.stat(parent)
    except FileNotFoundError:
        raise UsageError(f"directory {parent} does not exist", context=str(path),
                         hint=f"create it first (mkdir -p {parent}); ocisquash does not "
                              "create directories") from None
    except NotADirectoryError:
        raise _bad_parent(path) from None
    except OSError as e:
        raise OutputError(f"cannot reach directory {parent}: {e.strerror}",
                          context=str(path)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise _bad_parent(path)
    effective = os.access in os.supports_effective_ids
    if not os.access(parent, os.W_OK | os.X_OK, effective_ids=effective):
        vfs = os.statvfs(parent)
        why = ("is on a read-only filesystem" if vfs.f_flag & os.ST_RDONLY
               else "is not writable by this user")
        raise OutputError(f"cannot create it: directory {parent} {why}", context=str(path),
                          hint="choose another -o")


def _bad_parent(path: Path) -> UsageError:
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            return UsageError(f"{parent} is not a directory", context=str(path))
    return UsageError(f"{path.parent} is not a directory", context=str(path))


def _exists(path: Path, what: str) -> UsageError:
    return UsageError(f"refusing to overwrite: the output {what}", context=str(path),
                      hint="remove it, choose another -o, or give --force to replace it")


def _terminal(name: str) -> UsageError:
    return UsageError("refusing to write a binary image to a terminal", context=name,
                      hint="redirect it to a file or a pipe (… -o - > out), or use -o FILE")


def _kind_name(mode: int) -> str:
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def _is_fd_link(path: Path) -> bool:
    """Whether ``path`` leads through symlinks to an open descriptor under ``/proc``
    (``/dev/stdout``, ``/dev/fd/3``, ``/proc/self/fd/1``)."""
    p = str(path)
    for _ in range(40):
        if _FD_LINK.fullmatch(p):
            return True
        try:
            target = os.readlink(p)
        except OSError:
            return False
        p = os.path.normpath(os.path.join(os.path.dirname(p), target))
    return False


def _check_placed(dest: Path, st: os.stat_result) -> None:
    """The file now named ``dest`` is the one written (``st``); else another process
    swapped the temporary for something of its own, which is taken away again."""
    got = os.lstat(dest)
    if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
        with contextlib.suppress(OSError):
            os.unlink(dest)
        raise _swapped(dest)


def _swapped(dest: Path) -> OutputError:
    return OutputError("its temporary file was replaced by another process while it was "
                       "written; the output is refused", context=str(dest),
                       hint="write the output in a directory only you can write to")


def _reflink(src: int, dst: int) -> bool:
    try:
        fcntl.ioctl(dst, _FICLONE, src)
    except OSError:
        return False
    return True


def _copy(src: int, dst: int) -> None:
    """Copy the whole file ``src`` to ``dst`` (both descriptors at offset 0)."""
    with contextlib.suppress(OSError):
        # In the kernel, without passing through Python; any refusal falls back to read/write.
        while os.copy_file_range(src, dst, 1 << 30):
            pass
        return
    os.lseek(src, 0, os.SEEK_SET)
    os.lseek(dst, 0, os.SEEK_SET)
    os.ftruncate(dst, 0)
    while data := os.read(src, _COPY_CHUNK):
        view = memoryview(data)
        while view:
            view = view[os.write(dst, view):]


def place_file(src: Path, dest: Path) -> str:
    """Place the cached file ``src`` at ``dest`` as :meth:`Destination.place` does, replacing
    what is there (a file that goes with an output, such as its verity hash tree)."""
    return Destination("file", Path(os.path.abspath(dest)), None, overwrite=True).place(src)


def write_file(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = True) -> Path:
    """Write the small file ``path`` by the rules above (whole or not at all, through a
    random temporary name); returns its absolute path."""
    dest = check_output(path, overwrite=overwrite)
    with dest.open() as f:
        f.write(data)
    return Path(dest.path or path)


def open_file_path(f: BinaryIO) -> Path:
    """A path that names the open file ``f`` itself (``/proc/self/fd/N``), for code that
    opens files by name: unlike the temporary's name in a shared directory, another
    process cannot point it elsewhere."""
    return Path(f"/proc/self/fd/{f.fileno()}")


def umask() -> int:
    """The process's umask. Read from ``/proc``: setting it to read it back would, for an
    instant, give files other threads create (the cache's) another mode."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _as_output_error(name: str) -> Iterator[None]:
    """``OSError`` as :class:`OutputError` naming ``name`` (a broken pipe stays itself)."""
    try:
        yield
    except OutputError as e:
        if name not in str(e):
            e.with_context(name)
        raise
    except (OcisquashError, BrokenPipeError):
        raise
    except OSError as e:
        raise OutputError(f"cannot write: {e.strerror or e}", context=name) from e


__all__ = ["Destination", "check_output", "open_file_path", "place_file", "stdout_stream",
           "write_file"]
