"""Which compression a stream uses, from its first bytes.

The compression is taken from the magic bytes, never from a media type or a file name
(registries mislabel): gzip ``1f 8b``, zstd ``28 b5 2f fd`` (or a skippable frame
before it), bzip2 ``BZh``, xz ``fd 37 7a 58 5a 00``; anything else is a plain tar.
The layer reader and the archive sources both ask here; this module imports nothing,
so that resolving an archive (which sniffs its layers) loads no decoder.
"""

from __future__ import annotations

from typing import Literal

Compression = Literal["gzip", "zstd", "bzip2", "xz", "tar"]

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XZ_MAGIC = b"\xfd7zXZ\x00"
#: "BZh", the block size '1'..'9', then the first block's magic (the digits of pi) or,
#: for an empty stream, the end-of-stream magic (the digits of sqrt(pi)): a tar whose
#: first name starts with all ten bytes is not one to worry about
_BZIP2_BLOCKS = (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90")
#: bytes :func:`sniff_compression` looks at
SNIFF_BYTES = 10


def sniff_compression(head: bytes) -> Compression:
    """The compression of a stream starting with ``head`` (its first ``SNIFF_BYTES``
    bytes when there are that many)."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18":
        return "zstd"  # a zstd skippable frame (metadata) before the first data frame
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head[:3] == b"BZh" and head[3:4] in b"123456789" and len(head) >= 10 \
            and head[4:10] in _BZIP2_BLOCKS:
        return "bzip2"
    return "tar"
