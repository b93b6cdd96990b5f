"""Images from an OCI image layout directory (``oci:PATH[:TAG]``).

A layout is ``index.json`` plus content-addressed ``blobs/ALGO/HEX``. The image
is found in three steps: the tag picks an entry of ``index.json`` (annotation
``org.opencontainers.image.ref.name``); an entry that is an index is followed,
choosing the requested platform, down to an image manifest; the manifest names
the config and the layers. Every blob is checked against its digest: small JSON
blobs when read, layers at the end of their streams.

The resolution works on any ``BlobStore``, so the OCI archive source reuses it
over the members of a tar file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from ..digest import Digest, VerifyingReader, verify_bytes
from ..errors import (
    ImageNotFoundError,
    LimitExceededError,
    ManifestError,
    OcisquashError,
    PlatformNotFoundError,
    SizeMismatchError,
    UnsafeLayerError,
    UnsupportedError,
)
from ..model import (
    OCI_INDEX,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    parse_manifest_or_index,
)
from ..reference import OciLayoutSpec
from ..rules import MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE, check_manifest
from .base import IndexInfo

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
#: How many indexes deep an index may point to another index.
MAX_INDEX_DEPTH = 4


class BlobStore(Protocol):
    """Read access to a layout's ``index.json`` and blobs, wherever they are stored."""

    @property
    def where(self) -> str:
        """The layout's location, for messages."""
        ...

    def read_index(self) -> bytes:
        """The bytes of ``index.json``; ``ImageNotFoundError`` when there is none."""
        ...

    def has_blob(self, digest: Digest) -> bool:
        ...

    def open_blob(self, digest: Digest) -> BinaryIO:
        """The blob's stored bytes, unverified; ``ImageNotFoundError`` when it is missing."""
        ...


def missing_blob(digest: Digest, where: str, what: str = "blob") -> ImageNotFoundError:
    """The error for a blob a layout or archive should hold but does not."""
    return ImageNotFoundError(
        f"{what} {digest} is missing", context=where,
        hint="the image layout is incomplete; copy the image again",
    )


_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def open_regular(path: str | os.PathLike[str], what: str, where: str) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file; refuse anything else.

    Opened with ``O_NONBLOCK``, so that a FIFO planted as a layout file is refused
    instead of waiting forever for a writer; other ``OSError``s are the caller's."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsupportedError(
                f"{what} is {_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}, not a "
                "regular file", context=where,
                hint="ocisquash reads images only from regular files")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class DirectoryBlobs:
    """A ``BlobStore`` over an OCI layout directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._real_root = os.path.realpath(root)

    @property
    def where(self) -> str:
        return f"OCI layout {self.root}"

    def read_index(self) -> bytes:
        path = self.root / "index.json"
        try:
            with open_regular(path, "index.json", self.where) as f:
                data = f.read(MAX_MANIFEST_SIZE + 1)
        except FileNotFoundError:
            if not self.root.is_dir():
                raise ImageNotFoundError("no such directory", context=self.where) from None
            raise ImageNotFoundError(
                "no index.json: not an OCI image layout", context=self.where,
                hint="an OCI layout holds oci-layout, index.json and blobs/; "
                     "create one with 'skopeo copy IMAGE oci:DIR:TAG'",
            ) from None
        except OSError as e:
            raise ImageNotFoundError(f"cannot read index.json: {e.strerror}", context=self.where) from None
        if len(data) > MAX_MANIFEST_SIZE:
            raise LimitExceededError(f"index.json is larger than {MAX_MANIFEST_SIZE} bytes",
                                     context=self.where)
        return data

    def _path(self, digest: Digest) -> Path:
        # Digest.parse admits only [0-9a-f] hex and known algorithms, so the name
        # cannot climb out of blobs/; a symlink still could, hence the realpath check.
        path = self.root / "blobs" / digest.algorithm / digest.hex
        real = os.path.realpath(path)
        if not real.startswith(self._real_root + os.sep):
            raise UnsafeLayerError(
                f"blob {digest.short} is a link to {real}, outside the layout", context=self.where
            )
        return path

    def has_blob(self, digest: Digest) -> bool:
        return self._path(digest).is_file()

    def open_blob(self, digest: Digest) -> BinaryIO:
        path = self._path(digest)
        if path.is_dir():
            raise missing_blob(digest, self.where)
        try:
            return open_regular(path, f"blob {digest.short}", self.where)
        except (FileNotFoundError, NotADirectoryError):
            raise missing_blob(digest, self.where) from None


# --- the resolved image ------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalLayer:
    """A layer whose bytes come from a local blob store; ``open()`` verifies them at EOF."""

    descriptor: Descriptor
    diff_id: Digest | None
    opener: Callable[[], BinaryIO] = field(repr=False, compare=False)
    where: str = ""

    def open(self) -> BinaryIO:
        """A stream of the stored (usually compressed) bytes that checks digest and size at EOF."""
        reader = VerifyingReader(self.opener(), self.descriptor.digest, self.descriptor.size,
                                 what=f"{self.where}: layer" if self.where else "layer")
        return cast(BinaryIO, reader)


@dataclass(frozen=True)
class LocalImage:
    """A resolved single-platform image from a layout or an archive."""

    reference: str
    digest: Digest
    platform: Platform | None
    _manifest: Manifest = field(repr=False)
    _config: ImageConfig = field(repr=False)
    _layers: tuple[LocalLayer, ...] = field(repr=False)
    #: the index the image was chosen from, when there was a choice
    index: IndexInfo | None = None

    def manifest(self) -> Manifest:
        return self._manifest

    def config(self) -> ImageConfig:
        return self._config

    def layers(self) -> Sequence[LocalLayer]:
        return self._layers


# --- resolution --------------------------------------------------------------------------------


def read_small_blob(store: BlobStore, desc: Descriptor, what: str, limit: int) -> bytes:
    """Read a JSON blob whole and check it against its descriptor."""
    if desc.size > limit:
        raise LimitExceededError(
            f"{what} {desc.digest.short} is {desc.size} bytes, more than the {limit} allowed",
            context=store.where,
        )
    with store.open_blob(desc.digest) as f:
        data = f.read(desc.size + 1)
    if len(data) > desc.size:  # only one byte more was read: its real size is unknown
        raise SizeMismatchError(f"size is more than the {desc.size} bytes its descriptor says",
                                context=f"{store.where}: {what} {desc.digest.short}")
    try:
        verify_bytes(data, desc.digest, desc.size, what=what)
    except OcisquashError as e:
        raise e.with_context(store.where) from None
    return data


def _tags(index: Index) -> list[str]:
    return [t for d in index.manifests if (t := d.annotation(REF_NAME_ANNOTATION)) is not None]


def list_tags(store: BlobStore) -> list[str]:
    """The tags ``index.json`` names, in its order."""
    return _tags(_read_top_index(store))


def _read_top_index(store: BlobStore) -> Index:
    raw = store.read_index()
    try:
        top = parse_manifest_or_index(raw, OCI_INDEX)
    except OcisquashError as e:
        raise e.with_context(f"{store.where}: index.json") from None
    if not isinstance(top, Index):
        raise ManifestError("index.json is a manifest, not an index", context=store.where)
    return top


def _pick_top(store: BlobStore, top: Index, tag: str | None) -> tuple[Index | Descriptor, str | None]:
    """The entry of ``index.json`` that ``tag`` names, or an index of several to choose from."""
    if not top.manifests:
        raise ImageNotFoundError("the layout holds no images (index.json is empty)", context=store.where)
    tags = _tags(top)
    if tag is not None:
        found = [d for d in top.manifests if d.annotation(REF_NAME_ANNOTATION) == tag]
        if not found:
            raise ImageNotFoundError(
                f"no image tagged {tag!r}; tags: {', '.join(tags) or 'none'}", context=store.where,
            )
    elif len(top.manifests) == 1:
        return top.manifests[0], top.manifests[0].annotation(REF_NAME_ANNOTATION)
    elif tags and len(set(tags)) > 1:
        raise ImageNotFoundError(
            f"the layout holds several images; name one by tag: {', '.join(dict.fromkeys(tags))}",
            context=store.where, hint="append :TAG to the layout path",
        )
    else:
        # Untagged platform entries, or all entries under one tag: one multi-platform image.
        tag = tags[0] if tags else None
        found = [d for d in top.manifests if d.annotation(REF_NAME_ANNOTATION) == tag]
    if len(found) == 1:
        return found[0], tag
    # Several entries under one name: tools write one per platform.
    return Index(top.raw, top.media_type, tuple(found)), tag


def _select(index: Index, want: Platform, where: str) -> Descriptor:
    if not any(d.platform is not None for d in index.manifests):
        if len(index.manifests) == 1:
            return index.manifests[0]
        raise ManifestError(
            f"index lists {len(index.manifests)} manifests without platforms; cannot choose one",
            context=where,
        )
    try:
        return index.select(want)
    except PlatformNotFoundError as e:
        raise e.with_context(where) from None


def resolve_layout(
    store: BlobStore, tag: str | None, platform: Platform | None, reference: Callable[[str | None], str]
) -> LocalImage:
    """Resolve ``tag`` and ``platform`` in ``store`` to a single-platform image.

    ``platform`` defaults to the host's when an index has to be chosen from; a
    lone manifest is checked against ``platform`` only when one was asked for.
    ``reference(tag)`` spells the image for messages and records.
    """
    top = _read_top_index(store)
    picked, tag = _pick_top(store, top, tag)
    want = platform or Platform.host()
    chosen_from: Index | None = picked if isinstance(picked, Index) else None
    desc = _select(picked, want, store.where) if isinstance(picked, Index) else picked
    for _depth in range(MAX_INDEX_DEPTH + 1):
        raw = read_small_blob(store, desc, "manifest", MAX_MANIFEST_SIZE)
        try:
            obj = parse_manifest_or_index(raw, desc.media_type)
        except OcisquashError as e:
            raise e.with_context(f"{store.where}: manifest {desc.digest.short}") from None
        if isinstance(obj, Manifest):
            break
        desc = _select(obj, want, f"{store.where}: index {desc.digest.short}")
        chosen_from = obj
    else:
        raise ManifestError(f"indexes nested more than {MAX_INDEX_DEPTH} deep", context=store.where)
    index = None
    if chosen_from is not None and desc.platform is not None:
        index = IndexInfo(chosen_from.digest, chosen_from.media_type, chosen_from.manifests)
    return build_image(store, obj, desc.platform, platform, index, reference(tag))


def build_image(
    store: BlobStore,
    manifest: Manifest,
    desc_platform: Platform | None,
    requested: Platform | None,
    index: IndexInfo | None,
    reference: str,
) -> LocalImage:
    """Read and check the config of ``manifest`` and check that its layer blobs exist.

    ``index`` is the index the manifest was chosen from by platform; without one
    the config's platform is checked against ``requested``.
    """
    where = store.where
    check_manifest(manifest, context=f"{where}: manifest {manifest.digest.short}")
    raw_config = read_small_blob(store, manifest.config, "config", MAX_CONFIG_SIZE)
    try:
        config = ImageConfig.parse(raw_config)
    except OcisquashError as e:
        raise e.with_context(f"{where}: config {manifest.config.digest.short}") from None
    image_platform = desc_platform.normalized() if desc_platform else (
        config.platform if config.os and config.architecture else None)
    if requested is not None and index is None and image_platform is not None \
            and not requested.matches(image_platform):
        raise PlatformNotFoundError(
            f"no image for platform {requested}; the image has: {image_platform}",
            context=where, hint="choose one with --platform OS/ARCH[/VARIANT]",
        )
    if len(config.diff_ids) != len(manifest.layers):
        raise ManifestError(
            f"the manifest lists {len(manifest.layers)} layers but the config has "
            f"{len(config.diff_ids)} diff_ids", context=f"{where}: manifest {manifest.digest.short}",
        )
    layers = []
    for i, (desc, diff_id) in enumerate(zip(manifest.layers, config.diff_ids, strict=True)):
        if not store.has_blob(desc.digest):
            raise missing_blob(desc.digest, where, f"blob of layer {i + 1}")

        def opener(d: Digest = desc.digest) -> BinaryIO:
            return store.open_blob(d)

        layers.append(LocalLayer(desc, diff_id, opener, where))
    return LocalImage(reference, manifest.digest, image_platform, manifest, config, tuple(layers),
                      index)


class OciLayoutSource:
    """An image in an OCI layout directory; ``tag`` may be left out when the layout has one image."""

    def __init__(self, path: Path | str, tag: str | None = None) -> None:
        self.path = Path(path)
        self.tag = tag
        self._store = DirectoryBlobs(self.path)

    def tags(self) -> list[str]:
        """The tags of the layout's ``index.json``."""
        return list_tags(self._store)

    def resolve(self, platform: Platform | None = None) -> LocalImage:
        """Find the manifest for ``platform`` (default: the host's, when there is a choice)."""
        return resolve_layout(self._store, self.tag, platform,
                              lambda tag: str(OciLayoutSpec(self.path, tag)))

    def close(self) -> None:
        """Nothing to release; present so every source can be closed alike."""

    def __enter__(self) -> OciLayoutSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
