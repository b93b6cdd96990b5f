"""Test helpers: in-memory layers (the ``Layer`` protocol over bytes) and a recording sink."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import BinaryIO

from ocisquash.digest import Digest, VerifyingReader
from ocisquash.entry import EntryMeta
from ocisquash.model import Descriptor

from imagebuilder import Entry, compress, make_tar

MEDIA = {
    "tar": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


class BlobLayer:
    """A layer whose blob is held in memory; ``open()`` verifies digest and size at EOF."""

    def __init__(self, blob: bytes, diff_id: Digest | None, media_type: str) -> None:
        self.blob = blob
        self._diff_id = diff_id
        self._desc = Descriptor(media_type, Digest.of(blob), len(blob))
        self.opened = 0

    @classmethod
    def of(cls, layer: bytes | list[Entry], compression: str = "gzip") -> BlobLayer:
        tar = layer if isinstance(layer, bytes) else make_tar(layer)
        return cls(compress(tar, compression), Digest.of(tar), MEDIA[compression])

    @property
    def descriptor(self) -> Descriptor:
        return self._desc

    @property
    def diff_id(self) -> Digest | None:
        return self._diff_id

    def open(self) -> BinaryIO:
        self.opened += 1
        return VerifyingReader(io.BytesIO(self.blob), self._desc.digest, self._desc.size,  # type: ignore[return-value]
                               what="layer")


@dataclass
class Node:
    kind: str
    meta: EntryMeta | None
    data: bytes = b""
    target: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    #: id shared by the names of one hard-link group
    inode: int = 0


@dataclass
class RecordingSink:
    """An in-memory ``TreeSink`` with the squashfs writer's semantics.

    Missing parents are created with ``None`` metadata (the writer's defaults); adding
    an existing path replaces it (a non-directory in the way of a parent is replaced by
    a directory); replacing a directory drops its children; hard links share an inode.
    """

    nodes: dict[bytes, Node] = field(default_factory=dict)
    calls: list[tuple[str, bytes]] = field(default_factory=list)
    _next_inode: int = 1

    def __post_init__(self) -> None:
        self.nodes[b""] = Node("dir", None)

    def _ino(self) -> int:
        self._next_inode += 1
        return self._next_inode

    def _parents(self, path: bytes) -> None:
        parts = path.split(b"/")
        for i in range(1, len(parts)):
            p = b"/".join(parts[:i])
            n = self.nodes.get(p)
            if n is None or n.kind != "dir":
                if n is not None:
                    self._drop(p)
                self.nodes[p] = Node("dir", None, inode=self._ino())

    def _drop(self, path: bytes) -> None:
        self.nodes.pop(path, None)
        prefix = path + b"/"
        for k in [k for k in self.nodes if k.startswith(prefix)]:
            del self.nodes[k]

    def _put(self, path: bytes, node: Node) -> None:
        assert path, "only add_directory may touch the root"
        self._parents(path)
        old = self.nodes.get(path)
        if old is not None and (old.kind == "dir") != (node.kind == "dir"):
            self._drop(path)
        if node.inode == 0:
            node.inode = self._ino()
        self.nodes[path] = node

    def add_directory(self, path: bytes, meta: EntryMeta) -> None:
        self.calls.append(("dir", path))
        n = self.nodes.get(path)
        if n is not None and n.kind == "dir":
            n.meta = meta
        else:
            self._put(path, Node("dir", meta))

    def add_file(self, path: bytes, meta: EntryMeta, data: BinaryIO | bytes,
                 size: int | None = None) -> None:
        self.calls.append(("file", path))
        if isinstance(data, bytes):
            content = data
        else:
            chunks = []
            while chunk := data.read(7919):  # odd read size on purpose
                chunks.append(chunk)
            content = b"".join(chunks)
        assert size is None or size == len(content), (path, size, len(content))
        self._put(path, Node("file", meta, content))

    def add_symlink(self, path: bytes, meta: EntryMeta, target: bytes) -> None:
        self.calls.append(("symlink", path))
        self._put(path, Node("symlink", meta, target=target))

    def add_device(self, path: bytes, meta: EntryMeta, kind: str, major: int, minor: int) -> None:
        self.calls.append((kind, path))
        self._put(path, Node(kind, meta, rdev=(major, minor)))

    def add_fifo(self, path: bytes, meta: EntryMeta) -> None:
        self.calls.append(("fifo", path))
        self._put(path, Node("fifo", meta))

    def add_socket(self, path: bytes, meta: EntryMeta) -> None:
        self.calls.append(("socket", path))
        self._put(path, Node("socket", meta))

    def add_hardlink(self, path: bytes, target: bytes) -> None:
        self.calls.append(("hardlink", path))
        t = self.nodes[target]
        assert t.kind != "dir", "hard link to a directory"
        self._put(path, Node(t.kind, t.meta, t.data, t.target, t.rdev, inode=t.inode))

    def exists(self, path: bytes) -> bool:
        return path in self.nodes

    def digest_of(self, path: bytes) -> str:
        return hashlib.sha256(self.nodes[path].data).hexdigest()
