"""Images in an OCI distribution (v2) registry: ``docker://REF``.

``RegistrySource.resolve()`` costs exactly one manifest request. When the tag
names an index (or Docker manifest list), the platform's entry is chosen and its
digest returned *without* fetching that manifest: the compile cache keys on it,
so a cached compile needs nothing more. Manifest, config and layers are fetched
on demand, verified against their digests, and kept in the ``BlobStore`` so a
later pull of the same image reads them from disk.

``RegistryImage.downloading()`` (the ``StreamingImage`` protocol) is the one
downloader: every missing layer downloads in the background, the top one first,
with its retries, resumed ranges and mirrors. ``pull`` is that block reading
nothing; compile applies the layers within it, and a layer opened before its
download has ended is read from the store's partial file, up to the bytes the
download reports on disk. The reader still checks the blob's digest at its end;
compile reads the layers again from the store if what it read did not verify.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..digest import Digest, VerifyingReader, verify_bytes
from ..errors import ManifestError, OcisquashError, OutputError, PlatformNotFoundError
from ..model import (
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    parse_manifest_or_index,
)
from ..reference import Reference, local_path_hint
from ..registry.client import RegistryClient
from ..registry.options import RegistryOptions
from ..registry.schemes import SchemeHints
from ..rules import MAX_CONFIG_SIZE, check_manifest
from ..store import BlobStore
from .base import IndexInfo
from .options import SourceOptions

if TYPE_CHECKING:  # the events are imported where layers download: a warm compile needs none
    from ..progress import ProgressCallback, ProgressEvent

log = logging.getLogger(__name__)

#: Image configs larger than this are refused.
CONFIG_LIMIT = MAX_CONFIG_SIZE


def registry_options(options: SourceOptions) -> RegistryOptions:
    """The registry client's settings of a source's options (proxies from the environment)."""
    return RegistryOptions(
        username=options.username, password=options.password, auth_file=options.auth_file,
        ca_cert=options.ca_cert, insecure=options.insecure, plain_http=options.plain_http,
        mirrors=options.registry_mirrors, timeout=options.timeout, min_rate=options.min_rate,
        retries=options.retries, max_connections=options.max_parallel)


class RegistrySource:
    """An image reference in a registry, ready to be resolved for a platform."""

    def __init__(self, reference: Reference, options: SourceOptions | None = None, *,
                 client: RegistryClient | None = None) -> None:
        self.reference = reference
        self.options = options if options is not None else SourceOptions()
        owns_client = client is None
        if client is None:
            # What loopback registries speak is kept beside the cache, for later runs.
            hints = SchemeHints.in_cache(self.options.cache_dir)
            client = RegistryClient(reference, registry_options(self.options), hints=hints)
        self.client = client
        self._owns_client = owns_client
        self._store: BlobStore | None = None
        #: the image spec as given, when it had no transport: a failed fetch of its
        #: manifest says so if it also names a local path (see local_path_hint)
        self.given: str | None = None

    @property
    def store(self) -> BlobStore:
        if self._store is None:
            self._store = BlobStore(self.options.cache_dir,
                                    lock_timeout=self.options.lock_timeout)
        return self._store

    def __repr__(self) -> str:
        return f"RegistrySource({str(self.reference)!r})"

    def close(self) -> None:
        """Close the idle connections of the client this source made (a client the
        caller passed in stays the caller's)."""
        if self._owns_client:
            self.client.transport.close()

    def resolve(self, platform: Platform | None = None) -> RegistryImage:
        """Fetch the reference's manifest or index (one request) and pick ``platform``'s image.

        ``platform`` defaults to the host's and only matters for an index. A
        reference by digest is verified against that digest.
        """
        ref = self.reference
        what = f"manifest of {ref}"
        try:
            fetched = self.client.get_manifest(ref.identifier, ref.digest, what=what)
        except OcisquashError as e:
            local = local_path_hint(self.given) if self.given is not None else None
            if local is not None:
                e.hint = local
            raise
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
        check_manifest(parsed, context=str(ref))
        return RegistryImage(self, fetched.digest, None, manifest=parsed, requested=platform)


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
        """The blob, read through a verifier (the store's file could rot on disk): from
        the store, or within ``RegistryImage.downloading()`` as it downloads."""
        d = self._descriptor
        downloads = self._image._downloads
        if downloads is not None:
            raw = downloads.reader(self)
        else:
            self.fetch()
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
        self._downloads: Downloads | None = None

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
        check_manifest(parsed, context=self._what)
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

    @contextlib.contextmanager
    def downloading(self) -> Iterator[Downloads]:
        """Within the block every missing layer downloads in the background, the top
        one first, and a layer opened meanwhile is read as it arrives (see the module
        docstring). A layer already stored is announced as such when the block starts.

        Leaving the block waits for the downloads; the first that failed (in layer
        order) is raised in place of the block's own error, as ``pull`` would have
        raised it before any layer was read. Ctrl-C stops them at their next chunk
        and keeps their bytes as resumable partials.
        """
        self.store_manifest()
        self.config()
        downloads = Downloads(self)
        self._downloads = downloads
        try:
            yield downloads
        except OutputError:
            # A full disk: the downloads cannot help and would only go on filling it.
            # Stop them, as after Ctrl-C, and keep their bytes as resumable partials.
            downloads.close(cancel=True)
            raise
        except Exception:
            downloads.wait()
            if downloads.failed is not None:
                raise downloads.failed from None
            raise
        except BaseException:
            downloads.close(cancel=True)
            raise
        finally:
            self._downloads = None
        downloads.wait()
        if downloads.failed is not None:  # a layer the block did not read failed
            raise downloads.failed

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


class _Arrival:
    """How much of one blob's download is on disk, and how it ended."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        from ..progress import BlobProgress, BlobStarted

        self._kinds = (BlobStarted, BlobProgress)
        self.cond = threading.Condition()
        self._progress = progress
        #: bytes of the partial file on disk (fewer again after a download starts over)
        self.offset = 0
        self.started = False
        #: the download started over after bytes were on disk: a reader may have read
        #: bytes that were then replaced
        self.rewound = False
        self.path: Path | None = None
        self.error: BaseException | None = None
        #: the downloads are being closed: readers still waiting give up
        self.closed = False

    def tap(self, event: ProgressEvent) -> None:
        """The progress callback of this blob's download: note, then pass on."""
        if isinstance(event, self._kinds):
            offset = event.offset if isinstance(event, self._kinds[0]) else event.done
            with self.cond:
                if self.started and offset < self.offset:
                    self.rewound = True
                self.started = True
                self.offset = offset
                self.cond.notify_all()
        if self._progress is not None:
            self._progress(event)

    def end(self, path: Path | None, error: BaseException | None) -> None:
        with self.cond:
            self.path, self.error = path, error
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class _ArrivingBlob:
    """Reads one blob while it downloads: from the partial file, never past the bytes
    on disk, then from the published blob. Its bytes are checked by the caller's
    ``VerifyingReader``; ``abort()`` (from any thread) ends a read that waits."""

    #: bytes read from the file at once (zstd's reader asks for a few KiB at a time)
    CHUNK = 1 << 20

    def __init__(self, arrival: _Arrival, part: Path, size: int, context: str) -> None:
        self._arrival = arrival
        self._part = part
        self._size = size
        self._context = context
        self._fd = -1
        self._pos = 0
        #: the last bytes read from the file, handed out from ``_at`` on
        self._buf = b""
        self._at = 0
        self._aborted = False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._size + 1
        buf, at = self._buf, self._at
        if at >= len(buf):
            if self._pos >= self._size:
                return b""
            buf, at = self._buf, self._at = self._fill(), 0
        if at == 0 and n >= len(buf):
            self._at = len(buf)
            return buf
        self._at = at + n
        return buf[at:at + n]

    def _fill(self) -> bytes:
        while True:
            want = self._wait_for_bytes()
            if self._fd >= 0:
                data = os.pread(self._fd, min(want, self.CHUNK), self._pos)
                if data:
                    self._pos += len(data)
                    return data
                if self._arrival.path is not None:  # shorter than said: the check says so
                    return b""
            # The partial was just published (renamed), or the download started over and
            # truncated it: wait a moment for what comes next.
            with self._arrival.cond:
                self._arrival.cond.wait(0.05)

    def _wait_for_bytes(self) -> int:
        """Wait until bytes past ``_pos`` are on disk (or the download ended), open the
        file to read them from, and return how many there are."""
        a = self._arrival
        with a.cond:
            while not (self._aborted or a.closed or a.error is not None or a.path is not None
                       or (a.started and a.offset > self._pos)):
                a.cond.wait(1.0)
            if self._aborted or a.closed:
                raise OcisquashError("reading stopped", context=self._context)
            if a.error is not None:
                raise a.error
            published = a.path
            want = (self._size if published is not None else a.offset) - self._pos
        if published is not None:
            # The partial file became the blob by a rename: the same file, unless someone
            # removed it meanwhile.
            if self._fd < 0 or os.fstat(self._fd).st_nlink == 0:
                self._reopen(published)
        elif self._fd < 0:
            # Gone only when just published: the next wait brings the blob's path.
            with contextlib.suppress(FileNotFoundError):
                self._fd = os.open(self._part, os.O_RDONLY | os.O_CLOEXEC)
        return want

    def _reopen(self, path: Path) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def abort(self) -> None:
        with self._arrival.cond:
            self._aborted = True
            self._arrival.cond.notify_all()

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Downloads:
    """An image's layers downloading in the background, the top one first (the flattener
    reads it first), at most ``max_parallel`` at a time. The first download that fails
    cancels those not yet started: the image cannot be complete without it."""

    def __init__(self, image: RegistryImage) -> None:
        from concurrent.futures import Future, ThreadPoolExecutor

        self._image = image
        source = image.source
        self._layers = list(image.layers())
        self._arrivals: dict[int, _Arrival] = {}
        self._futures: dict[int, Future[None]] = {}
        self._lock = threading.Lock()
        #: the first download that failed, in time (``failed`` is the first in layer order)
        self._first_error: BaseException | None = None
        todo = []
        for i in reversed(range(len(self._layers))):
            if source.store.has(self._layers[i].descriptor.digest):
                self._layers[i].fetch()  # says it is cached
            else:
                todo.append(i)
        workers = max(1, min(source.options.max_parallel, len(todo) or 1))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ocisquash-pull")
        for i in todo:
            self._arrivals[i] = _Arrival(source.options.progress)
        with self._lock:
            for i in todo:
                if self._first_error is not None:
                    self._arrivals[i].end(None, self._first_error)
                else:
                    self._futures[i] = self._pool.submit(self._fetch, i)

    def _fetch(self, i: int) -> None:
        arrival = self._arrivals[i]
        try:
            path = self._layers[i].fetch(arrival.tap)
        except BaseException as e:  # raised where the layer is read, and by close()
            arrival.end(None, e)
            with self._lock:
                if self._first_error is None:
                    self._first_error = e
                for j, f in self._futures.items():
                    # Those not started end with this error (a reader waiting for one
                    # must not wait on); the running ones end on their own.
                    if f.cancel():
                        self._arrivals[j].end(None, e)
        else:
            arrival.end(path, None)

    def reader(self, layer: RegistryLayer) -> BinaryIO:
        """A reader of ``layer``: from the store once it is there, else as it arrives.
        A download that failed raises its error here."""
        i = self._layers.index(layer)
        arrival = self._arrivals.get(i)
        d = layer.descriptor
        store = self._image.source.store
        if arrival is None:
            return store.open(d.digest)
        with arrival.cond:
            if arrival.error is not None:
                raise arrival.error
            if arrival.path is not None:
                return store.open(d.digest)
        return _ArrivingBlob(  # type: ignore[return-value]
            arrival, store.partial_path(d.digest), d.size, f"{layer.what} {d.digest.short}")

    @property
    def failed(self) -> BaseException | None:
        """The first download that failed, in layer order (after ``close()``)."""
        for i in sorted(self._arrivals):
            if self._arrivals[i].error is not None:
                return self._arrivals[i].error
        return None

    @property
    def rewound(self) -> bool:
        """Whether a download started over after some of its bytes were on disk."""
        return any(a.rewound for a in self._arrivals.values())

    def wait(self) -> None:
        """Wait for the downloads to end; Ctrl-C meanwhile cancels them."""
        try:
            self.close(cancel=False)
        except BaseException:
            self.close(cancel=True)
            raise

    def close(self, *, cancel: bool) -> None:
        """Wait for the downloads; with ``cancel``, make them stop at their next chunk."""
        client = self._image.source.client
        if cancel:
            client.cancelled.set()
        for arrival in self._arrivals.values():
            arrival.close()  # a reader still waiting for bytes gives up
        try:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
        finally:
            if cancel:
                client.cancelled.clear()


def _silent(event: ProgressEvent) -> None:
    """Configs are small: no progress line for them."""


def pull(image: RegistryImage) -> list[Path]:
    """Put ``image``'s manifest, config and layers into the store; return the layers'
    paths, lowest first.

    The downloads are those of ``image.downloading()``: the top layer first, at most
    ``SourceOptions.max_parallel`` at a time; the first failure cancels what has not
    started and is raised (the first in layer order) once the running ones have ended.
    """
    with image.downloading():
        pass
    store = image.source.store
    return [store.blob_path(layer.descriptor.digest) for layer in image.layers()]
