"""Boot a compiled image as a VM's root disk: QEMU (software emulation), a stock Debian
cloud kernel, and a busybox initramfs built here.

The kernel package is the one pinned in ``.ci/setup`` (``KERNEL_PACKAGE`` and
``KERNEL_VERSION``), which downloads it to ``KERNEL_DEB_DIR``; once Debian's archive no
longer has that build, the one bookworm's ``linux-image-cloud-amd64`` depends on, named in
``KERNEL_DEB_DIR/kernel`` (see :func:`kernel`). From the ``.deb`` we
take ``vmlinuz`` and the modules the boot needs (virtio PCI and block, squashfs,
erofs, overlay, with their dependencies read from each module's ``depends=``), and pack an
initramfs (cpio ``newc``, gzip) whose ``/init``:

1. loads those modules and waits for ``/dev/vda`` (the compiled image);
2. mounts it read-only (``ocisquash_fs``: squashfs, or erofs), puts an overlay with a
   tmpfs upper layer on top, and moves ``/dev``, ``/proc`` and ``/sys`` into it;
3. ``switch_root``s into it and runs the shell command given base64-encoded as
   ``ocisquash_cmd=`` on the kernel command line (the kernel hands unknown
   ``name=value`` words to init as environment), with the initramfs's busybox placed
   in the new root's ``/dev``, so that the image's own tree stays as compiled;
4. prints ``OCISQUASH-EXIT=<status>`` and powers off. Every failure before that prints
   ``OCISQUASH-FAIL=<what>`` and powers off.
"""

from __future__ import annotations

import base64
import gzip
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / ".ci" / "setup"
#: modules the boot loads (with what they depend on)
MODULES = ("virtio_pci", "virtio_blk", "squashfs", "erofs", "overlay")

INIT = r"""#!/bin/busybox sh
B=/bin/busybox
fail() { echo "OCISQUASH-FAIL=$*"; $B poweroff -f; $B sleep 60; }
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
for m in $($B cat /modules); do $B insmod /lib/modules/$m.ko || fail "insmod $m"; done
n=0
while [ ! -b /dev/vda ]; do
  n=$((n + 1)); [ $n -gt 600 ] && fail "no /dev/vda"; $B sleep 0.1
done
$B mkdir -p /lower /rw /newroot
$B mount -t "${ocisquash_fs:-squashfs}" -o ro /dev/vda /lower || fail "mount /dev/vda"
$B mount -t tmpfs tmpfs /rw || fail "tmpfs"
$B mkdir /rw/upper /rw/work
$B mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \
  || fail "overlay"
for d in dev proc sys; do $B mount --move /$d /newroot/$d || fail "move /$d"; done
# busybox picks its applet by the name it is run as: keep the name "busybox"
$B mkdir /newroot/dev/.ocisquash || fail "mkdir"
$B cp /bin/busybox /newroot/dev/.ocisquash/busybox || fail "busybox"
echo "$ocisquash_cmd" | $B base64 -d > /newroot/dev/.ocisquash/cmd || fail "command"
echo "OCISQUASH-BEGIN"
exec $B switch_root /newroot /dev/.ocisquash/busybox sh -c \
  'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; cd /;
   /dev/.ocisquash/busybox sh /dev/.ocisquash/cmd; echo "OCISQUASH-EXIT=$?";
   /dev/.ocisquash/busybox poweroff -f'
"""


def pinned_kernel() -> tuple[str, str, Path]:
    """(package, version, download directory) as ``.ci/setup`` pins them."""
    text = SETUP.read_text()
    values = dict(re.findall(r"^(KERNEL_\w+)=(\S+)$", text, re.M))
    return values["KERNEL_PACKAGE"], values["KERNEL_VERSION"], Path(values["KERNEL_DEB_DIR"])


def kernel() -> tuple[str, str, Path | None]:
    """(package, version, its ``.deb`` or None when not downloaded): the pinned kernel,
    else the one ``.ci/setup`` took when the pinned build had left the archive."""
    package, version, directory = pinned_kernel()
    deb = directory / f"{package}_{version}_amd64.deb"
    if not deb.is_file():
        try:
            chosen = (directory / "kernel").read_text().split()
        except OSError:
            chosen = []
        if len(chosen) == 2:
            other = directory / f"{chosen[0]}_{chosen[1]}_amd64.deb"
            if other.is_file():
                return chosen[0], chosen[1], other
    return package, version, deb if deb.is_file() else None


def tools_missing() -> list[str]:
    return [t for t in ("qemu-system-x86_64", "cpio", "dpkg-deb", "busybox")
            if shutil.which(t) is None]


@dataclass(frozen=True)
class Kernel:
    vmlinuz: Path
    #: module files in load order
    modules: tuple[Path, ...]


def _depends(ko: Path) -> list[str]:
    """The ``depends=`` field of a module's ``.modinfo``."""
    match = re.search(rb"\0depends=([^\0]*)\0", b"\0" + ko.read_bytes())
    return [d for d in match.group(1).decode().split(",") if d] if match else []


def extract_kernel(deb: Path, dest: Path, wanted: tuple[str, ...] = MODULES) -> Kernel:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    (vmlinuz,) = (dest / "boot").glob("vmlinuz-*")
    found = {p.name.removesuffix(".ko"): p for p in (dest / "lib" / "modules").rglob("*.ko")}
    order: list[Path] = []

    def add(name: str) -> None:
        path = found[name.replace("-", "_")] if name.replace("-", "_") in found else found[name]
        if path in order:
            return
        for dep in _depends(path):
            add(dep)
        order.append(path)

    for name in wanted:
        add(name)
    return Kernel(vmlinuz, tuple(order))


def build_initramfs(kernel: Kernel, dest: Path) -> Path:
    """A gzip'd cpio initramfs with busybox, the modules and ``/init``."""
    tree = dest / "initramfs"
    for d in ("bin", "dev", "proc", "sys", "lib/modules"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(shutil.which("busybox") or "/bin/busybox", tree / "bin" / "busybox")
    for ko in kernel.modules:
        shutil.copy2(ko, tree / "lib" / "modules" / ko.name)
    (tree / "modules").write_text(" ".join(ko.name.removesuffix(".ko")
                                           for ko in kernel.modules) + "\n")
    (tree / "init").write_text(INIT)
    (tree / "init").chmod(0o755)
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    archive = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
                             input="\n".join(names).encode() + b"\n", cwd=tree,
                             capture_output=True, check=True).stdout
    out = dest / "initramfs.cpio.gz"
    out.write_bytes(gzip.compress(archive, 6))
    return out


@dataclass(frozen=True)
class Boot:
    #: the command's exit status; None when the boot failed before the command ran
    status: int | None
    #: what the command printed (between the markers)
    output: list[str]
    #: the ``OCISQUASH-FAIL=`` reason, if the initramfs gave up
    failure: str | None
    #: everything the serial console printed
    console: str


def boot(kernel: Kernel, initramfs: Path, disk: Path, command: str, *,
         fs: str = "squashfs", timeout: float = 600) -> Boot:
    """Boot ``disk`` as the root and run ``command`` in it (one QEMU run, software
    emulation). ``timeout`` only stops a hung guest; nothing is judged by time."""
    encoded = base64.b64encode(command.encode()).decode()
    append = (f"console=ttyS0 quiet panic=-1 ocisquash_fs={fs} ocisquash_cmd={encoded}")
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-nodefaults", "-display", "none",
        "-no-reboot", "-m", "256", "-smp", "1", "-serial", "stdio", "-monitor", "none",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(initramfs), "-append", append,
        "-drive", f"file={disk},if=virtio,format=raw,readonly=on",
    ]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout, check=False, env={**os.environ, "LC_ALL": "C"})
    console = proc.stdout.decode("utf-8", "replace").replace("\r", "")
    if proc.returncode != 0:
        raise AssertionError(f"qemu failed ({proc.returncode}): "
                             f"{proc.stderr.decode(errors='replace')}")
    lines = console.split("\n")
    failure = next((ln.split("=", 1)[1] for ln in lines if ln.startswith("OCISQUASH-FAIL=")),
                   None)
    status = next((int(ln.split("=", 1)[1]) for ln in lines
                   if ln.startswith("OCISQUASH-EXIT=")), None)
    output: list[str] = []
    if "OCISQUASH-BEGIN" in lines:
        start = lines.index("OCISQUASH-BEGIN") + 1
        for ln in lines[start:]:
            if ln.startswith("OCISQUASH-EXIT="):
                break
            output.append(ln)
    return Boot(status, output, failure, console)
