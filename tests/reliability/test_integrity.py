"""Integrity at rest: ``cache verify`` finds a flipped byte in any blob (layer, config,
manifest) and in any file of a compiled image; ``--repair`` drops what is damaged and the
next compile fetches again and gives the right image."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from .conftest import Site, cli_source_args
from .kit import assert_cache_whole, run_cli


def _flip(path: Path, offset: int) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def _prime(site: Site, cache: Path, out: Path) -> None:
    proc = run_cli("compile", site.ref("big"), "-o", str(out), *cli_source_args(cache))
    assert proc.returncode == 0, proc.stderr


def _blob(cache: Path, digest: str) -> Path:
    return cache / "blobs" / "sha256" / digest.split(":")[1]


@pytest.mark.parametrize("which", ["layer", "config", "manifest"])
def test_flipped_byte_in_a_blob_is_found_and_repaired(site: Site, tmp_path: Path,
                                                      which: str) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out.squashfs"
    _prime(site, cache, out)
    built = site.layouts["big"]
    digest = {"layer": built.layer_digests[1], "config": built.config_digest,
              "manifest": built.manifest_digest}[which]
    path = _blob(cache, digest)
    if not path.exists():
        pytest.skip(f"the {which} is not kept as a blob in this cache layout")
    _flip(path, path.stat().st_size // 2)
    bad = run_cli("cache", "--cache-dir", str(cache), "verify")
    assert bad.returncode == 1
    assert f"blob {digest[:19]}" in bad.stderr and "does not match" in bad.stderr, bad.stderr
    fixed = run_cli("cache", "--cache-dir", str(cache), "verify", "--repair")
    assert fixed.returncode == 0 and "(removed)" in fixed.stderr
    assert not path.exists()
    again = run_cli("compile", site.ref("big"), "-o", str(out), *cli_source_args(cache),
                    "--pull", "always")
    assert again.returncode == 0, again.stderr
    assert out.read_bytes() == site.reference["big"]
    assert path.exists()
    assert_cache_whole(cache)


def test_damaged_blob_used_by_a_build_is_fetched_again(site: Site, tmp_path: Path) -> None:
    """A build that reads a layer damaged in the cache never makes an image from the bad
    bytes: it drops the blob, fetches it again once and gives the reference image."""
    cache, out = tmp_path / "cache", tmp_path / "out.squashfs"
    _prime(site, cache, out)
    damaged = _blob(cache, site.layouts["big"].layer_digests[1])
    _flip(damaged, 1000)
    out.unlink()
    proc = run_cli("compile", site.ref("big"), "-o", str(out), *cli_source_args(cache),
                   "--pull", "always")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == site.reference["big"]
    assert hashlib.sha256(damaged.read_bytes()).hexdigest() == damaged.name
    assert_cache_whole(cache)


@pytest.mark.parametrize("name", ["image.squashfs", "manifest.json", "config.json"])
def test_flipped_byte_in_a_compiled_image_is_found_and_repaired(site: Site, tmp_path: Path,
                                                                name: str) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out.squashfs"
    _prime(site, cache, out)
    (entry,) = (cache / "images").iterdir()
    _flip(entry / name, 77)
    bad = run_cli("cache", "--cache-dir", str(cache), "verify")
    assert bad.returncode == 1 and "compiled image" in bad.stderr, bad.stderr
    assert run_cli("cache", "--cache-dir", str(cache), "verify", "--repair").returncode == 0
    assert not entry.exists()
    again = run_cli("compile", site.ref("big"), "-o", str(out), *cli_source_args(cache), "--json")
    assert again.returncode == 0, again.stderr
    assert '"cached": false' in again.stdout
    assert out.read_bytes() == site.reference["big"]
    assert_cache_whole(cache)


@pytest.mark.parametrize("damage", ["missing", "empty", "short"])
def test_compiled_image_cut_short_is_reported_and_built_again(site: Site, tmp_path: Path,
                                                              damage: str) -> None:
    """What a crash can leave of an entry whose data never reached the disk (or a file
    removed by hand): the entry is never handed out, compile says so and builds it again,
    and ``cache verify`` names it."""
    cache, out = tmp_path / "cache", tmp_path / "out.squashfs"
    _prime(site, cache, out)
    out.unlink()  # it may be a hard link to the entry's image
    (entry,) = (cache / "images").iterdir()
    image = entry / "image.squashfs"
    os.chmod(image, 0o644)
    if damage == "missing":
        image.unlink()
    else:
        os.truncate(image, 0 if damage == "empty" else image.stat().st_size // 2)
    bad = run_cli("cache", "--cache-dir", str(cache), "verify")
    assert bad.returncode == 1, bad.stderr
    assert f"compiled image {entry.name[:12]}: its image.squashfs " in bad.stderr, bad.stderr
    again = run_cli("compile", site.ref("big"), "-o", str(out), *cli_source_args(cache), "--json")
    assert again.returncode == 0, again.stderr
    assert '"cached": false' in again.stdout
    assert f"cache entry {entry.name[:12]} is damaged" in again.stderr, again.stderr
    assert out.read_bytes() == site.reference["big"]
    assert run_cli("cache", "--cache-dir", str(cache), "verify").returncode == 0
    assert_cache_whole(cache)


def test_an_output_written_in_place_never_changes_what_the_cache_hands_out(
        site: Site, tmp_path: Path) -> None:
    """``-o`` may be a hard link to the entry's image. A write through it in place (same
    size; root ignores the 0444 mode) must not make the next compile hand out the
    changed bytes: the entry reads as damaged and is built again."""
    cache, out = tmp_path / "cache", tmp_path / "out.squashfs"
    proc = run_cli("compile", site.ref("big"), "-o", str(out), *cli_source_args(cache), "--json")
    assert proc.returncode == 0, proc.stderr
    (entry,) = (cache / "images").iterdir()
    image = entry / "image.squashfs"
    linked = os.stat(out).st_ino == image.stat().st_ino  # else a reflink or a copy
    os.chmod(out, 0o644)
    with open(out, "r+b") as f:  # same size, one byte changed, as `dd conv=notrunc` would
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0xFF]))
    other = tmp_path / "other.squashfs"
    again = run_cli("compile", site.ref("big"), "-o", str(other), *cli_source_args(cache),
                    "--json")
    assert again.returncode == 0, again.stderr
    assert other.read_bytes() == site.reference["big"]
    if linked:  # the entry's bytes changed with the output's
        assert '"cached": false' in again.stdout
        assert f"cache entry {entry.name[:12]} is damaged" in again.stderr, again.stderr
        assert "written to after it was built" in again.stderr, again.stderr
    else:
        assert '"cached": true' in again.stdout
    assert out.read_bytes() != site.reference["big"]  # the user's file stays theirs
    assert_cache_whole(cache)


def test_verify_tells_a_changed_mtime_from_changed_content(site: Site, tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out.squashfs"
    _prime(site, cache, out)
    out.unlink()
    (entry,) = (cache / "images").iterdir()
    image = entry / "image.squashfs"
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # `touch`
    bad = run_cli("cache", "--cache-dir", str(cache), "verify")
    assert bad.returncode == 1
    assert (f"compiled image {entry.name[:12]}: its image.squashfs was written to after it "
            "was built (its mtime changed); its content still matches its record") in bad.stderr
    _flip(image, 5000)
    bad = run_cli("cache", "--cache-dir", str(cache), "verify")
    assert bad.returncode == 1
    assert "content does not match its record (written to after it was built)" in bad.stderr
    fixed = run_cli("cache", "--cache-dir", str(cache), "verify", "--repair")
    assert fixed.returncode == 0 and "(removed)" in fixed.stderr, fixed.stderr
    assert not entry.exists()


def test_verify_repair_removes_an_entry_cut_short(site: Site, tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out.squashfs"
    _prime(site, cache, out)
    out.unlink()
    (entry,) = (cache / "images").iterdir()
    os.chmod(entry / "image.squashfs", 0o644)
    os.truncate(entry / "image.squashfs", 4096)
    fixed = run_cli("cache", "--cache-dir", str(cache), "verify", "--repair")
    assert fixed.returncode == 0 and "(removed)" in fixed.stderr, fixed.stderr
    assert not entry.exists()


def test_publish_syncs_every_file_before_the_rename(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The files of an entry reach the disk while they are still in the staging directory,
    so the rename never publishes data that a crash could lose."""
    from ocisquash.cache import CacheRecord, ImageCache, entry_key
    from ocisquash.digest import Digest

    cache = ImageCache(tmp_path / "cache")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    config = b"{}"
    manifest = b'{"config": {"digest": "%s"}}' % str(Digest.of(config)).encode()
    key = entry_key(Digest.of(manifest), "v", {})
    with cache.staging() as staged:
        (staged / "image.squashfs").write_bytes(bytes(8192))
        (staged / "manifest.json").write_bytes(manifest)
        (staged / "config.json").write_bytes(config)
        entry = cache.publish(key, staged, CacheRecord(
            reference="", source="", digest=Digest.of(manifest),
            manifest_digest=Digest.of(manifest), config_digest=Digest.of(config),
            platform="", format="squashfs", format_version="v", options={},
            squashfs_size=8192, squashfs_sha256="", files=0, layers=0, layer_bytes=0))
    staging_files = {Path(p).name for p in synced if Path(p).parent == staged}
    assert staging_files >= {"image.squashfs", "manifest.json"}, synced
    assert any(n.startswith(".info.json.") for n in staging_files), synced  # written, renamed
    assert entry.image.stat().st_size == 8192
