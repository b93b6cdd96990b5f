"""The image config → runtime-spec conversion (``ocisquash.runtime``) and the squashfs
path lookup it reads user names with (``ocisquash.squashfs.reader``; the EROFS one,
``ocisquash.erofs.reader``, is judged in tests/erofs/test_erofs_reader.py).

Judges from outside: ``umoci raw runtime-config`` converts the same image with its own
code (given the rootfs ``umoci unpack`` wrote), and ``unsquashfs -cat`` reads the same
files out of the same squashfs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ocisquash.compile import CompiledImage, compile_image
from ocisquash.erofs import ErofsOptions
from ocisquash.errors import RuntimeConfigError, SquashfsError
from ocisquash.model import ImageConfig
from ocisquash.runtime import DEFAULT_PATH, ExecUser, build_runtime_config, resolve_user
from ocisquash.sources.options import SourceOptions
from ocisquash.squashfs.reader import SquashfsReader

from .images import APP_GID, APP_UID, EXTRA_GID, GROUP, PASSWD, busybox_available, write_workload
from conftest import require_or_skip
from imagebuilder import Entry, make_config

# (case, User, expected uid, gid, additional gids, home); runc's rules
USER_CASES = [
    ("empty_user_is_root", "", 0, 0, (), "/root"),
    ("name_gives_uid_primary_gid_and_member_groups", "app", APP_UID, APP_GID, (EXTRA_GID,),
     "/home/app"),
    ("numeric_user_is_a_uid_with_its_passwd_entry", str(APP_UID), APP_UID, APP_GID,
     (EXTRA_GID,), "/home/app"),
    ("numeric_user_without_entry_is_taken_as_is", "777", 777, 0, (), None),
    ("explicit_group_name_has_no_supplementary_groups", "app:extra", APP_UID, EXTRA_GID, (),
     "/home/app"),
    ("explicit_numeric_group_is_a_gid", "app:99", APP_UID, 99, (), "/home/app"),
    ("numeric_user_and_group", "5:6", 5, 6, (), None),
]


@pytest.mark.parametrize(("spec", "uid", "gid", "extra", "home"),
                         [c[1:] for c in USER_CASES], ids=[c[0] for c in USER_CASES])
def test_user_resolution_follows_runc(spec: str, uid: int, gid: int, extra: tuple[int, ...],
                                      home: str | None) -> None:
    assert resolve_user(spec, PASSWD, GROUP) == ExecUser(uid, gid, extra, home)


@pytest.mark.parametrize("spec", ["nobody", "app:nogroup", ":nogroup"])
def test_unknown_user_or_group_name_is_an_error(spec: str) -> None:
    with pytest.raises(RuntimeConfigError):
        resolve_user(spec, PASSWD, GROUP)


def test_user_name_without_passwd_file_is_an_error() -> None:
    with pytest.raises(RuntimeConfigError, match="no /etc/passwd"):
        resolve_user("app", None, None)


def test_uid_out_of_range_is_an_error() -> None:
    with pytest.raises(RuntimeConfigError, match="out of range"):
        resolve_user(str(2**31), PASSWD, GROUP)


def _config(c: dict[str, object], **top: object) -> ImageConfig:
    raw = json.loads(make_config([], config=c))
    raw.update(top)
    return ImageConfig.parse(json.dumps(raw).encode())


def test_entrypoint_then_cmd_become_args() -> None:
    cfg = build_runtime_config(_config({"Entrypoint": ["/e", "x"], "Cmd": ["c"]}), ExecUser())
    assert cfg["process"]["args"] == ["/e", "x", "c"]
    cfg = build_runtime_config(_config({"Cmd": ["c", "d"]}), ExecUser())
    assert cfg["process"]["args"] == ["c", "d"]


def test_env_is_verbatim_with_a_default_path_only_when_absent() -> None:
    cfg = build_runtime_config(_config({"Env": ["A=1", "B=x=y"]}), ExecUser(home="/h"))
    assert cfg["process"]["env"] == [f"PATH={DEFAULT_PATH}", "A=1", "B=x=y", "HOME=/h"]
    cfg = build_runtime_config(_config({"Env": ["PATH=/only", "HOME=/mine"]}),
                               ExecUser(home="/h"))
    assert cfg["process"]["env"] == ["PATH=/only", "HOME=/mine"]


def test_working_dir_becomes_cwd_and_defaults_to_root() -> None:
    assert build_runtime_config(_config({"WorkingDir": "/srv"}), ExecUser())[
        "process"]["cwd"] == "/srv"
    assert build_runtime_config(_config({}), ExecUser())["process"]["cwd"] == "/"


def test_annotations_take_the_spec_keys_and_labels_win() -> None:
    cfg = build_runtime_config(_config(
        {"StopSignal": "SIGQUIT", "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
         "Labels": {"org.opencontainers.image.os": "from-label", "x": "y"}},
        author="someone", **{"os.features": ["a", "b"], "os.version": "10.0"}), ExecUser())
    assert cfg["annotations"] == {
        "org.opencontainers.image.architecture": "amd64",
        "org.opencontainers.image.author": "someone",
        "org.opencontainers.image.created": "2024-01-01T00:00:00Z",
        "org.opencontainers.image.exposedPorts": "53/udp,8080/tcp",
        "org.opencontainers.image.os": "from-label",
        "org.opencontainers.image.os.features": "a,b",
        "org.opencontainers.image.os.version": "10.0",
        "org.opencontainers.image.stopSignal": "SIGQUIT",
        "x": "y",
    }


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    require_or_skip(busybox_available(), "busybox-static is not installed")
    root = tmp_path_factory.mktemp("workload")
    config = {"Cmd": ["/bin/sh"], "User": "app", "WorkingDir": "/work",
              "Env": ["GREETING=hi"], "Volumes": {"/data": {}, "/missing": {}},
              "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGTERM",
              "Labels": {"com.example.role": "test"}}
    return root, write_workload(root / "layout", config, extra=[
        Entry("etc/hostname", "symlink", linkname="/etc/../work/hello.txt")])


@pytest.mark.parametrize("format", ["squashfs", "erofs", "erofs-fragments"])
def test_runtime_config_reads_users_from_the_compiled_image(
        workload: tuple[Path, str], tmp_path: Path, format: str) -> None:
    _root, ref = workload
    # EROFS with fragments keeps /etc/passwd compressed in the packed inode
    options = ErofsOptions(fragments=True) if format == "erofs-fragments" else None
    kind = "erofs" if options else format

    def compile_to(name: str) -> CompiledImage:
        return compile_image(ref, tmp_path / name, format=kind,  # type: ignore[arg-type]
                             writer_options=options,
                             source_options=SourceOptions(cache_dir=tmp_path / "cache"))

    result = compile_to("a.img")
    assert result.format == kind
    cfg = result.runtime_config()
    assert cfg["process"]["user"] == {"uid": APP_UID, "gid": APP_GID,
                                      "additionalGids": [EXTRA_GID]}
    # a volume that is not a directory in the read-only image gets no mount point
    assert [m for m in cfg["mounts"] if m["destination"] in ("/data", "/missing")] == [
        {"destination": "/data", "type": "tmpfs", "source": "tmpfs",
         "options": ["rw", "nosuid", "nodev", "mode=750", f"uid={APP_UID}",
                     f"gid={APP_GID}"]}]
    # the same answer from a cache hit, where no writer runs
    again = compile_to("b.img")
    assert again.cached and again.runtime_config() == cfg


def test_runtime_config_agrees_with_umoci(workload: tuple[Path, str], tmp_path: Path) -> None:
    require_or_skip(shutil.which("umoci") is not None, "umoci is not installed")
    root, ref = workload
    result = compile_image(ref, tmp_path / "a.squashfs",
                           source_options=SourceOptions(cache_dir=tmp_path / "cache"))
    ours = result.runtime_config()
    layout = root / "layout"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:latest", str(tmp_path / "b")],
                   check=True, capture_output=True)
    subprocess.run(["umoci", "raw", "runtime-config", "--image", f"{layout}:latest",
                    "--rootfs", str(tmp_path / "b" / "rootfs"), str(tmp_path / "umoci.json")],
                   check=True, capture_output=True)
    theirs = json.loads((tmp_path / "umoci.json").read_text())
    for key in ("args", "cwd", "user"):
        assert ours["process"][key] == theirs["process"][key], key
    # umoci's template runs with a terminal and adds TERM for it; ours runs without one
    assert sorted(ours["process"]["env"]) == sorted(
        e for e in theirs["process"]["env"] if e != "TERM=xterm")
    # umoci also writes an empty author; every key it writes with a value, we write alike
    assert {k: v for k, v in theirs["annotations"].items() if v} == ours["annotations"]


@pytest.mark.parametrize("compressor", ["gzip", "xz", "lz4", "zstd", "lzo"])
def test_reader_agrees_with_unsquashfs(workload: tuple[Path, str], tmp_path: Path,
                                       compressor: str) -> None:
    require_or_skip(shutil.which("mksquashfs") is not None, "squashfs-tools is not installed")
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "passwd").write_bytes(PASSWD)
    (tree / "big").write_bytes(bytes(range(256)) * 2000 + b"tail")  # blocks + a fragment
    (tree / "sparse").write_bytes(bytes(300_000))
    (tree / "link").symlink_to("/etc/../big")
    image = tmp_path / "m.sqfs"
    subprocess.run(["mksquashfs", str(tree), str(image), "-comp", compressor, "-quiet",
                    "-noappend", "-b", "65536"], check=True, capture_output=True)
    with SquashfsReader(image) as r:
        # unsquashfs does not follow symlinks: the link is read as what it points at
        for path, stored in (("etc/passwd", "etc/passwd"), ("big", "big"),
                             ("sparse", "sparse"), ("link", "big")):
            expected = subprocess.run(["unsquashfs", "-cat", str(image), stored],
                                      check=True, capture_output=True).stdout
            assert r.read_file("/" + path) == expected, path
        assert r.read_file("/absent") is None
        assert r.read_file("/etc/passwd/x") is None
        assert r.is_dir("/etc") and not r.is_dir("/big")


def test_reader_follows_symlinks_in_our_own_image(workload: tuple[Path, str],
                                                  tmp_path: Path) -> None:
    _root, ref = workload
    result = compile_image(ref, tmp_path / "a.squashfs",
                           source_options=SourceOptions(cache_dir=tmp_path / "cache"))
    with SquashfsReader(tmp_path / "a.squashfs") as r:
        assert r.read_file("/etc/hostname") == b"hello from the image\n"
        assert r.read_file("/bin/sh") == Path("/bin/busybox").read_bytes()
    assert result.path is not None


def test_reader_refuses_a_damaged_image(workload: tuple[Path, str], tmp_path: Path) -> None:
    _root, ref = workload
    image = tmp_path / "a.squashfs"
    compile_image(ref, image, source_options=SourceOptions(cache_dir=tmp_path / "cache"))
    data = bytearray(image.read_bytes())
    (tmp_path / "short.squashfs").write_bytes(data[: len(data) // 2])
    with pytest.raises(SquashfsError, match="damaged"):
        SquashfsReader(tmp_path / "short.squashfs")
    (tmp_path / "notsquashfs").write_bytes(b"\0" * 4096)
    with pytest.raises(SquashfsError, match="not a squashfs"):
        SquashfsReader(tmp_path / "notsquashfs")


def test_bundle_of_an_image_whose_user_is_not_in_it_is_one_clear_error(
        tmp_path: Path) -> None:
    require_or_skip(busybox_available(), "busybox-static is not installed")
    ref = write_workload(tmp_path / "layout", {"Cmd": ["/bin/sh"], "User": "ghost"})
    proc = subprocess.run(
        [sys.executable, "-m", "ocisquash", "compile", ref, "-o", str(tmp_path / "a.squashfs"),
         "--bundle", str(tmp_path / "b"), "--cache-dir", str(tmp_path / "cache"), "--quiet"],
        capture_output=True, text=True, check=False)
    assert proc.returncode == 3  # an image error (README's exit status table)
    assert proc.stderr.splitlines() == [
        "ocisquash: user 'ghost' is not in the image's /etc/passwd",
        "hint: the image's User must name an entry of the image's own /etc/passwd and "
        "/etc/group",
    ]


def test_bundle_refuses_tar_output(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ocisquash", "compile", "oci:nowhere:latest", "--format", "tar",
         "-o", str(tmp_path / "x.tar"), "--bundle", str(tmp_path / "b")],
        capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("ocisquash: --bundle needs a squashfs or EROFS image, "
                                  "not tar")
