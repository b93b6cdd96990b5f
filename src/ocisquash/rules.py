"""What an image may hold, and the record of what ocisquash changed to hold it.

One home for the rules every part applies, so that the layer reader, the directory
packer, the writers, the sources and the registry client cannot drift apart:

* the bounds against hostile input (:class:`Limits`, the manifest and config sizes,
  :func:`check_manifest`), whose defaults the README's Guarantees section documents;
* what Linux and the output formats fix: the mtime range (:func:`clamp_mtime`), the
  longest name and symlink target, the xattr namespaces an image keeps;
* the fidelity record (:class:`Fidelity`, :class:`FidelityIssue`): what was dropped or
  changed on the way, counted with examples instead of passing silently.

Nothing here reads or writes anything; it depends on the error tree only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import LimitExceededError

if TYPE_CHECKING:
    from .model import Manifest


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds against hostile layers; the defaults are far above what real images use."""

    #: longest path, in bytes (Linux ``PATH_MAX``)
    max_path_length: int = 4096
    #: tar entries over all layers of one image
    max_entries: int = 10_000_000
    #: size of one extended attribute value (Linux ``XATTR_SIZE_MAX``)
    max_xattr_size: int = 65536
    #: uncompressed bytes per compressed byte of one layer (or compressed archive);
    #: checked once it has produced ``ratio_floor`` bytes, so small files of zeros
    #: never trip it
    max_ratio: int = 10_000
    ratio_floor: int = 1 << 30
    #: layers of one image (Docker refuses more than 127)
    max_layers: int = 1000
    #: size of one file, holes of a sparse file included (1 TiB)
    max_file_size: int = 1 << 40
    #: data regions in one sparse file's map (each costs 16 bytes while the file is read)
    max_sparse_regions: int = 1 << 20


#: the defaults, for callers that take none
DEFAULT_LIMITS = Limits()

#: largest manifest or index accepted, from a registry, a layout or an archive (the
#: distribution spec suggests registries accept at least 4 MiB)
MAX_MANIFEST_SIZE = 4 << 20
#: largest image config accepted
MAX_CONFIG_SIZE = 8 << 20


def check_manifest(manifest: Manifest, *, context: str = "",
                   limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse a manifest whose image would break ``limits``, before any of its blobs is
    fetched (a manifest of 10 000 layers used to cost 10 002 requests first)."""
    check_layer_count(len(manifest.layers), context=context, limits=limits)


def check_layer_count(count: int, *, context: str = "",
                      limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse an image of more than ``limits.max_layers`` layers."""
    if count > limits.max_layers:
        raise LimitExceededError(
            f"image has {count} layers, more than the limit of {limits.max_layers}",
            context=context)


#: the largest mtime the outputs store (squashfs's is an unsigned 32-bit field)
MAX_MTIME = 2**32 - 1
#: the id used for an owner that does not fit 32 bits (the kernel's overflow id)
OVERFLOW_ID = 65534
#: the longest file name Linux allows (``NAME_MAX``): squashfs could store 256 bytes, but
#: neither the kernel nor unsquashfs could use such a name
MAX_NAME = 255
#: the longest symlink target Linux allows: ``PATH_MAX`` less its terminating NUL
MAX_SYMLINK_TARGET = 4095
#: xattr namespaces an image can carry; others are dropped and recorded
KEPT_XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")


def clamp_mtime(mtime: int) -> int:
    """``mtime`` moved into the range the outputs store, 0..2^32-1."""
    return min(max(mtime, 0), MAX_MTIME)


@dataclass(frozen=True, slots=True)
class FidelityIssue:
    """Something in the layers the output could not hold exactly."""

    #: short stable name, e.g. ``xattr-dropped``, ``mtime-clamped``
    kind: str
    #: how many times it happened (once per entry and kind)
    count: int
    #: the first few paths affected
    examples: tuple[bytes, ...]
    #: what was done about it, in words
    detail: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record (paths shown as text)."""
        return {"kind": self.kind, "count": self.count, "detail": self.detail,
                "examples": [e.decode("utf-8", "replace") for e in self.examples]}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> FidelityIssue:
        """The issue :meth:`to_json` wrote (as a cache record keeps it)."""
        return cls(str(record["kind"]), int(record["count"]),
                   tuple(str(e).encode("utf-8") for e in record.get("examples", ())),
                   str(record.get("detail", "")))


FIDELITY_DETAIL = {
    "xattr-dropped": "extended attributes outside user./trusted./security. were dropped",
    "mtime-clamped": "modification times outside 0..2^32-1 were clamped",
    "mtime-subsecond-truncated": "sub-second modification times were truncated to seconds",
    "id-clamped": f"owner ids above 2^32-1 were replaced by {OVERFLOW_ID}",
    "same-layer-replacement-ignored": (
        "a layer replaced its own directory by a non-directory under an upper layer's "
        "directory; the entries it had put in it were kept"
    ),
    "entry-type-skipped": "tar entries of a type a filesystem cannot hold were skipped",
    "symlink-replaced-by-directory": (
        "a lower layer's non-directory stood where an upper layer put entries beneath it; "
        "the directory wins (Docker would write through a symlink instead)"
    ),
}


class Fidelity:
    """Collects :class:`FidelityIssue` records while layers or a directory are read."""

    def __init__(self, max_examples: int = 5) -> None:
        self._counts: dict[str, int] = {}
        self._examples: dict[str, list[bytes]] = {}
        self._max = max_examples

    def note(self, kind: str, path: bytes) -> None:
        self._counts[kind] = self._counts.get(kind, 0) + 1
        ex = self._examples.setdefault(kind, [])
        if len(ex) < self._max and path not in ex:
            ex.append(path)

    def issues(self) -> tuple[FidelityIssue, ...]:
        return tuple(
            FidelityIssue(k, n, tuple(self._examples[k]), FIDELITY_DETAIL.get(k, k))
            for k, n in sorted(self._counts.items())
        )


__all__ = [
    "DEFAULT_LIMITS",
    "FIDELITY_DETAIL",
    "KEPT_XATTR_NAMESPACES",
    "MAX_CONFIG_SIZE",
    "MAX_MANIFEST_SIZE",
    "MAX_MTIME",
    "MAX_NAME",
    "MAX_SYMLINK_TARGET",
    "OVERFLOW_ID",
    "Fidelity",
    "FidelityIssue",
    "Limits",
    "check_layer_count",
    "check_manifest",
    "clamp_mtime",
]
