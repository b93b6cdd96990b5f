"""Frozen types for the OCI/Docker image objects: descriptor, manifest, index, config, platform.

Each parsed object keeps the raw bytes it was parsed from, so that its digest is
always computed on exactly what was received, never on a re-serialisation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from .digest import Digest
from .errors import ManifestError, UnsupportedError

# Media types (OCI image-spec and Docker's registry/v2 formats).
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
LAYER_TYPES = (
    OCI_LAYER_TAR,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_LAYER_NONDIST_TAR,
    OCI_LAYER_NONDIST_GZIP,
    OCI_LAYER_NONDIST_ZSTD,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_FOREIGN,
)
#: Accept header value a registry client sends for manifests.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))

_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm",
                 "armel": "arm", "i386": "386", "i686": "386"}


@dataclass(frozen=True, slots=True)
class Platform:
    """An image platform: ``os/architecture[/variant]``."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]`` (``linux/arm64/v8``), normalising architecture names."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ManifestError(f"invalid platform {text!r}", hint="use OS/ARCH[/VARIANT], e.g. linux/amd64")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "").normalized()

    @classmethod
    def host(cls) -> Platform:
        """The platform of the machine running ocisquash (always ``linux``)."""
        machine = os.uname().machine.lower()  # platform.machine(), without importing it
        if machine in ("aarch64", "arm64"):
            return cls("linux", "arm64", "v8")
        if machine.startswith("armv7"):
            return cls("linux", "arm", "v7")
        if machine.startswith("armv6"):
            return cls("linux", "arm", "v6")
        return cls("linux", _ARCH_ALIASES.get(machine, machine))

    def normalized(self) -> Platform:
        """Normalise architecture aliases and default variants (arm64 → v8, arm → v7)."""
        arch = _ARCH_ALIASES.get(self.architecture.lower(), self.architecture.lower())
        variant = self.variant.lower()
        if arch == "arm64" and variant in ("", "8"):
            variant = "v8"
        elif arch == "arm" and variant == "":
            variant = "v7"
        elif arch == "arm" and variant in ("5", "6", "7", "8"):
            variant = "v" + variant
        return Platform(self.os.lower(), arch, variant, self.os_version, self.os_features)

    def matches(self, other: Platform) -> bool:
        """Whether ``other`` (an image's platform) satisfies this request."""
        a, b = self.normalized(), other.normalized()
        return a.os == b.os and a.architecture == b.architecture and (
            a.variant == b.variant or (not a.variant and not b.variant)
        )

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")

    @classmethod
    def from_json(cls, obj: Any) -> Platform:
        if not isinstance(obj, dict):
            raise ManifestError("platform is not an object")
        return cls(
            str(obj.get("os", "")),
            str(obj.get("architecture", "")),
            str(obj.get("variant", "") or ""),
            str(obj.get("os.version", "") or ""),
            _str_list(obj.get("os.features"), "platform os.features"),
        )


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A content descriptor: what a manifest or index says about a blob."""

    media_type: str
    digest: Digest
    size: int
    annotations: tuple[tuple[str, str], ...] = ()
    platform: Platform | None = None
    urls: tuple[str, ...] = ()

    def annotation(self, key: str) -> str | None:
        for k, v in self.annotations:
            if k == key:
                return v
        return None

    @classmethod
    def from_json(cls, obj: Any, *, what: str = "descriptor") -> Descriptor:
        if not isinstance(obj, dict):
            raise ManifestError(f"{what} is not a JSON object")
        try:
            media_type = obj.get("mediaType", "")
            digest = obj["digest"]
            size = obj["size"]
        except KeyError as e:
            raise ManifestError(f"{what} lacks field {e.args[0]!r}") from None
        if not isinstance(media_type, str) or not isinstance(digest, str):
            raise ManifestError(f"{what} has a non-string mediaType or digest")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{what} has an invalid size {size!r}")
        ann = obj.get("annotations") or {}
        if not isinstance(ann, dict):
            raise ManifestError(f"{what} has invalid annotations")
        plat = obj.get("platform")
        urls = obj.get("urls") or []
        return cls(
            media_type,
            Digest.parse(digest),
            size,
            tuple(sorted((str(k), str(v)) for k, v in ann.items())),
            Platform.from_json(plat) if plat is not None else None,
            tuple(str(u) for u in urls) if isinstance(urls, list) else (),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            p: dict[str, Any] = {"architecture": self.platform.architecture, "os": self.platform.os}
            if self.platform.variant:
                p["variant"] = self.platform.variant
            out["platform"] = p
        return out


def _str_list(value: Any, what: str) -> tuple[str, ...]:
    """A JSON list of strings (absent: empty); anything else is a ``ManifestError``."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ManifestError(f"{what} is not a list")
    return tuple(str(v) for v in value)


def _keys(value: Any, what: str) -> tuple[str, ...]:
    """The sorted keys of a JSON object such as ``ExposedPorts`` (absent: empty)."""
    if not value:
        return ()
    if not isinstance(value, dict):
        raise ManifestError(f"{what} is not an object")
    return tuple(sorted(str(k) for k in value))


def _load_json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise ManifestError(f"{what} is nested too deeply to be valid JSON") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return obj


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest (OCI or Docker schema2), with the raw bytes it came from."""

    raw: bytes = field(repr=False)
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: tuple[tuple[str, str], ...] = ()

    @property
    def digest(self) -> Digest:
        return Digest.of(self.raw)


@dataclass(frozen=True, slots=True)
class Index:
    """An image index (OCI) or manifest list (Docker), with its raw bytes."""

    raw: bytes = field(repr=False)
    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: tuple[tuple[str, str], ...] = ()

    @property
    def digest(self) -> Digest:
        return Digest.of(self.raw)

    def platforms(self) -> list[Platform]:
        """Platforms of the image manifests this index lists (attestations left out)."""
        return [d.platform for d in self.manifests if d.platform is not None
                and d.platform.os != "unknown"]

    def select(self, want: Platform) -> Descriptor:
        """The descriptor of the first manifest whose platform satisfies ``want``."""
        from .errors import PlatformNotFoundError

        for d in self.manifests:
            if d.platform is not None and want.matches(d.platform) and d.media_type not in INDEX_TYPES:
                return d
        # An arm64 request without variant also accepts any arm64 entry.
        for d in self.manifests:
            if (d.platform is not None and d.platform.os == want.os
                    and d.platform.normalized().architecture == want.normalized().architecture
                    and want.normalized().architecture == "arm64"):
                return d
        have = ", ".join(str(p) for p in self.platforms()) or "none"
        raise PlatformNotFoundError(
            f"no image for platform {want}; the image has: {have}",
            hint="choose one with --platform OS/ARCH[/VARIANT]",
        )


def parse_manifest_or_index(raw: bytes, media_type: str = "") -> Manifest | Index:
    """Parse a manifest or index; ``media_type`` is the transport's (e.g. Content-Type)."""
    obj = _load_json(raw, "manifest")
    mt = obj.get("mediaType") or media_type or ""
    if not isinstance(mt, str):
        raise ManifestError("manifest has a non-string mediaType")
    if mt in (DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED) or obj.get("schemaVersion") == 1:
        raise UnsupportedError(
            "unsupported legacy manifest (Docker schema 1)",
            hint="push the image again with a current tool to get a schema 2 or OCI manifest",
        )
    if obj.get("schemaVersion") != 2:
        raise ManifestError(f"unsupported manifest schemaVersion {obj.get('schemaVersion')!r}")
    ann = obj.get("annotations") or {}
    annotations = tuple(sorted((str(k), str(v)) for k, v in ann.items())) if isinstance(ann, dict) else ()
    if "manifests" in obj and "layers" not in obj:
        mans = obj["manifests"]
        if not isinstance(mans, list):
            raise ManifestError("index field 'manifests' is not a list")
        return Index(raw, mt or OCI_INDEX,
                     tuple(Descriptor.from_json(d, what=f"index entry {i}") for i, d in enumerate(mans)),
                     annotations)
    if "layers" not in obj or "config" not in obj:
        raise ManifestError("manifest has neither 'layers' and 'config' nor 'manifests'")
    layers = obj["layers"]
    if not isinstance(layers, list):
        raise ManifestError("manifest field 'layers' is not a list")
    return Manifest(
        raw,
        mt or OCI_MANIFEST,
        Descriptor.from_json(obj["config"], what="config descriptor"),
        tuple(Descriptor.from_json(d, what=f"layer {i}") for i, d in enumerate(layers)),
        annotations,
    )


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    """The runtime settings of an image config (``config`` field)."""

    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    stop_signal: str = ""


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """An image configuration blob, with its raw bytes."""

    raw: bytes = field(repr=False)
    architecture: str
    os: str
    variant: str
    config: ContainerConfig
    diff_ids: tuple[Digest, ...]
    created: str = ""

    @property
    def digest(self) -> Digest:
        return Digest.of(self.raw)

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant).normalized()

    @classmethod
    def parse(cls, raw: bytes) -> ImageConfig:
        obj = _load_json(raw, "image config")
        rootfs = obj.get("rootfs") or {}
        if not isinstance(rootfs, dict):
            raise ManifestError("image config field 'rootfs' is not an object")
        diff_ids = rootfs.get("diff_ids") or []
        if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
            raise ManifestError("image config rootfs.diff_ids is not a list of digests")
        c = obj.get("config") or {}
        if not isinstance(c, dict):
            raise ManifestError("image config field 'config' is not an object")

        def strs(v: Any) -> tuple[str, ...] | None:
            if v is None:
                return None
            if isinstance(v, str):
                return (v,)
            if isinstance(v, list):
                return tuple(str(x) for x in v)
            raise ManifestError("image config has a malformed string list")

        labels = c.get("Labels") or {}
        return cls(
            raw,
            str(obj.get("architecture", "")),
            str(obj.get("os", "")),
            str(obj.get("variant", "") or ""),
            ContainerConfig(
                entrypoint=strs(c.get("Entrypoint")),
                cmd=strs(c.get("Cmd")),
                env=strs(c.get("Env")) or (),
                working_dir=str(c.get("WorkingDir") or ""),
                user=str(c.get("User") or ""),
                labels=tuple(sorted((str(k), str(v)) for k, v in labels.items()))
                if isinstance(labels, dict) else (),
                exposed_ports=_keys(c.get("ExposedPorts"), "image config ExposedPorts"),
                volumes=_keys(c.get("Volumes"), "image config Volumes"),
                stop_signal=str(c.get("StopSignal") or ""),
            ),
            tuple(Digest.parse(d) for d in diff_ids),
            str(obj.get("created", "") or ""),
        )
