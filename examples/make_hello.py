"""Rebuild examples/hello/layout, the small two-layer OCI image the README compiles.

    python examples/make_hello.py

Layer 1 is a tiny root filesystem; layer 2 updates it the way image builders do:
a whiteout, an opaque directory, a symlink and a file capability (layer 1
holds a hardlink: tar hardlinks point within their own layer), so
that compiling the example shows every layer rule at work.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from imagebuilder import Entry, write_oci_layout  # noqa: E402

FILES = HERE / "hello" / "files"
# security.capability value for cap_net_raw+ep (VFS_CAP_REVISION_2).
CAP_NET_RAW = bytes.fromhex("0000000220000000000000000000000000000000")


def main() -> None:
    text = {p.name: p.read_bytes() for p in FILES.iterdir()}
    base = [
        Entry("bin", "dir", mode=0o755),
        Entry("bin/hello", data=text["hello.sh"], mode=0o755),
        Entry("bin/hi", "hardlink", linkname="bin/hello"),
        Entry("etc", "dir", mode=0o755),
        Entry("etc/motd", data=text["motd"]),
        Entry("etc/os-release", data=text["os-release"]),
        Entry("etc/old.conf", data=b"obsolete = true\n"),
        Entry("var", "dir", mode=0o755),
        Entry("var/cache", "dir", mode=0o755),
        Entry("var/cache/stale-1", data=b"stale\n"),
        Entry("var/cache/stale-2", data=b"stale\n"),
        Entry("tmp", "dir", mode=0o1777),
        Entry("dev", "dir", mode=0o755),
        Entry("dev/null", "char", mode=0o666, devmajor=1, devminor=3),
        Entry("usr", "dir", mode=0o755),
        Entry("usr/share", "dir", mode=0o755),
        Entry("usr/share/doc", "dir", mode=0o755),
        Entry("usr/share/doc/README", data=text["README"]),
    ]
    update = [
        Entry("etc/.wh.old.conf"),
        Entry("var/cache", "dir", mode=0o755),
        Entry("var/cache/.wh..wh..opq"),
        Entry("var/cache/fresh", data=b"fresh\n"),
        Entry("bin/ping", data=text["ping.sh"], mode=0o755, xattrs={"security.capability": CAP_NET_RAW}),
        Entry("bin/sh", "symlink", linkname="hello", mode=0o777),
        Entry("home", "dir", mode=0o755),
        Entry("home/user", "dir", mode=0o700, uid=1000, gid=1000),
        Entry("home/user/.profile", data=b"export PS1='$ '\n", uid=1000, gid=1000),
    ]
    out = HERE / "hello" / "layout"
    shutil.rmtree(out, ignore_errors=True)
    built = write_oci_layout(
        out, [base, update], compression=["gzip", "zstd"], tag="latest",
        config={"Entrypoint": ["/bin/hello"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
    )
    print(f"wrote {out} ({built.manifest_digest})")


if __name__ == "__main__":
    main()
