"""Compiled images as OCI 1.1 artifacts in the registry: publish, discover, fetch, verify.

An artifact is an image manifest (image-spec ``manifest.md``) that names the image it
was compiled from as its ``subject``::

    mediaType     application/vnd.oci.image.manifest.v1+json
    artifactType  application/vnd.ocisquash.squashfs.v1  (…erofs.v1 for EROFS)
    config        the empty descriptor: application/vnd.oci.empty.v1+json, ``{}``
    layers        the image; then, with --verity, the hash device (sidecar mode),
                  the root hash and its signature, each titled with its file name
    subject       the platform manifest's descriptor
    annotations   format, format version, output options and their key, root hash,
                  tool version, org.opencontainers.image.created of the image

Discovery follows the distribution-spec's "Listing Referrers": ``GET
/v2/<name>/referrers/<digest>?artifactType=…``; a registry without that API answers
404, and the index at the tag ``<alg>-<hex>`` (the referrers tag schema) is read
instead. Publishing updates that index by read-modify-write unless the manifest PUT
was answered with ``OCI-Subject`` (the registry indexes it itself); other tools'
entries are kept as they are, and a writer that raced ours is detected by reading the
tag again: when our entry is gone, the update is made again on what is there now.

A fetched artifact is used only after every check passes: the manifest's digest, the
``subject``, the artifact type, the format version and options (whose key is the
sha256 of the options' canonical JSON), the image's creation date, each blob's digest
and size, the image's magic, and with --verity the root hash recomputed from the image
with the salt a local compile derives (equal to the annotation and to the root hash
file), the stored tree checked against it, and with a certificate the signature of the
root hash. Anything else is :class:`~ocisquash.errors.IntegrityError`, and compile
builds the image itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .digest import Digest
from .erofs.format import SUPER_OFFSET
from .erofs.format import has_magic as erofs_magic
from .errors import ImageNotFoundError, IntegrityError, ManifestError, OcisquashError
from .imagereader import image_format
from .model import OCI_INDEX, OCI_MANIFEST, Descriptor
from .squashfs.format import has_magic as squashfs_magic

if TYPE_CHECKING:
    from .cache import CacheRecord
    from .compile import CompiledImage
    from .reference import Reference
    from .registry.client import RegistryClient
    from .registry.upload import PushedBlob, Uploader
    from .sources.options import SourceOptions
    from .verity import VerityInfo, VerityOptions

log = logging.getLogger(__name__)

ARTIFACT_TYPES = {"squashfs": "application/vnd.ocisquash.squashfs.v1",
                  "erofs": "application/vnd.ocisquash.erofs.v1"}
IMAGE_LAYER_TYPES = {"squashfs": "application/vnd.ocisquash.image.squashfs.v1",
                     "erofs": "application/vnd.ocisquash.image.erofs.v1"}
HASH_TREE_TYPE = "application/vnd.ocisquash.verity.hashtree.v1"
ROOT_HASH_TYPE = "application/vnd.ocisquash.verity.roothash.v1"
SIGNATURE_TYPE = "application/vnd.ocisquash.verity.roothash.p7s.v1"

#: image-spec: "the empty descriptor ... application/vnd.oci.empty.v1+json ... {}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_DATA = b"{}"
EMPTY_DESCRIPTOR = Descriptor(EMPTY_TYPE, Digest.of(EMPTY_DATA), len(EMPTY_DATA))

TITLE = "org.opencontainers.image.title"
CREATED = "org.opencontainers.image.created"
A_FORMAT = "io.ocisquash.format"
A_VERSION = "io.ocisquash.format.version"
A_OPTIONS = "io.ocisquash.options"
A_OPTIONS_KEY = "io.ocisquash.options.key"
A_ROOT_HASH = "io.ocisquash.verity.roothash"
A_TOOL = "io.ocisquash.tool.version"

#: How often a fallback-index update is made again after another writer replaced ours.
INDEX_ATTEMPTS = 5


# -- what an artifact must match -----------------------------------------------------------


def matching_options(options: dict[str, Any]) -> dict[str, Any]:
    """The output options an artifact is matched on: the cache key's, less the signing
    certificate (whether the root hash is signed, and by whom, is checked on its own)."""
    out = dict(options)
    verity = out.get("verity")
    if isinstance(verity, dict):
        out["verity"] = {k: v for k, v in verity.items() if k != "cert"}
    return out


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def options_key(options: dict[str, Any]) -> str:
    """The ``io.ocisquash.options.key`` of a compile's output options (the cache key's)."""
    return hashlib.sha256(canonical(matching_options(options)).encode()).hexdigest()


@dataclass(frozen=True)
class Wanted:
    """What a published artifact must be to stand in for a local compile."""

    subject: Digest
    format: str
    format_version: str
    #: the cache key's output options (``compile._writer_options_key`` plus verity)
    options: dict[str, Any]
    #: the image config's ``created``, which stamps the image
    created: str
    verity: VerityOptions | None = None
    #: the writer options' part of ``options`` (the verity salt is derived from it)
    writer_options: dict[str, Any] = field(default_factory=dict)
    #: certificate that must have signed the root hash (``--trust-cert``, or the
    #: certificate of ``--verity-sign``)
    trust_cert: Path | None = None

    @property
    def artifact_type(self) -> str:
        return ARTIFACT_TYPES[self.format]

    @property
    def options_key(self) -> str:
        return options_key(self.options)


@dataclass(frozen=True)
class Referrer:
    """One entry of a referrers index: a manifest whose ``subject`` is the image."""

    descriptor: Descriptor
    artifact_type: str

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.descriptor.annotations)


@dataclass(frozen=True)
class Outcome:
    """What ``compile --use-published`` found and did (``--json``'s ``published``)."""

    mode: str  # "use" or "verify"
    artifact: str | None = None  # the artifact's manifest digest, when one matched
    used: bool = False
    problem: str = ""
    #: with ``verify``: the files of the artifact that differ from the local compile
    differences: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "artifact": self.artifact, "used": self.used,
                "problem": self.problem or None, "differences": list(self.differences)}


# -- building the artifact ------------------------------------------------------------------


def entry_files(image: Path) -> list[tuple[Path, str]]:
    """The files of a compiled image that an artifact carries, with their media types."""
    from .verity import sidecar_paths

    side = sidecar_paths(image)
    fmt = _sniff_format(image)
    files = [(image, IMAGE_LAYER_TYPES[fmt])]
    for path, media_type in ((side.hash_file, HASH_TREE_TYPE), (side.root_hash, ROOT_HASH_TYPE),
                             (side.signature, SIGNATURE_TYPE)):
        if path.is_file():
            files.append((path, media_type))
    return files


def artifact_manifest(layers: Sequence[Descriptor], subject: Descriptor,
                      annotations: dict[str, str], artifact_type: str) -> bytes:
    """The artifact's manifest, as bytes: the same inputs give the same bytes, so
    publishing an image again names the same manifest."""
    def desc(d: Descriptor) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": d.media_type, "digest": str(d.digest), "size": d.size}
        if d.annotations:
            out["annotations"] = dict(d.annotations)
        return out

    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {**desc(EMPTY_DESCRIPTOR), "data": "e30="},  # base64 of "{}"
        "layers": [desc(d) for d in layers],
        "subject": desc(subject),
        "annotations": dict(sorted(annotations.items())),
    }
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Published:
    """What :func:`publish_entry` did."""

    #: ``registry/repository``
    repository: str
    artifact: Digest
    size: int
    blobs: tuple[PushedBlob, ...]
    #: where clients find it: "referrers" (the registry's API) or "tag" (the
    #: ``sha256-<hex>`` index)
    listed: str
    wrote_manifest: bool
    wrote_index: bool

    @property
    def sent(self) -> int:
        return sum(b.sent for b in self.blobs)

    def to_json(self) -> dict[str, Any]:
        return {"repository": self.repository, "artifact": str(self.artifact),
                "size": self.size, "listed": self.listed, "bytes_sent": self.sent,
                "wrote_manifest": self.wrote_manifest, "wrote_index": self.wrote_index,
                "blobs": [{"digest": str(b.digest), "how": b.how, "bytes_sent": b.sent}
                          for b in self.blobs]}


def publish_entry(uploader: Uploader, image: Path, record: CacheRecord, subject: Descriptor,
                  created: str, *, mount_from: Sequence[str] = ()) -> Published:
    """Push the compiled ``image`` (a cache entry's, with its verity files beside it) as
    an artifact whose subject is ``subject``, and make it discoverable.

    ``record`` is the cache entry's record (format, format version, options, verity);
    ``created`` the image config's date. Blobs the repository holds are not sent; the
    others are mounted from ``mount_from`` where they are, else uploaded.
    """
    from . import __version__

    fmt = record.format
    layers = []
    for path, media_type in entry_files(image):
        layers.append(Descriptor(media_type, Digest.of_file(path), path.stat().st_size,
                                 ((TITLE, path.name),)))
    annotations = {
        A_FORMAT: fmt,
        A_VERSION: record.format_version,
        A_OPTIONS: canonical(matching_options(record.options)),
        A_OPTIONS_KEY: options_key(record.options),
        A_TOOL: __version__,
    }
    if created:
        annotations[CREATED] = created
    verity = record.verity
    if verity is not None and verity.get("root_hash"):
        annotations[A_ROOT_HASH] = str(verity["root_hash"])
    raw = artifact_manifest(layers, subject, annotations, ARTIFACT_TYPES[fmt])
    digest = Digest.of(raw)
    pushed = [uploader.push_blob(EMPTY_DESCRIPTOR, EMPTY_DATA, mount_from=mount_from)]
    for (path, _), desc in zip(entry_files(image), layers, strict=True):
        pushed.append(uploader.push_blob(desc, path, mount_from=mount_from))
    wrote_manifest, api = False, False
    if not _manifest_present(uploader, digest):
        api = uploader.put_manifest(str(digest), raw, OCI_MANIFEST).subject is not None
        wrote_manifest = True
    if not api:
        api = uploader.get_referrers(subject.digest) is not None
    wrote_index = False
    if not api:
        wrote_index = _add_to_fallback_index(uploader, subject.digest, Descriptor(
            OCI_MANIFEST, digest, len(raw), tuple(sorted(annotations.items()))),
            ARTIFACT_TYPES[fmt])
    return Published(f"{uploader.reference.registry}/{uploader.repository}", digest, len(raw), tuple(pushed),
                     "referrers" if api else "tag", wrote_manifest, wrote_index)


def _manifest_present(client: RegistryClient, digest: Digest) -> bool:
    try:
        client.get_manifest(str(digest), digest)
    except ImageNotFoundError:
        return False
    return True


def fallback_tag(subject: Digest) -> str:
    """The referrers tag schema: ``<alg>-<ref>``, cut to 128 characters."""
    return f"{subject.algorithm}-{subject.hex}"[:128]


def _add_to_fallback_index(uploader: Uploader, subject: Digest, entry: Descriptor,
                           artifact_type: str) -> bool:
    """Add ``entry`` to the index at the subject's fallback tag; True if it was written.

    Read, add, write, read again: when another writer replaced the index between our
    read and our write, our entry is missing from what the tag now names, and the
    update is made again on that (at most :data:`INDEX_ATTEMPTS` times).
    """
    tag = fallback_tag(subject)
    mine = {"mediaType": entry.media_type, "digest": str(entry.digest), "size": entry.size,
            "artifactType": artifact_type, "annotations": dict(entry.annotations)}
    wrote = False
    for attempt in range(INDEX_ATTEMPTS):
        doc = _read_index(uploader, tag)
        entries = doc["manifests"]
        if any(isinstance(e, dict) and e.get("digest") == mine["digest"] for e in entries):
            return wrote
        if attempt:
            log.info("the index at %s was replaced by another writer; adding our entry again",
                     tag)
        doc["manifests"] = [*entries, mine]
        raw = json.dumps(doc, separators=(",", ":")).encode()
        uploader.put_manifest(tag, raw, OCI_INDEX)
        wrote = True
    doc = _read_index(uploader, tag)
    if any(isinstance(e, dict) and e.get("digest") == mine["digest"] for e in doc["manifests"]):
        return True
    raise OcisquashError(
        f"the referrers index at tag {tag} kept being replaced by another writer",
        context=f"{uploader.reference.registry}/{uploader.repository}",
        hint="push again when the other writer is done")


def _read_index(client: RegistryClient, tag: str) -> dict[str, Any]:
    """The fallback index at ``tag`` as JSON (every field kept), or a new empty one."""
    try:
        fetched = client.get_manifest(tag)
    except ImageNotFoundError:
        return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    try:
        doc = json.loads(fetched.raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
        raise ManifestError(f"the tag {tag} holds no image index, so it cannot list referrers",
                            context=f"{client.reference.registry}/{client.repository}",
                            hint="the tag is reserved for the referrers of the image it names")
    return doc


# -- discovery ------------------------------------------------------------------------------


def find_referrers(client: RegistryClient, subject: Digest,
                   artifact_type: str = "") -> tuple[list[Referrer], str]:
    """The manifests whose subject is ``subject`` (of ``artifact_type``, when given), and
    where they were listed: ``"referrers"`` (the API) or ``"tag"`` (the fallback index)."""
    fetched = client.get_referrers(subject, artifact_type)
    where = "referrers"
    if fetched is None:
        where = "tag"
        try:
            fetched = client.get_manifest(fallback_tag(subject))
        except ImageNotFoundError:
            return [], where
    try:
        doc = json.loads(fetched.raw)
    except ValueError:
        raise ManifestError("the referrers index is not JSON", context=where) from None
    entries = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        return [], where
    found = []
    for i, obj in enumerate(entries):
        try:
            desc = Descriptor.from_json(obj, what=f"referrer {i}")
        except (OcisquashError, ValueError):
            continue
        kind = obj.get("artifactType")
        kind = kind if isinstance(kind, str) else ""
        if artifact_type and kind != artifact_type:
            continue  # a registry may ignore the filter (no OCI-Filters-Applied)
        found.append(Referrer(desc, kind))
    return found, where


def candidates(client: RegistryClient, wanted: Wanted) -> list[Referrer]:
    """The listed artifacts whose annotations say they match ``wanted`` (checked again,
    on the manifest itself, by :func:`fetch_published`)."""
    found, _ = find_referrers(client, wanted.subject, wanted.artifact_type)
    out = []
    for r in found:
        ann = r.annotations
        if ann and (ann.get(A_VERSION) != wanted.format_version
                    or ann.get(A_OPTIONS_KEY) != wanted.options_key):
            continue
        out.append(r)
    return out


# -- fetching and verifying -----------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    """A verified artifact, its files placed in a directory under their entry names."""

    artifact: Digest
    files: tuple[str, ...]
    #: the image's inode count, read from its superblock
    inodes: int
    root_hash: str | None
    bytes_downloaded: int


def fetch_published(client: RegistryClient, store_blob: Callable[[Descriptor, str], Path],
                    referrer: Referrer, wanted: Wanted, dest: Path) -> Fetched:
    """Download the artifact ``referrer`` names into ``dest`` and verify it (see the
    module's docstring); :class:`IntegrityError` when it is not what ``wanted`` says.

    ``store_blob(desc, what)`` downloads a blob into the blob store, verified against
    its digest and size, and returns its path (it is moved from there into ``dest``).
    """
    from .cache import IMAGE_FILE

    digest = referrer.descriptor.digest
    what = f"published artifact {digest.short}"
    fetched = client.get_manifest(str(digest), digest, what=what)
    doc = _json_object(fetched.raw, what)
    _expect(doc.get("mediaType") == OCI_MANIFEST, "is not an OCI image manifest", what)
    _expect(doc.get("artifactType") == wanted.artifact_type,
            f"has artifactType {doc.get('artifactType')!r}, not {wanted.artifact_type}", what)
    subject = doc.get("subject")
    _expect(isinstance(subject, dict) and subject.get("digest") == str(wanted.subject),
            f"names another subject than {wanted.subject}", what)
    config = doc.get("config")
    _expect(isinstance(config, dict) and config.get("mediaType") == EMPTY_TYPE
            and config.get("digest") == str(EMPTY_DESCRIPTOR.digest),
            "does not have the empty config", what)
    ann = doc.get("annotations")
    _expect(isinstance(ann, dict), "has no annotations", what)
    assert isinstance(ann, dict)
    _expect(ann.get(A_FORMAT) == wanted.format, f"is not a {wanted.format} image", what)
    _expect(ann.get(A_VERSION) == wanted.format_version,
            f"was written by format version {ann.get(A_VERSION)!r}, not "
            f"{wanted.format_version}", what)
    _expect(ann.get(A_OPTIONS_KEY) == wanted.options_key,
            "was compiled with other output options", what)
    _expect(isinstance(ann.get(A_OPTIONS), str)
            and hashlib.sha256(str(ann[A_OPTIONS]).encode()).hexdigest() == wanted.options_key,
            f"has options that do not hash to its {A_OPTIONS_KEY}", what)
    if wanted.created:
        _expect(ann.get(CREATED) == wanted.created,
                f"says the image was created {ann.get(CREATED)!r}, the image's config says "
                f"{wanted.created!r}", what)
    layers_json = doc.get("layers")
    _expect(isinstance(layers_json, list) and bool(layers_json), "has no layers", what)
    assert isinstance(layers_json, list)
    names = _expected_names(wanted, IMAGE_FILE)
    layers: list[tuple[Descriptor, str]] = []
    for i, obj in enumerate(layers_json):
        try:
            desc = Descriptor.from_json(obj, what=f"layer {i}")
        except (OcisquashError, ValueError) as e:
            raise IntegrityError(f"has an invalid layer: {e}", context=what) from None
        title = desc.annotation(TITLE) or ""
        _expect(names.get(title) == desc.media_type,
                f"has an unexpected layer {title or desc.media_type!r}", what)
        _expect(title not in {t for _, t in layers}, f"has the layer {title!r} twice", what)
        layers.append((desc, title))
    titles = {t for _, t in layers}
    required = {n for n in names if n == IMAGE_FILE or not n.endswith(".p7s")}
    if wanted.trust_cert is not None and wanted.verity is not None:
        required |= {n for n in names if n.endswith(".p7s")}
    _expect(required <= titles, f"lacks {', '.join(sorted(required - titles))}", what)

    dest.mkdir(parents=True, exist_ok=True)
    downloaded = 0
    for desc, title in layers:
        if title.endswith(".p7s") and wanted.verity is not None and not wanted.verity.signed \
                and wanted.trust_cert is None:
            continue  # a local compile without signing writes no signature
        path = store_blob(desc, f"published {title}")
        target = dest / title
        try:
            os.replace(path, target)  # the blob store keeps no second copy
        except OSError:
            import shutil

            shutil.copyfile(path, target)
        downloaded += desc.size
    image = dest / IMAGE_FILE
    inodes = _check_image(image, wanted.format, what)
    root = ann.get(A_ROOT_HASH)
    if wanted.verity is not None:
        _expect(isinstance(root, str) and len(root) == 64, "has no root hash annotation", what)
        assert isinstance(root, str)
        _check_verity(image, root, wanted, what)
    return Fetched(digest, tuple(sorted(t for t in titles if (dest / t).exists())), inodes,
                   root if isinstance(root, str) else None, downloaded)


def _expected_names(wanted: Wanted, image_name: str) -> dict[str, str]:
    """File name → media type of the layers an artifact matching ``wanted`` may have."""
    from .verity import sidecar_paths

    names = {image_name: IMAGE_LAYER_TYPES[wanted.format]}
    if wanted.verity is not None:
        side = sidecar_paths(Path(image_name))
        if wanted.verity.mode == "sidecar":
            names[side.hash_file.name] = HASH_TREE_TYPE
        names[side.root_hash.name] = ROOT_HASH_TYPE
        names[side.signature.name] = SIGNATURE_TYPE
    return names


def _check_verity(image: Path, root: str, wanted: Wanted, what: str) -> None:
    """The root hash recomputed from the image's data must be the annotation's, with the
    salt and block count a local compile uses; a certificate, when given, must have
    signed it.

    One pass does it: ``verify_image`` hashes every data block with the tree's salt and
    checks each level up to ``root``; the tree's superblock must carry the salt a local
    compile derives and cover exactly the image's data.
    """
    from .verity import (
        DATA_BLOCK_SIZE,
        SUPERBLOCK_SIZE,
        VeritySuperblock,
        derive_salt,
        find_appended_tree,
        sidecar_paths,
        verify_image,
        verity_seed,
    )

    assert wanted.verity is not None
    side = sidecar_paths(image)
    salt = wanted.verity.salt if wanted.verity.salt is not None else derive_salt(
        verity_seed(str(wanted.subject), wanted.writer_options))
    if wanted.verity.mode == "append":
        offset = find_appended_tree(image)
        _expect(offset is not None, "has no hash tree appended to its image", what)
        assert offset is not None
        blocks, device = offset // DATA_BLOCK_SIZE, image
    else:
        size = image.stat().st_size
        _expect(size % DATA_BLOCK_SIZE == 0, "has an image not padded to 4096 bytes", what)
        offset, blocks, device = 0, size // DATA_BLOCK_SIZE, side.hash_file
    try:
        with open(device, "rb") as f:
            f.seek(offset)
            sb = VeritySuperblock.unpack(f.read(SUPERBLOCK_SIZE), str(device))
    except OcisquashError as e:
        raise IntegrityError(f"has no usable hash tree: {e}", context=what) from None
    _expect(sb.salt == salt, "has a hash tree with another salt than a compile here uses", what)
    _expect(sb.data_blocks == blocks, f"has a hash tree of {sb.data_blocks} blocks for an "
                                      f"image of {blocks}", what)
    cert = wanted.trust_cert or (wanted.verity.sign_cert if wanted.verity.signed else None)
    try:
        verify_image(image, root_hash=root, hash_offset=offset if device == image else None,
                     cert=cert)
    except OcisquashError as e:
        if "root hash" in e.message or "does not match" in e.message:
            raise IntegrityError(f"says root hash {root[:16]}…, the image does not hash to "
                                 f"it: {e.message}", context=what) from None
        raise IntegrityError(f"fails its verity check: {e}", context=what) from None
    try:
        stored = side.root_hash.read_text().strip()
    except OSError:
        stored = ""
    _expect(stored == root, "has a root hash file that differs from its annotation", what)


def _sniff_format(image: Path) -> str:
    fmt = image_format(image)
    if fmt is None:
        raise IntegrityError("is neither a squashfs nor an EROFS image", context=str(image))
    return fmt


def _check_image(image: Path, fmt: str, what: str) -> int:
    """The image's inode count from its superblock; its magic must be ``fmt``'s."""
    with open(image, "rb") as f:
        head = f.read(SUPER_OFFSET + 32)
    if fmt == "squashfs":
        _expect(squashfs_magic(head), "has no squashfs image", what)
        return int.from_bytes(head[4:8], "little")  # "inode_count"
    _expect(erofs_magic(head), "has no EROFS image", what)
    return int.from_bytes(head[SUPER_OFFSET + 16:SUPER_OFFSET + 24], "little")  # "inos"


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    _expect(isinstance(doc, dict), "is not a JSON object", what)
    assert isinstance(doc, dict)
    return doc


def _expect(ok: bool, problem: str, what: str) -> None:
    if not ok:
        raise IntegrityError(problem, context=what,
                             hint="the artifact is not used; the image is compiled here")


def compare_dirs(published: Path, local: Path) -> tuple[str, ...]:
    """The files an artifact carries (the image and its verity files) that differ between
    a fetched artifact and a local compile (by name and sha256), each as one line. What
    the cache keeps beside them for itself (the block index) is not compared."""
    from .cache import IMAGE_FILE
    from .verity import sidecar_paths

    carried = {IMAGE_FILE, *(p.name for p in sidecar_paths(Path(IMAGE_FILE)).all())}
    out = []
    names = sorted(({p.name for p in published.iterdir()} | {p.name for p in local.iterdir()})
                   & carried)
    for name in names:
        a, b = published / name, local / name
        if not a.exists() or not b.exists():
            out.append(f"{name}: only in the {'published artifact' if a.exists() else 'local compile'}")
            continue
        da, db = Digest.of_file(a), Digest.of_file(b)
        if da != db:
            out.append(f"{name}: published {da.short}, compiled here {db.short}")
    return tuple(out)


def verity_info(image: Path, root_hash: str, mode: str, signed: bool) -> VerityInfo:
    """The :class:`~ocisquash.verity.VerityInfo` of a fetched image, from its tree's
    superblock (the same a local compile reports)."""
    from .verity import (
        SUPERBLOCK_SIZE,
        VerityInfo,
        VeritySuperblock,
        find_appended_tree,
        sidecar_paths,
    )

    side = sidecar_paths(image)
    offset = find_appended_tree(image) if mode == "append" else None
    device = image if offset is not None else side.hash_file
    with open(device, "rb") as f:
        f.seek(offset or 0)
        sb = VeritySuperblock.unpack(f.read(SUPERBLOCK_SIZE), str(device))
    return VerityInfo(root_hash=root_hash, salt=sb.salt.hex(), uuid=str(sb.uuid),
                      data_blocks=sb.data_blocks, hash_offset=offset,
                      hash_file=side.hash_file if offset is None else None, signed=signed)


def try_published(client: RegistryClient, store_blob: Callable[[Descriptor, str], Path],
                  wanted: Wanted, dest: Path, mode: str,
                  context: str) -> tuple[Fetched | None, Outcome]:
    """Find an artifact matching ``wanted`` and fetch it verified into ``dest``; the first
    that passes every check wins. Never raises for what the registry holds: a missing,
    unreachable or tampered artifact is reported (stderr, and the outcome) and the
    caller compiles."""
    try:
        found = candidates(client, wanted)
    except OcisquashError as e:
        log.warning("%s: cannot look for a published compile (%s); compiling here", context, e)
        return None, Outcome(mode, problem=f"lookup failed: {e}")
    if not found:
        log.warning("%s: no published compile matches (format %s %s, options %s); "
                    "compiling here", context, wanted.format, wanted.format_version,
                    wanted.options_key[:12])
        return None, Outcome(mode, problem="no matching artifact")
    problem = ""
    for referrer in found:
        digest = referrer.descriptor.digest
        try:
            got = fetch_published(client, store_blob, referrer, wanted, dest)
        except OcisquashError as e:
            problem = f"artifact {digest}: {e}"
            log.warning("%s: published compile %s rejected: %s", context, digest.short, e)
            for p in dest.iterdir() if dest.is_dir() else ():
                p.unlink()
            continue
        return got, Outcome(mode, artifact=str(digest), used=mode == "use")
    log.warning("%s: no published compile passed verification; compiling here", context)
    return None, Outcome(mode, problem=problem)


def push_compiled(result: CompiledImage, to: Reference, options: SourceOptions, *,
                  mount_from: Sequence[str] = ()) -> Published:
    """Publish a compile that is in the cache (``result`` of ``compile_image``, whose
    ``cache_key`` names its entry) to the repository ``to``."""
    from .cache import ImageCache
    from .errors import CacheError
    from .registry.schemes import SchemeHints
    from .registry.upload import Uploader
    from .sources.registry import registry_options

    cache = ImageCache(options.cache_dir)
    entry = cache.get(result.cache_key) if result.cache_key is not None else None
    if entry is None:
        raise CacheError(f"{result.reference} is not in the cache, so there is nothing to push",
                         hint="compile it with the cache (without --no-cache) first")
    uploader = Uploader(to, registry_options(options),
                        hints=SchemeHints.in_cache(options.cache_dir))
    try:
        subject = Descriptor(result.manifest.media_type, result.digest, len(result.manifest.raw))
        return publish_entry(uploader, entry.image, entry.record, subject, result.config.created,
                             mount_from=mount_from)
    finally:
        uploader.transport.close()


def listed(client: RegistryClient, subject: Digest) -> list[dict[str, Any]]:
    """The compiled images published for ``subject``, as ``inspect --json`` lists them
    (what their index entries say; nothing is downloaded or verified)."""
    found, where = find_referrers(client, subject)
    out = []
    for r in found:
        if r.artifact_type not in ARTIFACT_TYPES.values():
            continue
        ann = r.annotations
        try:
            options = json.loads(ann.get(A_OPTIONS, "null"))
        except ValueError:
            options = None
        out.append({"artifact": str(r.descriptor.digest), "artifact_type": r.artifact_type,
                    "format": ann.get(A_FORMAT), "format_version": ann.get(A_VERSION),
                    "options_key": ann.get(A_OPTIONS_KEY), "options": options,
                    "root_hash": ann.get(A_ROOT_HASH), "tool_version": ann.get(A_TOOL),
                    "created": ann.get(CREATED), "listed": where})
    return out
