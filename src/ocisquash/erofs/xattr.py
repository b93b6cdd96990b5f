"""Extended attributes: the name prefixes, inline bodies and the shared area.

Format rules enforced here (``include/erofs_fs.h``, ``erofs.rst``):

* a name is stored as a "Name index" for its prefix (``user.`` 1, the POSIX ACLs 2
  and 3, ``trusted.`` 4, ``lustre.`` 5, ``security.`` 6, so ``security.capability``
  is index 6 with the name ``capability``) and the rest, at most 255 bytes
  (``e_name_len`` is a u8); a value is at most 65535 bytes (``e_value_size`` is u16);
* each "erofs_xattr_entry" is followed by the name and the value, the whole padded to
  4 bytes (``EROFS_XATTR_ALIGN``);
* an inode's xattrs follow it: "erofs_xattr_ibody_header(1) + (n - 1) * 4 bytes",
  where n is ``i_xattr_icount``; the header counts the shared xattrs and is followed
  by their ids, then by the inline entries;
* a shared xattr is one entry in the area at ``xattr_blkaddr``, and its id is its
  offset there divided by 4.

Which xattrs are shared: a (name, value) pair that more than one inode carries (up
to :data:`MAX_SHARED_AREA` bytes of them) is stored once in the shared area and referenced by a 4-byte id; all others are inline.
Shared entries are laid out in the order the writer first meets them, so the image
does not depend on hashing order.
"""

from __future__ import annotations

from ..errors import ErofsError
from .format import XATTR_ENTRY, XATTR_IBODY_HEADER, XATTR_PREFIXES

Xattrs = tuple[tuple[bytes, bytes], ...]

MAX_NAME = 0xFF
MAX_VALUE = 0xFFFF
MAX_SHARED = 0xFF
#: The shared area precedes the inodes, and the root's nid must fit 16 bits: pairs
#: past this size stay inline.
MAX_SHARED_AREA = 1 << 20


def split_name(name: bytes) -> tuple[int, bytes]:
    """(name index, stored remainder) of a full xattr name."""
    for prefix, index in XATTR_PREFIXES:
        if name.startswith(prefix):
            rest = name[len(prefix):]
            if index in (2, 3) and rest:
                break  # "system.posix_acl_accessX" is not an ACL
            return index, rest
    raise ErofsError(
        f"xattr {name!r} is not in a namespace EROFS can store",
        hint="EROFS stores user.*, trusted.*, security.*, lustre.* and the POSIX ACLs",
    )


def check_xattrs(xattrs: Xattrs) -> None:
    """Raise ErofsError if a name or value cannot be stored."""
    for name, value in xattrs:
        _, rest = split_name(name)
        if len(rest) > MAX_NAME:
            raise ErofsError(f"xattr name {name[:40]!r}… is longer than EROFS allows")
        if len(value) > MAX_VALUE:
            raise ErofsError(f"xattr {name!r} has a {len(value)}-byte value; "
                             f"EROFS allows {MAX_VALUE}")


def entry(name: bytes, value: bytes) -> bytes:
    """One "erofs_xattr_entry" with its name and value, padded to 4 bytes."""
    index, rest = split_name(name)
    raw = XATTR_ENTRY.pack(len(rest), index, len(value)) + rest + value
    return raw + bytes(-len(raw) % 4)


def inline_size_bound(xattrs: Xattrs) -> int:
    """The ibody size with every xattr inline: an upper bound of what the inode gets."""
    if not xattrs:
        return 0
    return XATTR_IBODY_HEADER.size + sum(-(-(4 + len(split_name(n)[1]) + len(v)) // 4) * 4
                                          for n, v in xattrs)


class SharedXattrs:
    """Counts which pairs are shared, then lays out the shared area and inode bodies."""

    def __init__(self) -> None:
        #: pair -> number of inodes carrying it, in order of first use
        self._uses: dict[tuple[bytes, bytes], int] = {}
        #: shared pair -> id (offset / 4 in the shared area)
        self._ids: dict[tuple[bytes, bytes], int] = {}
        self._area: list[bytes] = []
        self._bodies: dict[Xattrs, bytes] = {}

    def __len__(self) -> int:
        """The number of shared entries (after :meth:`seal`)."""
        return len(self._ids)

    def count(self, xattrs: Xattrs) -> None:
        """Note one inode carrying ``xattrs``."""
        for pair in xattrs:
            self._uses[pair] = self._uses.get(pair, 0) + 1

    def seal(self) -> None:
        """Choose the shared pairs (after every inode was counted)."""
        offset = 0
        for pair, uses in self._uses.items():
            if uses > 1 and offset + len(entry(*pair)) <= MAX_SHARED_AREA:
                raw = entry(*pair)
                self._ids[pair] = offset // 4
                self._area.append(raw)
                offset += len(raw)
        self._uses.clear()

    def area(self) -> bytes:
        """The shared xattr area (to be placed at ``xattr_blkaddr``)."""
        return b"".join(self._area)

    def body(self, xattrs: Xattrs) -> bytes:
        """The bytes following an inode: header, shared ids, inline entries."""
        if not xattrs:
            return b""
        found = self._bodies.get(xattrs)
        if found is not None:
            return found
        # "h_shared_count" is a u8: past 255 shared ids, the rest go inline.
        shared_pairs = [p for p in xattrs if p in self._ids][:MAX_SHARED]
        shared = [self._ids[p] for p in shared_pairs]
        inline = [entry(*p) for p in xattrs if p not in shared_pairs]
        raw = (XATTR_IBODY_HEADER.pack(0, len(shared))
               + b"".join(i.to_bytes(4, "little") for i in shared) + b"".join(inline))
        if len(self._bodies) < 1 << 16:  # many inodes share few sets; bound the memo
            self._bodies[xattrs] = raw
        return raw


def icount(body: bytes) -> int:
    """``i_xattr_icount`` of an ibody: "1 header + n-1 * 4 bytes"."""
    return 0 if not body else (len(body) - XATTR_IBODY_HEADER.size) // 4 + 1
