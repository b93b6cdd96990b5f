"""``compile --verity``: the tree goes with the cached image, its options into the cache key,
its files beside ``-o``; judged by veritysetup and openssl."""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from pathlib import Path

import pytest

from ocisquash import cli
from ocisquash.compile import compile_image
from ocisquash.errors import UsageError
from ocisquash.sources.options import SourceOptions
from ocisquash.verity import VerityOptions, sidecar_paths

from ._util import dump, make_key_pair, openssl_verify, veritysetup
from imagebuilder import Entry, write_oci_layout


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image whose squashfs spans a few hundred 4 KiB blocks: two hash levels."""
    rnd = random.Random(21)
    path = tmp_path_factory.mktemp("verity") / "layout"
    write_oci_layout(path, [[
        Entry("etc", "dir", mode=0o755),
        Entry("etc/os-release", data=b"ID=test\n"),
        Entry("data/noise", data=rnd.randbytes(700_000)),
        *(Entry(f"data/small{i}", data=rnd.randbytes(300 + i)) for i in range(30)),
    ]])
    return path


def _compile(layout: Path, out: Path | None, cache: Path, **verity: object) -> object:
    return compile_image(f"oci:{layout}:latest", out,
                         source_options=SourceOptions(cache_dir=cache),
                         verity=VerityOptions(**verity))  # type: ignore[arg-type]


def _roothash(out: Path) -> str:
    return sidecar_paths(out).root_hash.read_text().strip()


def test_compile_verity_passes_veritysetup_and_equals_its_format(layout: Path,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "app.raw"
    result = _compile(layout, out, tmp_path / "cache")
    paths = sidecar_paths(out)
    assert (paths.hash_file.name, paths.root_hash.name) == ("app.verity", "app.roothash")
    assert out.stat().st_size % 4096 == 0
    veritysetup("verify", out, paths.hash_file, _roothash(out))
    fields = dump(paths.hash_file)
    assert int(fields["Hash blocks"]) >= 2  # more than one level
    ref = tmp_path / "ref.verity"
    printed = veritysetup("format", "--salt", fields["Salt"], "--uuid", fields["UUID"],
                          out, ref).stdout
    assert ref.read_bytes() == paths.hash_file.read_bytes()
    assert _roothash(out) in printed
    info = result.verity  # type: ignore[attr-defined]
    assert info.root_hash == _roothash(out) and info.hash_file == paths.hash_file
    assert info.data_blocks == out.stat().st_size // 4096 and not info.signed


def test_salt_and_uuid_follow_the_documented_derivation(layout: Path, tmp_path: Path) -> None:
    a = _compile(layout, tmp_path / "a.sqfs", tmp_path / "c1")
    b = _compile(layout, tmp_path / "b.sqfs", tmp_path / "c2")
    va, vb = a.verity, b.verity  # type: ignore[attr-defined]
    assert (va.root_hash, va.salt, va.uuid) == (vb.root_hash, vb.salt, vb.uuid)
    # The README's words, computed here without ocisquash's helpers.
    options = {"all_root": False, "block_size": 131072, "compression": "zstd", "dedup": True,
               "exportable": False, "fragments": True, "gzip_window": 15, "level": 5,
               "lz4_hc": False, "mkfs_time": None, "xattrs": True, "xz_filters": None}
    record = json.loads(next((tmp_path / "c1" / "images").iterdir()).joinpath(
        "info.json").read_text())
    writer = {k: v for k, v in record["options"].items() if k != "verity"}
    assert set(options) <= set(writer)
    seed = (f"ocisquash dm-verity v1\n{a.digest}\n"  # type: ignore[attr-defined]
            + json.dumps(writer, sort_keys=True, separators=(",", ":")))
    salt = hashlib.sha256(b"ocisquash dm-verity salt\n" + seed.encode()).digest()
    assert va.salt == salt.hex()
    ns = uuid.UUID("6f6b7b3e-2c1d-4d0a-9a57-3c0f5e8d2b61")
    assert va.uuid == str(uuid.uuid5(ns, f"{seed}\n{salt.hex()}"))


def test_cache_hit_places_the_sidecars_and_json_describes_them(layout: Path,
                                                               tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _compile(layout, tmp_path / "first.sqfs", cache)
    out = tmp_path / "again.sqfs"
    status = cli.main(["compile", f"oci:{layout}:latest", "-o", str(out), "--verity",
                       "--cache-dir", str(cache), "--json", "-q"])
    assert status == 0
    assert len(list((cache / "images").iterdir())) == 1
    veritysetup("verify", out, sidecar_paths(out).hash_file, _roothash(out))


def test_json_output(layout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.sqfs"
    assert cli.main(["compile", f"oci:{layout}:latest", "-o", str(out), "--verity",
                     "--cache-dir", str(tmp_path / "cache"), "--json", "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    v = summary["verity"]
    assert v["root_hash"] == _roothash(out) and v["hash_file"] == str(out) + ".verity"
    assert v["data_blocks"] * 4096 == out.stat().st_size == summary["size"]
    fields = dump(sidecar_paths(out).hash_file)
    assert (v["salt"], v["uuid"], v["signed"]) == (fields["Salt"], fields["UUID"], False)


def test_verity_options_are_in_the_cache_key(layout: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    plain = compile_image(f"oci:{layout}:latest", tmp_path / "plain.sqfs",
                          source_options=SourceOptions(cache_dir=cache))
    assert plain.verity is None and not sidecar_paths(tmp_path / "plain.sqfs").hash_file.exists()
    a = _compile(layout, tmp_path / "a.sqfs", cache)
    b = _compile(layout, tmp_path / "b.sqfs", cache, salt=b"\x01\x02")
    c = _compile(layout, tmp_path / "c.sqfs", cache, mode="append")
    assert not any(r.cached for r in (a, b, c))  # type: ignore[attr-defined]
    assert len(list((cache / "images").iterdir())) == 4
    assert b.verity.salt == "0102" and b.verity.root_hash != a.verity.root_hash  # type: ignore[attr-defined]
    # The squashfs is the same in all of them.
    size = (tmp_path / "plain.sqfs").stat().st_size
    for name in ("a.sqfs", "b.sqfs", "c.sqfs"):
        assert (tmp_path / name).read_bytes()[:size] == (tmp_path / "plain.sqfs").read_bytes()


def test_append_mode_reports_the_offset_veritysetup_uses(layout: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "img.sqfs"
    assert cli.main(["compile", f"oci:{layout}:latest", "-o", str(out), "--verity=append",
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    err = capsys.readouterr().err
    offset = int(err.split("--hash-offset=")[1].split(")")[0])
    assert not sidecar_paths(out).hash_file.exists()
    veritysetup("verify", f"--hash-offset={offset}", out, out, _roothash(out))
    assert cli.main(["verify", str(out)]) == 0


def test_signed_compile_verifies_with_openssl(layout: Path, tmp_path: Path) -> None:
    key, cert = make_key_pair(tmp_path, "signer")
    _, other = make_key_pair(tmp_path, "other")
    out = tmp_path / "img.sqfs"
    result = _compile(layout, out, tmp_path / "cache", sign_key=key, sign_cert=cert)
    assert result.verity.signed  # type: ignore[attr-defined]
    content = tmp_path / "ROOTHASH.txt"
    content.write_text(_roothash(out))
    p7s = sidecar_paths(out).signature
    assert openssl_verify(p7s, content, cert).returncode == 0
    assert openssl_verify(p7s, content, other).returncode != 0
    # another certificate is another cache entry, and the signature goes with the key
    key2, cert2 = make_key_pair(tmp_path, "second")
    out2 = tmp_path / "img2.sqfs"
    again = _compile(layout, out2, tmp_path / "cache", sign_key=key2, sign_cert=cert2)
    assert not again.cached  # type: ignore[attr-defined]
    assert openssl_verify(sidecar_paths(out2).signature, content, cert2).returncode == 0


def test_no_cache_writes_the_tree_beside_the_output(layout: Path, tmp_path: Path) -> None:
    out = tmp_path / "img.sqfs"
    result = compile_image(f"oci:{layout}:latest", out, use_cache=False,
                           source_options=SourceOptions(cache_dir=tmp_path / "cache"),
                           verity=VerityOptions())
    assert result.verity is not None
    veritysetup("verify", out, sidecar_paths(out).hash_file, _roothash(out))
    cached = _compile(layout, tmp_path / "cached.sqfs", tmp_path / "cache2")
    assert cached.verity.root_hash == result.verity.root_hash  # type: ignore[attr-defined]


def test_cache_verify_checks_the_verity_files(layout: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    _compile(layout, None, cache)
    assert cli.main(["cache", "--cache-dir", str(cache), "verify"]) == 0
    entry = next((cache / "images").iterdir())
    tree = entry / "image.squashfs.verity"
    tree.chmod(0o644)
    data = bytearray(tree.read_bytes())
    data[4096 + 1] ^= 1
    tree.write_bytes(data)
    capsys.readouterr()
    assert cli.main(["cache", "--cache-dir", str(cache), "verify"]) != 0
    captured = capsys.readouterr()
    assert "does not match its record" in captured.out + captured.err


def test_missing_verity_file_makes_the_entry_rebuild(layout: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _compile(layout, None, cache)
    entry = next((cache / "images").iterdir())
    (entry / "image.squashfs.roothash").unlink()
    again = _compile(layout, tmp_path / "o.sqfs", cache)
    assert not again.cached  # type: ignore[attr-defined]
    veritysetup("verify", tmp_path / "o.sqfs", sidecar_paths(tmp_path / "o.sqfs").hash_file,
                _roothash(tmp_path / "o.sqfs"))


def test_tar_and_streams_are_refused_clearly(layout: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["compile", f"oci:{layout}:latest", "--format", "tar", "-o",
                     str(tmp_path / "o.tar"), "--verity"]) == 2
    assert "--verity needs an image" in capsys.readouterr().err
    assert not (tmp_path / "o.tar").exists()
    with pytest.raises(UsageError, match="a stream has no side"):
        compile_image(f"oci:{layout}:latest", open(tmp_path / "s", "wb"),  # noqa: SIM115
                      verity=VerityOptions(),
                      source_options=SourceOptions(cache_dir=tmp_path / "cache"))


def test_erofs_images_get_a_tree_too(layout: Path, tmp_path: Path) -> None:
    out = tmp_path / "img.erofs"
    result = compile_image(f"oci:{layout}:latest", out, format="erofs",
                           source_options=SourceOptions(cache_dir=tmp_path / "cache"),
                           verity=VerityOptions())
    assert result.verity is not None and out.stat().st_size % 4096 == 0
    veritysetup("verify", out, sidecar_paths(out).hash_file, _roothash(out))


def test_verify_finds_a_tree_appended_to_an_erofs_image(layout: Path, tmp_path: Path) -> None:
    out = tmp_path / "img.erofs"
    result = compile_image(f"oci:{layout}:latest", out, format="erofs",
                           source_options=SourceOptions(cache_dir=tmp_path / "cache"),
                           verity=VerityOptions(mode="append"))
    assert result.verity is not None and result.verity.hash_offset is not None
    offset = result.verity.hash_offset
    veritysetup("verify", f"--hash-offset={offset}", out, out, _roothash(out))
    assert cli.main(["verify", str(out)]) == 0
