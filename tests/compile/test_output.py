"""Where and how the output is written (``ocisquash.output``): the ``-o`` conventions,
devices and FIFOs, failures as one line with a documented exit code, and a temporary
file that another process cannot swap for a symlink.

Exit codes checked here: 2 for an OUT refused before any work (exists, no directory,
not a file, a terminal), 1 for what the filesystem refuses (read-only, no permission,
full) and for an archive that is not a regular file.
"""

from __future__ import annotations

import os
import pty
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocisquash.compile import compile_image
from ocisquash.errors import OutputError, UsageError
from ocisquash.pack import pack_directory
from ocisquash.sources.options import SourceOptions
from ocisquash.squashfs import WriterOptions

from conftest import require_or_skip, run_ocisquash_as_nobody
from imagebuilder import Entry, write_docker_archive, write_oci_layout

ROOT = Path(__file__).resolve().parents[2]

LAYER = [Entry("etc", "dir"), Entry("etc/hostname", data=b"output\n"),
         Entry("bin", "dir"), Entry("bin/tool", data=bytes(range(256)) * 64, mode=0o755)]


def cli(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ocisquash", *args],  # type: ignore[call-overload, no-any-return]
                          capture_output=True, text=True, **kw)


def one_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The failure is exit ``code`` and one ``ocisquash:`` line (and maybe a hint)."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) in (1, 2) and lines[0].startswith("ocisquash: "), proc.stderr
    assert len(lines) == 1 or lines[1].startswith("hint: "), proc.stderr
    return lines[0]


def leftovers(directory: Path) -> list[str]:
    """Temporary files of an output left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, bytes]:
    """(reference, a cache holding its compile, the compiled bytes)."""
    base = tmp_path_factory.mktemp("output")
    write_oci_layout(base / "layout", [LAYER])
    ref = f"oci:{base / 'layout'}:latest"
    first = compile_image(ref, base / "first.squashfs",
                          source_options=SourceOptions(cache_dir=base / "cache"))
    return ref, base / "cache", Path(first.path or "").read_bytes()


def cached_args(image: tuple[str, Path, bytes], out: Path | str, *extra: str) -> list[str]:
    ref, cache, _ = image
    return ["compile", ref, "-o", str(out), "--cache-dir", str(cache), "-q", *extra]


# -- -o conventions (issue: -o follows no convention) -----------------------------------


def test_an_existing_output_is_refused_before_any_work_unless_force(
        image: tuple[str, Path, bytes], tmp_path: Path) -> None:
    out = tmp_path / "out.squashfs"
    out.write_bytes(b"precious")
    line = one_line(cli(*cached_args(image, out)), 2)
    assert str(out) in line and "refusing to overwrite" in line
    assert out.read_bytes() == b"precious"
    # Checked before the source is even opened: a missing layout is not reached.
    line = one_line(cli("compile", f"oci:{tmp_path / 'nope'}", "-o", str(out), "-q"), 2)
    assert "refusing to overwrite" in line
    # A symlink at OUT counts as existing, and --force replaces the link, not its target.
    target = tmp_path / "target"
    target.write_bytes(b"kept")
    link = tmp_path / "link.squashfs"
    link.symlink_to(target)
    one_line(cli(*cached_args(image, link)), 2)
    assert cli(*cached_args(image, out, "--force")).returncode == 0
    assert cli(*cached_args(image, link, "--force")).returncode == 0
    assert out.read_bytes() == image[2] and link.read_bytes() == image[2]
    assert not link.is_symlink() and target.read_bytes() == b"kept"
    assert leftovers(tmp_path) == []


def test_a_missing_or_non_directory_parent_is_refused(
        image: tuple[str, Path, bytes], tmp_path: Path) -> None:
    line = one_line(cli(*cached_args(image, tmp_path / "no" / "such" / "o.squashfs")), 2)
    assert f"directory {tmp_path / 'no' / 'such'} does not exist" in line
    assert not (tmp_path / "no").exists()
    (tmp_path / "file").write_bytes(b"x")
    line = one_line(cli(*cached_args(image, tmp_path / "file" / "o.squashfs")), 2)
    assert f"{tmp_path / 'file'} is not a directory" in line
    line = one_line(cli(*cached_args(image, tmp_path)), 2)
    assert "is a directory" in line
    line = one_line(cli("pack", str(ROOT / "examples"), str(tmp_path / "no" / "o.sqfs")), 2)
    assert "does not exist" in line


def test_pack_follows_the_same_conventions(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(b"data")
    out = tmp_path / "o.sqfs"
    out.write_bytes(b"precious")
    line = one_line(cli("pack", str(tree), str(out), "-q"), 2)
    assert "refusing to overwrite" in line and out.read_bytes() == b"precious"
    assert cli("pack", str(tree), str(out), "-q", "--force").returncode == 0
    listing = subprocess.run(["unsquashfs", "-lln", str(out)], capture_output=True, text=True,
                             check=True).stdout
    assert "squashfs-root/f" in listing
    line = one_line(cli("pack", str(tree), "/dev/null", "-q"), 2)
    assert "needs a regular file" in line
    assert leftovers(tmp_path) == []
    # The API keeps replacing by default, and refuses when asked not to.
    pack_directory(tree, out, WriterOptions())
    with pytest.raises(UsageError, match="refusing to overwrite"):
        pack_directory(tree, out, WriterOptions(), overwrite=False)


def test_copy_gives_an_independent_writable_file(
        image: tuple[str, Path, bytes], tmp_path: Path) -> None:
    _, cache, want = image
    linked, copied = tmp_path / "linked.squashfs", tmp_path / "copied.squashfs"
    assert cli(*cached_args(image, linked)).returncode == 0
    assert cli(*cached_args(image, copied, "--copy")).returncode == 0
    cached = {(st.st_dev, st.st_ino) for p in (cache / "images").glob("*/image.squashfs")
              if (st := p.stat())}
    lst, cst = linked.stat(), copied.stat()
    # Without --copy: a read-only hard link into the cache (same filesystem here).
    assert (lst.st_dev, lst.st_ino) in cached and stat.S_IMODE(lst.st_mode) == 0o444
    assert (cst.st_dev, cst.st_ino) not in cached and cst.st_nlink == 1
    assert stat.S_IMODE(cst.st_mode) == 0o666 & ~_umask()
    assert copied.read_bytes() == want
    with open(copied, "r+b") as f:  # writable, and writing it leaves the cache alone
        f.write(b"\0" * 64)
    again = cli(*cached_args(image, tmp_path / "again.squashfs", "--pull", "never"))
    assert again.returncode == 0 and "damaged" not in again.stderr
    assert (tmp_path / "again.squashfs").read_bytes() == want
    help_text = cli("compile", "--help").stdout
    assert "read-only hard link" in " ".join(help_text.split()) and "--copy" in help_text


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_an_output_that_appears_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "layout", [LAYER])
    out = tmp_path / "out.squashfs"

    def appear(event: object) -> None:
        if not out.exists():
            out.write_bytes(b"someone else's")

    with pytest.raises(UsageError, match="appeared while"):
        compile_image(f"oci:{tmp_path / 'layout'}:latest", out, use_cache=False,
                      overwrite=False, progress=appear)
    assert out.read_bytes() == b"someone else's" and leftovers(tmp_path) == []


@pytest.mark.parametrize("signal_class", [KeyboardInterrupt, SystemExit])
def test_no_cache_temporary_is_removed_on_interrupt_and_exit(
        tmp_path: Path, signal_class: type[BaseException]) -> None:
    """SIGINT raises KeyboardInterrupt and the CLI's SIGTERM handling unwinds the same
    way: the temporary beside OUT goes on either."""
    write_oci_layout(tmp_path / "layout", [LAYER])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    seen: list[list[str]] = []

    def stop(event: object) -> None:
        # Finishing: the layers are read, the squashfs tables are next (main thread).
        if type(event).__name__ == "Finishing":
            seen.append(leftovers(out_dir))
            raise signal_class()

    with pytest.raises(signal_class):
        compile_image(f"oci:{tmp_path / 'layout'}:latest", out_dir / "o.squashfs",
                      use_cache=False, progress=stop)
    assert seen and seen[0] and seen[0][0].startswith(".o.squashfs."), seen  # it was there
    assert list(out_dir.iterdir()) == []


# -- devices, FIFOs, terminals (never replace a node) -----------------------------------


def test_a_character_device_is_written_into_never_replaced(
        image: tuple[str, Path, bytes], tmp_path: Path) -> None:
    require_or_skip(os.geteuid() == 0, "mknod needs root")
    require_or_skip(not os.statvfs(tmp_path).f_flag & os.ST_NODEV,
                    f"{tmp_path} is mounted nodev")
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    before = null.lstat()
    for extra in ((), ("--format", "tar")):
        proc = cli(*cached_args(image, null, *extra))
        assert proc.returncode == 0, proc.stderr
        after = null.lstat()
        assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino
        assert after.st_rdev == os.makedev(1, 3)
    # --no-cache builds a squashfs in place, which needs a file: refused, node untouched.
    line = one_line(cli(*cached_args(image, null, "--no-cache")), 2)
    assert "needs a regular file" in line and null.lstat().st_ino == before.st_ino
    assert leftovers(tmp_path) == []


def test_a_fifo_is_written_into(image: tuple[str, Path, bytes], tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    proc = cli(*cached_args(image, fifo))
    reader.join()
    assert proc.returncode == 0, proc.stderr
    assert got == [image[2]] and stat.S_ISFIFO(fifo.lstat().st_mode)


def test_dev_stdout_writes_to_the_open_stdout(image: tuple[str, Path, bytes],
                                              tmp_path: Path) -> None:
    """``/dev/stdout`` is a link to the descriptor: the file the shell opened receives the
    image, and the link is never replaced."""
    out = tmp_path / "redirected"
    with open(out, "wb") as f:
        proc = subprocess.run([sys.executable, "-m", "ocisquash",
                               *cached_args(image, "/dev/stdout")], stdout=f,
                              stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == image[2]
    assert os.path.islink("/dev/stdout")
    piped = subprocess.run([sys.executable, "-m", "ocisquash",
                            *cached_args(image, "/dev/stdout")], capture_output=True)
    assert piped.returncode == 0 and piped.stdout == image[2]


def test_other_special_files_are_refused(image: tuple[str, Path, bytes], tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    try:
        line = one_line(cli(*cached_args(image, tmp_path / "sock")), 2)
        assert "is a socket" in line
    finally:
        sock.close()
    assert stat.S_ISSOCK((tmp_path / "sock").lstat().st_mode)
    if os.geteuid() == 0:
        os.mknod(tmp_path / "blk", 0o600 | stat.S_IFBLK, os.makedev(7, 200))
        line = one_line(cli(*cached_args(image, tmp_path / "blk")), 2)
        assert "is a block device" in line
        assert stat.S_ISBLK((tmp_path / "blk").lstat().st_mode)


@pytest.fixture()
def terminal() -> Iterator[tuple[int, str]]:
    main, tty = pty.openpty()
    try:
        yield tty, os.ttyname(tty)
    finally:
        os.close(main)
        os.close(tty)


def test_a_terminal_is_refused(image: tuple[str, Path, bytes], terminal: tuple[int, str],
                               tmp_path: Path) -> None:
    tty, name = terminal
    for out in ("-", name):
        proc = subprocess.run([sys.executable, "-m", "ocisquash", *cached_args(image, out)],
                              stdout=tty, stderr=subprocess.PIPE, text=True)
        line = one_line(proc, 2)
        assert "terminal" in line, line
    assert stat.S_ISCHR(os.stat(name).st_mode)


# -- failures: one line, a documented exit code -----------------------------------------


def test_stdout_on_a_full_device_is_one_line(image: tuple[str, Path, bytes]) -> None:
    require_or_skip(os.path.exists("/dev/full"), "/dev/full is missing")
    for extra in ((), ("--format", "tar")):
        with open("/dev/full", "wb") as full:
            proc = subprocess.run([sys.executable, "-m", "ocisquash",
                                   *cached_args(image, "-", *extra)],
                                  stdout=full, stderr=subprocess.PIPE, text=True)
        line = one_line(proc, 1)
        assert "stdout" in line and "No space left on device" in line, line


def test_a_read_only_directory_is_one_line(image: tuple[str, Path, bytes],
                                           tmp_path: Path) -> None:
    require_or_skip(os.geteuid() == 0, "mounting a read-only tmpfs needs root")
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                             capture_output=True, text=True)
    require_or_skip(mounted.returncode == 0, f"mount -t tmpfs is not permitted: {mounted.stderr}")
    try:
        for extra in ((), ("--no-cache",), ("--format", "tar")):
            line = one_line(cli(*cached_args(image, ro / "o.squashfs", *extra)), 1)
            assert str(ro / "o.squashfs") in line and "read-only" in line, line
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_an_unprivileged_user_gets_one_line(image: tuple[str, Path, bytes]) -> None:
    """A directory the user may not write in, and one under a directory the user may not
    enter (so OUT's directory can be neither found nor created)."""
    require_or_skip(os.geteuid() == 0, "switching to an unprivileged user needs root")
    require_or_skip(shutil.which("setpriv") is not None, "setpriv is not installed")
    ref, _, _ = image
    work = Path(tempfile.mkdtemp(prefix="ocisquash-output-"))
    try:
        os.chmod(work, 0o777)
        layout = work / "layout"
        shutil.copytree(ref.removeprefix("oci:").removesuffix(":latest"), layout)
        subprocess.run(["chmod", "-R", "a+rX", str(layout)], check=True)
        (work / "locked").mkdir(mode=0o555)
        (work / "private").mkdir(mode=0o700)
        env = {**os.environ, "HOME": str(work)}
        for out, code, words in ((work / "locked" / "o.squashfs", 1, "not writable"),
                                 (work / "private" / "sub" / "o.squashfs", 1, "Permission denied")):
            proc = run_ocisquash_as_nobody(
                "compile", f"oci:{layout}:latest", "-o", str(out),
                "--cache-dir", str(work / "nobody-cache"), "-q", env=env, cwd=work)
            line = one_line(proc, code)
            assert str(out) in line and words in line, line
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_an_archive_from_a_pipe_is_one_line(tmp_path: Path) -> None:
    archive = tmp_path / "saved.tar"
    write_docker_archive(archive, [LAYER])
    args = ["compile", "docker-archive:/dev/stdin", "--cache-dir", str(tmp_path / "cache"), "-q"]
    line = one_line(cli(*args, "-o", str(tmp_path / "a.squashfs"), input=archive.read_text(
        "latin-1")), 1)
    assert "is a FIFO, not a regular file" in line, line
    with open(archive, "rb") as stdin:  # redirected from a file, /dev/stdin is one
        proc = subprocess.run([sys.executable, "-m", "ocisquash", *args, "-o",
                               str(tmp_path / "b.squashfs")], stdin=stdin, capture_output=True,
                              text=True)
    assert proc.returncode == 0, proc.stderr
    fifo = tmp_path / "fifo"  # a FIFO nobody writes to is refused, not waited on
    os.mkfifo(fifo)
    line = one_line(cli("compile", f"docker-archive:{fifo}", "-o", str(tmp_path / "c.squashfs"),
                        "--cache-dir", str(tmp_path / "cache"), "-q", timeout=120), 1)
    assert "is a FIFO" in line


# -- the temporary file cannot be swapped (issue: fixed name, followed symlink) ---------

PLANTER = r"""
import os, sys
directory, prefix, secret = sys.argv[1:]
fixed = os.path.join(directory, prefix + "ocisquash-tmp")
while True:
    # The old fixed name, planted in a loop; and any temporary that shows up is swapped
    # for a link to the secret, as another user who can write in the directory could.
    try:
        os.symlink(secret, fixed)
    except OSError:
        pass
    try:
        names = os.listdir(directory)
    except OSError:
        continue
    for name in names:
        if name.startswith(prefix) and name != prefix + "ocisquash-tmp":
            path = os.path.join(directory, name)
            try:
                if not os.path.islink(path):
                    os.unlink(path)
                    os.symlink(secret, path)
            except OSError:
                pass
"""


@pytest.mark.parametrize("mode", ["placed", "copy", "no-cache"])
def test_a_racing_planter_never_redirects_the_output(
        image: tuple[str, Path, bytes], tmp_path: Path, mode: str) -> None:
    ref, cache, want = image
    secret = tmp_path / "secret"
    secret.write_bytes(b"root only\n")
    os.chmod(secret, 0o600)
    shared = tmp_path / "shared"
    shared.mkdir()
    out = shared / "out.squashfs"
    planter = subprocess.Popen([sys.executable, "-c", PLANTER, str(shared), ".out.squashfs.",
                                str(secret)])
    outcomes = {"written": 0, "refused": 0}
    try:
        for _ in range(30):
            try:
                compile_image(ref, out, source_options=SourceOptions(cache_dir=cache),
                              use_cache=mode != "no-cache", copy=mode == "copy")
            except OutputError as e:
                assert "replaced by another process" in str(e), e
                outcomes["refused"] += 1
            else:
                assert not out.is_symlink() and out.read_bytes() == want
                outcomes["written"] += 1
            assert secret.read_bytes() == b"root only\n"
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600
            assert not out.is_symlink()
    finally:
        planter.send_signal(signal.SIGKILL)
        planter.wait()
    assert outcomes["written"] + outcomes["refused"] == 30
    assert [p for p in shared.iterdir() if not p.is_symlink() and p != out] == []


def test_config_out_never_writes_through_a_planted_link(
        image: tuple[str, Path, bytes], tmp_path: Path) -> None:
    """``--config-out`` once wrote through the fixed name ``.NAME.tmp``: a link planted
    there sent the config into the link's target."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"root only\n")
    os.chmod(secret, 0o600)
    (tmp_path / ".config.json.tmp").symlink_to(secret)
    out = tmp_path / "config.json"
    proc = cli(*cached_args(image, tmp_path / "o.squashfs", "--config-out", str(out)))
    assert proc.returncode == 0, proc.stderr
    assert secret.read_bytes() == b"root only\n" and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert b'"rootfs"' in out.read_bytes() and not out.is_symlink()


def test_verity_sidecars_need_a_file_output(image: tuple[str, Path, bytes],
                                            tmp_path: Path) -> None:
    """OUT.verity goes beside OUT: a device has no side, and nothing is written in /dev."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    line = one_line(cli(*cached_args(image, fifo, "--verity")), 2)
    assert "has no side" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_sigterm_removes_the_no_cache_temporary(tmp_path: Path) -> None:
    """SIGTERM unwinds like Ctrl-C (exit 143): the temporary beside OUT goes too."""
    rnd = random.Random(5)
    write_oci_layout(tmp_path / "layout", [[Entry("d", "dir"), *(
        Entry(f"d/f{i}", data=rnd.randbytes(1 << 20)) for i in range(4))]])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ocisquash", "compile", f"oci:{tmp_path / 'layout'}:latest",
         "-o", str(out_dir / "o.squashfs"), "--no-cache", "--compression", "xz",
         "--cache-dir", str(tmp_path / "cache"), "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # Wait for the temporary (a bound against a hang, not a measurement).
        for _ in range(6000):
            if leftovers(out_dir) or proc.poll() is not None:
                break
            threading.Event().wait(0.01)
        assert proc.poll() is None and leftovers(out_dir), "no temporary while compiling"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert "ocisquash: terminated" in err and "Traceback" not in err, err
    assert list(out_dir.iterdir()) == []
