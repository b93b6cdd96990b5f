"""Images in an OCI distribution (v2) registry: ``docker://REF``.

``RegistrySource.resolve()`` costs exactly one manifest request. When the tag
names an index (or Docker manifest list), the platform's entry is chosen and its
digest returned *without* fetching that manifest: the compile cache keys on it,
so a cached compile needs nothing more. Manifest, config and layers are fetched
on demand, verified against their digests, and kept in the ``BlobStore`` so a
later pull of the same image reads them from disk.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from ..digest import Digest, VerifyingReader, verify_bytes
from ..errors import ManifestError, OcisquashError, PlatformNotFoundError
from ..model import (
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    parse_manifest_or_index,
)
from ..progress import ProgressCallback
from ..reference import Reference
from ..registry.client import RegistryClient
from ..store import BlobStore
from .base import IndexInfo
from .options import SourceOptions

log = logging.getLogger(__name__)

#: Image configs larger than this are refused.
CONFIG_LIMIT = 8 << 20


class RegistrySource:
    """An image reference in a registry, ready to be resolved for a platform."""

    def __init__(self, reference: Reference, options: SourceOptions | None = None, *,
                 client: RegistryClient | None = None) -> None:
        self.reference = reference
        self.options = options if options is not None else SourceOptions()
        self.client = client if client is not None else RegistryClient(reference, self.options)
        self._store: BlobStore | None = None

    @property
    def store(self) -> BlobStore:
        if self._store is None:
            self._store = BlobStore(self.options.cache_dir)
        return self._store

    def __repr__(self) -> str:
        return f"RegistrySource({str(self.reference)!r})"

    def resolve(self, platform: Platform | None = None) -> RegistryImage:
        """Fetch the reference's manifest or index (one request) and pick ``platform``'s image.

        ``platform`` defaults to the host's and only matters for an index. A
        reference by digest is verified against that digest.
        """
        ref = self.reference
        what = f"manifest of {ref}"
        fetched = self.client.get_manifest(ref.identifier, ref.digest, what=what)
        try:
            parsed = parse_manifest_or_index(fetched.raw, fetched.media_type)
        except OcisquashError as e:
            raise e.with_context(str(ref)) from None
        if isinstance(parsed, Index):
            want = platform if platform is not None else Platform.host()
            try:
                desc = parsed.select(want)
            except OcisquashError as e:
                raise e.with_context(str(ref)) from None
            info = IndexInfo(fetched.digest, parsed.media_type, parsed.manifests)
            return RegistryImage(self, desc.digest, desc.platform, index=info, descriptor=desc)
        return RegistryImage(self, fetched.digest, None, manifest=parsed, requested=platform)

    def fetch_layers(self, image: RegistryImage, progress: ProgressCallback | None = None) -> list[Path]:
        """Download every layer of ``image`` into the store, in parallel; return their paths."""
        return pull(image, progress=progress)


class RegistryLayer:
    """One layer blob; ``open()`` downloads it into the store first when needed."""

    def __init__(self, image: RegistryImage, descriptor: Descriptor, diff_id: Digest | None,
                 what: str) -> None:
        self._image = image
        self._descriptor = descriptor
        self._diff_id = diff_id
        self.what = what

    @property
    def descriptor(self) -> Descriptor:
        return self._descriptor

    @property
    def diff_id(self) -> Digest | None:
        return self._diff_id

    def fetch(self, progress: ProgressCallback | None = None) -> Path:
        """The verified blob in the store, downloaded first if absent."""
        return self._image.fetch_blob(self._descriptor, self.what, progress)

    def open(self) -> BinaryIO:
        """The stored blob, read through a verifier (the store's file could rot on disk)."""
        self.fetch()
        d = self._descriptor
        raw = self._image.source.store.open(d.digest)
        return VerifyingReader(raw, d.digest, d.size, what=self.what)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"RegistryLayer({self.what}, {self._descriptor.digest.short})"


class RegistryImage:
    """A single-platform image of a registry, its manifest digest known."""

    def __init__(self, source: RegistrySource, digest: Digest, platform: Platform | None, *,
                 manifest: Manifest | None = None, index: IndexInfo | None = None,
                 descriptor: Descriptor | None = None, requested: Platform | None = None) -> None:
        self.source = source
        self._requested = requested
        self._digest = digest
        self._platform = platform
        self._manifest = manifest
        self._descriptor = descriptor
        self._config: ImageConfig | None = None
        self._layers: tuple[RegistryLayer, ...] | None = None
        #: the index the image was chosen from, if the reference named one
        self.index = index

    @property
    def reference(self) -> str:
        return str(self.source.reference)

    @property
    def digest(self) -> Digest:
        return self._digest

    @property
    def platform(self) -> Platform | None:
        if self._platform is not None:
            return self._platform
        return self._config.platform if self._config is not None else None

    def __repr__(self) -> str:
        return f"RegistryImage({self.reference!r}, {self._digest.short})"

    @property
    def _what(self) -> str:
        return f"{self.source.reference.name}@{self._digest}"

    def manifest(self) -> Manifest:
        """The image manifest: from the store when there, else fetched by digest and verified."""
        if self._manifest is not None:
            return self._manifest
        store = self.source.store
        if store.has(self._digest):
            raw = store.read_bytes(self._digest)
            verify_bytes(raw, self._digest, what="stored manifest")
            media_type = self._descriptor.media_type if self._descriptor else ""
        else:
            fetched = self.source.client.get_manifest(str(self._digest), self._digest,
                                                      what=f"manifest {self._what}")
            raw, media_type = fetched.raw, fetched.media_type
        if self._descriptor is not None and len(raw) != self._descriptor.size:
            raise ManifestError(f"manifest is {len(raw)} bytes, the index says "
                                f"{self._descriptor.size}", context=self._what)
        try:
            parsed = parse_manifest_or_index(raw, media_type)
        except OcisquashError as e:
            raise e.with_context(self._what) from None
        if isinstance(parsed, Index):
            raise ManifestError("the index entry for this platform is another index",
                                context=self._what)
        self._manifest = parsed
        return parsed

    def store_manifest(self) -> Path:
        """Keep the manifest in the blob store (``pull`` does, so that ``manifest()`` reads it)."""
        return self.source.store.put_bytes(self._digest, self.manifest().raw)

    def fetch_blob(self, desc: Descriptor, what: str,
                   progress: ProgressCallback | None = None) -> Path:
        progress = progress if progress is not None else self.source.options.progress
        return self.source.client.fetch_blob(desc, self.source.store, what=what,
                                             progress=progress)

    def config(self) -> ImageConfig:
        """The image config, fetched into the store and verified."""
        if self._config is None:
            desc = self.manifest().config
            if desc.size > CONFIG_LIMIT:
                raise ManifestError(f"image config of {desc.size} bytes is larger than "
                                    f"{CONFIG_LIMIT} allowed", context=self._what)
            path = self.fetch_blob(desc, "config", progress=_silent)
            raw = path.read_bytes()
            verify_bytes(raw, desc.digest, desc.size, what="config")
            try:
                config = ImageConfig.parse(raw)
            except OcisquashError as e:
                raise e.with_context(f"{self._what}: config {desc.digest.short}") from None
            # A single-platform image asked for by platform must be of that platform.
            want = self._requested
            if (want is not None and config.os and config.architecture
                    and not want.matches(config.platform)):
                raise PlatformNotFoundError(
                    f"no image for platform {want}; the image has: {config.platform}",
                    context=str(self.source.reference),
                    hint="choose one with --platform OS/ARCH[/VARIANT]")
            self._config = config
        return self._config

    def fetch_layers(self, progress: ProgressCallback | None = None) -> list[Path]:
        """Download manifest, config and all layers into the store, layers in parallel."""
        return pull(self, progress=progress)

    def layers(self) -> Sequence[RegistryLayer]:
        """The layers, lowest first, each with its diff ID from the config."""
        if self._layers is None:
            manifest = self.manifest()
            diff_ids = self.config().diff_ids
            if len(diff_ids) != len(manifest.layers):
                raise ManifestError(
                    f"manifest lists {len(manifest.layers)} layers but the config has "
                    f"{len(diff_ids)} diff_ids", context=self._what)
            n = len(manifest.layers)
            self._layers = tuple(
                RegistryLayer(self, d, diff_ids[i], f"layer {i + 1}/{n}")
                for i, d in enumerate(manifest.layers))
        return self._layers


def _silent(event: object) -> None:
    """Configs are small: no progress line for them."""


def pull(image: RegistryImage, progress: ProgressCallback | None = None,
         max_parallel: int | None = None) -> list[Path]:
    """Put ``image``'s manifest, config and layers into the store; return the layers' paths.

    Layers download in parallel, at most ``max_parallel`` (default
    ``SourceOptions.max_parallel``) at a time; the first failure cancels what
    has not started and is raised once the running downloads have ended.
    """
    # Imported here: a cached compile resolves the manifest and never pulls.
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    image.store_manifest()
    image.config()
    layers = image.layers()
    workers = max(1, min(max_parallel or image.source.options.max_parallel, len(layers) or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ocisquash-pull") as pool:
        futures = [pool.submit(layer.fetch, progress) for layer in layers]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:
            # Ctrl-C: leaving the pool waits for the running downloads, so make them stop
            # at their next chunk (their bytes stay as resumable partials).
            image.source.client.cancelled.set()
            pool.shutdown(wait=True, cancel_futures=True)
            image.source.client.cancelled.clear()
            raise
        for f in futures:
            if f.done() and f.exception() is not None:
                for other in futures:
                    other.cancel()
                break
    # Leaving the pool waited for running downloads; raise the first failure in layer order.
    for f in futures:
        if not f.cancelled() and f.exception() is not None:
            raise f.exception()  # type: ignore[misc]
    return [f.result() for f in futures]
