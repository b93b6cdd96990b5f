"""A golden image: the same entries and options must keep producing the same bytes.

``FORMAT_VERSION`` is a cache key for images: if one of these hashes changes because the
writer's output changed, bump ``FORMAT_VERSION`` and update the hashes (the listing check
below says whether the change is also visible to readers). The image is written with
gzip (the writer's default) and with zstd (compile's default). A change of the deflate
(libdeflate), zlib or zstandard package can also change the bytes.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from ocisquash.entry import EntryMeta
from ocisquash.squashfs import FORMAT_VERSION, Compression, SquashfsWriter, WriterOptions

from ._util import unsquashfs_listing

GOLDEN_SHA256 = {
    Compression.GZIP: "a9fe4c6b65d3dada4a1508a6cbccb9fce204ef91cf89a1e9bafa7e44e46a14c7",
    Compression.ZSTD: "5d9addc0c0988d9952233aa32610a77561ae453ee0b2d534ab67015bd1082f6d",
}
GOLDEN_FORMAT_VERSION = "3"

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


def _golden_image(compression: Compression = Compression.GZIP) -> bytes:
    buffer = io.BytesIO()
    options = WriterOptions(compression=compression, mkfs_time=1_700_000_000, workers=2)
    with SquashfsWriter(buffer, options) as w:
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


@pytest.mark.parametrize("compression", list(GOLDEN_SHA256))
def test_golden_image_listing(compression: Compression, tmp_path: Path) -> None:
    image = tmp_path / "golden.sqfs"
    image.write_bytes(_golden_image(compression))
    assert unsquashfs_listing(image) == GOLDEN_LISTING


@pytest.mark.parametrize("compression", list(GOLDEN_SHA256))
def test_golden_image_bytes_are_unchanged_or_format_version_bumped(
    compression: Compression,
) -> None:
    digest = hashlib.sha256(_golden_image(compression)).hexdigest()
    if digest != GOLDEN_SHA256[compression]:
        assert FORMAT_VERSION != GOLDEN_FORMAT_VERSION, (
            "the writer's output changed: bump FORMAT_VERSION (the image cache key) "
            "and update GOLDEN_SHA256 / GOLDEN_FORMAT_VERSION"
        )
    else:
        assert FORMAT_VERSION == GOLDEN_FORMAT_VERSION
