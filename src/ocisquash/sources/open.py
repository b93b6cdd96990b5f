"""Turn an image spec (``docker://``, ``oci:``, ``oci-archive:``, ``docker-archive:``) into its source."""

from __future__ import annotations

from ..reference import (
    DockerArchiveSpec,
    ImageSpec,
    OciArchiveSpec,
    OciLayoutSpec,
    RegistrySpec,
    parse_image_spec,
)
from .base import ImageSource
from .options import SourceOptions


def open_source(spec: str | ImageSpec, *, options: SourceOptions | None = None) -> ImageSource:
    """The source for ``spec``; a string is parsed with ``parse_image_spec`` (no transport: registry).

    Opening does no I/O for registries and layouts; ``resolve()`` does the work.
    """
    options = options or SourceOptions()
    given = None
    if isinstance(spec, str):
        given = spec
        spec = parse_image_spec(spec)
    if isinstance(spec, RegistrySpec):
        # Imported on demand: local sources must not pay for the HTTP stack.
        from .registry import RegistrySource

        source = RegistrySource(spec.reference, options)
        if given is not None and not given.startswith("docker://"):
            # Without a transport the spec may have meant a local path of that name.
            source.given = given
        return source
    # Each source module is imported only when used, so a warm compile starts fast.
    if isinstance(spec, OciLayoutSpec):
        from .oci_layout import OciLayoutSource

        return OciLayoutSource(spec.path, spec.tag)
    if isinstance(spec, OciArchiveSpec):
        from .archive import OciArchiveSource

        return OciArchiveSource(spec.path, spec.tag, options=options)
    if isinstance(spec, DockerArchiveSpec):
        from .archive import DockerArchiveSource

        return DockerArchiveSource(spec.path, spec.reference, index=spec.index, options=options)
    raise TypeError(f"not an image spec: {spec!r}")
