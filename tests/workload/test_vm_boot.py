"""A compiled image (squashfs, and EROFS) boots as a VM's root disk: QEMU (``-accel tcg``), a stock Debian
cloud kernel and a busybox initramfs (``vm.py``). The guest's kernel is the judge: it
mounts the image from ``/dev/vda``, an overlay makes it writable, and a full read of
every file inside the guest must match what ``unsquashfs`` reads on the host. A
truncated or corrupted image must not pass.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ocisquash.compile import compile_image
from ocisquash.sources.options import SourceOptions
from ocisquash.squashfs.options import Compression, WriterOptions

from . import vm
from .images import busybox_available, write_workload
from conftest import require_or_skip
from imagebuilder import Entry

#: The compressors the stock kernel mounts (CONFIG_SQUASHFS_{ZLIB,XZ,LZ4,LZO,ZSTD}=y).
COMPRESSORS = ["zstd", "gzip", "xz", "lz4", "lzo"]

#: Every entry's mode and owner, then every file's digest (names have no spaces).
FULL_READ = (
    "find / -xdev -exec stat -c 'S %A %u/%g %n' {} + || exit 10\n"
    "find / -xdev -type f | xargs sha256sum || exit 11\n"
)
#: Mount points: the guest sees the mounted filesystem's root there, not the image's
#: directory (the files under them are not the image's either, and -xdev skips them).
MOUNT_POINTS = {"/", "/dev", "/proc", "/sys"}


def _extra_entries() -> list[Entry]:
    """More than the workload's few files: blocks, a fragment, zeros, owners, links."""
    rnd = hashlib.sha256(b"seed").digest() * (700_000 // 32)
    return [
        Entry("data/random.bin", data=rnd, mode=0o600, uid=1000, gid=1000),
        Entry("data/zeros.bin", data=bytes(1 << 20)),
        # Zero chunks: holes in EROFS (chunk-based files, Linux 5.15+), in a small file
        # and in one large and mostly holes, chunk-based in a compressed image too.
        Entry("data/holey.bin", data=b"a" * 5000 + bytes(3 << 20) + b"b" * 100),
        Entry("data/sparse.bin", data=rnd[:70000] + bytes(18 << 20) + b"end"),
        Entry("data/text.txt", data=b"line\n" * 5000, mode=0o444),
        Entry("data/hard.txt", "hardlink", linkname="data/text.txt"),
        Entry("opt/deep/er/file", data=b"deep\n", mode=0o4755),
        Entry("opt/link", "symlink", mode=0o777, linkname="deep/er/file"),
    ]


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> tuple[vm.Kernel, Path]:
    missing = vm.tools_missing()
    require_or_skip(not missing, f"not installed: {', '.join(missing)} (run .ci/setup)")
    require_or_skip(busybox_available(), "busybox-static is not installed")
    package, version, deb = vm.kernel()
    require_or_skip(deb is not None, f"{package} {version} is not downloaded (run .ci/setup)")
    assert deb is not None
    work = tmp_path_factory.mktemp("vm")
    kernel = vm.extract_kernel(deb, work / "kernel")
    return kernel, vm.build_initramfs(kernel, work)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> str:
    require_or_skip(busybox_available(), "busybox-static is not installed")
    return write_workload(tmp_path_factory.mktemp("layout") / "oci", {"Cmd": ["/bin/sh"]},
                          extra=_extra_entries())


def _compile(ref: str, out: Path, compressor: str) -> Path:
    compile_image(ref, out, writer_options=WriterOptions(compression=Compression(compressor)),
                  source_options=SourceOptions(cache_dir=out.parent / "cache"))
    return out


def host_view(image: Path, work: Path) -> tuple[set[str], dict[str, str]]:
    """What unsquashfs reads: ``S mode uid/gid path`` of every entry but the mount
    points, and each regular file's sha256."""
    listing = subprocess.run(["unsquashfs", "-lln", str(image)], capture_output=True,
                             text=True, check=True).stdout
    entries = set()
    for line in listing.splitlines():
        m = re.match(r"^(\S{10}) (\d+)/(\d+) .*? squashfs-root(\S*)(?: -> .*)?$", line)
        if m:
            path = m.group(4) or "/"
            if path not in MOUNT_POINTS:
                entries.add(f"S {m.group(1)} {m.group(2)}/{m.group(3)} {path}")
    tree = work / "unsquashfs"
    subprocess.run(["unsquashfs", "-no-xattrs", "-d", str(tree), str(image)],
                   capture_output=True, check=True)
    digests = {}
    for p in tree.rglob("*"):
        if p.is_file() and not p.is_symlink():
            digests["/" + str(p.relative_to(tree))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return entries, digests


def guest_view(lines: list[str]) -> tuple[set[str], dict[str, str]]:
    entries = {ln for ln in lines if ln.startswith("S ")
               and ln.rsplit(" ", 1)[1] not in MOUNT_POINTS}
    digests = {}
    for ln in lines:
        m = re.match(r"^([0-9a-f]{64})  (/\S*)$", ln)
        if m:
            digests[m.group(2)] = m.group(1)
    return entries, digests


@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_the_kernel_boots_the_image_and_reads_every_file_as_the_host_does(
        guest: tuple[vm.Kernel, Path], layout: str, tmp_path: Path, compressor: str) -> None:
    kernel, initramfs = guest
    image = _compile(layout, tmp_path / f"{compressor}.squashfs", compressor)
    result = vm.boot(kernel, initramfs, image, FULL_READ)
    assert result.failure is None and result.status == 0, result.console[-3000:]
    entries, digests = host_view(image, tmp_path)
    got_entries, got_digests = guest_view(result.output)
    # the comparison covers the image, not an empty listing
    assert {"/bin/busybox", "/data/random.bin", "/data/zeros.bin", "/opt/deep/er/file",
            "/etc/passwd"} <= set(digests)
    assert got_digests == digests
    assert got_entries == entries


# The compressors the guest's 6.1 kernel reads (deflate needs 6.6, zstd 6.10).
@pytest.mark.parametrize("compression", ["none", "lz4hc"])
def test_the_kernel_boots_the_erofs_image_and_reads_the_same_tree(
        guest: tuple[vm.Kernel, Path], layout: str, tmp_path: Path, compression: str) -> None:
    from ocisquash.erofs import ErofsOptions
    from ocisquash.erofs.options import ErofsCompression

    kernel, initramfs = guest
    image = tmp_path / "img.erofs"
    compile_image(layout, image, format="erofs",
                  writer_options=ErofsOptions(compression=ErofsCompression(compression)),
                  source_options=SourceOptions(cache_dir=tmp_path / "cache"))
    result = vm.boot(kernel, initramfs, image, FULL_READ, fs="erofs")
    assert result.failure is None and result.status == 0, result.console[-3000:]
    # the same image compiled to squashfs, read by unsquashfs: the same tree
    entries, digests = host_view(_compile(layout, tmp_path / "img.squashfs", "zstd"), tmp_path)
    got_entries, got_digests = guest_view(result.output)
    assert {"/data/random.bin", "/data/holey.bin", "/data/sparse.bin"} <= set(digests)
    assert got_digests == digests
    assert got_entries == entries


def test_the_guest_runs_the_command_on_a_writable_overlay_and_reports_its_status(
        guest: tuple[vm.Kernel, Path], layout: str, tmp_path: Path) -> None:
    kernel, initramfs = guest
    image = _compile(layout, tmp_path / "img.squashfs", "zstd")
    result = vm.boot(kernel, initramfs, image,
                     "cat /work/hello.txt; echo new > /work/new.txt; cat /work/new.txt; "
                     "grep -c ' / overlay ' /proc/mounts; exit 3")
    assert result.failure is None, result.console[-3000:]
    assert result.status == 3
    assert result.output == ["hello from the image", "new", "1"]


def test_a_truncated_image_does_not_boot(guest: tuple[vm.Kernel, Path], layout: str,
                                         tmp_path: Path) -> None:
    kernel, initramfs = guest
    image = _compile(layout, tmp_path / "img.squashfs", "zstd")
    size = image.stat().st_size
    with open(image, "r+b") as f:
        f.truncate(size // 2 // 4096 * 4096)
    result = vm.boot(kernel, initramfs, image, FULL_READ)
    assert result.failure == "mount /dev/vda", result.console[-3000:]
    assert result.status is None


def test_a_corrupted_image_fails_the_full_read(guest: tuple[vm.Kernel, Path], layout: str,
                                               tmp_path: Path) -> None:
    kernel, initramfs = guest
    image = _compile(layout, tmp_path / "img.squashfs", "zstd")
    _entries, digests = host_view(image, tmp_path)
    # Overwrite bytes of the data blocks (they start after the superblock; the busybox
    # binary fills most of them), leaving the metadata at the end intact.
    data = bytearray(image.read_bytes())
    at = len(data) // 4
    data[at:at + 256] = b"\xff" * 256
    broken = tmp_path / "broken.squashfs"
    broken.write_bytes(data)
    result = vm.boot(kernel, initramfs, broken, FULL_READ)
    assert result.failure is None, result.console[-3000:]  # it mounts: only data is bad
    _got_entries, got_digests = guest_view(result.output)
    assert result.status != 0 or got_digests != digests


def test_boot_needs_the_pinned_kernel_or_its_successor_in_ci() -> None:
    # The pin is one place (.ci/setup); the test set-up must name a package that exists,
    # and have it downloaded, or (once the archive dropped that build) the current one.
    package, version, directory = vm.pinned_kernel()
    assert re.fullmatch(r"linux-image-[\d.]+-\d+-cloud-amd64", package)
    assert re.fullmatch(r"[\d.]+-\d+", version)
    chosen, chosen_version, deb = vm.kernel()
    assert re.fullmatch(r"linux-image-[\d.]+-\d+-cloud-amd64", chosen)
    assert re.fullmatch(r"[\d.]+-\d+", chosen_version)
    require_or_skip(deb is not None or not os.environ.get("CI"),
                    f"{package} {version} is not in {directory} (run .ci/setup)")
    assert shutil.which("qemu-system-x86_64") is not None or not os.environ.get("CI")
