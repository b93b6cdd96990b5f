"""Resource limits a hostile image cannot exceed, with their default values, through the CLI:
manifest and config size, layer count, path and link length, xattr size, decompression
ratio. Each refusal is one ``ocisquash:`` line naming the limit; the defaults are the
ones the README's Guarantees section documents.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import zstandard

from ocisquash.registry.client import MANIFEST_LIMIT
from ocisquash.rules import Limits
from ocisquash.sources.oci_layout import MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE
from squashfs._util import require_tool

from .conftest import Site, cli_source_args
from .kit import clean_error_line, run_cli, sha256, write_raw_layout
from .proxy import SlowProxy
from imagebuilder import Entry, make_tar, write_docker_archive, write_oci_layout

ROOT = Path(__file__).resolve().parents[2]
TAR_MEDIA = "application/vnd.oci.image.layer.v1.tar"


def _refused(layout: Path, tmp_path: Path, pattern: str) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "out.squashfs"
    proc = run_cli("compile", f"oci:{layout}:latest", "-o", str(out), "--cache-dir",
                   str(tmp_path / "cache"), "--quiet")
    line = clean_error_line(proc)
    assert re.search(pattern, line), line
    assert not out.exists() and list((tmp_path / "cache" / "images").iterdir()) == []
    return line


def test_registry_manifest_larger_than_4_mib_is_refused(site: Site, slow_proxy: SlowProxy,
                                                        tmp_path: Path) -> None:
    assert MANIFEST_LIMIT == 4 << 20
    huge = json.dumps({"schemaVersion": 2, "layers": [], "pad": "x" * MANIFEST_LIMIT}).encode()
    slow_proxy.add("body", "/manifests/", times=-1, body=huge,
                   headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    proc = run_cli("compile", site.ref("big", slow_proxy.host), "-o", str(tmp_path / "o.sqfs"),
                   *cli_source_args(tmp_path / "cache"))
    line = clean_error_line(proc)
    assert f"larger than the {MANIFEST_LIMIT} bytes" in line, line


def _manifest_of(layers: int) -> bytes:
    def desc(media: str, i: int) -> dict[str, object]:
        return {"mediaType": media, "size": 10, "digest": "sha256:" + f"{i:064x}"}
    return json.dumps({"schemaVersion": 2,
                       "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": desc("application/vnd.oci.image.config.v1+json", 0),
                       "layers": [desc(TAR_MEDIA, i + 1) for i in range(layers)]}).encode()


def test_a_manifest_of_1001_layers_is_refused_before_any_blob_is_fetched(
        site: Site, slow_proxy: SlowProxy, tmp_path: Path) -> None:
    """compile and pull: the manifest alone decides; not even the config is asked for
    (compile used to download all 1001 layers first, and pull had no limit)."""
    slow_proxy.add("body", "/manifests/", times=-1, body=_manifest_of(1001),
                   headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    ref = site.ref("many", slow_proxy.host)
    source_args = [a for a in cli_source_args(tmp_path / "cache") if a != "--force"]
    for command in (["compile", ref, "-o", str(tmp_path / "o.sqfs")], ["pull", ref]):
        proc = run_cli(*command, *source_args)
        line = clean_error_line(proc)
        assert "image has 1001 layers, more than the limit of 1000" in line, line
    assert slow_proxy.requests(path="/blobs/") == []


def test_a_layout_manifest_of_1001_layers_is_refused_before_its_blobs_are_read(
        tmp_path: Path) -> None:
    """No blob of the manifest exists: the layer count is the first thing refused."""
    layout = write_raw_layout(tmp_path / "layout", manifest=_manifest_of(1001))
    for blob in (layout / "blobs" / "sha256").iterdir():
        if blob.read_bytes() != _manifest_of(1001):
            blob.unlink()
    _refused(layout, tmp_path, r"manifest sha256:\w+…?: image has 1001 layers, more than the "
             r"limit of 1000")


def test_layout_manifest_and_config_size_limits(tmp_path: Path) -> None:
    assert (MAX_MANIFEST_SIZE, MAX_CONFIG_SIZE) == (4 << 20, 8 << 20)
    tar = make_tar([Entry("a", data=b"a")])
    pad = " " * (MAX_MANIFEST_SIZE + 1)
    manifest = json.dumps({"schemaVersion": 2, "layers": [], "config": {}}).encode()[:-1] + \
        pad.encode() + b"}"
    _refused(write_raw_layout(tmp_path / "m", manifest=manifest, layers=[tar],
                              layer_media=TAR_MEDIA), tmp_path / "mw",
             r"manifest sha256:\w+ is \d+ bytes, more than the 4194304 allowed")
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [sha256(tar)]}, "pad": "y" * MAX_CONFIG_SIZE}).encode()
    _refused(write_raw_layout(tmp_path / "c", config=config, layers=[tar], layer_media=TAR_MEDIA),
             tmp_path / "cw", r"config sha256:\w+ is \d+ bytes, more than the 8388608 allowed")


def test_more_than_1000_layers_is_refused(tmp_path: Path) -> None:
    n = Limits().max_layers + 1
    assert n == 1001
    layers = [[Entry(f"f{i}", data=b"")] for i in range(n)]
    layout = tmp_path / "layout"
    write_oci_layout(layout, layers, compression="tar")
    _refused(layout, tmp_path, r"1001 layers, more than the limit of 1000")


def test_path_link_and_xattr_limits(tmp_path: Path) -> None:
    lim = Limits()
    assert (lim.max_path_length, lim.max_xattr_size) == (4096, 65536)
    long_path = "/".join(["d" * 200] * 21)  # 4220 bytes
    cases = {
        "path": ([Entry(long_path, data=b"x")], r"path of 4220 bytes is longer than 4096"),
        "link": ([Entry("l", "symlink", linkname="t" * 4096)],
                 r"symlink target of 4096 bytes is longer than 4095"),
        "name": ([Entry("d/" + "n" * 256, data=b"x")], r"file name of 256 bytes is longer than 255"),
        "xattr": ([Entry("f", data=b"x", xattrs={"user.big": b"v" * 65537})],
                  r"user\.big.* 65537 bytes, more than 65536"),
    }
    for name, (entries, pattern) in cases.items():
        layout = tmp_path / name
        write_oci_layout(layout, [entries], compression="gzip")
        line = _refused(layout, tmp_path / f"{name}-work", pattern)
        assert line.startswith("ocisquash: layer sha256:"), line


def test_the_longest_name_and_link_target_linux_allows_are_kept(tmp_path: Path) -> None:
    """255 bytes per name and 4095 per symlink target: unsquashfs extracts both (it
    could not extract the 256-byte names the layer reader used to let through)."""
    name, target = "n" * 255, "/" + "t" * 4094
    layout = tmp_path / "layout"
    write_oci_layout(layout, [[Entry(name, data=b"x"), Entry("l", "symlink", linkname=target),
                               Entry("w" * 255, data=b"w")], [Entry(".wh." + "w" * 255)]],
                     compression="gzip")
    out = tmp_path / "out.squashfs"
    proc = run_cli("compile", f"oci:{layout}:latest", "-o", str(out), "--cache-dir",
                   str(tmp_path / "cache"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    subprocess.run(["unsquashfs", "-d", str(tmp_path / "x"), str(out)], check=True,
                   capture_output=True)
    assert (tmp_path / "x" / name).read_bytes() == b"x"
    assert os.readlink(tmp_path / "x" / "l") == target
    assert not (tmp_path / "x" / ("w" * 255)).exists()


def _zeros_tar_stream(size: int) -> tuple[bytes, bytes, str]:
    """Header, trailer and diff_id of a tar holding one file of ``size`` zero bytes."""
    ti = tarfile.TarInfo("zeros")
    ti.size = size
    head = ti.tobuf(tarfile.PAX_FORMAT)
    tail = bytes((-size) % 512 + 1024)
    h = hashlib.sha256(head)
    zeros = bytes(1 << 20)
    for _ in range(size >> 20):
        h.update(zeros)
    h.update(tail)
    return head, tail, "sha256:" + h.hexdigest()


def test_zstd_bomb_is_refused_by_the_default_ratio_limit(tmp_path: Path) -> None:
    """1.1 GiB of zeros in ~60 KB of zstd frames: past the 1 GiB floor the 10000× ratio trips."""
    lim = Limits()
    assert (lim.max_ratio, lim.ratio_floor) == (10_000, 1 << 30)
    size = (1 << 30) + (128 << 20)
    head, tail, diff_id = _zeros_tar_stream(size)
    cctx = zstandard.ZstdCompressor(level=19)
    frame = cctx.compress(bytes(1 << 20))
    blob = cctx.compress(head) + frame * (size >> 20) + cctx.compress(tail)
    layout = write_raw_layout(tmp_path / "layout", layers=[blob], diff_ids=[diff_id],
                              layer_media="application/vnd.oci.image.layer.v1.tar+zstd")
    _refused(layout, tmp_path, r"expands more than 10000×")


#: Runs the CLI and, at exit, prints the process's peak resident size in KiB to stderr.
_REPORT_PEAK_RSS = """
import atexit, runpy, sys

def report():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                sys.stderr.write("VmHWM " + line.split()[1] + "\\n")

atexit.register(report)
sys.argv[0] = "ocisquash"
runpy.run_module("ocisquash", run_name="__main__", alter_sys=True)
"""


def test_gzip_bomb_is_bounded_by_the_format_and_streams_in_bounded_memory(
        tmp_path: Path) -> None:
    """Deflate cannot expand more than ~1032×, below any ratio limit real layers allow: a
    gzip bomb costs time in proportion to its uncompressed size, never memory or disk."""
    size = 64 << 20
    head, tail, diff_id = _zeros_tar_stream(size)
    member = zlib.compressobj(9, zlib.DEFLATED, 31)
    blob = member.compress(head) + b"".join(member.compress(bytes(1 << 20))
                                             for _ in range(size >> 20))
    blob += member.compress(tail) + member.flush()
    assert size / len(blob) > 1000
    layout = write_raw_layout(tmp_path / "layout", layers=[blob], diff_ids=[diff_id])
    out = tmp_path / "out.squashfs"
    # The peak RSS comes from the child's own VmHWM: wait4's ru_maxrss also counts the
    # pytest process's resident size at fork, which an earlier test in the same process
    # can leave above the limit (it did: 413 MiB, for a compile whose own peak is 66 MiB).
    proc = subprocess.run([sys.executable, "-c", _REPORT_PEAK_RSS, "compile",
                           f"oci:{layout}:latest", "-o", str(out), "--cache-dir",
                           str(tmp_path / "cache"), "--quiet"], stderr=subprocess.PIPE)
    assert proc.returncode == 0, proc.stderr
    peak = int(re.findall(rb"^VmHWM (\d+)$", proc.stderr, re.M)[-1])
    print(f"gzip bomb: {len(blob)} bytes, peak RSS {peak} KiB")
    assert 10 * 1024 < peak < 400 * 1024, f"peak RSS {peak} KiB"
    assert out.stat().st_size < 64 << 10  # the zeros are holes in the squashfs
    listing = subprocess.run(["unsquashfs", "-lls", str(out)], capture_output=True, text=True,
                             check=True).stdout
    assert str(size) in listing


def _compile_a_1_tib_sparse_layer(tmp_path: Path, out: Path, *flags: str) -> None:
    """Compile a layer of one PAX sparse file of 1 TiB ("start", holes, "end") to
    ``out`` in a child process, whose peak RSS must stay under 400 MiB."""
    root = tmp_path / "root"
    root.mkdir()
    with open(root / "big", "wb") as f:
        f.write(b"start")
        f.seek(Limits().max_file_size - 3)
        f.write(b"end")
    tar = subprocess.run(["tar", "-c", "-f", "-", "--sparse", "--format=pax", "-C", str(root),
                          "big"], check=True, capture_output=True).stdout
    (root / "big").unlink()
    assert len(tar) < 64 << 10
    layout = write_raw_layout(tmp_path / "layout", layers=[tar], diff_ids=[sha256(tar)],
                              layer_media=TAR_MEDIA)
    proc = subprocess.run([sys.executable, "-c", _REPORT_PEAK_RSS, "compile",
                           f"oci:{layout}:latest", "-o", str(out), *flags, "--cache-dir",
                           str(tmp_path / "cache"), "--quiet"], stderr=subprocess.PIPE)
    assert proc.returncode == 0, proc.stderr
    peak = int(re.findall(rb"^VmHWM (\d+)$", proc.stderr, re.M)[-1])
    assert peak < 400 * 1024, f"peak RSS {peak} KiB"


def test_a_1_tib_sparse_file_costs_nothing_for_its_holes(tmp_path: Path) -> None:
    """A 10 KB layer declaring a 1 TiB sparse file: its holes become sparse blocks
    without being read as zeros (they were: 1.1 GB of peak RSS and a minute of CPU)."""
    out = tmp_path / "out.squashfs"
    _compile_a_1_tib_sparse_layer(tmp_path, out)
    listing = subprocess.run(["unsquashfs", "-lls", str(out)], capture_output=True, text=True,
                             check=True).stdout
    assert " 1099511627776 " in listing, listing
    assert out.stat().st_size < 1 << 20  # the block list of 8 Mi zero blocks, compressed


def test_a_1_tib_sparse_file_stays_sparse_in_the_tar_output(tmp_path: Path) -> None:
    """The same layer compiled with --format tar: a PAX sparse member of a few KiB,
    which GNU tar lists with its real name and size."""
    out = tmp_path / "out.tar"
    _compile_a_1_tib_sparse_layer(tmp_path, out, "--format", "tar")
    assert out.stat().st_size < 64 << 10
    listing = subprocess.run(["tar", "-t", "-v", "-f", str(out)], capture_output=True,
                             text=True, check=True).stdout
    assert re.search(r" 1099511627776 .* big$", listing, re.M), listing


def test_a_1_tib_sparse_file_is_holes_in_erofs_too(tmp_path: Path) -> None:
    """The same layer compiled to EROFS (lz4hc, the default): the file is chunk-based,
    two 1 MiB chunks and a 4 MiB block map (it was 1 TiB of zeros to compress)."""
    out = tmp_path / "out.erofs"
    _compile_a_1_tib_sparse_layer(tmp_path, out, "--format", "erofs")
    assert out.stat().st_size < 16 << 20
    dump = subprocess.run([require_tool("dump.erofs"), "--path=/big", str(out)],
                          capture_output=True, text=True, check=True).stdout
    assert "Size: 1099511627776" in dump and "Layout: 4" in dump, dump


def test_the_readme_documents_every_default() -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Guarantees"):]
    lim = Limits()
    assert lim.max_sparse_regions == 1_048_576
    for value in ("4 MiB", "8 MiB", f"{lim.max_layers}", "4096", "65536", "10000×", "1 GiB",
                  "10,000,000", "1 TiB", "1,048,576"):
        assert value in section, value


def test_a_compressed_archive_is_held_to_the_ratio_limit(tmp_path: Path) -> None:
    """A docker archive of 1.1 GiB (a member of zeros) in ~60 KB of zstd: it was unpacked
    whole into the cache's tmp/; now it stops past 1 GiB at the 10000× ratio, and the
    zeros it unpacked before were holes."""
    size = (1 << 30) + (128 << 20)
    head, tail, _ = _zeros_tar_stream(size)
    cctx = zstandard.ZstdCompressor(level=19)
    frame = cctx.compress(bytes(1 << 20))
    archive = tmp_path / "bomb.tar.zst"
    with open(archive, "wb") as f:
        f.write(cctx.compress(head))
        for _ in range(size >> 20):
            f.write(frame)
        f.write(cctx.compress(tail))
    assert archive.stat().st_size < 100_000
    proc = run_cli("compile", f"docker-archive:{archive}", "-o", str(tmp_path / "o.sqfs"),
                   "--cache-dir", str(tmp_path / "cache"), "--quiet")
    line = clean_error_line(proc)
    assert re.search(r"docker archive .*bomb\.tar\.zst: archive expands more than 10000×", line), line


def test_a_compressed_archive_keeps_its_zeros_as_holes(tmp_path: Path) -> None:
    """Zero runs of an unpacked archive are holes: the image is the same as from the
    plain archive, whose layer holds zeros between data."""
    data = b"head" + bytes(3 << 20) + b"tail"
    plain = tmp_path / "plain.tar"
    write_docker_archive(plain, [[Entry("z", data=data), Entry("a", data=b"a")]])
    packed = tmp_path / "packed.tar.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    outs = []
    for name in ("plain", "packed"):
        out = tmp_path / f"{name}.sqfs"
        src = plain if name == "plain" else packed
        proc = run_cli("compile", f"docker-archive:{src}", "-o", str(out), "--cache-dir",
                       str(tmp_path / f"cache-{name}"), "--quiet")
        assert proc.returncode == 0, proc.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    extracted = subprocess.run(["unsquashfs", "-cat", str(tmp_path / "packed.sqfs"), "z"],
                               capture_output=True, check=True).stdout
    assert extracted == data
