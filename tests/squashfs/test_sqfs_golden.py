"""A golden image: the same entries and options must keep producing the same bytes.

``FORMAT_VERSION`` is a cache key for images: if this hash changes because the writer's
output changed, bump ``FORMAT_VERSION`` and update the hash (the listing check below
says whether the change is also visible to readers). A change of the deflate (libdeflate) or zlib-ng package
can also change the bytes.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from ocisquash.entry import EntryMeta
from ocisquash.squashfs import FORMAT_VERSION, SquashfsWriter, WriterOptions

from ._util import unsquashfs_listing

GOLDEN_SHA256 = "a9fe4c6b65d3dada4a1508a6cbccb9fce204ef91cf89a1e9bafa7e44e46a14c7"
GOLDEN_FORMAT_VERSION = "2"

CAPABILITY = b"\x01\x00\x00\x02" + bytes(16)

GOLDEN_LISTING = [
    "drwxr-xr-x 0/0 59 1970-01-01 00:00 squashfs-root",  # 12 + 4 x (8 + name) + 3
    "drwxr-xr-x 0/0 40 1970-01-01 00:00 squashfs-root/bin",
    "lrwxrwxrwx 0/0 4 1970-01-01 00:00 squashfs-root/bin/alias -> tool",
    "-rwsr-xr-x 0/50 256000 1970-01-01 00:00 squashfs-root/bin/tool",
    "drwxr-xr-x 0/0 27 1970-01-01 00:00 squashfs-root/dev",
    "crw-rw-rw- 0/0 1, 3 1970-01-01 00:00 squashfs-root/dev/null",
    "drwxr-xr-x 0/0 48 1970-01-01 00:00 squashfs-root/etc",
    "-rw-r--r-- 0/0 7 1970-01-01 00:00 squashfs-root/etc/hostname",
    "-rw-r--r-- 0/0 7 1970-01-01 00:00 squashfs-root/etc/hostname2",
    "drwxr-xr-x 0/0 27 1970-01-01 00:00 squashfs-root/run",
    "prw------- 0/0 0 1970-01-01 00:00 squashfs-root/run/fifo",
]


def _golden_image() -> bytes:
    buffer = io.BytesIO()
    with SquashfsWriter(buffer, WriterOptions(mkfs_time=1_700_000_000, workers=2)) as w:
        w.add_directory(b"", EntryMeta(mode=0o755, mtime=1))
        w.add_file(b"etc/hostname", EntryMeta(mode=0o644, mtime=2), b"golden\n")
        tool = EntryMeta(
            mode=0o4755, gid=50, mtime=3, xattrs=((b"security.capability", CAPABILITY),)
        )
        w.add_file(b"bin/tool", tool, bytes(range(256)) * 1000)
        w.add_symlink(b"bin/alias", EntryMeta(mode=0o777, mtime=4), b"tool")
        w.add_hardlink(b"etc/hostname2", b"etc/hostname")
        w.add_device(b"dev/null", EntryMeta(mode=0o666, mtime=5), "char", 1, 3)
        w.add_fifo(b"run/fifo", EntryMeta(mode=0o600, mtime=6))
    return buffer.getvalue()


def test_golden_image_listing(tmp_path: Path) -> None:
    image = tmp_path / "golden.sqfs"
    image.write_bytes(_golden_image())
    assert unsquashfs_listing(image) == GOLDEN_LISTING


def test_golden_image_bytes_are_unchanged_or_format_version_bumped() -> None:
    digest = hashlib.sha256(_golden_image()).hexdigest()
    if digest != GOLDEN_SHA256:
        assert FORMAT_VERSION != GOLDEN_FORMAT_VERSION, (
            "the writer's output changed: bump FORMAT_VERSION (the image cache key) "
            "and update GOLDEN_SHA256 / GOLDEN_FORMAT_VERSION"
        )
    else:
        assert FORMAT_VERSION == GOLDEN_FORMAT_VERSION
