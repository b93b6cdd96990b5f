"""Parse and normalise image references and skopeo-style image specs into frozen values.

The reference grammar is Docker's (``distribution/reference``)::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path-component ( "/" path-component )*
    domain     := host [ ":" port ]
    host       := domain-component ( "." domain-component )* | "[" ipv6 "]"
    domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
    path-component   := [a-z0-9]+ ( separator [a-z0-9]+ )*
    separator  := "." | "_" | "__" | "-"+
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := algorithm ":" hex      (sha256 or sha512 here)

The first ``/``-separated part is a registry host only when it contains ``.`` or
``:`` or is ``localhost``; otherwise the name lives on Docker Hub: ``alpine`` →
``docker.io/library/alpine:latest``. (Newer Docker also takes an uppercase first
part for a host; like skopeo we call ``Foo/bar`` an uppercase repository, which
is almost always what it is.) IPv6 hosts (``[::1]:5000``) are accepted. ``index.docker.io``
is spelled ``docker.io``. A name without tag or digest gets the tag ``latest``.

Image specs add a transport, as skopeo does: ``docker://REF`` (the default when
no transport is given), ``oci:PATH[:TAG]``, ``oci-archive:FILE[:TAG]`` and
``docker-archive:FILE[:NAME:TAG | :@INDEX]``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .digest import Digest
from .errors import ManifestError, ReferenceSyntaxError

DEFAULT_REGISTRY = "docker.io"
#: Where Docker Hub's registry API actually answers.
DOCKER_HUB_API_HOST = "registry-1.docker.io"
_LEGACY_HUB_HOSTS = ("index.docker.io",)
DEFAULT_TAG = "latest"
#: Longest name (registry/repository) Docker accepts.
NAME_MAX_LENGTH = 255

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = re.compile(rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*")
_IPV6 = re.compile(r"\[([a-fA-F0-9:]+)\]")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_HEX64 = re.compile(r"[a-f0-9]{64}")

_TAG_HINT = "a tag is 1-128 letters, digits, '_', '.' or '-', and does not start with '.' or '-'"
_PATH_HINT = (
    "repository path components are lowercase letters and digits, "
    "joined by '.', '_', '__' or dashes"
)


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference: ``registry/repository[:tag][@digest]``.

    When both a tag and a digest are given the digest decides what is fetched and
    the tag is kept for display.
    """

    registry: str
    repository: str
    tag: str | None
    digest: Digest | None

    @property
    def name(self) -> str:
        """``registry/repository``."""
        return f"{self.registry}/{self.repository}"

    @property
    def identifier(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag or DEFAULT_TAG

    @property
    def api_host(self) -> str:
        """The host (with port) that serves the registry API for this reference."""
        return DOCKER_HUB_API_HOST if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def host(self) -> str:
        """The registry host without port or IPv6 brackets."""
        m = _IPV6.match(self.registry)
        if m:
            return m.group(1)
        return self.registry.rsplit(":", 1)[0]

    @property
    def is_loopback(self) -> bool:
        """Whether the registry is on this machine (``localhost``, 127.0.0.0/8, ``::1``).

        Such registries are commonly served over plain HTTP.
        """
        host = self.host
        if host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def familiar(self) -> str:
        """The short form people type: ``alpine:3.20``, ``ghcr.io/o/app@sha256:…``."""
        name = self.name
        if self.registry == DEFAULT_REGISTRY:
            short = self.repository.removeprefix("library/")
            name = short if "/" not in short else self.repository
        return name + self._suffix()

    def _suffix(self) -> str:
        out = f":{self.tag}" if self.tag is not None else ""
        return out + (f"@{self.digest}" if self.digest is not None else "")

    def __str__(self) -> str:
        return self.name + self._suffix()


def parse_reference(text: str) -> Reference:
    """Parse and normalise an image reference; raise ``ReferenceSyntaxError`` naming the bad part."""
    return _parse(text)[0]


def _fail(text: str, message: str, hint: str = "") -> ReferenceSyntaxError:
    shown = text if len(text) <= 80 else text[:80] + "…"
    return ReferenceSyntaxError(message, context=f"image reference {shown!r}", hint=hint)


def _parse(text: str) -> tuple[Reference, bool]:
    """The reference and whether it named a tag explicitly."""
    if not isinstance(text, str):
        raise TypeError(f"reference must be str, not {type(text).__name__}")
    if not text:
        raise _fail(text, "reference is empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise _fail(text, "reference contains whitespace")

    rest, at, digest_text = text.partition("@")
    digest: Digest | None = None
    if at:
        if "@" in digest_text:
            raise _fail(text, "reference contains more than one '@'")
        digest = _parse_digest(text, digest_text)

    tag: str | None = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise _fail(text, f"tag {tag!r} is invalid", _TAG_HINT)
    if not rest:
        raise _fail(text, "repository name is empty")

    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, repository = _parse_domain(text, first), remainder
    else:
        registry, repository = DEFAULT_REGISTRY, rest
    if registry in _LEGACY_HUB_HOSTS:
        registry = DEFAULT_REGISTRY

    if not repository:
        raise _fail(text, "repository name is empty")
    for component in repository.split("/"):
        if _PATH_COMPONENT.fullmatch(component):
            continue
        if not component:
            raise _fail(text, f"repository {repository!r} has an empty path component")
        if _PATH_COMPONENT.fullmatch(component.lower()):
            raise _fail(
                text, f"repository name {repository!r} must be lowercase",
                "only the registry host may contain uppercase letters",
            )
        raise _fail(text, f"repository path component {component!r} is invalid", _PATH_HINT)
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        if _HEX64.fullmatch(repository):
            raise _fail(
                text, "a 64-character hexadecimal string is an image ID, not a repository name",
                "pull by digest with NAME@sha256:HEX",
            )
        repository = f"library/{repository}"
    name_length = len(registry) + 1 + len(repository)
    if name_length > NAME_MAX_LENGTH:
        raise _fail(text, f"repository name is {name_length} characters long, at most "
                          f"{NAME_MAX_LENGTH} are allowed")

    explicit_tag = tag is not None
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest), explicit_tag


def _parse_domain(text: str, domain: str) -> str:
    host, port = domain, ""
    m = _IPV6.match(domain)
    if m:
        try:
            ipaddress.IPv6Address(m.group(1))
        except ValueError:
            raise _fail(text, f"registry host {domain!r} is not a valid IPv6 address") from None
        host, rest = m.group(0), domain[m.end():]
        if rest and not rest.startswith(":"):
            raise _fail(text, f"registry host {domain!r} is invalid")
        port = rest[1:] if rest else ""
        if rest and not port:
            raise _fail(text, f"registry {domain!r} has an empty port")
    else:
        host, colon, port = domain.partition(":")
        if colon and not port:
            raise _fail(text, f"registry {domain!r} has an empty port")
        if not _HOST.fullmatch(host):
            raise _fail(
                text, f"registry host {host!r} is invalid",
                "a host is dot-separated letters, digits and inner dashes, optionally :PORT",
            )
    if port and (not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536):
        raise _fail(text, f"registry port {port!r} is invalid", "a port is a number 1-65535")
    return domain


def _parse_digest(text: str, digest_text: str) -> Digest:
    if not _DIGEST.fullmatch(digest_text):
        raise _fail(text, f"digest {digest_text!r} is invalid", "a digest is ALGORITHM:HEX, e.g. sha256:<64 hex digits>")
    try:
        return Digest.parse(digest_text)
    except ManifestError as e:
        raise _fail(text, e.message, "use a sha256 or sha512 digest in lowercase hex") from None


# --- image specs with transports ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegistrySpec:
    """``docker://REF``: an image in a registry."""

    transport: ClassVar[str] = "docker"
    reference: Reference

    def __str__(self) -> str:
        return f"docker://{self.reference}"


@dataclass(frozen=True, slots=True)
class OciLayoutSpec:
    """``oci:PATH[:TAG]``: an OCI image layout directory."""

    transport: ClassVar[str] = "oci"
    path: Path
    tag: str | None = None

    def __str__(self) -> str:
        return f"oci:{self.path}" + _tag_suffix(self.path, self.tag)


@dataclass(frozen=True, slots=True)
class OciArchiveSpec:
    """``oci-archive:FILE[:TAG]``: a tar file of an OCI image layout."""

    transport: ClassVar[str] = "oci-archive"
    path: Path
    tag: str | None = None

    def __str__(self) -> str:
        return f"oci-archive:{self.path}" + _tag_suffix(self.path, self.tag)


@dataclass(frozen=True, slots=True)
class DockerArchiveSpec:
    """``docker-archive:FILE[:NAME:TAG | :@INDEX]``: a ``docker save`` tar file.

    ``reference`` picks the image whose ``RepoTags`` has it; ``index`` picks the
    image by its position in ``manifest.json``; with neither the archive must hold
    one image.
    """

    transport: ClassVar[str] = "docker-archive"
    path: Path
    reference: Reference | None = None
    index: int | None = None

    def __str__(self) -> str:
        if self.reference is not None:
            return f"docker-archive:{self.path}:{self.reference}"
        if self.index is not None:
            return f"docker-archive:{self.path}:@{self.index}"
        return f"docker-archive:{self.path}" + (":" if ":" in str(self.path) else "")


def _tag_suffix(path: Path, tag: str | None) -> str:
    # A path with a colon and no tag needs the closing ':' to parse back the same.
    if tag:
        return f":{tag}"
    return ":" if ":" in str(path) else ""


ImageSpec = RegistrySpec | OciLayoutSpec | OciArchiveSpec | DockerArchiveSpec

_UNSUPPORTED_TRANSPORTS = ("dir", "docker-daemon", "containers-storage", "ostree", "sif", "tarball")


def local_path_hint(text: str) -> str | None:
    """What to say when an image spec without a transport, read as a registry
    reference, fails and ``text`` names something local that an image spec could mean:
    an OCI layout directory, a tar or a compressed file (the transports that read them),
    or an image already compiled. None for anything else (a directory of the image's
    name stays a reference that failed for its own reason)."""
    import os

    from .erofs import format as erofs
    from .squashfs import format as squashfs

    try:
        if os.path.isdir(text):
            if os.path.isfile(os.path.join(text, "oci-layout")):
                return f"{text} is an OCI image layout here: give it as oci:{text}"
            return None
        if not os.path.isfile(text):
            return None
        with open(text, "rb") as f:
            head = f.read(erofs.SUPER_OFFSET + 4)  # as imagereader.image_format reads
    except OSError:
        return None
    for kind, has_magic in (("a squashfs", squashfs.has_magic), ("an EROFS", erofs.has_magic)):
        if has_magic(head):
            return f"{text} is {kind} image here: 'ocisquash mount {text} DIR' mounts it"
    from .sniff import SNIFF_BYTES, sniff_compression

    compression = sniff_compression(head[:SNIFF_BYTES])
    if compression != "tar" or head[257:262] == b"ustar":
        kind = "a tar" if compression == "tar" else f"{compression}-compressed"
        return (f"{text} is {kind} here: give a `docker save` archive as "
                f"docker-archive:{text}, an OCI layout in a tar as oci-archive:{text}")
    return None


def parse_image_spec(text: str) -> ImageSpec:
    """Parse ``[TRANSPORT:]DETAILS`` as skopeo does; without a transport it is a registry reference.

    Path and tag are split at the last ``:`` when what follows is a valid tag
    (``oci:/data/layout:v1``), so a path may contain colons; end the spec with
    ``:`` to take all of it as the path (``oci:/data/a:b:`` → path ``/data/a:b``).
    For ``docker-archive`` the split is at the first ``:`` followed by a
    ``NAME:TAG`` or ``@INDEX``. A transport name shadows a Docker Hub image of
    the same name (``oci:1``); ``docker://oci:1`` names the image.
    ``docker:dind`` is the image, as it parses as one.
    """
    if text.startswith("docker://"):
        return RegistrySpec(parse_reference(text[len("docker://"):]))
    transport, colon, details = text.partition(":")
    if not colon or "/" in transport:
        try:
            return RegistrySpec(parse_reference(text))
        except ReferenceSyntaxError as e:
            e.hint = local_path_hint(text) or e.hint
            raise
    if transport == "docker":
        # 'docker:dind' is Docker Hub's image 'docker' with tag 'dind', not a transport.
        try:
            return RegistrySpec(parse_reference(text))
        except ReferenceSyntaxError:
            raise ReferenceSyntaxError(
                "the docker transport needs '//'", context=f"image {text!r}",
                hint=f"write docker://{details}",
            ) from None
    if transport in ("oci", "oci-archive"):
        path, tag = _split_path_tag(text, details)
        return OciLayoutSpec(path, tag) if transport == "oci" else OciArchiveSpec(path, tag)
    if transport == "docker-archive":
        return _parse_docker_archive(text, details)
    if transport in _UNSUPPORTED_TRANSPORTS:
        raise ReferenceSyntaxError(
            f"transport {transport!r} is not supported", context=f"image {text!r}",
            hint="use docker://, oci:, oci-archive: or docker-archive: "
                 f"(write docker://{text} for a registry image named so)",
        )
    return RegistrySpec(parse_reference(text))


def _need_path(text: str, path: str) -> Path:
    if not path:
        raise ReferenceSyntaxError("the path is empty", context=f"image {text!r}")
    return Path(path)


def _split_path_tag(text: str, details: str) -> tuple[Path, str | None]:
    if details.endswith(":"):
        return _need_path(text, details[:-1]), None
    path, colon, tag = details.rpartition(":")
    if colon and path and _TAG.fullmatch(tag):
        return Path(path), tag
    return _need_path(text, details), None


def _parse_docker_archive(text: str, details: str) -> DockerArchiveSpec:
    if details.endswith(":"):
        return DockerArchiveSpec(_need_path(text, details[:-1]))
    start = 0
    while (i := details.find(":", start)) > 0:
        path, suffix = details[:i], details[i + 1 :]
        start = i + 1
        if suffix.startswith("@"):
            if suffix[1:].isascii() and suffix[1:].isdigit():
                return DockerArchiveSpec(Path(path), index=int(suffix[1:]))
            continue
        try:
            ref, explicit_tag = _parse(suffix)
        except ReferenceSyntaxError:
            continue
        if explicit_tag and ref.digest is None:
            return DockerArchiveSpec(Path(path), reference=ref)
    return DockerArchiveSpec(_need_path(text, details))
