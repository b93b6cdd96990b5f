"""ocisquash: compile OCI and Docker container images into flattened squashfs images.

The public API (``docs/api.md`` shows it at work)::

    compile_image(source, output=None, *, platform=None, format="squashfs", ...) -> CompiledImage
    pack_directory(src, output, options, fidelity=None) -> WriteSummary
    VerityOptions, VerityInfo, verify_image(path, ...)       dm-verity hash trees
    SourceOptions, WriterOptions, Compression, Platform     options and values
    default_writer_options()                                 zstd level 5, 128 KiB blocks
    BlobStarted, BlobProgress, BlobRetrying, BlobDone,       what a ``progress=`` callback
    LayerApplying, Finishing                                 receives
    OcisquashError and its subclasses                        every expected failure

Each name is imported on first use, so that ``import ocisquash`` (and the CLI) starts
fast; ``dir(ocisquash)`` and ``from ocisquash import *`` still list them all.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .compile import CompiledImage, compile_image, default_writer_options
    from .errors import (
        AuthError,
        CacheError,
        ImageNotFoundError,
        IntegrityError,
        LayerError,
        LimitExceededError,
        ManifestError,
        OcisquashError,
        OutputError,
        PlatformNotFoundError,
        ReferenceSyntaxError,
        RegistryError,
        RuntimeConfigError,
        UnsafeLayerError,
        UnsupportedError,
        UsageError,
    )
    from .model import Platform
    from .pack import pack_directory
    from .progress import (
        BlobDone,
        BlobProgress,
        BlobRetrying,
        BlobStarted,
        Finishing,
        LayerApplying,
        ProgressCallback,
        ProgressEvent,
    )
    from .sources.options import SourceOptions
    from .squashfs.options import Compression, WriterOptions
    from .verity import VerityInfo, VerityOptions, verify_image

#: public name → the module that defines it
_WHERE = {
    "CompiledImage": "compile", "compile_image": "compile",
    "default_writer_options": "compile",
    "pack_directory": "pack",
    "Platform": "model",
    "SourceOptions": "sources.options",
    "Compression": "squashfs.options", "WriterOptions": "squashfs.options",
    "VerityInfo": "verity", "VerityOptions": "verity", "verify_image": "verity",
    **{name: "progress" for name in ("BlobDone", "BlobProgress", "BlobRetrying", "BlobStarted",
                                     "Finishing", "LayerApplying", "ProgressCallback",
                                     "ProgressEvent")},
    **{name: "errors" for name in (
        "AuthError", "CacheError", "ImageNotFoundError", "IntegrityError", "LayerError",
        "LimitExceededError", "ManifestError", "OcisquashError", "OutputError",
        "PlatformNotFoundError", "ReferenceSyntaxError", "RegistryError", "RuntimeConfigError",
        "UnsafeLayerError",
        "UnsupportedError", "UsageError")},
}

__all__ = [
    "AuthError",
    "BlobDone",
    "BlobProgress",
    "BlobRetrying",
    "BlobStarted",
    "CacheError",
    "CompiledImage",
    "Compression",
    "Finishing",
    "ImageNotFoundError",
    "IntegrityError",
    "LayerApplying",
    "LayerError",
    "LimitExceededError",
    "ManifestError",
    "OcisquashError",
    "OutputError",
    "Platform",
    "PlatformNotFoundError",
    "ProgressCallback",
    "ProgressEvent",
    "ReferenceSyntaxError",
    "RegistryError",
    "RuntimeConfigError",
    "SourceOptions",
    "UnsafeLayerError",
    "UnsupportedError",
    "UsageError",
    "VerityInfo",
    "VerityOptions",
    "WriterOptions",
    "__version__",
    "compile_image",
    "default_writer_options",
    "pack_directory",
    "verify_image",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'ocisquash' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{where}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    # The public names, not the helpers this module imports for itself.
    return sorted({*__all__, "__doc__", "__file__", "__name__", "__path__"})
