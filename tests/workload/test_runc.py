"""runc runs what ocisquash compiles: ``compile --bundle``, ``ocisquash mount``, ``runc run``,
with a squashfs and with an EROFS image.

The image's shell and libc are the host's static busybox; its user is a name that only
the image's own ``/etc/passwd`` and ``/etc/group`` define. runc (not our code) decides
what the process sees: its uid, gid and groups, environment, working directory, and a
read-only root with a writable volume.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocisquash.runtime import DEFAULT_PATH

from .images import APP_GID, APP_UID, EXTRA_GID, busybox_available, write_workload
from conftest import require_or_skip, run_ocisquash_as_nobody

SCRIPT = (
    "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); "
    'echo "greeting=$GREETING"; echo "path=$PATH"; echo "home=$HOME"; echo "cwd=$(pwd)"; '
    "cat hello.txt; "
    "if touch /rootwrite 2>/dev/null; then echo root=writable; else echo root=readonly; fi; "
    "touch /data/x && echo data=writable"
)
CONFIG = {
    "Entrypoint": ["/bin/sh", "-c"],
    "Cmd": [SCRIPT],
    "Env": ["GREETING=hello world"],
    "User": "app",
    "WorkingDir": "/work",
    "Volumes": {"/data": {}},
    "StopSignal": "SIGINT",
}


def ocisquash(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "ocisquash", *args],
                          capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"ocisquash {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def _require_runc() -> None:
    require_or_skip(shutil.which("runc") is not None, "runc is not installed")
    require_or_skip(busybox_available(), "busybox-static is not installed")
    require_or_skip(os.geteuid() == 0, "runc run (and a loop mount) need root")


@pytest.fixture(params=["squashfs", "erofs"])
def bundle(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, Path]]:
    """A compiled workload, its bundle and its image mounted on the bundle's rootfs."""
    _require_runc()
    ref = write_workload(tmp_path / "layout", CONFIG)
    image, bundle = tmp_path / f"app.{request.param}", tmp_path / "bundle"
    ocisquash("compile", ref, "-o", str(image), "--format", request.param,
              "--bundle", str(bundle), "--cache-dir", str(tmp_path / "cache"), "--quiet")
    ocisquash("mount", str(image), str(bundle / "rootfs"))
    try:
        yield image, bundle
    finally:
        ocisquash("umount", str(bundle / "rootfs"))


def runc_run(bundle: Path, state: Path) -> subprocess.CompletedProcess[str]:
    name = f"ocisquash-test-{uuid.uuid4().hex[:12]}"
    try:
        return subprocess.run(["runc", "--root", str(state), "run", "--bundle", str(bundle),
                               name], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL, check=False)
    finally:
        subprocess.run(["runc", "--root", str(state), "delete", "--force", name],
                       capture_output=True, check=False)


def test_runc_runs_the_image_with_its_own_cmd_user_env_and_cwd(
        bundle: tuple[Path, Path], tmp_path: Path) -> None:
    _image, bdir = bundle
    config = json.loads((bdir / "config.json").read_text())
    assert config["root"] == {"path": "rootfs", "readonly": True}
    proc = runc_run(bdir, tmp_path / "runc-state")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == [
        f"uid={APP_UID} gid={APP_GID} groups={APP_GID} {EXTRA_GID}",
        "greeting=hello world",
        f"path={DEFAULT_PATH}",
        "home=/home/app",
        "cwd=/work",
        "hello from the image",
        "root=readonly",
        "data=writable",
    ]


def test_the_user_comes_from_the_image_not_the_host(bundle: tuple[Path, Path]) -> None:
    # The host knows no user named "app" with the image's uid: the uid can only have
    # come from the image's /etc/passwd (its second layer).
    import pwd

    try:
        host = pwd.getpwnam("app").pw_uid
    except KeyError:
        host = None
    assert host != APP_UID
    config = json.loads((bundle[1] / "config.json").read_text())
    assert config["process"]["user"] == {"uid": APP_UID, "gid": APP_GID,
                                         "additionalGids": [EXTRA_GID]}


def test_a_write_to_the_mounted_image_fails(bundle: tuple[Path, Path]) -> None:
    with pytest.raises(OSError) as e:
        (bundle[1] / "rootfs" / "new").write_bytes(b"x")
    assert e.value.errno == 30  # EROFS


def test_overlay_mount_is_writable_and_forgotten(tmp_path: Path) -> None:
    _require_runc()
    ref = write_workload(tmp_path / "layout", CONFIG)
    image, target = tmp_path / "app.squashfs", tmp_path / "mnt"
    target.mkdir()
    ocisquash("compile", ref, "-o", str(image), "--cache-dir", str(tmp_path / "cache"),
              "--quiet")
    ocisquash("mount", "--overlay", str(image), str(target))
    try:
        (target / "work" / "hello.txt").write_text("changed\n")
        (target / "new").write_text("new\n")
        assert (target / "work" / "hello.txt").read_text() == "changed\n"
        assert (target / "bin" / "busybox").stat().st_size > 0
    finally:
        ocisquash("umount", str(target))
    assert list(target.iterdir()) == []
    ocisquash("mount", str(image), str(target))
    try:
        assert (target / "work" / "hello.txt").read_text() == "hello from the image\n"
        assert not (target / "new").exists()
    finally:
        ocisquash("umount", str(target))
    # nothing of the overlay's state stays mounted
    assert "ocisquash-overlay" not in Path("/proc/self/mountinfo").read_text()


def test_config_out_is_the_served_config_byte_for_byte(tmp_path: Path) -> None:
    require_or_skip(busybox_available(), "busybox-static is not installed")
    ref = write_workload(tmp_path / "layout", CONFIG)
    out = tmp_path / "config.json"
    ocisquash("compile", ref, "-o", str(tmp_path / "app.squashfs"), "--config-out", str(out),
              "--cache-dir", str(tmp_path / "cache"), "--quiet")
    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((tmp_path / "layout" / "blobs" / "sha256" / manifest_digest)
                          .read_bytes())
    config_blob = (tmp_path / "layout" / "blobs" / "sha256"
                   / manifest["config"]["digest"].split(":")[1]).read_bytes()
    assert out.read_bytes() == config_blob


def test_mount_refuses_clearly_without_root_or_squashfuse(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    require_or_skip(os.geteuid() == 0 and shutil.which("setpriv") is not None,
                    "needs root and setpriv to drop to another user")
    # a directory the other user can reach (pytest's own are private to root)
    shared = Path(tempfile.mkdtemp(prefix="ocisquash-mount-"))
    request.addfinalizer(lambda: shutil.rmtree(shared))
    shared.chmod(0o755)
    image, target = shared / "x.squashfs", shared / "mnt"
    subprocess.run(["mksquashfs", str(tmp_path), str(image), "-quiet", "-noappend"],
                   check=True, capture_output=True)
    target.mkdir()
    image.chmod(0o644)
    # no root, and a PATH on which no squashfuse is found
    proc = run_ocisquash_as_nobody("mount", str(image), str(target),
                                   env={**os.environ, "PATH": "/nonexistent"})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[0] == (
        f"ocisquash: cannot mount {image}: not root, and squashfuse is not available")
    assert proc.stderr.splitlines()[1] == (
        "hint: run as root (a loop mount), or install squashfuse (and give access to /dev/fuse)")
    assert "Traceback" not in proc.stderr


def test_mount_tells_an_erofs_image_by_its_magic(tmp_path: Path) -> None:
    _require_runc()
    ref = write_workload(tmp_path / "layout", CONFIG)
    image, target = tmp_path / "app.erofs", tmp_path / "mnt"
    target.mkdir()
    ocisquash("compile", ref, "-o", str(image), "--format", "erofs",
              "--cache-dir", str(tmp_path / "cache"), "--quiet")
    ocisquash("mount", str(image), str(target))
    try:
        assert (target / "work" / "hello.txt").read_text() == "hello from the image\n"
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        assert any(f" {target} " in ln and " - erofs " in ln for ln in mounts)
    finally:
        ocisquash("umount", str(target))
