"""``ocisquash pack --verity`` and ``ocisquash verify``, judged by veritysetup and openssl."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from ocisquash import cli
from ocisquash.errors import IntegrityError, UsageError
from ocisquash.pack import pack_image
from ocisquash.squashfs import WriterOptions
from ocisquash.verity import VerityOptions, sidecar_paths, verify_image

from ._util import dump, make_key_pair, openssl_verify, veritysetup
from conftest import require_or_skip

OPTIONS = WriterOptions(mkfs_time=0)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    rnd = random.Random(1)
    (src / "big").write_bytes(rnd.randbytes(300_000))  # whole data blocks
    for i in range(20):  # small files: fragments
        (src / "etc" / f"f{i}").write_bytes(rnd.randbytes(500 + i))
    return src


def _pack(tree: Path, out: Path, **verity: object) -> Path:
    info = pack_image(tree, out, OPTIONS, verity=VerityOptions(**verity)).verity  # type: ignore[arg-type]
    assert info is not None
    return out


def _roothash(out: Path) -> str:
    text = sidecar_paths(out).root_hash.read_text()
    assert text.endswith("\n") and len(text) == 65
    return text.strip()


def _flipped(out: Path, offset: int, dest: Path) -> Path:
    data = bytearray(out.read_bytes())
    data[offset] ^= 0x01
    dest.write_bytes(data)
    return dest


def _places(out: Path) -> dict[str, int]:
    """A byte in each part of the squashfs image: superblock, a data block, a fragment
    block, the tables (from the superblock and the fragment table, gzip metadata)."""
    raw = out.read_bytes()
    (inode_table, _directory_table, fragment_table) = struct.unpack_from("<QQQ", raw, 64)
    pointer = struct.unpack_from("<Q", raw, fragment_table)[0]
    header = struct.unpack_from("<H", raw, pointer)[0]
    entries = raw[pointer + 2:pointer + 2 + (header & 0x7FFF)]
    if not header & 0x8000:
        entries = zlib.decompress(entries)
    fragment_start = struct.unpack_from("<Q", entries, 0)[0]
    return {"superblock": 20, "data": 96 + 5000, "fragment": fragment_start + 10,
            "tables": inode_table + 3}


def test_veritysetup_verifies_the_tree_and_dump_shows_its_parameters(
        tree: Path, tmp_path: Path) -> None:
    out = _pack(tree, tmp_path / "img.sqfs")
    paths = sidecar_paths(out)
    assert paths.hash_file == tmp_path / "img.sqfs.verity"
    veritysetup("verify", out, paths.hash_file, _roothash(out))
    fields = dump(paths.hash_file)
    assert out.stat().st_size % 4096 == 0
    assert fields["Data blocks"] == str(out.stat().st_size // 4096)
    assert (fields["Hash type"], fields["Hash algorithm"]) == ("1", "sha256")
    assert fields["Data block size"] == fields["Hash block size"] == "4096"
    assert len(fields["Salt"]) == 64


def test_sidecar_equals_veritysetup_format_with_the_same_salt_and_uuid(
        tree: Path, tmp_path: Path) -> None:
    out = _pack(tree, tmp_path / "img.sqfs")
    fields = dump(sidecar_paths(out).hash_file)
    ref = tmp_path / "ref.verity"
    printed = veritysetup("format", "--salt", fields["Salt"], "--uuid", fields["UUID"],
                          out, ref).stdout
    assert ref.read_bytes() == sidecar_paths(out).hash_file.read_bytes()
    assert _roothash(out) in printed


@pytest.mark.parametrize("part", ["superblock", "data", "fragment", "tables"])
def test_one_flipped_byte_fails_veritysetup_and_verify(tree: Path, tmp_path: Path,
                                                         part: str) -> None:
    out = _pack(tree, tmp_path / "img.sqfs")
    offset = _places(out)[part]
    bad = _flipped(out, offset, tmp_path / "bad.sqfs")
    shutil.copyfile(sidecar_paths(out).hash_file, sidecar_paths(bad).hash_file)
    root = _roothash(out)
    veritysetup("verify", out, sidecar_paths(out).hash_file, root)
    result = veritysetup("verify", bad, sidecar_paths(bad).hash_file, root, check=False)
    assert result.returncode != 0, result
    block = offset // 4096
    with pytest.raises(IntegrityError,
                       match=rf"data block {block} \(byte offset {block * 4096}\)"):
        verify_image(bad, root_hash=root)


def test_verify_command_names_the_first_bad_block(tree: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = _pack(tree, tmp_path / "img.sqfs")
    assert cli.main(["verify", str(out)]) == 0
    assert _roothash(out) in capsys.readouterr().out
    data = bytearray(out.read_bytes())
    data[4096 * 3 + 7] ^= 0xFF
    data[4096 * 5] ^= 0xFF
    out.write_bytes(data)
    assert cli.main(["verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ocisquash: ") and "data block 3 (byte offset 12288)" in err
    assert "Traceback" not in err


def test_verify_with_another_root_hash_fails(tree: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = _pack(tree, tmp_path / "img.sqfs")
    assert cli.main(["verify", str(out), "--root-hash", "ab" * 32]) == 1
    assert f"gives root hash {_roothash(out)}, not {'ab' * 32}" in capsys.readouterr().err


def test_a_changed_hash_tree_is_named(tree: Path, tmp_path: Path) -> None:
    out = _pack(tree, tmp_path / "img.sqfs")
    hash_file = sidecar_paths(out).hash_file
    data = bytearray(hash_file.read_bytes())
    data[-1] ^= 1  # the zero padding after the last digest
    hash_file.write_bytes(data)
    assert veritysetup("verify", out, hash_file, _roothash(out), check=False).returncode != 0
    with pytest.raises(IntegrityError, match="padding"):
        verify_image(out)


def test_append_mode_is_found_by_veritysetup_hash_offset(tree: Path, tmp_path: Path) -> None:
    plain = _pack(tree, tmp_path / "plain.sqfs")
    out = _pack(tree, tmp_path / "img.raw", mode="append")
    paths = sidecar_paths(out)
    assert paths.root_hash == tmp_path / "img.roothash"  # systemd drops ".raw"
    assert not paths.hash_file.exists()
    size = plain.stat().st_size
    assert out.read_bytes()[:size] == plain.read_bytes()
    # The same image and options give the same root hash, sidecar or appended.
    assert _roothash(out) == _roothash(plain)
    veritysetup("verify", f"--hash-offset={size}", out, out, _roothash(out))
    assert dump(out, f"--hash-offset={size}")["Data blocks"] == str(size // 4096)
    assert verify_image(out).hash_offset == size
    bad = _flipped(out, 200, tmp_path / "bad.raw")
    assert veritysetup("verify", f"--hash-offset={size}", bad, bad, _roothash(out),
                       check=False).returncode != 0


def test_root_hash_is_deterministic_and_salt_override_is_used(tree: Path,
                                                              tmp_path: Path) -> None:
    a = _pack(tree, tmp_path / "a.sqfs")
    b = _pack(tree, tmp_path / "b.sqfs")
    assert _roothash(a) == _roothash(b)
    assert sidecar_paths(a).hash_file.read_bytes() == sidecar_paths(b).hash_file.read_bytes()
    c = _pack(tree, tmp_path / "c.sqfs", salt=bytes.fromhex("c0ffee"))
    assert dump(sidecar_paths(c).hash_file)["Salt"] == "c0ffee"
    assert _roothash(c) != _roothash(a)
    veritysetup("verify", c, sidecar_paths(c).hash_file, _roothash(c))


def test_pack_json_carries_the_verity_fields(tree: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "img.sqfs"
    assert cli.main(["pack", str(tree), str(out), "--verity=append", "--json",
                     "--mkfs-time", "0"]) == 0
    info = json.loads(capsys.readouterr().out)["verity"]
    assert info["root_hash"] == _roothash(out)
    assert info["hash_offset"] % 4096 == 0 and info["data_blocks"] * 4096 == info["hash_offset"]
    assert info["signed"] is False and "hash_file" not in info
    fields = dump(out, f"--hash-offset={info['hash_offset']}")
    assert (fields["Salt"], fields["UUID"]) == (info["salt"], info["uuid"])


def test_verity_flags_need_verity(tree: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pack", str(tree), str(tmp_path / "o"), "--verity-salt", "00"]) == 2
    assert "ocisquash: --verity-salt needs --verity" in capsys.readouterr().err
    with pytest.raises(UsageError, match="1 to 256 bytes"):
        VerityOptions(salt=bytes(257)).check()


# -- signing ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_signature_verifies_with_openssl_and_fails_with_another_cert(
        tree: Path, tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    key, cert = make_key_pair(tmp_path, "signer", kind)
    _, other = make_key_pair(tmp_path, "other", kind)
    out = _pack(tree, tmp_path / "img.sqfs", sign_key=key, sign_cert=cert)
    content = tmp_path / "ROOTHASH.txt"
    content.write_text(_roothash(out))  # no newline
    p7s = sidecar_paths(out).signature
    good = openssl_verify(p7s, content, cert)
    assert good.returncode == 0, good.stderr
    assert openssl_verify(p7s, content, other).returncode != 0
    content.write_text("0" * 64)
    assert openssl_verify(p7s, content, cert).returncode != 0
    # ocisquash verify --cert agrees
    assert cli.main(["verify", str(out), "--cert", str(cert)]) == 0
    assert "signature good" in capsys.readouterr().out
    assert cli.main(["verify", str(out), "--cert", str(other)]) == 1
    assert "not made with this certificate's key" in capsys.readouterr().err


def test_signature_from_openssl_smime_with_attributes_is_checked(tree: Path,
                                                                  tmp_path: Path) -> None:
    key, cert = make_key_pair(tmp_path, "signer")
    out = _pack(tree, tmp_path / "img.sqfs")
    content = tmp_path / "rh.txt"
    content.write_text(_roothash(out))
    p7s = sidecar_paths(out).signature
    subprocess.run(["openssl", "smime", "-sign", "-binary", "-in", str(content), "-inkey",
                    str(key), "-signer", str(cert), "-outform", "DER", "-out", str(p7s)],
                   check=True)
    verify_image(out, cert=cert)
    content.write_text("1" * 64)
    subprocess.run(["openssl", "smime", "-sign", "-binary", "-in", str(content), "-inkey",
                    str(key), "-signer", str(cert), "-outform", "DER", "-out", str(p7s)],
                   check=True)
    with pytest.raises(IntegrityError, match="does not sign root hash"):
        verify_image(out, cert=cert)


def test_unsigned_rerun_removes_an_old_signature(tree: Path, tmp_path: Path) -> None:
    key, cert = make_key_pair(tmp_path, "signer")
    out = _pack(tree, tmp_path / "img.sqfs", sign_key=key, sign_cert=cert)
    assert sidecar_paths(out).signature.exists()
    _pack(tree, out)
    assert not sidecar_paths(out).signature.exists()


def test_bad_keys_and_certificates_are_one_clear_error(tree: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    key, cert = make_key_pair(tmp_path, "signer")
    other_key, other_cert = make_key_pair(tmp_path, "other")
    ed_key, ed_cert = make_key_pair(tmp_path, "ed", "ed25519")
    out = tmp_path / "img.sqfs"
    cases = [
        ([key, other_cert], "the certificate does not match the signing key"),
        ([cert, cert], "this is a certificate, not a private key"),
        ([key, key], "not an X.509 certificate"),
        ([tmp_path / "missing.pem", cert], "cannot read the signing key"),
        ([ed_key, ed_cert], "use an RSA or EC key"),
    ]
    for (k, c), message in cases:
        status = cli.main(["pack", str(tree), str(out), "--verity", "--verity-sign", str(k),
                           "--verity-cert", str(c)])
        err = capsys.readouterr().err
        assert status == 2, err
        assert message in err and "Traceback" not in err
        assert err.startswith("ocisquash: ")
        assert not out.exists()  # refused before anything was built
    assert other_key.exists()


# -- the kernel --------------------------------------------------------------------------


def _kernel_has_verity() -> bool:
    if shutil.which("dmsetup") is None:
        return False
    result = subprocess.run(["dmsetup", "targets"], capture_output=True, text=True)
    return result.returncode == 0 and any(
        line.split()[:1] == ["verity"] for line in result.stdout.splitlines())


def test_kernel_opens_and_mounts_the_verity_device(tree: Path, tmp_path: Path) -> None:
    if not _kernel_has_verity():
        # The only test allowed to skip in CI: it needs a kernel feature, not a tool.
        pytest.skip("missing kernel feature: device-mapper's verity target "
                    "('dmsetup targets' does not list verity)")
    require_or_skip(os.geteuid() == 0, "opening a device-mapper device needs root")
    out = _pack(tree, tmp_path / "img.sqfs")
    name = f"ocisquash-test-{os.getpid()}"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    veritysetup("open", out, name, sidecar_paths(out).hash_file, _roothash(out))
    try:
        subprocess.run(["mount", "-t", "squashfs", "-o", "ro", f"/dev/mapper/{name}",
                        str(mnt)], check=True)
        try:
            assert (mnt / "big").read_bytes() == (tree / "big").read_bytes()
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        veritysetup("close", name)


@pytest.mark.parametrize("compression", ["gzip", "xz", "zstd", "lz4", "lzo"])
def test_every_compressor_gets_a_tree_veritysetup_accepts(tree: Path, tmp_path: Path,
                                                          compression: str) -> None:
    from ocisquash.squashfs.options import Compression

    out = tmp_path / "img.sqfs"
    options = WriterOptions(mkfs_time=0, compression=Compression(compression))
    info = pack_image(tree, out, options, verity=VerityOptions()).verity
    assert info is not None and out.stat().st_size == info.data_blocks * 4096
    veritysetup("verify", out, sidecar_paths(out).hash_file, _roothash(out))
