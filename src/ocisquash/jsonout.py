"""The JSON documents ``--json`` prints: one versioned schema, written down in docs/json.md.

Every document is an object whose first key is ``schema_version``; keys are
snake_case everywhere; enums are written as their plain names (``"zstd"``); times are
RFC 3339 strings in UTC (``2026-12-05T23:44:57Z``); digests are ``sha256:<hex>``.
A new key may appear in a later version without a version change; a renamed or
removed key, or a changed meaning, raises ``SCHEMA_VERSION``. Text is written exactly
as it came (JSON escapes control characters itself), unlike what is printed for a
human (``terminal.printable``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cache import CacheEntry
    from .compile import CompiledImage
    from .model import ContainerConfig, ImageConfig, Manifest

SCHEMA_VERSION = 1


def write(document: Mapping[str, Any], stream: IO[str]) -> None:
    """``document`` as indented JSON and a newline."""
    json.dump(document, stream, indent=2, ensure_ascii=False)
    stream.write("\n")


def timestamp(epoch: float | None) -> str | None:
    """Seconds since 1970 as RFC 3339 in UTC, to the second."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def config_time(created: str) -> str | None:
    """An image config's ``created`` as RFC 3339 in UTC; None when absent or invalid."""
    if not created:
        return None
    try:
        t = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)  # RFC 3339 needs an offset; the image spec means UTC
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def plain(value: Any) -> Any:
    """``value`` with enums as their values and tuples as lists, recursively."""
    if isinstance(value, Enum):
        return plain(value.value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def runtime_config(config: ImageConfig) -> dict[str, Any]:
    """The image's whole runtime config (the OCI config's ``config`` object), snake_case."""
    c: ContainerConfig = config.config
    return {
        "created": config_time(config.created),
        "entrypoint": list(c.entrypoint) if c.entrypoint is not None else None,
        "cmd": list(c.cmd) if c.cmd is not None else None,
        "env": list(c.env),
        "working_dir": c.working_dir,
        "user": c.user,
        "labels": dict(c.labels),
        "exposed_ports": list(c.exposed_ports),
        "volumes": list(c.volumes),
        "stop_signal": c.stop_signal,
    }


def layers(manifest: Manifest) -> list[dict[str, Any]]:
    return [{"digest": str(d.digest), "size": d.size, "media_type": d.media_type}
            for d in manifest.layers]


def compiled(result: CompiledImage) -> dict[str, Any]:
    """What ``compile --json`` prints."""
    return {
        "schema_version": SCHEMA_VERSION,
        "reference": result.reference,
        "digest": str(result.digest),
        "platform": result.platform,
        "output": str(result.path) if result.path else None,
        "format": result.format,
        "size": result.size,
        "files": result.files,
        "cached": result.cached,
        "placed": result.placed,
        "fidelity": plain([i.to_json() for i in result.fidelity]),
        "config_digest": str(result.manifest.config.digest),
        "config": runtime_config(result.config),
        "stats": plain(result.stats),
        "verity": plain(result.verity.to_json()) if result.verity is not None else None,
        "source": result.source,
        "published": result.published.to_json() if result.published is not None else None,
    }


def _writer_options(options: Any) -> Any:
    # Records written by earlier versions kept the compressor as "Compression.ZSTD".
    if isinstance(options, Mapping):
        out = dict(plain(options))
        comp = out.get("compression")
        if isinstance(comp, str) and comp.startswith("Compression."):
            out["compression"] = comp.removeprefix("Compression.").lower()
        return out
    return plain(options)


def cache_entries(entries: Iterable[CacheEntry]) -> dict[str, Any]:
    """What ``cache ls --json`` prints."""
    images = []
    for e in entries:
        r = e.record
        images.append({
            "key": e.key,
            "reference": r.reference,
            "digest": str(r.digest),
            "config_digest": str(r.config_digest),
            "platform": r.platform,
            "format": r.format,
            "created": timestamp(e.created),
            "path": str(e.image),
            "size": r.squashfs_size,
            "entry_size": e.size,
            "files": r.files,
            "layers": r.layers,
            "layer_bytes": r.layer_bytes,
            "format_version": r.format_version,
            "options": _writer_options(r.options),
        })
    return {"schema_version": SCHEMA_VERSION, "images": images}
