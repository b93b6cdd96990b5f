"""Private directories: the cache's ownership rule, file operations that never follow a
symlink, and lock waits that say what they wait for.

The cache is written by root as often as by a user, so a file another user planted
there (a symlink to ``/etc/shadow``, a hard link to a root-only file, a lock held
through a read-only descriptor) must never make ocisquash write, chmod or read the
wrong file. Two rules keep it so:

* A cache directory must belong to the user running ocisquash and must not be
  writable by group or others (the rule ssh applies to ``~/.ssh`` and pip to its
  cache). Then nobody else can create, rename or remove anything in it.
* Every file is reached through an open directory (``dir_fd``), with ``O_NOFOLLOW``,
  created with ``O_EXCL`` under a random name where it is new, and its mode changed
  through its descriptor, never through a path. These hold even for a cache that was
  shared before the first rule existed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import CacheError

log = logging.getLogger(__name__)

#: flags of every open in a private directory
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
#: how long a lock wait stays silent before it says what it waits for
LOCK_NOTICE_SECONDS = 3.0
#: how often a waiting process tries the lock again
_LOCK_POLL_SECONDS = 0.05


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def check_private(st: os.stat_result, path: Path, what: str) -> None:
    """Raise ``CacheError`` unless ``st`` (of ``path``) belongs to this user and is not
    writable by group or others."""
    me = os.geteuid()
    if st.st_uid != me:
        raise CacheError(
            f"{what} {path} belongs to {_user(st.st_uid)}, not to you ({_user(me)})",
            hint="a cache another user can write could hand you images they chose: use a "
                 "directory of your own with --cache-dir (or XDG_CACHE_HOME)")
    if st.st_mode & 0o022:
        who = " and ".join(w for bit, w in ((0o020, "its group"), (0o002, "others"))
                           if st.st_mode & bit)
        raise CacheError(
            f"{what} {path} is writable by {who}",
            hint=f"make it private (chmod go-w {path}) or use another with --cache-dir")


class PrivateDir:
    """An open directory that belongs to this user and that nobody else may write.

    Operations take names in this directory (no slashes), never paths, so nothing
    outside it can be reached through a symlink planted in it.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def open(cls, path: Path, *, what: str = "cache directory") -> PrivateDir:
        """Open (creating it 0700 if absent) and check the directory ``path``; the path
        itself may be a symlink the user made, what it leads to is checked."""
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise CacheError(f"cannot use {what} {path}: {e.strerror}",
                             hint="choose another with --cache-dir") from e
        return cls._checked(path, fd, what)

    @classmethod
    def _checked(cls, path: Path, fd: int, what: str) -> PrivateDir:
        try:
            check_private(os.fstat(fd), path, what)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def sub(self, name: str) -> PrivateDir:
        """The subdirectory ``name``, created 0700 if absent; a symlink is refused."""
        path = self.path / name
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=self.fd)
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=self.fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise CacheError(f"{path} is not a directory (a symlink or a file where the "
                                 "cache keeps a directory)",
                                 hint="remove it, or use another --cache-dir") from e
            raise CacheError(f"cannot use cache directory {path}: {e.strerror}",
                             hint="choose another with --cache-dir") from e
        return self._checked(path, fd, "cache directory")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- files --------------------------------------------------------------------------
    def open_fd(self, name: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
        """``open(name)`` in this directory without following a symlink. A file opened for
        writing must be a regular file of this user's with one link (no hard link to a
        file elsewhere)."""
        writing = flags & (os.O_WRONLY | os.O_RDWR)
        try:
            fd = os.open(name, flags | _NOFOLLOW, mode, dir_fd=self.fd)
        except OSError as e:
            if writing and e.errno == errno.ELOOP:
                raise CacheError(f"{self.path / name} is a symlink, where the cache keeps a "
                                 "file of its own", hint="remove it; nothing of the cache is "
                                                         "lost") from e
            raise
        if writing:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
                os.close(fd)
                raise CacheError(f"{self.path / name} is not a file of this cache (another "
                                 f"user's file, a link or a special file)",
                                 hint="remove it; nothing of the cache is lost")
        return fd

    def read_bytes(self, name: str, limit: int | None = None) -> bytes:
        """The contents of the regular file ``name`` (``OSError`` when absent, a symlink or
        not a file)."""
        fd = self.open_fd(name, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(self.path / name))
            return f.read() if limit is None else f.read(limit)

    def lstat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def is_file(self, name: str) -> bool:
        try:
            return stat.S_ISREG(self.lstat(name).st_mode)
        except OSError:
            return False

    def write_atomic(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Replace ``name`` with ``data`` through a new file of a random name (``O_EXCL``),
        fsynced, then renamed over it."""
        import secrets

        tmp = f".{name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600,
                     dir_fd=self.fd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), mode)
                os.fsync(f.fileno())
            os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise
        os.fsync(self.fd)

    def unlink(self, name: str) -> None:
        os.unlink(name, dir_fd=self.fd)

    def listdir(self) -> list[str]:
        return sorted(os.listdir(self.fd))

    def fsync(self) -> None:
        os.fsync(self.fd)


# -- locks -----------------------------------------------------------------------------------
def lock_holders(fd: int) -> list[int]:
    """The ids of the processes that hold an ``flock`` on ``fd``'s file (from
    ``/proc/locks``; empty when it cannot be read)."""
    st = os.fstat(fd)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; waiters carry "->"
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == ident:
                with contextlib.suppress(ValueError):
                    pids.append(int(fields[4]))
    return pids


def _describe(pid: int) -> str:
    """``process 1234 (ocisquash compile alpine…)``, printable characters only."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        cmd = " ".join(a.decode(errors="replace") for a in args if a)
    except OSError:
        cmd = ""
    cmd = "".join(c if c.isprintable() else "?" for c in cmd)
    if len(cmd) > 80:
        cmd = cmd[:79] + "…"
    return f"process {pid} ({cmd})" if cmd else f"process {pid}"


def holder_text(fd: int) -> str:
    pids = [p for p in lock_holders(fd) if p != os.getpid()]
    if not pids:
        return "another process"
    return ", ".join(_describe(p) for p in sorted(set(pids)))


def wait_for_lock(fd: int, what: str, timeout: float | None) -> None:
    """Take an exclusive ``flock`` on ``fd``, waiting while someone else holds it.

    After a few seconds the wait says what it waits for and who holds it; after
    ``timeout`` seconds (None: no limit) it gives up with ``CacheError``.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    started = time.monotonic()
    noticed = False
    while True:
        waited = time.monotonic() - started
        if timeout is not None and waited >= timeout:
            raise CacheError(f"gave up after waiting {timeout:g} s for {what}, held by "
                             f"{holder_text(fd)}",
                             hint="another ocisquash is building or downloading the same; "
                                  "wait for it, stop it, or give a longer --lock-timeout")
        if not noticed and waited >= LOCK_NOTICE_SECONDS:
            log.warning("waiting for %s, held by %s", what, holder_text(fd))
            noticed = True
        time.sleep(_LOCK_POLL_SECONDS if timeout is None
                   else max(0.0, min(_LOCK_POLL_SECONDS, timeout - waited)))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            continue


@contextlib.contextmanager
def held(fd: int) -> Iterator[int]:
    """Close ``fd`` (and so release its lock) when the block ends."""
    try:
        yield fd
    finally:
        os.close(fd)
