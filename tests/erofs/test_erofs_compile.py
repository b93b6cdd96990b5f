"""``compile --format erofs``: the kernel mounts what the squashfs compile shows; the
cache keeps the formats apart; every local source kind works."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from compile.test_compile import rule_layers, tree_of
from ocisquash.compile import compile_image
from ocisquash.erofs import ErofsCompression, ErofsOptions
from ocisquash.errors import UsageError
from ocisquash.sources.options import SourceOptions
from squashfs._util import diff_snapshots, mounted, snapshot

from ._util import dump_super, erofs_mounted, fsck, require_erofs_features
from conftest import require_or_skip
from imagebuilder import write_docker_archive, write_oci_layout

NONE = ErofsOptions(compression=ErofsCompression.NONE)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "ocisquash", *args], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def rules_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "layout"
    write_oci_layout(path, rule_layers(), compression="gzip")
    return path


def test_compile_erofs_mounts_as_the_squashfs_compile(rules_image: Path,
                                                      tmp_path: Path) -> None:
    cache = SourceOptions(cache_dir=tmp_path / "cache")
    ref = f"oci:{rules_image}:latest"
    sq = compile_image(ref, tmp_path / "o.squashfs", source_options=cache)
    er = compile_image(ref, tmp_path / "o.erofs", format="erofs", writer_options=NONE,
                       source_options=cache)
    assert (sq.format, er.format) == ("squashfs", "erofs")
    assert not er.cached  # the format is part of the cache key
    fsck(tmp_path / "o.erofs")
    with mounted(tmp_path / "o.squashfs", tmp_path / "s") as s, \
            erofs_mounted(tmp_path / "o.erofs", tmp_path / "e") as e:
        assert diff_snapshots(snapshot(s), snapshot(e)) == []
        ours = tree_of(e)
        assert ours == tree_of(s)
    # The rules really were exercised (whiteouts, opaque dirs, hard links, capabilities).
    assert "etc/gone" not in ours and "opt/sub" not in ours
    assert ours["bin/tool-link"][1] == 0o4755
    xattrs = ours["bin/ping"][7]
    assert isinstance(xattrs, tuple) and xattrs[0][0] == "security.capability"


def test_compile_with_fragments_and_a_metabox_mounts_as_the_squashfs_compile(
        rules_image: Path, tmp_path: Path) -> None:
    require_erofs_features("metabox", since="6.17")
    ref = f"oci:{rules_image}:latest"
    sq = tmp_path / "o.squashfs"
    compile_image(ref, sq, source_options=SourceOptions(cache_dir=tmp_path / "c1"))
    out = tmp_path / "o.erofs"
    proc = _cli("compile", ref, "-o", str(out), "--format", "erofs", "--erofs-fragments",
                "--erofs-metabox", "--cache-dir", str(tmp_path / "c2"), "--json")
    assert json.loads(proc.stdout)["format"] == "erofs"
    plain = compile_image(ref, tmp_path / "p.erofs", format="erofs",
                          writer_options=ErofsOptions(fragments=True),
                          source_options=SourceOptions(cache_dir=tmp_path / "c2"))
    assert not plain.cached  # the metabox is part of the cache key
    with mounted(sq, tmp_path / "s") as s, erofs_mounted(out, tmp_path / "e") as e:
        assert diff_snapshots(snapshot(s), snapshot(e)) == []
        assert tree_of(e) == tree_of(s)


def test_compile_erofs_matches_umoci_unpack(rules_image: Path, tmp_path: Path) -> None:
    require_or_skip(shutil.which("umoci") is not None, "umoci is not installed")
    out = tmp_path / "o.erofs"
    _cli("compile", f"oci:{rules_image}:latest", "-o", str(out), "--format", "erofs",
         "-c", "none", "--cache-dir", str(tmp_path / "cache"), "--quiet")
    subprocess.run(["umoci", "unpack", "--image", f"{rules_image}:latest",
                    str(tmp_path / "bundle")], check=True, capture_output=True)
    with erofs_mounted(out, tmp_path / "e") as e:
        assert tree_of(e) == tree_of(tmp_path / "bundle" / "rootfs")


def test_erofs_cache_entry_json_and_cache_ls(rules_image: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ref = f"oci:{rules_image}:latest"
    first = json.loads(_cli("compile", ref, "-o", str(tmp_path / "a.erofs"), "--format",
                            "erofs", "-c", "none", "--cache-dir", str(cache), "--json").stdout)
    second = json.loads(_cli("compile", ref, "-o", str(tmp_path / "b.erofs"), "--format",
                             "erofs", "-c", "none", "--cache-dir", str(cache),
                             "--json").stdout)
    assert (first["format"], first["cached"]) == ("erofs", False)
    assert (second["format"], second["cached"]) == ("erofs", True)
    assert "erofs" in first["stats"]
    assert "sha256" not in first["stats"]["erofs"]  # the writer's digest is not a figure
    assert (tmp_path / "a.erofs").read_bytes() == (tmp_path / "b.erofs").read_bytes()
    assert dump_super(tmp_path / "a.erofs")["Filesystem magic number"] == "0xE0F5E1E2"
    _cli("compile", ref, "-o", str(tmp_path / "c.squashfs"), "--cache-dir", str(cache),
         "--quiet")
    listing = _cli("cache", "--cache-dir", str(cache), "ls").stdout.splitlines()
    assert sorted(line.split()[6] for line in listing) == ["erofs", "squashfs"]
    entries = json.loads(_cli("cache", "--cache-dir", str(cache), "ls", "--json").stdout)
    assert sorted(e["format"] for e in entries["images"]) == ["erofs", "squashfs"]


def test_uncached_erofs_is_byte_identical_to_the_cached_one(rules_image: Path,
                                                            tmp_path: Path) -> None:
    ref = f"oci:{rules_image}:latest"
    opts = SourceOptions(cache_dir=tmp_path / "cache")
    a = compile_image(ref, tmp_path / "a.erofs", format="erofs", writer_options=NONE,
                      source_options=opts)
    b = compile_image(ref, tmp_path / "b.erofs", format="erofs", use_cache=False,
                      writer_options=ErofsOptions(compression=ErofsCompression.NONE, workers=1),
                      source_options=opts)
    assert (a.format, b.format) == ("erofs", "erofs")
    assert (tmp_path / "a.erofs").read_bytes() == (tmp_path / "b.erofs").read_bytes()


def test_squashfs_options_with_erofs_format_are_refused(rules_image: Path,
                                                        tmp_path: Path) -> None:
    from ocisquash.squashfs import WriterOptions

    with pytest.raises(UsageError, match="squashfs writer options given for EROFS"):
        compile_image(f"oci:{rules_image}:latest", tmp_path / "x.erofs", format="erofs",
                      writer_options=WriterOptions(), use_cache=False,
                      source_options=SourceOptions(cache_dir=tmp_path / "cache"))


def test_every_local_source_kind_compiles_to_erofs(rules_image: Path, tmp_path: Path) -> None:
    docker = tmp_path / "docker.tar"
    write_docker_archive(docker, rule_layers())
    oci_tar = tmp_path / "oci.tar"
    with tarfile.open(oci_tar, "w") as tar:
        tar.add(rules_image, arcname=".")
    opts = SourceOptions(cache_dir=tmp_path / "cache")
    trees = []
    for i, ref in enumerate((f"oci:{rules_image}:latest", f"oci-archive:{oci_tar}:latest",
                             f"docker-archive:{docker}")):
        out = tmp_path / f"{i}.erofs"
        compile_image(ref, out, format="erofs", writer_options=NONE, source_options=opts)
        with erofs_mounted(out, tmp_path / f"m{i}") as m:
            trees.append(tree_of(m))
    assert len(trees[0]) > 15
    assert trees[0] == trees[1] == trees[2]
    assert os.path.getsize(tmp_path / "0.erofs") > 0


def test_erofs_entries_record_the_digest_of_their_image(rules_image: Path,
                                                        tmp_path: Path) -> None:
    """An EROFS compile records the sha256 its writer read while finishing (or, with a
    verity tree added after, the file's as it is then): ``cache verify`` rehashes each
    image and finds it as recorded."""
    cache = tmp_path / "cache"
    ref = f"oci:{rules_image}:latest"
    for out, extra in (("a.erofs", []), ("b.erofs", ["-c", "none"]),
                       ("c.erofs", ["--verity"]),
                       # the metabox: the superblock is written last, then hashed
                       ("d.erofs", ["--erofs-fragments", "--erofs-metabox"])):
        _cli("compile", ref, "-o", str(tmp_path / out), "--format", "erofs",
             "--cache-dir", str(cache), "--quiet", *extra)
    entries = sorted((cache / "images").iterdir())
    assert len(entries) == 4
    for entry in entries:
        record = json.loads((entry / "info.json").read_text())
        image = (entry / "image.squashfs").read_bytes()
        assert hashlib.sha256(image).hexdigest() == record["squashfs_sha256"]
    proc = subprocess.run([sys.executable, "-m", "ocisquash", "cache", "verify",
                           "--cache-dir", str(cache)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
