"""Pack a directory tree of the local filesystem into a squashfs image.

The tree is walked with ``os.scandir`` and ``lstat``, never following symlinks, in
name order (depth first, like mksquashfs, so file data lands in the same order).
Owners, permission bits (setuid/setgid/sticky included), mtimes, device numbers and
``user.``/``trusted.``/``security.`` xattrs are kept; other xattr namespaces (e.g.
``system.posix_acl_*``) cannot be stored in squashfs and are skipped. Hard links are
found by ``(st_dev, st_ino)``.

The image is written to a temporary file beside the output and renamed into place only
when complete, so an error never leaves a half-written image under the final name.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from .entry import EntryMeta
from .errors import OcisquashError, OutputError, SquashfsError, UsageError
from .squashfs import SquashfsWriter, WriterOptions, WriteSummary

_XATTR_PREFIXES = (b"user.", b"trusted.", b"security.")


def _xattrs(path: bytes) -> tuple[tuple[bytes, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # filesystem without xattr support
        return ()
    found = []
    for name in names:
        raw = os.fsencode(name)
        if not raw.startswith(_XATTR_PREFIXES):
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:  # removed meanwhile, or unreadable
            continue
        found.append((raw, value))
    return tuple(sorted(found))


def _meta(path: bytes, st: os.stat_result, xattrs: bool) -> EntryMeta:
    return EntryMeta(
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime=max(0, min(int(st.st_mtime), 2**32 - 1)),
        xattrs=_xattrs(path) if xattrs else (),
    )


def _add_tree(
    writer: SquashfsWriter, src: bytes, options: WriterOptions, skip: set[tuple[int, int]]
) -> None:
    """Add everything below ``src`` (a directory) to ``writer``."""
    links: dict[tuple[int, int], bytes] = {}
    # (absolute directory path, image path) pairs still to list.
    stack: list[tuple[bytes, bytes]] = [(src, b"")]
    while stack:
        directory, prefix = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
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
                    writer.add_directory(image_path, _meta(path, st, options.xattrs))
                    subdirs.append((path, image_path))
                    continue
                if st.st_nlink > 1:
                    first = links.get(key)
                    if first is not None:
                        writer.add_hardlink(image_path, first)
                        continue
                    links[key] = image_path
                meta = _meta(path, st, options.xattrs)
                if stat.S_ISREG(mode):
                    with open(path, "rb", buffering=0) as f:
                        writer.add_file(image_path, meta, f, size=st.st_size)
                elif stat.S_ISLNK(mode):
                    writer.add_symlink(image_path, meta, os.readlink(path))
                elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
                    if stat.S_ISCHR(mode):
                        writer.add_device(image_path, meta, "char", major, minor)
                    else:
                        writer.add_device(image_path, meta, "block", major, minor)
                elif stat.S_ISFIFO(mode):
                    writer.add_fifo(image_path, meta)
                elif stat.S_ISSOCK(mode):
                    writer.add_socket(image_path, meta)
            except OcisquashError:
                raise  # the writer's errors already name the path
            except OSError as e:
                raise SquashfsError(
                    f"cannot read: {e.strerror or e}", context=os.fsdecode(path)
                ) from e
        # Depth first in name order: push in reverse so the first name is listed next.
        stack.extend(reversed(subdirs))


def pack_directory(src: Path, output: Path, options: WriterOptions) -> WriteSummary:
    """Write the tree below ``src`` as a squashfs image at ``output``; return the summary."""
    src_bytes = os.fsencode(src)
    try:
        root_st = os.stat(src_bytes)
    except OSError as e:
        raise UsageError(f"cannot read source directory: {e.strerror}", context=str(src)) from e
    if not stat.S_ISDIR(root_st.st_mode):
        raise UsageError("source is not a directory", context=str(src))
    output = Path(output)
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{output.name}.", suffix=".tmp", dir=output.parent or "."
        )
    except OSError as e:
        raise OutputError(f"cannot create the output: {e.strerror}", context=str(output)) from e
    try:
        with os.fdopen(fd, "w+b") as out:
            tmp_st = os.fstat(out.fileno())
            # Never pack the image being written into itself.
            skip = {(tmp_st.st_dev, tmp_st.st_ino)}
            with contextlib.suppress(OSError):
                out_st = os.stat(output)
                skip.add((out_st.st_dev, out_st.st_ino))
            with SquashfsWriter(out, options) as writer:
                writer.add_directory(b"", _meta(src_bytes, root_st, options.xattrs))
                _add_tree(writer, src_bytes, options, skip)
                summary = writer.finish()
            out.flush()
            os.fsync(out.fileno())
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, output)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return summary
