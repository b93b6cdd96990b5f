"""The in-memory tree of entries a writer has been given, and path rules.

Only metadata lives here (file contents are already in the image when a file node is
created), so a tree of a million entries costs memory but never file data.

Rules enforced here:

* a path is bytes relative to the root, components joined by ``b"/"``; a component that
  is empty, ``.``, ``..``, contains NUL or is longer than the format's 256-byte name
  limit is refused;
* entries arrive in any order: missing parents are created with default metadata, a
  later ``add_directory`` updates them, and adding an existing path replaces it (a
  non-directory standing where a parent must be is replaced by a directory);
* a hard link shares the node object; replacing one of its names leaves the others on
  the old node.

A tree may hold a million files, most of them short, so a file shorter than a block
with one name is not a node: its directory holds one int, its metadata's index in the
writer's list shifted by :data:`META_SHIFT` over its data record (``blocks.pack_short``).
A writer that never puts such ints (EROFS) sees only nodes. A hard link to such a file
makes it a :class:`FileNode` first.
"""

from __future__ import annotations

from ..entry import EntryMeta
from ..errors import SquashfsError
from .blocks import Stored
from .format import MAX_NAME_LEN, InodeType

_FILE = InodeType.FILE

#: Where a short file's metadata index starts in its int (above ``pack_short``'s bits).
META_SHIFT = 72
#: The data record of a short file's int.
DATA_MASK = (1 << META_SHIFT) - 1


class Node:
    """One inode: its metadata plus what the finish sequence assigns to it."""

    __slots__ = ("meta", "nlink", "number", "ref", "type")

    def __init__(self, meta: EntryMeta, inode_type: InodeType) -> None:
        #: basic inode type; the writer upgrades to the extended type when needed
        self.type = inode_type
        self.meta = meta
        #: "inode number": assigned when the image is finished, 0 until then
        self.number = 0
        #: where the inode is, assigned when it is written: the inode table's block
        #: number << 16 | offset (``MetadataWriter.append``)
        self.ref = -1
        self.nlink = 0


class DirNode(Node):
    __slots__ = ("children", "parent_number")

    def __init__(self, meta: EntryMeta) -> None:
        super().__init__(meta, InodeType.DIR)
        #: a short file with one name is an int (see the module docstring)
        self.children: dict[bytes, Node | int] = {}
        self.parent_number = 0


class FileNode(Node):
    __slots__ = ("data",)

    def __init__(self, meta: EntryMeta, data: Stored) -> None:
        # Node's fields set here rather than through super(): one is made per file.
        self.type = _FILE
        self.meta = meta
        self.number = 0
        self.ref = -1
        self.nlink = 0
        self.data = data


class SymlinkNode(Node):
    __slots__ = ("target",)

    def __init__(self, meta: EntryMeta, target: bytes) -> None:
        super().__init__(meta, InodeType.SYMLINK)
        self.target = target


class SpecialNode(Node):
    """Character or block device, FIFO or socket."""

    __slots__ = ("rdev",)

    def __init__(self, meta: EntryMeta, inode_type: InodeType, rdev: int = 0) -> None:
        super().__init__(meta, inode_type)
        self.rdev = rdev


def plain_path(path: bytes) -> bool:
    """True for most valid paths, checked at once: with no "//", "/." or NUL, not starting
    with "/" or "." and not ending with "/", no component is empty, "." or ".."; a path
    of at most 256 bytes has no component longer than that. (find(), not ``in``: see
    ``layers.entries.normalize_path``.)"""
    return (len(path) <= MAX_NAME_LEN and path[0] not in b"/." and path[-1] != 0x2F
            and path.find(b"//") < 0 and path.find(b"/.") < 0 and path.find(b"\0") < 0)


def split_path(path: bytes) -> list[bytes]:
    """Validate ``path`` and return its components (``[]`` for the root ``b""``)."""
    if not isinstance(path, bytes):
        raise SquashfsError(f"path {path!r} must be bytes")
    if path == b"":
        return []
    if plain_path(path):
        return path.split(b"/")
    parts = path.split(b"/")
    for part in parts:
        if part in (b"", b".", b"..") or b"\0" in part:
            raise SquashfsError(
                f"path {path!r} has an invalid component {part!r}",
                hint="paths are relative, without leading '/', '.', '..', '//' or NUL",
            )
        if len(part) > MAX_NAME_LEN:
            raise SquashfsError(
                f"name {part[:32]!r}… is {len(part)} bytes; squashfs allows {MAX_NAME_LEN}"
            )
    return parts


class Tree:
    """Directory tree rooted at ``root``, with last-add-wins replacement."""

    def __init__(self, default_dir_meta: EntryMeta) -> None:
        self._default = default_dir_meta
        self.root = DirNode(default_dir_meta)
        #: the parent path found last, and its node: entries come grouped by directory
        #: (``SquashfsWriter.add_file``'s short path reads them as :meth:`put` does)
        self.last_head: bytes | None = b""
        self.last_dir = self.root

    def parent(self, path: bytes) -> DirNode:
        """The directory that holds the valid, non-root ``path``, made if missing."""
        i = path.rfind(b"/")
        head = path[:i] if i >= 0 else b""
        if head == self.last_head:
            return self.last_dir
        node = self.root
        if head:
            for part in head.split(b"/"):
                child = node.children.get(part)
                if not isinstance(child, DirNode):
                    child = node.children[part] = DirNode(self._default)
                node = child
        self.last_head, self.last_dir = head, node
        return node

    def get(self, path: bytes) -> Node | int | None:
        node: Node | int = self.root
        for part in split_path(path):
            if not isinstance(node, DirNode):
                return None
            found = node.children.get(part)
            if found is None:
                return None
            node = found
        return node

    def add_directory(self, path: bytes, meta: EntryMeta) -> None:
        parts = split_path(path)
        if not parts:
            self.root.meta = meta
            return
        children = self.parent(path).children
        existing = children.get(parts[-1])
        if isinstance(existing, DirNode):
            existing.meta = meta
        else:
            children[parts[-1]] = DirNode(meta)

    def put(self, path: bytes, node: Node | int, *, checked: bool = False) -> None:
        """Place a non-directory ``node`` at ``path`` (already :meth:`placeable` when
        ``checked``), replacing whatever was there."""
        if not checked:
            self.placeable(path)
        i = path.rfind(b"/")
        # parent()'s cache looked up here: one call less for most files
        parent = self.last_dir if i >= 0 and path[:i] == self.last_head else self.parent(path)
        children = parent.children
        name = path[i + 1:]
        if type(children.get(name)) is DirNode:
            self.last_head = None  # a directory leaves the tree: the cache may be in it
        children[name] = node

    def placeable(self, path: bytes) -> None:
        """Validate a path for a non-directory; raise before any file data is written
        if it can never be placed."""
        if isinstance(path, bytes) and path and plain_path(path):
            return
        if not split_path(path):
            raise SquashfsError("the root of the image must be a directory")
