"""The small protocols every image source implements.

A source turns a reference into an image in two steps, so that a cached compile
costs as little as possible: ``resolve()`` answers which platform manifest the
reference names (one manifest request for a registry), and only then does the
caller ask the returned ``ResolvedImage`` for its manifest, config and layers.
Layers hand out verified readers, never paths.

A source whose layers come from far away (a registry) is also a ``StreamingImage``:
its layers can download in the background while they are read. Callers ask
``isinstance(image, StreamingImage)``; no other capability is looked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

from ..digest import Digest
from ..model import Descriptor, ImageConfig, Manifest, Platform


class Layer(Protocol):
    """One layer blob of an image."""

    @property
    def descriptor(self) -> Descriptor:
        """The manifest's descriptor of the (usually compressed) blob."""
        ...

    @property
    def diff_id(self) -> Digest | None:
        """The digest of the uncompressed tar, from the config's ``rootfs.diff_ids``."""
        ...

    def open(self) -> BinaryIO:
        """A stream of the blob's bytes as stored (compressed).

        The stream raises ``IntegrityError`` at EOF when the bytes do not match the
        descriptor's digest and size; read it to the end.
        """
        ...


class ResolvedImage(Protocol):
    """A single-platform image whose manifest digest is known."""

    @property
    def reference(self) -> str:
        """The reference as the user gave it, normalised, for messages and records."""
        ...

    @property
    def digest(self) -> Digest:
        """The digest of the platform-specific image manifest."""
        ...

    @property
    def platform(self) -> Platform | None:
        """The platform, when the index or config says."""
        ...

    @property
    def index(self) -> IndexInfo | None:
        """The multi-platform index the image was chosen from, if there was one."""
        ...

    def manifest(self) -> Manifest:
        ...

    def config(self) -> ImageConfig:
        ...

    def layers(self) -> Sequence[Layer]:
        ...


class LayerDownloads(Protocol):
    """The background downloads of one ``StreamingImage.downloading()`` block."""

    @property
    def failed(self) -> BaseException | None:
        """The first download that failed, in layer order (once the block has ended)."""
        ...

    @property
    def rewound(self) -> bool:
        """Whether a download started over after some of its bytes were read: what was
        read may then not be what verified, and the layers must be read again."""
        ...


@runtime_checkable
class StreamingImage(ResolvedImage, Protocol):
    """An image whose missing layers download while they are read.

    Within ``downloading()`` every layer not yet stored downloads in the background,
    the top one first (the flattener reads it first), and ``Layer.open()`` reads a
    layer as it arrives. Leaving the block waits for the downloads and raises the
    first that failed. ``pull`` is such a block that reads nothing.
    """

    def downloading(self) -> AbstractContextManager[LayerDownloads]:
        ...


class ImageSource(Protocol):
    """Where images come from: a registry, an OCI layout, an archive."""

    def resolve(self, platform: Platform | None = None) -> ResolvedImage:
        """Find the manifest for ``platform`` (default: the host's)."""
        ...

    def close(self) -> None:
        """Release what the source holds open (an archive's file, a registry's
        connections); its layers must not be read afterwards."""
        ...


@dataclass(frozen=True)
class IndexInfo:
    """What ``inspect`` shows about a multi-platform index, when there is one."""

    digest: Digest
    media_type: str
    manifests: tuple[Descriptor, ...]
