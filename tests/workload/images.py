"""The test workload: a small image whose shell and libc are the host's static busybox.

Two layers: the first holds busybox, the directories a runtime mounts over, and an
``/etc/passwd`` without the application's user; the second replaces ``/etc/passwd``
and ``/etc/group`` with ones that name it, so a correct lookup must read the
flattened image (not a layer, not the host).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from imagebuilder import Entry, write_oci_layout

#: Debian's busybox-static installs here.
BUSYBOX = Path("/bin/busybox")
APP_UID, APP_GID, EXTRA_GID = 4321, 5432, 6543
PASSWD = (b"root:x:0:0:root:/root:/bin/sh\n"
          b"# a comment line, as in real files\n"
          b"app:x:4321:5432:The app:/home/app:/bin/sh\n")
GROUP = (b"root:x:0:\n"
         b"appgrp:x:5432:\n"
         b"extra:x:6543:someone,app\n")
APPLETS = ("sh", "id", "pwd", "touch", "cat", "echo", "env", "find", "sha256sum", "test",
           "mount", "ls", "poweroff", "sync", "xargs", "sort", "stat")


def busybox_available() -> bool:
    """Whether the host has a static busybox to put in the image."""
    return BUSYBOX.is_file() and shutil.which("busybox") is not None


def busybox_layers(extra: list[Entry] | None = None) -> list[list[Entry]]:
    """The two layers of the workload image (``extra`` goes into the second)."""
    base: list[Entry] = [Entry(d, "dir", mode=0o755) for d in (
        "bin", "etc", "proc", "dev", "sys", "tmp", "work", "home", "home/app",
        "mnt", "run")]
    # The volume belongs to the app, as a Dockerfile's chown before VOLUME makes it.
    base.append(Entry("data", "dir", mode=0o750, uid=APP_UID, gid=APP_GID))
    base.append(Entry("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755))
    base += [Entry(f"bin/{name}", "symlink", mode=0o777, linkname="busybox")
             for name in APPLETS]
    base.append(Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"))
    base.append(Entry("work/hello.txt", data=b"hello from the image\n"))
    top = [Entry("etc/passwd", data=PASSWD), Entry("etc/group", data=GROUP),
           *(extra or [])]
    return [base, top]


def write_workload(root: Path, config: dict[str, object], extra: list[Entry] | None = None,
                   ) -> str:
    """Write the workload as an OCI layout at ``root``; returns its reference."""
    write_oci_layout(root, busybox_layers(extra), config=config)
    return f"oci:{root}:latest"
