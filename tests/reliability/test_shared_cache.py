"""A cache another user could write: refused at start; symlinks and hard links planted in it
are never followed; a rewritten record never hands out another image; locks say what they
wait for and can time out.

The attacks are the ones of issue 28 (items 1, 2, 10 and 13), made by root in the test's own
cache (planting is the same from any user), and by a second user (``setpriv`` to nobody)
where the user matters.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocisquash.cache import ImageCache
from ocisquash.digest import Digest
from ocisquash.errors import CacheError
from ocisquash.store import BlobStore

from .conftest import Site, cli_source_args
from .kit import cache_state, clean_error_line, run_cli
from conftest import NOBODY, require_or_skip, run_ocisquash_as_nobody
from imagebuilder import Entry, write_oci_layout


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return write_oci_layout(tmp_path / "layout", [[
        Entry("etc", "dir"), Entry("etc/hostname", data=b"shared\n"),
        Entry("data", data=b"payload " * 4000)]]).path


def _compile(layout: Path, cache: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("compile", f"oci:{layout}:latest", "-o", str(out), "--force", "--cache-dir",
                   str(cache), "--quiet", *extra)


@pytest.fixture
def secret(tmp_path: Path) -> Iterator[Path]:
    """A root-only file in a root-only directory: what a planted symlink aims at."""
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    path = vault / "secret"
    path.write_bytes(b"root's secret\n")
    os.chmod(path, 0o600)
    yield path


def _untouched(secret: Path) -> None:
    assert secret.read_bytes() == b"root's secret\n"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


# -- item 1 and 13: whose cache it is ---------------------------------------------------------

@pytest.mark.root
def test_cache_of_another_user_is_refused_with_one_line(layout: Path, tmp_path: Path) -> None:
    """Root must not use a cache another user can write: that user could plant anything."""
    require_or_skip(os.geteuid() == 0, "giving a directory to another user needs root")
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chown(cache, NOBODY, NOBODY)
    proc = _compile(layout, cache, tmp_path / "o.squashfs")
    line = clean_error_line(proc)
    assert f"cache directory {cache} belongs to" in line and "not to you" in line, line
    assert "--cache-dir" in proc.stderr  # the hint says what to do
    assert not (tmp_path / "o.squashfs").exists()
    assert list(cache.iterdir()) == []  # nothing created in it


@pytest.mark.parametrize("where", ["", "blobs/partial", "locks"])
def test_cache_writable_by_others_is_refused(layout: Path, tmp_path: Path, where: str) -> None:
    cache = tmp_path / "cache"
    assert _compile(layout, cache, tmp_path / "a.squashfs").returncode == 0
    os.chmod(cache / where, 0o777)
    proc = _compile(layout, cache, tmp_path / "b.squashfs")
    line = clean_error_line(proc)
    assert f"{(cache / where) if where else cache} is writable by its group and others" in line, line
    assert f"chmod go-w {cache / where if where else cache}" in proc.stderr
    os.chmod(cache / where, 0o755)
    assert _compile(layout, cache, tmp_path / "b.squashfs").returncode == 0


def test_new_cache_is_private(layout: Path, tmp_path: Path) -> None:
    old = os.umask(0o002)  # a umask that makes group-writable directories
    try:
        ImageCache(tmp_path / "cache")
    finally:
        os.umask(old)
    for d in [tmp_path / "cache", *(p for p in (tmp_path / "cache").rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


@pytest.mark.root
def test_second_user_on_a_cache_of_the_first_gets_one_line(layout: Path) -> None:
    require_or_skip(os.geteuid() == 0, "switching to an unprivileged user needs root")
    require_or_skip(shutil.which("setpriv") is not None, "setpriv is not installed")
    work = Path(tempfile.mkdtemp(prefix="ocisquash-second-user-"))
    try:
        os.chmod(work, 0o777)
        shutil.copytree(layout, work / "layout")
        subprocess.run(["chmod", "-R", "a+rX", str(work / "layout")], check=True)
        cache = work / "cache"
        assert _compile(work / "layout", cache, work / "root.squashfs").returncode == 0
        os.chmod(cache, 0o755)  # readable by the second user, as a shared ~/.cache may be
        proc = run_ocisquash_as_nobody(
            "compile", f"oci:{work / 'layout'}:latest", "-o", str(work / "user.squashfs"),
            "--cache-dir", str(cache), "--quiet", env={**os.environ, "HOME": str(work)},
            cwd=work)
        line = clean_error_line(proc)
        assert f"cache directory {cache} belongs to root (uid 0), not to you" in line, line
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- item 1: planted symlinks and links -------------------------------------------------------

def test_symlinked_partial_is_not_followed(tmp_path: Path, secret: Path) -> None:
    store = BlobStore(tmp_path / "cache")
    data = b"a blob"
    digest = Digest.of(data)
    part = store.partial_path(digest)
    part.symlink_to(secret)
    with pytest.raises(CacheError, match="is a symlink"):
        store.put_bytes(digest, data)
    _untouched(secret)
    assert not store.has(digest)
    part.unlink()
    store.put_bytes(digest, data)
    assert store.read_bytes(digest) == data


def test_hardlinked_partial_is_refused(tmp_path: Path, secret: Path) -> None:
    store = BlobStore(tmp_path / "cache")
    data = b"a blob"
    digest = Digest.of(data)
    os.link(secret, store.partial_path(digest))
    with pytest.raises(CacheError, match="not a file of this cache"):
        store.put_bytes(digest, data)
    _untouched(secret)


def test_symlinked_lock_files_create_nothing(tmp_path: Path, secret: Path) -> None:
    planted = secret.parent / "created-by-root"
    cache = ImageCache(tmp_path / "cache")
    digest = Digest.of(b"x")
    cache.blobs.partial_path(digest).with_suffix(".lock").symlink_to(planted)
    (tmp_path / "cache" / "locks" / f"{'ab' * 32}.lock").symlink_to(planted)
    with pytest.raises(CacheError, match="is a symlink"):
        cache.blobs.put_bytes(digest, b"x")
    with pytest.raises(CacheError, match="is a symlink"), cache.build_lock("ab" * 32):
        pass
    assert not planted.exists()


def test_lock_files_are_private(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    with cache.build_lock("cd" * 32):
        pass
    cache.blobs.put_bytes(Digest.of(b"y"), b"y")
    locks = [*(tmp_path / "cache" / "locks").iterdir(),
             *(tmp_path / "cache" / "blobs" / "partial").glob("*.lock")]
    assert len(locks) == 2
    for lock in locks:
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600, lock


def test_verify_repair_never_chmods_through_a_symlink(tmp_path: Path, secret: Path) -> None:
    cache = tmp_path / "cache"
    ImageCache(cache)
    planted = cache / "blobs" / "sha256" / ("0" * 64)
    planted.symlink_to(secret)
    proc = run_cli("cache", "--cache-dir", str(cache), "verify", "--repair")
    assert "blob sha256:000000000000: content does not match its digest" in proc.stderr
    assert not planted.is_symlink()
    _untouched(secret)


def test_symlinked_partial_through_a_registry_compile(site: Site, tmp_path: Path,
                                                      secret: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "o.squashfs"
    run_cli("cache", "--cache-dir", str(cache), "ls")
    big = site.big_blob().split(":")[1]
    part = cache / "blobs" / "partial" / f"sha256-{big}.part"
    part.symlink_to(secret)
    proc = run_cli("compile", site.ref("big"), "-o", str(out), *cli_source_args(cache))
    line = clean_error_line(proc)
    assert str(part) in line, line
    _untouched(secret)
    assert not (cache / "blobs" / "sha256" / big).exists()
    part.unlink()
    proc = run_cli("compile", site.ref("big"), "-o", str(out), *cli_source_args(cache))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == site.reference["big"]


# -- item 2: poisoning ------------------------------------------------------------------------

def _json_compile(site: Site, ref: str, cache: Path, out: Path, *extra: str) -> dict[str, object]:
    proc = run_cli("compile", ref, "-o", str(out), "--force", *cli_source_args(cache), "--json",
                   *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _entry_of(cache: Path, digest: str) -> Path:
    for e in (cache / "images").iterdir():
        if json.loads((e / "info.json").read_text())["digest"] == digest:
            return e
    raise AssertionError(f"no entry of {digest}")


def test_rewritten_ref_never_yields_another_image_for_a_digest(site: Site, tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "o.squashfs"
    a = _json_compile(site, site.ref("small-a"), cache, out)
    pinned = f"{site.registry.host}/small-a@{a['digest']}"
    _json_compile(site, pinned, cache, out)
    b = _json_compile(site, site.ref("small-b"), cache, out)
    b_key = _entry_of(cache, str(b["digest"])).name
    # Rewrite every record to point at small-b's entry, and drop small-a's entry.
    shutil.rmtree(_entry_of(cache, str(a["digest"])))
    for ref in (cache / "refs").iterdir():
        ref.write_text(b_key)
    again = _json_compile(site, pinned, cache, out)
    assert again["digest"] == a["digest"]
    assert out.read_bytes() == site.reference["small-a"]
    # --pull never has nothing else to ask: a clean "not in the cache", not small-b.
    shutil.rmtree(_entry_of(cache, str(a["digest"])))
    for ref in (cache / "refs").iterdir():
        ref.write_text(b_key)
    proc = run_cli("compile", pinned, "-o", str(out), "--force", *cli_source_args(cache),
                   "--pull", "never")
    assert "is not in the cache" in clean_error_line(proc)


def _transplant(src: Path, dest: Path) -> None:
    """Replace the files of entry ``dest`` with those of ``src``, times kept."""
    for f in dest.iterdir():
        f.unlink()
    for f in src.iterdir():
        shutil.copy2(f, dest / f.name)


def test_image_replaced_with_its_record_is_noticed(site: Site, tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "o.squashfs"
    a = _json_compile(site, site.ref("small-a"), cache, out)
    b = _json_compile(site, site.ref("small-b"), cache, out)
    entry_a = _entry_of(cache, str(a["digest"]))
    _transplant(_entry_of(cache, str(b["digest"])), entry_a)
    # A careful forger makes the record fit the file it now sits beside.
    info = json.loads((entry_a / "info.json").read_text())
    info["squashfs_ino"] = (entry_a / "image.squashfs").stat().st_ino
    (entry_a / "info.json").write_text(json.dumps(info))
    verify = run_cli("cache", "--cache-dir", str(cache), "verify")
    assert verify.returncode == 1
    assert f"compiled image {entry_a.name[:12]}: its info.json is the record of another image" \
        in verify.stderr, verify.stderr
    proc = run_cli("compile", site.ref("small-a"), "-o", str(out), "--force",
                   *cli_source_args(cache))
    assert proc.returncode == 0, proc.stderr
    assert f"cache entry {entry_a.name[:12]} is damaged" in proc.stderr
    assert out.read_bytes() == site.reference["small-a"]


def test_image_replaced_by_another_file_is_not_handed_out(layout: Path, tmp_path: Path) -> None:
    """Same size, same mtime, other bytes: the inode tells it from the image that was built."""
    cache, out = tmp_path / "cache", tmp_path / "o.squashfs"
    assert _compile(layout, cache, out).returncode == 0
    good = out.read_bytes()
    (entry,) = (cache / "images").iterdir()
    image = entry / "image.squashfs"
    st = image.stat()
    forged = entry / "forged"
    forged.write_bytes(bytes(len(good)))
    os.utime(forged, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(forged, image)
    proc = _compile(layout, cache, out)
    assert proc.returncode == 0, proc.stderr
    assert "another inode" in proc.stderr, proc.stderr
    assert out.read_bytes() == good


def _copied_cache(layout: Path, tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A cache holding the layout's image, copied by ``cp -a`` (every file under a new
    inode, times and modes kept): the copy, its one entry, and the image's bytes."""
    cache, out = tmp_path / "cache", tmp_path / "o.squashfs"
    assert _compile(layout, cache, out).returncode == 0
    copy = tmp_path / "copied"
    subprocess.run(["cp", "-a", str(cache), str(copy)], check=True)
    (entry,) = (copy / "images").iterdir()
    return copy, entry, out.read_bytes()


def test_a_copied_cache_is_hashed_once_then_used(layout: Path, tmp_path: Path) -> None:
    copy, entry, good = _copied_cache(layout, tmp_path)
    out = tmp_path / "o.squashfs"
    # A hit (by reference, with --pull never: no registry to fall back on) hashes the
    # image, finds it whole and records the new inode.
    proc = _compile(layout, copy, out, "--pull", "never", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cached"] is True
    assert "damaged" not in proc.stderr
    assert out.read_bytes() == good
    info = json.loads((entry / "info.json").read_text())
    assert info["squashfs_ino"] == (entry / "image.squashfs").stat().st_ino
    assert stat.S_IMODE((entry / "info.json").stat().st_mode) == 0o444
    verify = run_cli("cache", "--cache-dir", str(copy), "verify")
    assert verify.returncode == 0, verify.stderr


def test_verify_repair_records_a_copied_cache_and_keeps_it(layout: Path,
                                                          tmp_path: Path) -> None:
    copy, entry, _good = _copied_cache(layout, tmp_path)
    found = run_cli("cache", "--cache-dir", str(copy), "verify")
    assert found.returncode == 1
    assert (f"compiled image {entry.name[:12]}: its image.squashfs is another file than its "
            "record says (another inode); its content still matches its record") \
        in found.stderr, found.stderr
    # cache ls leaves it out until it is checked, and says so
    listed = run_cli("cache", "--cache-dir", str(copy), "ls")
    assert listed.returncode == 0 and entry.name[:12] not in listed.stdout
    assert listed.stderr.splitlines() == [
        "ocisquash: 1 compiled image(s) not listed: copied or moved here (their files are "
        "not the ones their records name); a compile that uses one checks it then",
        "hint: 'ocisquash cache verify --repair' checks them all now"]
    fixed = run_cli("cache", "--cache-dir", str(copy), "verify", "--repair")
    assert fixed.returncode == 0 and "(removed)" not in fixed.stderr, fixed.stderr
    assert "1 compiled image(s): 0 problem(s)" in fixed.stdout
    assert run_cli("cache", "--cache-dir", str(copy), "verify").returncode == 0
    assert entry.exists()
    listed = run_cli("cache", "--cache-dir", str(copy), "ls")
    assert entry.name[:12] in listed.stdout and listed.stderr == ""


def test_a_copied_cache_whose_image_changed_is_built_again(layout: Path,
                                                          tmp_path: Path) -> None:
    """Copied, then the copy's image changed with its size and mtime kept: the hash of
    the first lookup tells, and the entry is built again, never handed out."""
    copy, entry, good = _copied_cache(layout, tmp_path)
    out = tmp_path / "o.squashfs"
    image = entry / "image.squashfs"
    st = image.stat()
    os.chmod(image, 0o644)
    with open(image, "r+b") as f:
        f.seek(len(good) // 2)
        byte = f.read(1)
        f.seek(len(good) // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    proc = _compile(layout, copy, out, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cached"] is False
    assert f"cache entry {entry.name[:12]} is damaged" in proc.stderr, proc.stderr
    assert out.read_bytes() == good


@pytest.mark.parametrize("missing", ["config.json", "manifest.json"])
def test_entry_missing_a_file_is_rebuilt(layout: Path, tmp_path: Path, missing: str) -> None:
    cache, out = tmp_path / "cache", tmp_path / "o.squashfs"
    assert _compile(layout, cache, out).returncode == 0
    good = out.read_bytes()
    (entry,) = (cache / "images").iterdir()
    (entry / missing).unlink()
    proc = _compile(layout, cache, out)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"cache entry {entry.name[:12]} is damaged (its {missing} is missing)" in proc.stderr
    assert out.read_bytes() == good
    verify = run_cli("cache", "--cache-dir", str(cache), "verify")
    assert verify.returncode == 0, verify.stderr


# -- item 10: locks ---------------------------------------------------------------------------

def _hold_every_lock(cache: Path, key: str) -> int:
    """Hold the build lock of ``key`` through a read-only descriptor, as an attacker could
    with a lock file they can read."""
    lock = cache / "locks" / f"{key}.lock"
    if not lock.exists():
        lock.touch(mode=0o600)
    fd = os.open(lock, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_lock_timeout_gives_up_with_one_line(layout: Path, tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "o.squashfs"
    assert _compile(layout, cache, out).returncode == 0
    (entry,) = (cache / "images").iterdir()
    key = entry.name
    assert run_cli("cache", "--cache-dir", str(cache), "rm", key[:12]).returncode == 0
    fd = _hold_every_lock(cache, key)
    try:
        proc = _compile(layout, cache, out, "--lock-timeout", "0.5")
    finally:
        os.close(fd)
    line = clean_error_line(proc)
    assert "gave up after waiting 0.5 s for the build of" in line, line
    assert f"held by process {os.getpid()}" in line, line
    assert "--lock-timeout" in proc.stderr  # the hint
    assert cache_state(cache)["tmp"] == []


def test_lock_wait_says_what_it_waits_for(layout: Path, tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "o.squashfs"
    assert _compile(layout, cache, out).returncode == 0
    (entry,) = (cache / "images").iterdir()
    key = entry.name
    assert run_cli("cache", "--cache-dir", str(cache), "rm", key[:12]).returncode == 0
    fd = _hold_every_lock(cache, key)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ocisquash", "compile", f"oci:{layout}:latest", "-o", str(out),
         "--force", "--cache-dir", str(cache), "--quiet"], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        # A guard against a hang, not a measure: the notice comes after about 3 s.
        ready, _, _ = select.select([proc.stderr], [], [], 60)
        first = proc.stderr.readline() if ready else ""
    finally:
        os.close(fd)
    rest = proc.communicate(timeout=120)[1]
    assert first.startswith("ocisquash: warning: waiting for the build of"), first + rest
    assert f"locks/{key}.lock" in first and f"held by process {os.getpid()}" in first, first
    assert proc.returncode == 0, first + rest
