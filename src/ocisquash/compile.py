"""Compile an image: resolve it, flatten its layers into the squashfs writer, cache the result.

The flow of one compile::

    spec ──open_source──▶ source ──resolve──▶ image (manifest digest known)
         cache hit? ──yes──▶ place the cached squashfs at the output
                     no ──▶ build lock ─▶ fetch layers ─▶ flatten ─▶ SquashfsWriter
                                         ─▶ publish entry atomically ─▶ output

Only the manifest request happens before the cache is consulted, so a second
compile of the same image costs one request (none with ``pull="never"`` or a
digest reference already compiled). A cache hit imports only what it uses: the
squashfs writer, the flattener and the layer readers are imported by a build
(``tests/compile/test_warm_imports.py`` checks it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, ParamSpec, TypeVar

from .cache import (
    CONFIG_FILE,
    IMAGE_FILE,
    MANIFEST_FILE,
    CacheEntry,
    CacheRecord,
    ImageCache,
    entry_key,
)
from .digest import Digest, VerifyingReader
from .errors import (
    ImageNotFoundError,
    IntegrityError,
    LayerError,
    ManifestError,
    OcisquashError,
    OutputError,
    PlatformNotFoundError,
    RegistryUnreachableError,
    TransientRegistryError,
    UsageError,
)
from .interpreter import collector_paused, switches_shortened
from .model import Descriptor, ImageConfig, Manifest, Platform
from .output import Destination, check_output, open_file_path, place_file
from .rules import FidelityIssue, clamp_mtime
from .sources.options import SourceOptions
from .squashfs.version import FORMAT_VERSION
from .store import fsync_path

if TYPE_CHECKING:
    from .erofs import ErofsSummary
    from .erofs.options import ErofsOptions
    from .flatten import FlattenReport, LayerIndexes, TreeSink
    from .progress import ProgressCallback
    from .publish import Outcome
    from .sources.base import Layer, ResolvedImage
    from .squashfs import WriteSummary
    from .squashfs.options import WriterOptions
    from .tarout import TreeShape
    from .verity import VerityInfo, VerityOptions

log = logging.getLogger(__name__)

PullPolicy = Literal["never", "missing", "always"]
OutputFormat = Literal["squashfs", "tar", "erofs"]
PublishedMode = Literal["use", "verify"]


@dataclass(frozen=True)
class CompiledImage:
    """The result of :func:`compile_image`."""

    #: the squashfs (or tar) file written; for a cached squashfs without ``output``, the cache's copy
    path: Path | None
    reference: str
    #: digest of the platform-specific image manifest
    digest: Digest
    platform: str
    manifest: Manifest
    config: ImageConfig
    format: OutputFormat
    size: int
    files: int
    #: True when the result came from the cache without building
    cached: bool
    #: things the layers held that squashfs cannot (see the README's fidelity section)
    fidelity: tuple[FidelityIssue, ...] = ()
    #: how the output was placed: "reflink", "hardlink", "copy", "written" or "none"
    placed: str = "none"
    stats: dict[str, Any] = field(default_factory=dict)
    #: the dm-verity hash tree written with the image (``verity=``), else None
    verity: VerityInfo | None = None
    #: where the image came from: "compiled" here, "published" (fetched from the
    #: registry, see :mod:`ocisquash.publish`) or "cache"
    source: str = "compiled"
    #: what ``published=`` found and did, else None
    published: Outcome | None = None
    #: the cache entry's key (None without the cache)
    cache_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The document ``compile --json`` prints (schema in docs/json.md)."""
        from .jsonout import compiled

        return compiled(self)

    def runtime_config(self) -> dict[str, Any]:
        """The OCI runtime-spec ``config.json`` for running this image (see
        :mod:`ocisquash.runtime`): user names resolved from the compiled image's own
        ``/etc/passwd`` and ``/etc/group`` (squashfs or EROFS)."""
        from .runtime import runtime_config

        image = self.path if self.format in ("squashfs", "erofs") else None
        return runtime_config(self.config, image)


#: The compressor and level ocisquash uses unless told otherwise: the fastest zstd level
#: whose output is no larger than mksquashfs's default (gzip 9) on every benchmark image
#: (figures: ``bench/README.md``).
DEFAULT_COMPRESSION = "zstd"
DEFAULT_ZSTD_LEVEL = 5


def default_writer_options() -> WriterOptions:
    """The writer options of a compile that names none: zstd level 5, 128 KiB blocks."""
    from .squashfs.options import Compression, WriterOptions

    return WriterOptions(compression=Compression(DEFAULT_COMPRESSION), level=DEFAULT_ZSTD_LEVEL)


def _with_source_date_epoch(options: WriterOptions | ErofsOptions | None,
                            format: OutputFormat) -> WriterOptions | ErofsOptions | None:
    """``options`` with ``$SOURCE_DATE_EPOCH`` as the image time when none was given: it
    changes the output's bytes, so it must be part of the cache key. It sets the image's
    own time (the superblock's), not the times of the files, which come from the layers."""
    from .squashfs.options import source_date_epoch

    epoch = source_date_epoch()
    if epoch is None or (options is not None and options.mkfs_time is not None):
        return options
    import dataclasses

    if options is None:
        if format == "erofs":
            from .erofs.options import ErofsOptions

            options = ErofsOptions()
        else:
            options = default_writer_options()
    return dataclasses.replace(options, mkfs_time=epoch)


def _writer_options_key(options: WriterOptions | ErofsOptions | None,
                        format: OutputFormat = "squashfs") -> dict[str, Any]:
    """The output-affecting writer options, as the cache key sees them (None: the defaults)."""
    if format == "erofs":
        from .erofs.options import ErofsOptions

        d = {"format": "erofs", **asdict(ErofsOptions() if options is None else options)}
        d["uuid"] = d["uuid"].hex()
        if d["compression"].value in ("lz4", "lz4hc"):
            from .erofs.compress import destsize

            # Without liblz4's fixed-output calls the extents are cut otherwise (see
            # erofs/compress.py): other bytes, so another key.
            d["lz4_extents"] = "fitted" if destsize() is not None else "fixed-input"
    else:
        d = asdict(default_writer_options() if options is None else options)
        if d["compression"].value == "gzip" and d["gzip_window"] != 15:
            # Windows below 15 are deflated by the standard library's zlib; zlib-ng wrote
            # other bytes for them before, so their images have keys of their own.
            d["gzip_deflate"] = "zlib"
    d.pop("workers", None)  # thread count never changes the bytes
    # Enums by their values ("zstd", not "Compression.ZSTD"): the key is also what a
    # published image's options annotation shows.
    return json.loads(json.dumps(d, default=_plain))  # type: ignore[no-any-return]


def _plain(value: object) -> object:
    return value.value if isinstance(value, Enum) else str(value)


class _CountingStream:
    """Reports how much of a layer blob the flattener has consumed."""

    STEP = 1 << 20

    def __init__(self, raw: BinaryIO, report: Callable[[int], None]) -> None:
        self._raw = raw
        self._report = report
        self._done = 0
        self._next = self.STEP

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._done += len(data)
        if self._done >= self._next or (not data and self._next != -1):
            self._next = self._done + self.STEP if data else -1
            self._report(self._done)
        return data

    def close(self) -> None:
        self._raw.close()

    def abort(self) -> None:
        """End a read that waits for bytes (a layer read as it downloads)."""
        if isinstance(self._raw, VerifyingReader):
            self._raw.abort()


@dataclass(frozen=True)
class _ReportingLayer:
    """A layer whose stream emits ``LayerApplying`` progress events."""

    layer: Layer
    index: int
    count: int
    progress: ProgressCallback
    phase: str = "apply"

    @property
    def descriptor(self) -> Descriptor:
        return self.layer.descriptor

    @property
    def diff_id(self) -> Digest | None:
        return self.layer.diff_id

    def open(self) -> BinaryIO:
        from .progress import LayerApplying

        d = self.layer.descriptor

        def report(done: int) -> None:
            self.progress(LayerApplying(d.digest, self.index, self.count, min(done, d.size),
                                        d.size, self.phase))

        return _CountingStream(self.layer.open(), report)  # type: ignore[return-value]


def _flatten_into(layers: Sequence[Layer], sink: TreeSink,
                  progress: ProgressCallback | None,
                  phase: str = "apply", indexes: LayerIndexes | None = None,
                  output: str = "squashfs") -> FlattenReport:
    from .flatten import flatten

    # The tar build needs the pause here; the squashfs build holds it through finish().
    with collector_paused():
        if progress is None:
            return flatten(layers, sink, indexes=indexes)
        from .progress import Finishing  # not loaded by a compile without progress

        n = len(layers)
        wrapped = [_ReportingLayer(layer, n - i, n, progress, phase)
                   for i, layer in enumerate(layers)]
        report = flatten(wrapped, sink, indexes=indexes)
    if phase == "apply":
        progress(Finishing(report.entries, output))
    return report


def _build_image(
    image: ResolvedImage,
    dest: Path | BinaryIO,
    writer_options: WriterOptions | ErofsOptions | None,
    format: OutputFormat,
    progress: ProgressCallback | None,
    cache: ImageCache | None = None,
) -> tuple[FlattenReport, WriteSummary | ErofsSummary]:
    """Flatten ``image`` into a squashfs or EROFS image at ``dest``. With ``cache``
    (``dest`` is then a file in a staging directory), a squashfs reuses the blocks of
    the cache's images and gets a block index beside it."""
    from .erofs.options import ErofsOptions

    if isinstance(writer_options, ErofsOptions) or format == "erofs":
        assert writer_options is None or isinstance(writer_options, ErofsOptions)
        return _build_erofs(image, dest, writer_options, progress)
    return _build_squashfs(image, dest, writer_options, progress, cache)


def _check_writer_options(format: OutputFormat,
                          options: WriterOptions | ErofsOptions | None) -> None:
    """Refuse one format's writer options for the other."""
    if options is None or format == "tar":
        return
    from .erofs.options import ErofsOptions

    if format == "erofs" and not isinstance(options, ErofsOptions):
        raise UsageError("squashfs writer options given for EROFS output",
                         hint="pass ErofsOptions with format='erofs'")
    if format == "squashfs" and isinstance(options, ErofsOptions):
        raise UsageError("EROFS writer options given for squashfs output",
                         hint="pass format='erofs' with ErofsOptions")


def _build_erofs(
    image: ResolvedImage,
    dest: Path | BinaryIO,
    options: ErofsOptions | None,
    progress: ProgressCallback | None,
) -> tuple[FlattenReport, ErofsSummary]:
    import dataclasses

    from .erofs import ErofsOptions, ErofsWriter

    if options is None:
        options = ErofsOptions()
    if options.mkfs_time is None:
        # Deterministic by default, as for squashfs: the image's creation date
        # (compile_image has put $SOURCE_DATE_EPOCH in the options when it is set).
        options = dataclasses.replace(options, mkfs_time=_epoch(image.config().created))
    layers = image.layers()

    def build() -> tuple[FlattenReport, ErofsSummary]:
        with collector_paused(), switches_shortened(), \
                ErofsWriter(dest, options, digest=isinstance(dest, Path)) as writer:
            report = _flatten_into(layers, writer, progress, output="erofs")
            return report, writer.finish()

    return _while_downloading(image, build)


def _build_squashfs(
    image: ResolvedImage,
    dest: Path | BinaryIO,
    writer_options: WriterOptions | None,
    progress: ProgressCallback | None,
    cache: ImageCache | None = None,
) -> tuple[FlattenReport, WriteSummary]:
    import dataclasses

    from .rules import DEFAULT_LIMITS
    from .squashfs import SquashfsWriter
    from .squashfs.layerindex import Indexes, ReplayError
    from .squashfs.reuse import INDEX_FILE, BlockReuse, index_sources, settings_key

    if writer_options is None:
        writer_options = default_writer_options()
    if writer_options.mkfs_time is None:
        # Deterministic by default: the image's own creation date stamps the squashfs
        # (compile_image has put $SOURCE_DATE_EPOCH in the options when it is set).
        writer_options = dataclasses.replace(
            writer_options, mkfs_time=_epoch(image.config().created))
    layers = image.layers()

    def build() -> tuple[FlattenReport, WriteSummary]:
        built = build_once(copy_blocks=True)
        if built is None:
            # An earlier image changed while its blocks were copied (a write through a
            # hard link that -o placed), or a layer index did not hold: build again,
            # compressing every block (build_once said why).
            built = build_once(copy_blocks=False)
            assert built is not None
        return built

    def build_once(copy_blocks: bool) -> tuple[FlattenReport, WriteSummary] | None:
        reuse = None
        settings = settings_key(writer_options)
        if cache is not None and isinstance(dest, Path):
            # Built again without copying, the image still gets its block and layer
            # indexes (from no earlier image), for the compiles after it.
            sources = []
            if copy_blocks:
                shared = [str(d.digest) for d in image.manifest().layers]
                sources = index_sources(cache.entries(), shared)
            reuse = BlockReuse.load(settings, sources)
        indexes = None
        try:
            try:
                with collector_paused(), switches_shortened(), \
                        SquashfsWriter(dest, writer_options, reuse=reuse) as writer:
                    if reuse is not None:
                        # Unchanged layers are replayed from the layer indexes of the
                        # earlier images whose blocks are loaded; every layer is recorded.
                        indexes = Indexes(reuse, settings, DEFAULT_LIMITS, writer.decompress,
                                          writer_options.block_size,
                                          [index.parent for index in reuse.loaded])
                        indexes.writer = writer
                    report = _flatten_into(layers, writer, progress, indexes=indexes)
                    summary = writer.finish()
            except OcisquashError as e:
                # A copied block that no longer matches its CRC-32 or decodes when read
                # back for duplicate detection is how such a write can show first
                # (said as such); a replayed layer whose data cannot be fetched as its
                # index says, or a block damaged in place, is built again too.
                if reuse is not None and reuse.changed():
                    log.warning(_WRITTEN_WHILE_COPIED)
                    return None
                if reuse is not None and isinstance(e, ReplayError):
                    log.warning("the cache's earlier images cannot be reused (%s); building "
                                "again without copying", e)
                    return None
                raise
            if reuse is not None and reuse.changed():
                log.warning(_WRITTEN_WHILE_COPIED)
                return None
            if reuse is not None:
                assert isinstance(dest, Path) and indexes is not None
                _write_staged(dest.parent / INDEX_FILE, reuse.index_bytes())
                indexes.finish(dest.parent, writer_options.block_size,
                               writer_options.fragments, _write_staged)
                log.debug("reused %d blocks of %d earlier images, replayed %d layers",
                          reuse.reused, reuse.sources, indexes.replayed)
            return report, summary
        finally:
            if indexes is not None:
                indexes.close()
            if reuse is not None:
                reuse.close()

    return _while_downloading(image, build)


_T = TypeVar("_T")

_WRITTEN_WHILE_COPIED = ("an image in the cache was written to while this compile copied "
                         "its blocks; building again without copying")


def _while_downloading(image: ResolvedImage, build: Callable[[], _T]) -> _T:
    """``build()``, which reads the image's layers once and writes its output from the
    start: for a streaming (registry) image while the layers download."""
    from .sources.base import StreamingImage

    if not isinstance(image, StreamingImage):
        return build()
    downloads = None
    try:
        with image.downloading() as downloads:
            return build()
    except (LayerError, IntegrityError):
        if downloads is None or downloads.failed is not None or not downloads.rewound:
            raise
        # Every layer verified in the store, but a download started over after its
        # first bytes were read: what was read may not be what verified. Read the
        # layers again, from the store.
        return build()


def _download(image: ResolvedImage) -> None:
    """Download a streaming image's missing layers into the store, reading none."""
    from .sources.base import StreamingImage

    if isinstance(image, StreamingImage):
        with image.downloading():
            pass


def _epoch(created: str) -> int:
    """Seconds since 1970 of an RFC 3339 ``created`` date; 0 when absent or invalid."""
    from datetime import datetime

    try:
        t = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0
    return clamp_mtime(int(t))


def _hash_while_syncing(path: Path) -> Digest:
    """The file's digest, read while a thread writes the file to disk: publishing syncs
    every file of an entry, and for a large image this is the longer part of that wait.
    A sync error is left for publishing to report."""
    def sync() -> None:
        with contextlib.suppress(OSError):
            fsync_path(path)

    syncer = threading.Thread(target=sync, name="ocisquash-fsync", daemon=True)
    syncer.start()
    try:
        return Digest.of_file(path)
    finally:
        syncer.join()


def _image_sha256(path: Path, summary: WriteSummary | ErofsSummary, unchanged: bool) -> str:
    """The built image's sha256: the writer's own when it gave one (EROFS, hashed while
    its metadata was written) and the file is as it left it (no verity tree added), else
    read while the file syncs."""
    given = summary.sha256
    if given is not None and unchanged and path.stat().st_size == summary.bytes_written:
        return given.hex()
    return _hash_while_syncing(path).hex


def _write_staged(path: Path, data: bytes) -> None:
    """Write a small file of a cache entry being built; a full disk is an ``OutputError``."""
    try:
        path.write_bytes(data)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}",
                          hint="free space in the cache directory or choose another "
                               "with --cache-dir") from e


def _drop_damaged_blobs(cache: ImageCache, manifest: Manifest) -> list[Digest]:
    """Remove the image's blobs whose stored bytes no longer match their digest."""
    damaged = []
    for desc in (manifest.config, *manifest.layers):
        if cache.blobs.has(desc.digest) and not cache.blobs.matches(desc.digest):
            with contextlib.suppress(OSError):
                cache.blobs.remove(desc.digest)
            damaged.append(desc.digest)
    return damaged


_P = ParamSpec("_P")


def _caller_progress(fn: Callable[_P, CompiledImage]) -> Callable[_P, CompiledImage]:
    """``progress=`` receives the download events too (unless ``source_options`` has a
    callback of its own), an exception the caller's callback raises comes back to the
    caller as itself, not as whatever error the code around it made of it, and the
    result's ``reference`` is the ``source`` of this call."""
    import dataclasses
    import functools

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> CompiledImage:
        user = kwargs.get("progress")
        sopts = kwargs.get("source_options")
        theirs = sopts.progress if isinstance(sopts, SourceOptions) else None
        if user is None and theirs is None:
            return _as_typed(fn(*args, **kwargs), args, kwargs)  # imports no more than it needs

        from .callbacks import CallerCallback

        guards = []
        if callable(user):
            guard = CallerCallback(user)
            guards.append(guard)
            kwargs["progress"] = guard
            if theirs is None or theirs is user:
                theirs = guard
        if theirs is not None and not isinstance(theirs, CallerCallback):
            guards.append(theirs := CallerCallback(theirs))
        if theirs is not None:
            kwargs["source_options"] = dataclasses.replace(
                sopts if isinstance(sopts, SourceOptions) else SourceOptions(), progress=theirs)
        try:
            return _as_typed(fn(*args, **kwargs), args, kwargs)
        except BaseException:
            for g in guards:
                g.reraise()
            raise

    def _as_typed(result: CompiledImage, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> CompiledImage:
        # The reference this call named, not the one a cached entry was first compiled as.
        source = args[0] if args else kwargs.get("source")
        if isinstance(source, str) and source != result.reference:
            return dataclasses.replace(result, reference=source)
        return result

    return wrapper


@_caller_progress
def compile_image(
    source: str,
    output: str | os.PathLike[str] | BinaryIO | None = None,
    *,
    platform: str | Platform | None = None,
    format: OutputFormat = "squashfs",
    # default: default_writer_options(); ErofsOptions() for format="erofs"
    writer_options: WriterOptions | ErofsOptions | None = None,
    source_options: SourceOptions | None = None,
    pull: PullPolicy = "missing",
    use_cache: bool = True,
    progress: ProgressCallback | None = None,
    verity: VerityOptions | None = None,
    overwrite: bool = True,
    copy: bool = False,
    published: PublishedMode | None = None,
    trust_cert: str | os.PathLike[str] | None = None,
) -> CompiledImage:
    """Compile the image ``source`` into a flattened squashfs (or EROFS, or tar) at ``output``.

    ``source`` is an image reference in any transport ocisquash reads
    (``alpine:3.20``, ``docker://host:5000/app:1``, ``oci:DIR[:TAG]``,
    ``oci-archive:FILE[:TAG]``, ``docker-archive:FILE[:REF]``). ``platform``
    (``"linux/arm64"``) chooses from a multi-platform image; the default is the
    host's. ``pull`` works as in other container tools: ``missing`` asks the source
    for the manifest and reuses a cached compile of the same digest, ``never``
    uses only what the cache has, ``always`` builds again. With ``output=None`` a
    squashfs stays in the cache only and ``CompiledImage.path`` points there.
    ``verity`` adds a dm-verity hash tree (see :mod:`ocisquash.verity`), cached with the
    image and placed beside ``output``; ``CompiledImage.verity`` describes it.
    ``published="use"`` fetches a compile of the same image, format version and options
    that ``ocisquash push`` published to the registry, verified (see
    :mod:`ocisquash.publish`), instead of building; ``"verify"`` fetches it and builds
    too, and ``CompiledImage.published.differences`` lists what differs. ``trust_cert``
    (PEM) must then have signed the artifact's verity root hash.

    ``output`` is a file path, a character device or FIFO, or a writable binary
    stream, checked before anything else happens (``ocisquash.output`` states the
    rules). An existing file is replaced only with ``overwrite`` (the CLI's ``--force``
    turns it on; here it is on by default) and OUT's directory must exist. A cached
    squashfs is placed as a reflink, else as a read-only hard link to the cache's
    file, else as a copy; ``copy=True`` gives an independent, writable file.

    Raises an :class:`~ocisquash.errors.OcisquashError` subclass for every
    expected failure.
    """
    if pull not in ("never", "missing", "always"):
        raise UsageError(f"unknown pull policy {pull!r}", hint="use never, missing or always")
    if format not in ("squashfs", "tar", "erofs"):
        raise UsageError(f"unknown output format {format!r}", hint="use squashfs, erofs or tar")
    _check_writer_options(format, writer_options)
    dest = None if output is None else check_output(output, overwrite=overwrite, copy=copy)
    if dest is not None and format != "tar" and not use_cache:
        dest.require_file("compiling without the cache")
    sopts = source_options or SourceOptions()
    want = Platform.parse(platform) if isinstance(platform, str) else platform
    writer_options = _with_source_date_epoch(writer_options, format)
    cache = ImageCache(sopts.cache_dir, lock_timeout=sopts.lock_timeout)
    if sopts.cache_dir is None:
        sopts = _with_cache_dir(sopts, cache.root)
    started = time.monotonic()

    if verity is not None:
        _check_verity(verity, format, dest)
    if published not in (None, "use", "verify"):
        raise UsageError(f"unknown published mode {published!r}", hint="use 'use' or 'verify'")
    if trust_cert is not None and (published is None or verity is None):
        raise UsageError("--trust-cert checks the signed root hash of a published image",
                         hint="give it with --use-published and --verity")
    if published is not None and (format == "tar" or not use_cache):
        raise UsageError("--use-published places a compiled image in the cache",
                         hint="drop --format tar and --no-cache")
    if format == "tar":
        return _compile_tar(source, dest, want, sopts, progress)

    okey = _writer_options_key(writer_options, format)
    # The writer's options shape the image (and seed the verity salt); the verity options
    # add the files that go with it.
    ckey = okey if verity is None else {**okey, "verity": verity.cache_key()}
    version = _format_version(format)
    ref_key = ImageCache.ref_key(source, str(want or Platform.host()), ckey, version)
    if use_cache and pull != "always":
        entry = _cached_without_asking(cache, source, ref_key, ckey, version, pull)
        if entry is not None:
            _check_platform(entry, want, source)
            return _from_entry(entry, dest, cached=True, started=started)
        if pull == "never":
            raise ImageNotFoundError(
                f"{source} is not in the cache", hint="compile it once with --pull missing"
            )

    from .sources.open import open_source

    src = open_source(source, options=sopts)
    with contextlib.closing(src):
        try:
            image = src.resolve(want)
        except (RegistryUnreachableError, TransientRegistryError) as e:
            # As podman's --pull=missing: with the registry out of reach, the image
            # compiled from this reference before is the answer, with a warning.
            entry = cache.lookup_ref(ref_key) if use_cache and pull == "missing" else None
            if entry is None:
                raise
            _check_platform(entry, want, source)
            log.warning("cannot reach the registry (%s); using %s as compiled before", e, source)
            return _from_entry(entry, dest, cached=True, started=started)
        key = entry_key(image.digest, version, ckey)

        if not use_cache:
            return _compile_uncached(image, dest, writer_options, format, progress, started,
                                     verity, okey)

        if pull == "missing":
            entry = cache.get(key)
            if entry is not None:
                _check_platform(entry, want, source)
                cache.record_ref(ref_key, key)
                return _from_entry(entry, dest, cached=True, started=started)

        with cache.build_lock(key, f"{image.reference} ({image.digest.short})"):
            entry = cache.get(key)
            if entry is not None and pull != "always":
                _check_platform(entry, want, source)  # another process built it meanwhile
            built = False
            if entry is None and (damage := cache.damage(key)) is not None:
                log.warning("cache entry %s is damaged (%s); building it again", key[:12], damage)
            if entry is None or pull == "always":
                cache.remove(key)  # whole (pull="always"), damaged, or absent
                with cache.staging() as staged, cache.staging() as fetched_dir:
                    manifest = image.manifest()
                    config = image.config()
                    outcome = None
                    if published is not None:
                        from .publish import Wanted

                        wanted = Wanted(image.digest, format, version, ckey, config.created,
                                        verity, okey,
                                        Path(trust_cert) if trust_cert is not None else None)
                        got, outcome = _fetch_published(
                            image, wanted, staged if published == "use" else fetched_dir,
                            published, source)
                        if got is not None and published == "use":
                            info = _published_info(got, staged, image, source, manifest, config,
                                                   format, version, ckey, verity)
                            entry = cache.publish(key, staged, info)
                            cache.record_ref(ref_key, key)
                            return _from_entry(entry, dest, cached=False, started=started,
                                               published=outcome)
                    try:
                        report, summary = _build_image(image, staged / IMAGE_FILE,
                                                       writer_options, format, progress, cache)
                    except (LayerError, IntegrityError):
                        # A blob damaged in the store after it was verified reads as a bad
                        # layer: drop what no longer matches its digest, fetch it again once.
                        if not _drop_damaged_blobs(cache, manifest):
                            raise
                        report, summary = _build_image(image, staged / IMAGE_FILE,
                                                       writer_options, format, progress, cache)
                    vinfo = _add_verity(staged / IMAGE_FILE, verity, image.digest, okey)
                    if outcome is not None and outcome.artifact is not None:
                        outcome = _compare_published(outcome, fetched_dir, staged, source)
                    _write_staged(staged / MANIFEST_FILE, manifest.raw)
                    _write_staged(staged / CONFIG_FILE, config.raw)
                    verity_record = None
                    if vinfo is not None:
                        from .verity import record

                        verity_record = record(vinfo, staged / IMAGE_FILE)
                    entry = cache.publish(key, staged, CacheRecord(
                        reference=image.reference,
                        source=source,
                        digest=image.digest,
                        manifest_digest=manifest.digest,
                        config_digest=config.digest,
                        platform=str(image.platform or config.platform),
                        index_digest=image.index.digest if image.index else None,
                        format=format,
                        format_version=version,
                        options=ckey,
                        squashfs_size=(staged / IMAGE_FILE).stat().st_size,
                        squashfs_sha256=_image_sha256(staged / IMAGE_FILE, summary,
                                                      vinfo is None),
                        files=summary.inodes,
                        layers=len(manifest.layers),
                        layer_bytes=sum(d.size for d in manifest.layers),
                        fidelity=report.fidelity,
                        stats=_stats(report, summary, format),
                        created=time.time(),
                        verity=verity_record))
                    built = True
            cache.record_ref(ref_key, key)
        return _from_entry(entry, dest, cached=not built, started=started,
                           published=outcome if built else None)


def _with_cache_dir(opts: SourceOptions, root: Path) -> SourceOptions:
    import dataclasses

    return dataclasses.replace(opts, cache_dir=root)


_DIGEST_REFERENCE = re.compile(r"@((?:sha256|sha512):[0-9a-f]+)$")


def _reference_digest(source: str) -> Digest | None:
    """The digest a reference pins (``name@sha256:…``), or None."""
    m = _DIGEST_REFERENCE.search(source)
    if m is None:
        return None
    try:
        return Digest.parse(m.group(1))
    except ManifestError:
        return None


def _cached_without_asking(cache: ImageCache, source: str, ref_key: str, ckey: dict[str, Any],
                           version: str, pull: PullPolicy) -> CacheEntry | None:
    """The cached entry that answers ``source`` without asking the source, if any.

    A digest reference yields only the entry compiled from that manifest digest (its
    key is made from it, and the entry's manifest is checked to hash to it), or one
    whose record says it was chosen from an index of that digest. A tag is answered
    from the record of its last compile only with ``pull="never"``.
    """
    pinned = _reference_digest(source)
    if pinned is not None:
        entry = cache.get(entry_key(pinned, version, ckey))
        if entry is not None:
            return entry
        entry = cache.lookup_ref(ref_key)
        if entry is not None and entry.record.index_digest == pinned:
            return entry
        return None
    return cache.lookup_ref(ref_key) if pull == "never" else None


def _check_platform(entry: CacheEntry, want: Platform | None, source: str) -> None:
    """A cached image asked for by platform must be of that platform, as a cold compile
    would check it."""
    if want is None:
        return
    recorded = entry.record.platform
    try:
        have = Platform.parse(recorded)
    except ManifestError:
        return  # the image names no platform: a cold compile would not refuse it either
    if not want.matches(have):
        raise PlatformNotFoundError(
            f"no image for platform {want}; the image has: {have}", context=source,
            hint="choose one with --platform OS/ARCH[/VARIANT]")


def _format_version(format: OutputFormat) -> str:
    """The writer's format version for the cache key (cheap: no writer is imported)."""
    if format == "erofs":
        from .erofs.version import FORMAT_VERSION as EROFS_VERSION

        return EROFS_VERSION
    return FORMAT_VERSION


def _stats(report: FlattenReport, summary: WriteSummary | ErofsSummary | None,
           format: OutputFormat = "squashfs") -> dict[str, Any]:
    """The numbers of the flatten report and the writer summary, for ``--json``."""
    out: dict[str, Any] = {}
    for name, obj in (("flatten", report), (format, summary)):
        if obj is not None:
            out[name] = {k: v for k, v in asdict(obj).items() if isinstance(v, int | float | str)}
    return out


def _from_entry(entry: CacheEntry, output: Destination | None, *, cached: bool,
                started: float, published: Outcome | None = None) -> CompiledImage:
    record = entry.record
    from .model import parse_manifest_or_index

    try:
        manifest = parse_manifest_or_index(entry.read(MANIFEST_FILE))
        config = ImageConfig.parse(entry.read(CONFIG_FILE))
    except OSError as e:
        raise OutputError(f"cannot read cache entry {entry.key[:12]}: {e.strerror}",
                          hint="run 'ocisquash cache verify --repair'") from e
    assert isinstance(manifest, Manifest)
    path: Path | None = entry.image
    placed = "none"
    if output is not None:
        placed = output.place(entry.image)
        path = output.path
    vinfo = None
    if record.verity is not None:
        from .verity import from_record, place_sidecars

        if path is not None and path != entry.image:
            place_sidecars(entry.image, path, place_file)
        vinfo = from_record(record.verity, path or entry.image)
    stats = dict(record.stats)
    stats["seconds"] = round(time.monotonic() - started, 3)
    return CompiledImage(
        path=path,
        reference=record.reference,
        digest=record.digest,
        platform=record.platform,
        manifest=manifest,
        config=config,
        format="erofs" if record.format == "erofs" else "squashfs",
        size=record.squashfs_size,
        files=record.files,
        cached=cached,
        fidelity=record.fidelity,
        placed=placed,
        stats=stats,
        verity=vinfo,
        source="cache" if cached else record.origin,
        published=published,
        cache_key=entry.key,
    )


def _fetch_published(image: ResolvedImage, wanted: Any, dest: Path, mode: str,
                     source: str) -> tuple[Any, Outcome]:
    """Look for and fetch a published compile of ``image`` (see :mod:`ocisquash.publish`)."""
    from .publish import Outcome, try_published
    from .sources.registry import RegistryImage

    if not isinstance(image, RegistryImage):
        log.warning("%s: compiled images are published only to registries; compiling here",
                    source)
        return None, Outcome(mode, problem="not a registry image")
    return try_published(image.source.client, image.fetch_blob, wanted, dest, mode, source)


def _published_info(got: Any, staged: Path, image: ResolvedImage, source: str,
                    manifest: Manifest, config: ImageConfig, format: OutputFormat,
                    version: str, ckey: dict[str, Any],
                    verity: VerityOptions | None) -> CacheRecord:
    """The cache record of a fetched, verified compile: as a local build's, without the
    flattening report (the layers were never read here)."""
    _write_staged(staged / MANIFEST_FILE, manifest.raw)
    _write_staged(staged / CONFIG_FILE, config.raw)
    verity_record = None
    if verity is not None and got.root_hash is not None:
        from .publish import verity_info
        from .verity import record

        signed = (staged / (IMAGE_FILE + ".roothash.p7s")).exists()
        vinfo = verity_info(staged / IMAGE_FILE, got.root_hash, verity.mode, signed)
        verity_record = record(vinfo, staged / IMAGE_FILE)
    return CacheRecord(
        reference=image.reference, source=source, digest=image.digest,
        manifest_digest=manifest.digest, config_digest=config.digest,
        platform=str(image.platform or config.platform),
        index_digest=image.index.digest if image.index else None,
        format=format, format_version=version, options=ckey,
        squashfs_size=(staged / IMAGE_FILE).stat().st_size,
        squashfs_sha256=_hash_while_syncing(staged / IMAGE_FILE).hex,
        files=got.inodes, layers=len(manifest.layers),
        layer_bytes=sum(d.size for d in manifest.layers), fidelity=(),
        stats={"published": {"bytes_downloaded": got.bytes_downloaded}},
        created=time.time(), origin="published", artifact=str(got.artifact),
        verity=verity_record)


def _compare_published(outcome: Outcome, fetched: Path, staged: Path, source: str) -> Outcome:
    """``published="verify"``: what differs between the artifact and the local build."""
    import dataclasses

    from .publish import compare_dirs

    differences = compare_dirs(fetched, staged)
    for line in differences:
        log.warning("%s: published compile %s differs from the compile here: %s", source,
                    outcome.artifact, line)
    if not differences:
        log.info("%s: published compile %s is identical to the compile here", source,
                 outcome.artifact)
    return dataclasses.replace(outcome, differences=differences)


def _check_verity(verity: VerityOptions, format: OutputFormat,
                  output: Destination | None) -> None:
    verity.check()
    if format == "tar":
        raise UsageError("--verity needs an image: a hash tree covers the blocks of an "
                         "image, and a tar stream is not one",
                         hint="drop --format tar, or --verity")
    if verity.mode == "sidecar" and output is not None and not output.is_file:
        raise UsageError("--verity writes OUT.verity beside OUT, and a stream has no side "
                         "(nor has a device or FIFO)", hint="give -o a file, or use --verity=append")


def _add_verity(image_file: Path, verity: VerityOptions | None, digest: Digest,
                okey: dict[str, Any], dest: Path | None = None) -> VerityInfo | None:
    """Pad the built image and write its hash tree (beside ``dest``, else beside it)."""
    if verity is None:
        return None
    from .verity import add_verity, sidecar_paths, verity_seed

    seed = verity_seed(str(digest), okey)
    sidecars = sidecar_paths(dest) if dest is not None else None
    # A cache entry's files are fsynced as the entry is published, the image while it is
    # hashed: syncing them here first would wait for the image's data on ext4.
    return add_verity(image_file, verity, seed, sidecars=sidecars, sync=dest is not None,
                      spill_dir=dest.parent if dest is not None else None)


def _compile_uncached(
    image: ResolvedImage, output: Destination | None, wopts: WriterOptions | ErofsOptions | None,
    format: OutputFormat, progress: ProgressCallback | None, started: float,
    verity: VerityOptions | None, okey: dict[str, Any],
) -> CompiledImage:
    if output is None:
        raise UsageError("compiling without the cache needs an output path")
    output.require_file("compiling without the cache")
    assert output.path is not None
    with output.open() as f:
        report, summary = _build_image(image, f, wopts, format, progress)
        f.flush()
        # The temporary itself, through its descriptor: not its name, which another
        # user who can write in the directory could point elsewhere.
        vinfo = _add_verity(open_file_path(f), verity, image.digest, okey, output.path)
    size = output.path.stat().st_size
    manifest, config = image.manifest(), image.config()
    return CompiledImage(
        path=output.path, reference=image.reference, digest=image.digest,
        platform=str(image.platform or config.platform), manifest=manifest, config=config,
        format=format, size=size, files=summary.inodes,
        cached=False, fidelity=report.fidelity, placed="written",
        stats={**_stats(report, summary, format), "seconds": round(time.monotonic() - started, 3)},
        verity=vinfo,
    )


def _compile_tar(
    source: str, output: Destination | None, want: Platform | None, sopts: SourceOptions,
    progress: ProgressCallback | None,
) -> CompiledImage:
    """Write the flattened tree as one tar stream (not cached)."""
    from .sources.open import open_source

    src = open_source(source, options=sopts)
    with contextlib.closing(src):
        return _write_tar(src.resolve(want), output, progress)


def _tar_shape(layers: Sequence[Layer], progress: ProgressCallback | None) -> TreeShape:
    """The final tree, flattened once without file data, so that the tar can write each
    directory once with its final metadata (see ``tarout``)."""
    from .tarout import TreeShape

    shape = TreeShape()
    _flatten_into(layers, shape, progress, phase="scan")
    return shape


def _write_tar(
    image: ResolvedImage, output: Destination | None,
    progress: ProgressCallback | None,
) -> CompiledImage:
    from .tarout import TarSink

    layers = image.layers()
    started = time.monotonic()
    if output is None:
        raise UsageError("--format tar needs an output (a file, or - for stdout)")
    out = output

    def build() -> tuple[FlattenReport, TreeShape]:
        with out.open() as f:
            shape = _tar_shape(layers, progress)
            sink = TarSink(f, shape=shape)
            report = _flatten_into(layers, sink, progress, output="tar")
            sink.finish()
        return report, shape

    path = output.path
    if output.is_file:
        report, shape = _while_downloading(image, build)
        size = output.path.stat().st_size if output.path else 0
    else:
        # A stream cannot be written again: its layers are all downloaded first.
        _download(image)
        report, shape = build()
        size = 0
    manifest, config = image.manifest(), image.config()
    return CompiledImage(
        path=path, reference=image.reference, digest=image.digest,
        platform=str(image.platform or config.platform), manifest=manifest, config=config,
        format="tar", size=size, files=shape.inodes(), cached=False,
        fidelity=report.fidelity, placed="written",
        stats={**_stats(report, None), "seconds": round(time.monotonic() - started, 3)},
    )


__all__ = ["CompiledImage", "OcisquashError", "OutputError", "compile_image"]
