"""dm-verity hash trees for finished images: build them, write them, sign them, check them.

The format is dm-verity's hash format 1, as the kernel's ``verity.rst`` and
cryptsetup's ``veritysetup format`` define it, with the parameters systemd expects:
sha256, 4096-byte data and hash blocks, a 32-byte salt.

* Each data block's digest is ``sha256(salt || block)`` ("the salt is prepended when
  hashing"); a hash block holds 128 digests ("each digest is padded with zeroes to the
  power of two", which a 32-byte digest already is), and the last block of a level is
  padded with zeroes. Each level above hashes the blocks of the level below the same
  way, until a level is one block; the root hash is ``sha256(salt || that block)``.
  An image of one data block has no levels: its root hash is that block's digest.
* The hash device starts with the 512-byte version 1 superblock (``verity\\0\\0``,
  hash type, UUID, algorithm, block sizes, data blocks, salt), then zeroes up to the
  hash block size; "the hash blocks ... are stored a depth at a time (starting from
  the root)".
* Beside ``OUT`` go ``OUT.verity`` (the hash device) and ``OUT.roothash`` (the root hash
  in hex and a newline), and, when signed, ``OUT.roothash.p7s``: a detached PKCS#7
  signature (DER, no signed attributes, no certificates) over the hex root hash without
  a newline, as systemd and the kernel's ``root_hash_sig_key_desc`` take it. As
  systemd looks for them, a name ending in ``.raw`` loses that ending first
  (``disk.raw`` → ``disk.verity``). With ``append`` the hash device goes at the end
  of ``OUT`` instead, at the first 4096-byte boundary after the data, where
  ``veritysetup --hash-offset`` finds it.

The tree is built in one sequential pass over the data (:class:`HashTreeBuilder`); a
level is kept in memory until it outgrows :data:`SPILL_BYTES` and then goes to a
temporary file, so a 10 GiB image (80 MB of level-0 digests) needs a few MiB of memory.

**Deterministic salt and UUID.** Two hosts that compile the same image with the same
options get the same root hash. The salt is ``sha256("ocisquash dm-verity salt\\n" +
seed)`` and the UUID is the name-based (version 5) UUID of ``seed + "\\n" + salt hex`` in
:data:`UUID_NAMESPACE`, where the seed is :func:`verity_seed` of the image's identity
(the platform manifest digest for ``compile``; the image's own sha256 for ``pack``,
which has no manifest) and of the writer options that shaped its bytes. ``--verity-salt``
replaces the salt; the UUID then follows from the salt given.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import struct
import tempfile
import uuid as uuid_mod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal

from .errors import IntegrityError, OutputError, UnsupportedError, UsageError

#: "The block size on a data device in bytes. Each block corresponds to one digest."
DATA_BLOCK_SIZE = 4096
#: "The size of a hash block in bytes."
HASH_BLOCK_SIZE = 4096
ALGORITHM = "sha256"
DIGEST_SIZE = 32
#: Digests per hash block: a 32-byte digest is already a power of two, so no padding.
HASHES_PER_BLOCK = HASH_BLOCK_SIZE // DIGEST_SIZE
#: veritysetup's default salt length; the superblock has room for 256 bytes.
SALT_SIZE = 32
MAX_SALT_SIZE = 256
#: "1 is the current format that should be used for new devices. The salt is
#: prepended when hashing and each digest is padded with zeroes to the power of two."
HASH_TYPE = 1

SIGNATURE = b"verity\0\0"
#: cryptsetup's ``struct verity_sb``: signature, version, hash_type, uuid[16],
#: algorithm[32], data_block_size, hash_block_size, data_blocks (u64), salt_size (u16),
#: 6 bytes padding, salt[256], 168 bytes padding; little-endian, 512 bytes.
_SUPERBLOCK = struct.Struct("<8sII16s32sIIQH6x256s168x")
SUPERBLOCK_SIZE = 512
assert _SUPERBLOCK.size == SUPERBLOCK_SIZE

#: A level held in memory beyond this many bytes moves to a temporary file.
SPILL_BYTES = 8 << 20
#: Bytes read from the image per call while hashing.
_READ_CHUNK = 1 << 20

#: The namespace of the name-based UUIDs of ocisquash's hash trees (a fixed random UUID).
UUID_NAMESPACE = uuid_mod.UUID("6f6b7b3e-2c1d-4d0a-9a57-3c0f5e8d2b61")

VerityMode = Literal["sidecar", "append"]


# -- options and results ---------------------------------------------------------------


@dataclass(frozen=True)
class VerityOptions:
    """What ``--verity`` asks for.

    ``mode`` is ``"sidecar"`` (``OUT.verity`` beside the image) or ``"append"`` (the hash
    device at the end of the image). ``salt`` replaces the derived salt. ``sign_key`` and
    ``sign_cert`` (PEM files, given together) sign the root hash into ``OUT.roothash.p7s``.
    """

    mode: VerityMode = "sidecar"
    salt: bytes | None = None
    sign_key: Path | None = None
    sign_cert: Path | None = None

    def check(self) -> None:
        """Raise :class:`UsageError` for options that do not fit together."""
        if self.mode not in ("sidecar", "append"):
            raise UsageError(f"unknown verity mode {self.mode!r}", hint="use sidecar or append")
        if self.salt is not None and not 0 < len(self.salt) <= MAX_SALT_SIZE:
            raise UsageError(f"a verity salt has 1 to {MAX_SALT_SIZE} bytes, not {len(self.salt)}")
        if (self.sign_key is None) != (self.sign_cert is None):
            raise UsageError("--verity-sign and --verity-cert go together",
                             hint="give the private key and its certificate, both PEM")
        if self.signed:
            _Signer.load(self.sign_key, self.sign_cert)  # a bad key fails before the build

    @property
    def signed(self) -> bool:
        return self.sign_key is not None

    def cache_key(self) -> dict[str, Any]:
        """What of these options changes the files written (the key itself never enters:
        its certificate names it)."""
        key: dict[str, Any] = {"mode": self.mode, "salt": self.salt.hex() if self.salt else None}
        if self.sign_cert is not None:
            key["cert"] = hashlib.sha256(_read_file(self.sign_cert, "certificate")).hexdigest()
        return key


def parse_salt(text: str) -> bytes:
    """``--verity-salt HEX`` as bytes."""
    try:
        salt = bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"--verity-salt {text!r} is not hexadecimal",
                         hint="give the salt as hex digits, e.g. the output of "
                              "'openssl rand -hex 32'") from None
    VerityOptions(salt=salt).check()
    return salt


@dataclass(frozen=True)
class VerityInfo:
    """The hash tree written for an image."""

    root_hash: str  # lower-case hex
    salt: str  # hex
    uuid: str
    data_blocks: int
    #: byte offset of the hash device in the image (append mode), else None
    hash_offset: int | None
    #: the hash device file (sidecar mode), else None
    hash_file: Path | None
    signed: bool

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "root_hash": self.root_hash,
            "salt": self.salt,
            "uuid": self.uuid,
            "data_blocks": self.data_blocks,
        }
        if self.hash_offset is not None:
            out["hash_offset"] = self.hash_offset
        else:
            out["hash_file"] = str(self.hash_file)
        out["signed"] = self.signed
        return out


@dataclass(frozen=True)
class SidecarPaths:
    """Where the files that go with an image live."""

    hash_file: Path  # IMAGE.verity
    root_hash: Path  # IMAGE.roothash
    signature: Path  # IMAGE.roothash.p7s

    def all(self) -> tuple[Path, Path, Path]:
        return (self.hash_file, self.root_hash, self.signature)


def sidecar_paths(image: Path) -> SidecarPaths:
    """The names systemd looks for beside ``image`` (``.raw`` is dropped first)."""
    name = image.name
    stem = name[: -len(".raw")] if name.endswith(".raw") and len(name) > 4 else name
    base = image.with_name(stem)
    return SidecarPaths(
        base.with_name(stem + ".verity"),
        base.with_name(stem + ".roothash"),
        base.with_name(stem + ".roothash.p7s"),
    )


def verity_seed(identity: str, writer_options: dict[str, Any]) -> str:
    """The text the salt and UUID are derived from: what the image is (its manifest
    digest, or its own digest) and the options that shaped its bytes."""
    options = json.dumps(writer_options, sort_keys=True, separators=(",", ":"))
    return f"ocisquash dm-verity v1\n{identity}\n{options}"


def derive_salt(seed: str) -> bytes:
    """The salt of :func:`verity_seed`'s ``seed`` (32 bytes)."""
    return hashlib.sha256(b"ocisquash dm-verity salt\n" + seed.encode()).digest()


def derive_uuid(seed: str, salt: bytes) -> uuid_mod.UUID:
    """The hash device's UUID: name-based on the seed and the salt actually used."""
    return uuid_mod.uuid5(UUID_NAMESPACE, f"{seed}\n{salt.hex()}")


# -- the superblock --------------------------------------------------------------------


@dataclass(frozen=True)
class VeritySuperblock:
    """The 512-byte superblock at the start of a hash device."""

    uuid: uuid_mod.UUID
    data_blocks: int
    salt: bytes
    hash_type: int = HASH_TYPE
    algorithm: str = ALGORITHM
    data_block_size: int = DATA_BLOCK_SIZE
    hash_block_size: int = HASH_BLOCK_SIZE

    def pack(self) -> bytes:
        return _SUPERBLOCK.pack(
            SIGNATURE, 1, self.hash_type, self.uuid.bytes, self.algorithm.encode(),
            self.data_block_size, self.hash_block_size, self.data_blocks,
            len(self.salt), self.salt,
        )

    @classmethod
    def unpack(cls, raw: bytes, context: str) -> VeritySuperblock:
        """Parse a superblock; parameters ocisquash does not hash with are an
        :class:`UnsupportedError`."""
        if len(raw) < SUPERBLOCK_SIZE or raw[:8] != SIGNATURE:
            raise IntegrityError("no dm-verity superblock here", context=context)
        (_, version, hash_type, raw_uuid, algorithm, data_bs, hash_bs, data_blocks,
         salt_size, salt) = _SUPERBLOCK.unpack(raw[:SUPERBLOCK_SIZE])
        name = algorithm.rstrip(b"\0").decode("ascii", "replace")
        if version != 1:
            raise UnsupportedError(f"dm-verity superblock version {version}", context=context)
        if (hash_type, name, data_bs, hash_bs) != (HASH_TYPE, ALGORITHM, DATA_BLOCK_SIZE,
                                                   HASH_BLOCK_SIZE):
            raise UnsupportedError(
                f"hash type {hash_type}, {name}, {data_bs}/{hash_bs}-byte blocks: ocisquash "
                f"checks hash type {HASH_TYPE}, {ALGORITHM}, 4096/4096 only",
                context=context, hint="use 'veritysetup verify' for other parameters")
        if salt_size > MAX_SALT_SIZE:
            raise IntegrityError(f"salt size {salt_size} is larger than 256", context=context)
        if data_blocks == 0:
            raise IntegrityError("the superblock covers no data blocks", context=context)
        return cls(uuid_mod.UUID(bytes=raw_uuid), data_blocks, salt[:salt_size])


def _level_blocks(data_blocks: int) -> list[int]:
    """Blocks per level, from the bottom: level i has ceil(n / 128^(i+1)) blocks, and
    there are as many levels as it takes to reach one block (none for one data block)."""
    sizes = []
    n = data_blocks
    while n > 1:
        n = -(-n // HASHES_PER_BLOCK)
        sizes.append(n)
    return sizes


def hash_device_size(data_blocks: int) -> int:
    """Bytes of the hash device of ``data_blocks`` data blocks, superblock included."""
    return HASH_BLOCK_SIZE * (1 + sum(_level_blocks(data_blocks)))


# -- building the tree -----------------------------------------------------------------


class _Spool:
    """Bytes appended in order: in memory until :data:`SPILL_BYTES`, then a temp file."""

    def __init__(self, spill_dir: str | None) -> None:
        self._buf = bytearray()
        self._file: IO[bytes] | None = None
        self._spill_dir = spill_dir
        self.size = 0

    def append(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._buf += data
        if len(self._buf) > SPILL_BYTES:
            # Lives as long as the tree; closed by close().
            self._file = tempfile.TemporaryFile(  # noqa: SIM115
                dir=self._spill_dir, prefix="ocisquash-verity-")
            self._file.write(self._buf)
            self._buf = bytearray()

    def copy_to(self, out: BinaryIO) -> None:
        if self._file is None:
            out.write(self._buf)
            return
        self._file.flush()
        self._file.seek(0)
        shutil.copyfileobj(self._file, out, _READ_CHUNK)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._buf = bytearray()


class _Level:
    """One level of the tree being built: digests come in, full hash blocks go out."""

    def __init__(self, spill_dir: str | None) -> None:
        self.pending = bytearray()  # digests of the block being filled
        self.blocks = _Spool(spill_dir)
        self.count = 0  # hash blocks stored

    def add(self, digests: bytes, base: Any) -> bytes:
        """Take ``digests``; return the digests of the hash blocks they completed."""
        self.pending += digests
        if len(self.pending) < HASH_BLOCK_SIZE:
            return b""
        full = len(self.pending) - len(self.pending) % HASH_BLOCK_SIZE
        done = bytes(self.pending[:full])
        del self.pending[:full]
        return self._store(done, base)

    def flush(self, base: Any) -> bytes:
        """Pad the block being filled with zeroes and store it."""
        if not self.pending:
            return b""
        block = bytes(self.pending) + bytes(HASH_BLOCK_SIZE - len(self.pending))
        self.pending.clear()
        return self._store(block, base)

    def _store(self, blocks: bytes, base: Any) -> bytes:
        self.blocks.append(blocks)
        self.count += len(blocks) // HASH_BLOCK_SIZE
        return _digests(base, blocks, HASH_BLOCK_SIZE)


def _digests(base: Any, data: bytes | memoryview, block_size: int) -> bytes:
    """``sha256(salt || block)`` of each block of ``data``; ``base`` has the salt in it.
    (hashlib lets other threads run while it hashes a 4 KiB block.)"""
    view = memoryview(data)
    copy = base.copy
    out = []
    for offset in range(0, len(view), block_size):
        h = copy()
        h.update(view[offset:offset + block_size])
        out.append(h.digest())
    return b"".join(out)


class HashTreeBuilder:
    """Builds a hash tree from data fed in order, in bounded memory.

    Feed the data with :meth:`update` (any lengths; the total must end up a multiple of
    4096), then :meth:`finish`. Levels that outgrow :data:`SPILL_BYTES` go to temporary
    files in ``spill_dir``.
    """

    def __init__(self, salt: bytes, *, spill_dir: str | os.PathLike[str] | None = None) -> None:
        if len(salt) > MAX_SALT_SIZE:
            raise UsageError(f"a verity salt has at most {MAX_SALT_SIZE} bytes")
        self.salt = salt
        self._base = hashlib.sha256(salt)
        self._spill_dir = os.fspath(spill_dir) if spill_dir is not None else None
        self._levels: list[_Level] = [_Level(self._spill_dir)]
        self._partial = bytearray()  # the start of a data block not yet complete
        self.data_blocks = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if self._partial:
            need = DATA_BLOCK_SIZE - len(self._partial)
            self._partial += view[:need]
            view = view[need:]
            if len(self._partial) < DATA_BLOCK_SIZE:
                return
            self._add_data(memoryview(bytes(self._partial)))
            self._partial.clear()
        whole = len(view) - len(view) % DATA_BLOCK_SIZE
        if whole:
            self._add_data(view[:whole])
        if whole < len(view):
            self._partial += view[whole:]

    def _add_data(self, blocks: memoryview) -> None:
        self.data_blocks += len(blocks) // DATA_BLOCK_SIZE
        self._push(0, _digests(self._base, blocks, DATA_BLOCK_SIZE))

    def _push(self, level: int, digests: bytes) -> None:
        while digests:
            if level == len(self._levels):
                self._levels.append(_Level(self._spill_dir))
            digests = self._levels[level].add(digests, self._base)
            level += 1

    def finish(self) -> HashTree:
        """Close the levels and compute the root hash."""
        if self._partial:
            raise UsageError(
                f"the data is not a whole number of {DATA_BLOCK_SIZE}-byte blocks "
                f"({len(self._partial)} bytes over)", hint="pad the image to 4096 bytes")
        if self.data_blocks == 0:
            raise UsageError("there is no data to hash")
        levels = self._levels
        if self.data_blocks == 1:
            # cryptsetup uses no hash level at all for one block: the root is its digest.
            root = bytes(levels[0].pending[:DIGEST_SIZE])
            for level in levels:
                level.blocks.close()
            return HashTree(root, self.salt, 1, [])
        i = 0
        while True:
            self._push(i + 1, levels[i].flush(self._base))
            if levels[i].count == 1:
                # The level above holds just this block's digest: that is the root.
                root = bytes(levels[i + 1].pending)
                for extra in levels[i + 1:]:
                    extra.blocks.close()
                kept = levels[: i + 1]
                break
            i += 1
        assert [lv.count for lv in kept] == _level_blocks(self.data_blocks)
        return HashTree(root, self.salt, self.data_blocks, [lv.blocks for lv in kept])


class HashTree:
    """A built tree: the root hash and the levels, ready to be written as a hash device.

    Close it (or use it as a context manager) to drop the temporary files of its levels.
    """

    def __init__(self, root_hash: bytes, salt: bytes, data_blocks: int,
                 levels: list[_Spool]) -> None:
        self.root_hash = root_hash
        self.salt = salt
        self.data_blocks = data_blocks
        self._levels = levels  # bottom first

    @property
    def size(self) -> int:
        """Bytes of the hash device, superblock included."""
        return hash_device_size(self.data_blocks)

    def write(self, out: BinaryIO, device_uuid: uuid_mod.UUID) -> None:
        """Write the hash device at ``out``'s position: superblock, padding, the levels
        from the root down."""
        sb = VeritySuperblock(device_uuid, self.data_blocks, self.salt).pack()
        out.write(sb + bytes(HASH_BLOCK_SIZE - len(sb)))
        for level in reversed(self._levels):
            level.copy_to(out)

    def close(self) -> None:
        for level in self._levels:
            level.close()

    def __enter__(self) -> HashTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hash_image(path: Path | str, salt: bytes, *, data_blocks: int | None = None,
               spill_dir: str | os.PathLike[str] | None = None) -> HashTree:
    """The hash tree of the first ``data_blocks`` blocks of the file at ``path`` (by
    default all of it, which must then be a multiple of 4096 bytes)."""
    builder = HashTreeBuilder(salt, spill_dir=spill_dir)
    with open(path, "rb") as f:
        _sequential(f)
        remaining = None if data_blocks is None else data_blocks * DATA_BLOCK_SIZE
        for chunk in _chunks(f, remaining, str(path)):
            builder.update(chunk)
    return builder.finish()


def _sequential(f: BinaryIO) -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)


def _chunks(f: BinaryIO, remaining: int | None, name: str) -> Iterator[memoryview]:
    """The file's bytes from its position, ``remaining`` of them (None: to EOF)."""
    buf = bytearray(_READ_CHUNK)
    view = memoryview(buf)
    while remaining is None or remaining > 0:
        want = _READ_CHUNK if remaining is None else min(_READ_CHUNK, remaining)
        n = f.readinto(view[:want])  # type: ignore[attr-defined]
        if not n:
            if remaining:
                raise IntegrityError(f"ends {remaining} bytes before the data the hash tree "
                                     "covers", context=name)
            return
        if remaining is not None:
            remaining -= n
        yield view[:n]


# -- writing an image's verity files -----------------------------------------------------


def pad_to_blocks(path: Path) -> int:
    """Pad the file at ``path`` with zeroes to a whole number of 4096-byte blocks; its
    new size."""
    size = path.stat().st_size
    padded = -(-size // DATA_BLOCK_SIZE) * DATA_BLOCK_SIZE
    if padded != size:
        with open(path, "r+b") as f:
            f.truncate(padded)
    return padded


def add_verity(image: Path, options: VerityOptions, seed: str, *,
               sidecars: SidecarPaths | None = None,
               spill_dir: Path | None = None, sync: bool = True) -> VerityInfo:
    """Hash the finished ``image`` and write its verity files.

    ``image`` is padded to 4096 bytes first. In sidecar mode the hash device goes to
    ``sidecars.hash_file``; in append mode to the end of ``image``. The root hash goes
    to ``sidecars.root_hash`` and, when signing, the signature to ``sidecars.signature``;
    a file of these names that this run does not write is removed, so none is left from
    an earlier run. ``sidecars`` defaults to the names beside ``image``. Each file is
    written through a temporary file and a rename, and fsynced unless ``sync`` is false:
    a caller that syncs the files later says so, because on ext4 the first fsync also
    waits for the image's own unwritten data. A large tree spills to temporary files in
    ``spill_dir`` (default: ``image``'s directory).
    """
    options.check()
    paths = sidecars or sidecar_paths(image)
    salt = options.salt if options.salt is not None else derive_salt(seed)
    device_uuid = derive_uuid(seed, salt)
    signer = _Signer.load(options.sign_key, options.sign_cert) if options.signed else None
    try:
        size = pad_to_blocks(image)
    except OSError as e:
        raise OutputError(f"cannot pad the image: {e.strerror}", context=str(image)) from e
    with hash_image(image, salt, spill_dir=spill_dir or image.parent) as tree:
        root = tree.root_hash.hex()
        try:
            if options.mode == "append":
                with open(image, "r+b") as f:
                    f.seek(size)
                    tree.write(f, device_uuid)
                    f.flush()
                    if sync:
                        os.fsync(f.fileno())
            else:
                _write_atomic(paths.hash_file, lambda f: tree.write(f, device_uuid), sync)
            _write_atomic(paths.root_hash, lambda f: f.write(root.encode() + b"\n"), sync)
            if signer is not None:
                signature = signer.sign(root.encode())
                _write_atomic(paths.signature, lambda f: f.write(signature), sync)
        except OSError as e:
            raise OutputError(f"cannot write the hash tree: {e.strerror}",
                              context=str(e.filename or image)) from e
    stale = [paths.hash_file] if options.mode == "append" else []
    if signer is None:
        stale.append(paths.signature)
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return VerityInfo(
        root_hash=root,
        salt=salt.hex(),
        uuid=str(device_uuid),
        data_blocks=size // DATA_BLOCK_SIZE,
        hash_offset=size if options.mode == "append" else None,
        hash_file=paths.hash_file if options.mode == "sidecar" else None,
        signed=signer is not None,
    )


def _write_atomic(path: Path, write: Any, sync: bool) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o644)  # never through the name another user could swap
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def image_digest(path: Path) -> str:
    """``sha256:<hex>`` of the file at ``path`` (the seed of images without a manifest)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        _sequential(f)
        for chunk in _chunks(f, None, str(path)):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


# -- cached entries ------------------------------------------------------------------


def record(info: VerityInfo, image: Path) -> dict[str, Any]:
    """What a cache record keeps of the tree written for ``image``: the ``to_json`` fields
    (the hash file by name) and the sha256 of each verity file, for ``cache verify``."""
    files = {}
    for path in sidecar_paths(image).all():
        if path.exists():
            files[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    fields = info.to_json()
    if info.hash_file is not None:
        fields["hash_file"] = info.hash_file.name
    return {**fields, "files": files}


def from_record(fields: dict[str, Any], image: Path) -> VerityInfo:
    """The :class:`VerityInfo` of a cache record, with the hash file beside ``image``."""
    offset = fields.get("hash_offset")
    return VerityInfo(
        root_hash=str(fields["root_hash"]), salt=str(fields["salt"]), uuid=str(fields["uuid"]),
        data_blocks=int(fields["data_blocks"]),
        hash_offset=int(offset) if offset is not None else None,
        hash_file=sidecar_paths(image).hash_file if offset is None else None,
        signed=bool(fields.get("signed")),
    )


def record_damage(fields: dict[str, Any], image: Path, *, hash_files: bool) -> str | None:
    """What is wrong with the verity files of a cached ``image``: one missing, or (with
    ``hash_files``) one whose content is not what the record says; None when whole."""
    for name, digest in dict(fields.get("files", {})).items():
        path = image.with_name(name)
        try:
            if not path.is_file():
                return f"its {name} is missing"
            if hash_files and hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                return f"its {name} does not match its record"
        except OSError as e:
            return f"its {name} cannot be read: {e.strerror}"
    return None


def place_sidecars(image: Path, dest: Path, place: Any) -> None:
    """Put the verity files of ``image`` beside ``dest`` with ``place(src, dest)``, and
    remove those of ``dest`` that ``image`` has not (left from an earlier output)."""
    for src, target in zip(sidecar_paths(image).all(), sidecar_paths(dest).all(), strict=True):
        if src.exists():
            place(src, target)
        else:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()


# -- signing -----------------------------------------------------------------------------


def _read_file(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read the {what}: {e.strerror}", context=str(path)) from e


def _load_cert(path: Path) -> Any:
    from cryptography import x509

    data = _read_file(path, "certificate")
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise UsageError("not an X.509 certificate (PEM or DER)", context=str(path),
                         hint="give the certificate that goes with the signing key") from None


class _Signer:
    """A private key and the certificate of its public key."""

    def __init__(self, key: Any, cert: Any) -> None:
        self.key = key
        self.cert = cert

    @classmethod
    def load(cls, key_path: Path | None, cert_path: Path | None) -> _Signer:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        assert key_path is not None and cert_path is not None
        data = _read_file(key_path, "signing key")
        try:
            if b"-----BEGIN" in data:
                key = serialization.load_pem_private_key(data, password=None)
            else:
                key = serialization.load_der_private_key(data, password=None)
        except TypeError:
            raise UsageError("the signing key is encrypted", context=str(key_path),
                             hint="give an unencrypted key, e.g. from "
                                  "'openssl pkey -in KEY -out KEY.plain.pem'") from None
        except (ValueError, UnsupportedAlgorithm) as e:
            msg = "not a private key (PEM or DER)"
            if "-----BEGIN CERTIFICATE" in data.decode("latin-1"):
                msg = "this is a certificate, not a private key"
            raise UsageError(msg, context=str(key_path),
                             hint="--verity-sign takes the private key, --verity-cert its "
                                  "certificate") from e
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            kind = type(key).__name__.removeprefix("_").removesuffix("PrivateKey")
            raise UsageError(f"this {kind} key cannot sign PKCS#7 for dm-verity",
                             context=str(key_path),
                             hint="use an RSA or EC key")
        cert = _load_cert(cert_path)
        der = serialization.Encoding.DER
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
            raise UsageError("the certificate does not match the signing key",
                             context=f"{cert_path}, {key_path}",
                             hint="give the certificate issued for this key")
        return cls(key, cert)

    def sign(self, data: bytes) -> bytes:
        """A detached PKCS#7 signature of ``data``: DER, without signed attributes and
        without certificates (the verifier brings its own), as systemd's
        ``openssl smime -sign -nocerts -noattr -binary`` makes it."""
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.serialization import pkcs7

        opts = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.NoAttributes,
                pkcs7.PKCS7Options.NoCerts, pkcs7.PKCS7Options.Binary]
        return (pkcs7.PKCS7SignatureBuilder().set_data(data)
                .add_signer(self.cert, self.key, hashes.SHA256())
                .sign(serialization.Encoding.DER, opts))


def sign_root_hash(root_hash: str, key: Path, cert: Path) -> bytes:
    """The ``.roothash.p7s`` signature of ``root_hash`` (hex) by ``key``, whose
    certificate is ``cert``."""
    return _Signer.load(key, cert).sign(root_hash.encode())


# The few DER shapes a PKCS#7 SignedData needs (RFC 2315 / RFC 5652).
_OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_DIGEST_OIDS = {
    "2.16.840.1.101.3.4.2.1": "SHA256",
    "2.16.840.1.101.3.4.2.2": "SHA384",
    "2.16.840.1.101.3.4.2.3": "SHA512",
    "1.3.14.3.2.26": "SHA1",
}


class _BadDer(Exception):
    pass


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at ``pos``."""
    if pos + 2 > len(data):
        raise _BadDer
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise _BadDer
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise _BadDer
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, start, end, element start) of each element in ``data[start:end]``."""
    out = []
    while start < end:
        tag, s, e = _tlv(data, start)
        out.append((tag, s, e, start))
        start = e
    return out


def _oid(raw: bytes) -> str:
    parts = [raw[0] // 40, raw[0] % 40] if raw else []
    value = 0
    for b in raw[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def check_signature(signature: bytes, root_hash: str, cert_path: Path, *,
                    context: str = "") -> None:
    """Check that ``signature`` (a detached PKCS#7, DER) signs ``root_hash`` (hex) with the
    key of the certificate at ``cert_path``; :class:`IntegrityError` if it does not."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    cert = _load_cert(cert_path)
    content = root_hash.encode()
    try:
        _, s, e = _tlv(signature, 0)
        info = _children(signature, s, e)
        if len(info) < 2 or _oid(signature[info[0][1]:info[0][2]]) != _OID_SIGNED_DATA:
            raise _BadDer
        _, s, e = _tlv(signature, info[1][1])  # [0] EXPLICIT SignedData
        signed_data = _children(signature, s, e)
        signer_infos = signed_data[-1]
        if signer_infos[0] != 0x31:
            raise _BadDer
        signers = _children(signature, signer_infos[1], signer_infos[2])
    except (_BadDer, IndexError):
        raise IntegrityError("the signature is not a PKCS#7 SignedData (DER)",
                             context=context) from None
    issuer = cert.issuer.public_bytes()
    for _, s, e, _ in signers:
        try:
            fields = _children(signature, s, e)
            sid = fields[1]
            sid_fields = _children(signature, sid[1], sid[2])
            serial = int.from_bytes(signature[sid_fields[1][1]:sid_fields[1][2]], "big",
                                    signed=True)
            if signature[sid_fields[0][3]:sid_fields[0][2]] != issuer or \
                    serial != cert.serial_number:
                continue  # made by another certificate
            digest_alg = _children(signature, fields[2][1], fields[2][2])[0]
            name = _DIGEST_OIDS.get(_oid(signature[digest_alg[1]:digest_alg[2]]))
            if name is None:
                raise IntegrityError("the signature uses a digest ocisquash does not know",
                                     context=context)
            algorithm = getattr(hashes, name)()
            rest = fields[3:]
            signed = content
            if rest[0][0] == 0xA0:  # signed attributes: they are what was signed
                attrs = rest[0]
                signed = b"\x31" + signature[attrs[3] + 1:attrs[2]]
                h = hashes.Hash(algorithm)
                h.update(content)
                if _message_digest(signature, attrs) != h.finalize():
                    raise _not_signed(root_hash, context)
                rest = rest[1:]
            sig = signature[rest[1][1]:rest[1][2]]
        except (_BadDer, IndexError):
            raise IntegrityError("the signature is not a PKCS#7 SignedData (DER)",
                                 context=context) from None
        key = cert.public_key()
        try:
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(sig, signed, padding.PKCS1v15(), algorithm)
            elif isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(sig, signed, ec.ECDSA(algorithm))
            else:
                raise UnsupportedError("ocisquash checks RSA and EC signatures only",
                                       context=str(cert_path))
        except InvalidSignature:
            raise _not_signed(root_hash, context) from None
        return
    raise IntegrityError("the signature was not made with this certificate's key",
                         context=context, hint=f"check with the certificate that signed it, "
                                               f"not {cert_path}")


def _not_signed(root_hash: str, context: str) -> IntegrityError:
    return IntegrityError(f"the signature does not sign root hash {root_hash}", context=context,
                          hint="the image or its root hash was changed after it was signed")


def _message_digest(data: bytes, attrs: tuple[int, int, int, int]) -> bytes | None:
    for _, s, e, _ in _children(data, attrs[1], attrs[2]):
        attr = _children(data, s, e)
        if _oid(data[attr[0][1]:attr[0][2]]) == _OID_MESSAGE_DIGEST:
            values = _children(data, attr[1][1], attr[1][2])
            return data[values[0][1]:values[0][2]]
    return None


# -- checking an image against its tree ------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    """What :func:`verify_image` checked."""

    image: Path
    root_hash: str
    data_blocks: int
    hash_offset: int | None
    hash_file: Path | None
    signature_checked: bool


def _image_size(head: bytes) -> int | None:
    """The bytes a squashfs or EROFS image says it uses, from its first 2 KiB."""
    from .erofs import format as erofs
    from .squashfs import format as squashfs

    if squashfs.has_magic(head) and len(head) >= 48:
        return int.from_bytes(head[40:48], "little")  # "bytes used"
    sb = head[erofs.SUPER_OFFSET:erofs.SUPER_OFFSET + 40]
    if erofs.has_magic(head) and len(sb) == 40:
        # "blkszbits" at 12, "blocks" (u32, "used for statfs") at 36
        return int.from_bytes(sb[36:40], "little") << sb[12]
    return None


def find_appended_tree(image: Path) -> int | None:
    """The offset of a hash device appended to a squashfs or EROFS ``image`` (the size
    the image says it uses, rounded up to 4096), or None when there is none there."""
    try:
        with open(image, "rb") as f:
            used = _image_size(f.read(2048))
            if used is None:
                return None
            offset = -(-used // DATA_BLOCK_SIZE) * DATA_BLOCK_SIZE
            f.seek(offset)
            if f.read(len(SIGNATURE)) != SIGNATURE:
                return None
            return offset
    except OSError:
        return None


def verify_image(image: Path, *, root_hash: str | None = None, hash_offset: int | None = None,
                 cert: Path | None = None) -> VerifyResult:
    """Check ``image`` against its hash tree, as ``veritysetup verify`` does.

    The tree is ``IMAGE.verity`` if it exists, else the one appended to the image (at
    ``hash_offset``, or found after the squashfs or EROFS data). The root hash is ``root_hash``
    (hex), else ``IMAGE.roothash``. With ``cert``, ``IMAGE.roothash.p7s`` must sign that
    root hash with the certificate's key. The first block that does not match is an
    :class:`IntegrityError` naming it and its byte offset.
    """
    image = Path(image)
    name = str(image)
    paths = sidecar_paths(image)
    if not image.is_file():
        raise UsageError("no such image file", context=name)
    if root_hash is None:
        try:
            root_hash = paths.root_hash.read_text().strip()
        except OSError:
            raise UsageError(f"no root hash: {paths.root_hash} is missing",
                             context=name, hint="give it with --root-hash HEX") from None
    root_hash = root_hash.strip().lower()
    try:
        expected = bytes.fromhex(root_hash)
    except ValueError:
        expected = b""
    if len(expected) != DIGEST_SIZE:
        raise UsageError(f"{root_hash!r} is not a sha256 root hash (64 hex digits)",
                         context=name)
    hash_file: Path | None = None
    if hash_offset is None and paths.hash_file.exists():
        hash_file = paths.hash_file
        hash_offset_used = 0
    else:
        if hash_offset is None:
            hash_offset = find_appended_tree(image)
        if hash_offset is None:
            raise UsageError(f"no hash tree: {paths.hash_file} is missing and none is "
                             "appended to the image", context=name,
                             hint="give --hash-offset if the tree is elsewhere in the image")
        hash_offset_used = hash_offset
    device = hash_file or image
    signature_checked = False
    if cert is not None:
        try:
            signature = paths.signature.read_bytes()
        except OSError:
            raise IntegrityError(f"{paths.signature} is missing", context=name,
                                 hint="the image was not signed, or its signature was "
                                      "not kept beside it") from None
        check_signature(signature, root_hash, cert, context=str(paths.signature))
        signature_checked = True
    with open(image, "rb") as data, open(device, "rb") as hashes:
        hashes.seek(hash_offset_used)
        sb = VeritySuperblock.unpack(hashes.read(SUPERBLOCK_SIZE), str(device))
        n = sb.data_blocks
        image_size = os.fstat(data.fileno()).st_size
        if hash_file is not None and image_size != n * DATA_BLOCK_SIZE:
            raise IntegrityError(f"the image has {image_size} bytes, its hash tree covers "
                                 f"{n * DATA_BLOCK_SIZE}", context=name)
        if hash_file is None and hash_offset_used < n * DATA_BLOCK_SIZE:
            raise IntegrityError("the appended hash tree overlaps the data it covers",
                                 context=name)
        _Checker(sb, data, hashes, hash_offset_used, name, str(device)).run(expected)
    return VerifyResult(image, root_hash, n, None if hash_file else hash_offset_used,
                        hash_file, signature_checked)


class _Checker:
    """Recomputes a tree level by level against the stored one (bottom up, as cryptsetup
    does), so the first bad data block is the one named."""

    def __init__(self, sb: VeritySuperblock, data: BinaryIO, hashes: BinaryIO, offset: int,
                 name: str, device: str) -> None:
        self.sb = sb
        self.data = data
        self.hashes = hashes
        self.name = name
        self.device = device
        self.base = hashlib.sha256(sb.salt)
        sizes = _level_blocks(sb.data_blocks)
        # Levels are stored root first after the superblock's block.
        starts = []
        position = offset + HASH_BLOCK_SIZE
        for size in reversed(sizes):
            starts.append(position)
            position += size * HASH_BLOCK_SIZE
        self.levels = list(zip(reversed(starts), sizes, strict=True))  # bottom first

    def run(self, expected_root: bytes) -> None:
        sb = self.sb
        if not self.levels:
            self.data.seek(0)
            root = _digests(self.base, _read_exactly(self.data, DATA_BLOCK_SIZE, self.name),
                            DATA_BLOCK_SIZE)
        else:
            self.data.seek(0)
            self._check_level(self.data, 0, sb.data_blocks, self.levels[0][0], data=True)
            for below, above in zip(self.levels, self.levels[1:], strict=False):
                self.hashes.seek(below[0])
                self._check_level(self.hashes, below[0], below[1], above[0], data=False)
            top_start, _ = self.levels[-1]
            self.hashes.seek(top_start)
            root = _digests(self.base, _read_exactly(self.hashes, HASH_BLOCK_SIZE, self.device),
                            HASH_BLOCK_SIZE)
        if not hmac.compare_digest(root, expected_root):
            raise IntegrityError(
                f"the hash tree gives root hash {root.hex()}, not {expected_root.hex()}",
                context=self.name,
                hint="the image's hash tree or its root hash is not the one it was made with")

    def _check_level(self, source: BinaryIO, source_start: int, blocks: int,
                     stored_start: int, *, data: bool) -> None:
        """Hash ``blocks`` blocks read from ``source`` and compare them with the digests
        stored at ``stored_start``, then check that the level's last block is padded
        with zeroes."""
        stored = open(self.device, "rb")  # noqa: SIM115 (closed below)
        try:
            stored.seek(stored_start)
            per_read = _READ_CHUNK // DATA_BLOCK_SIZE
            done = 0
            while done < blocks:
                count = min(per_read, blocks - done)
                chunk = _read_exactly(source, count * DATA_BLOCK_SIZE,
                                      self.name if data else self.device)
                got = _digests(self.base, chunk, DATA_BLOCK_SIZE)
                want = _read_exactly(stored, count * DIGEST_SIZE, self.device)
                if got != want:
                    first = next(i for i in range(count)
                                 if got[i * DIGEST_SIZE:(i + 1) * DIGEST_SIZE]
                                 != want[i * DIGEST_SIZE:(i + 1) * DIGEST_SIZE])
                    block = done + first
                    if data:
                        raise IntegrityError(
                            f"data block {block} (byte offset {block * DATA_BLOCK_SIZE}) "
                            "does not match its hash", context=self.name,
                            hint="the image was changed after its hash tree was made")
                    offset = source_start + block * HASH_BLOCK_SIZE
                    raise IntegrityError(
                        f"hash block at byte offset {offset} does not match its hash",
                        context=self.device,
                        hint="the hash tree was changed after it was made")
                done += count
            tail = (-blocks * DIGEST_SIZE) % HASH_BLOCK_SIZE
            if tail and any(_read_exactly(stored, tail, self.device)):
                raise IntegrityError(
                    f"the padding at byte offset {stored.tell() - tail} is not zero",
                    context=self.device, hint="the hash tree was changed after it was made")
        finally:
            stored.close()


def _read_exactly(f: BinaryIO, n: int, name: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise IntegrityError("ends before the data its hash tree covers", context=name)
    return data
