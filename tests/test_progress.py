"""Progress on stderr: redrawn rows in a terminal (judged by a terminal emulator), lines in a pipe.

The terminal tests run the real command under a pseudo-terminal of a given size and
feed everything it wrote to ``pyte``, a VT100 emulator with a scrollback: what is
left on the screen and in the scrollback is what a user would see.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from ocisquash.digest import Digest
from ocisquash.progress import (
    BlobDone,
    BlobProgress,
    BlobStarted,
    Finishing,
    LayerApplying,
    LineProgress,
    TtyProgress,
    make_renderer,
)

from conftest import require_or_skip
from imagebuilder import Entry, write_oci_layout

try:
    import pyte
except ImportError:  # pragma: no cover - a test dependency (pyproject [test])
    pyte = None

ROOT = Path(__file__).resolve().parents[1]
LAYERS = 12

#: every line a progress drawing may consist of
PROGRESS_LINE = re.compile(
    r"(starting|\d+/\d+ layers applied|writing the squashfs tables \(\d+ entries\))"
    r"(, [\d.]+ (B|KiB|MiB|GiB) of [\d.]+ (B|KiB|MiB|GiB) (downloaded|read)"
    r"(, [\d.]+ (B|KiB|MiB|GiB)/s(, \d+:\d\d)?)?)?"
    r"|(layer \d+/\d+|config) +sha256:[0-9a-f]{12}( +\S.*)?"
    r"|\.\.\. \d+ more \(\d+ done\)")
ROW = re.compile(r"(layer \d+/\d+|config) +sha256:[0-9a-f]{12} +"
                 r"(waiting|downloading|downloaded|cached|scanning|scanned|applying|applied"
                 r"|applying again|scanning again|retry \d+ in \d+s)"
                 r"( +\[[#.]{20}\])?( +[\d.]+ (B|KiB|MiB|GiB) / [\d.]+ (B|KiB|MiB|GiB))?"
                 r"( +[\d.]+ (B|KiB|MiB|GiB)/s)?")


def set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def run_in_terminal(args: list[str], cols: int, rows: int, cwd: Path) -> bytes:
    """Run ``ocisquash ARGS`` with stdin, stdout and stderr on a pty of ``cols``×``rows``;
    everything it wrote."""
    master, slave = pty.openpty()
    set_size(slave, cols, rows)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TERM": "xterm", "COLUMNS": "",
           "LINES": ""}
    proc = subprocess.Popen([sys.executable, "-m", "ocisquash", *args], stdin=slave,
                            stdout=slave, stderr=slave, cwd=cwd, env=env, close_fds=True)
    os.close(slave)
    out = bytearray()
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        proc.wait(timeout=120)
    assert proc.returncode == 0, out.decode(errors="replace")
    return bytes(out)


def emulate(data: bytes, cols: int, rows: int) -> tuple[list[str], list[str]]:
    """(lines scrolled off the top, lines on the screen) after a terminal shows ``data``."""
    require_or_skip(pyte is not None, "pyte (a test dependency) is not installed")
    screen = pyte.HistoryScreen(cols, rows, history=10000)
    screen.set_mode(pyte.modes.LNM)  # the pty turns "\n" into "\r\n"
    pyte.ByteStream(screen).feed(data)
    history = ["".join(ch.data for ch in line.values()).rstrip()
               for line in screen.history.top]
    return history, [line.rstrip() for line in screen.display]


@pytest.fixture(scope="module")
def many_layers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("progress") / "layout"
    write_oci_layout(root, [
        [Entry(f"d{i}", kind="dir", mode=0o755),
         Entry(f"d{i}/f", data=os.urandom(1 << 20), mode=0o644)]
        for i in range(LAYERS)
    ])
    return root


@pytest.mark.parametrize(("cols", "rows"), [(80, 24), (50, 10)])
def test_terminal_keeps_only_the_final_drawing(many_layers: Path, tmp_path: Path,
                                                cols: int, rows: int) -> None:
    data = run_in_terminal(["compile", f"oci:{many_layers}:latest", "-o", "out.squashfs",
                            "--cache-dir", str(tmp_path / "cache")], cols, rows, tmp_path)
    history, screen = emulate(data, cols, rows)
    text = [line for line in history + screen if line]
    progress = [line for line in text if PROGRESS_LINE.fullmatch(line)]
    others = [line for line in text if not PROGRESS_LINE.fullmatch(line)]
    # What is not progress is the summary the command prints at the end, wrapped.
    summary = "".join(others)
    assert summary.startswith("compiled oci:") and "out.squashfs" in summary, text
    # One drawing is left, and it fit on the screen with a row to spare.
    assert progress[0].startswith("writing the squashfs tables"), progress
    assert len(progress) <= rows - 1
    assert all(len(line) <= cols - 1 for line in progress)
    for line in progress[1:]:
        assert ROW.fullmatch(line) or line.startswith("... "), line
    if rows - 2 < LAYERS:
        assert progress[-1].startswith(f"... {LAYERS - (rows - 3)} more"), progress
    else:
        assert len(progress) == 1 + LAYERS
        assert [int(m.group(1)) for m in map(re.compile(r"layer (\d+)/").match, progress[1:])
                if m] == sorted(range(1, LAYERS + 1), reverse=True)
    # Nothing but the drawing and the summary ever reached the screen or its scrollback.
    assert len(history) + len([s for s in screen if s]) == len(text)
    assert len(progress) + len(others) == len(text)


def drain(fd: int) -> str:
    """Everything the terminal has to read now."""
    out = b""
    while select.select([fd], [], [], 0.2)[0]:
        out += os.read(fd, 1 << 20)
    return out.decode()


def last_drawing(text: str) -> list[str]:
    """The lines of the last complete drawing in ``text`` (each drawing ends with ESC [J)."""
    *drawings, _ = text.split("\x1b[J")
    return [line.rstrip("\r\n") for line in drawings[-1].split("\x1b[2K")[1:]]


def test_resize_is_read_again_after_sigwinch() -> None:
    master, slave = pty.openpty()
    set_size(slave, 80, 24)
    stream = open(slave, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    renderer = TtyProgress(stream)
    try:
        digests = [Digest.of(bytes([i])) for i in range(12)]
        for i, d in enumerate(digests):
            renderer(BlobStarted(d, 10 << 20, f"layer {i + 1}/12"))
        before = last_drawing(drain(master))
        assert len(before) == 13 and max(len(line) for line in before) > 49
        set_size(slave, 50, 10)
        os.kill(os.getpid(), signal.SIGWINCH)
        renderer(BlobProgress(digests[0], 1 << 20, 10 << 20))
        lines = last_drawing(drain(master))
    finally:
        renderer.close()
        stream.close()
        os.close(slave)
        os.close(master)
    assert 1 < len(lines) <= 9
    assert all(len(line) <= 49 for line in lines), lines


def feed(renderer: object, events: list[object]) -> None:
    for e in events:
        renderer(e)  # type: ignore[operator]


def test_cached_means_there_before_this_run_and_a_second_read_says_again() -> None:
    fetched, old = Digest.of(b"new"), Digest.of(b"old")
    out = io.StringIO()
    renderer = TtyProgress(out, size=lambda: os.terminal_size((100, 40)))
    feed(renderer, [
        BlobStarted(fetched, 100, "layer 2/2"), BlobDone(fetched, 100, "layer 2/2"),
        # the store reports a blob this run wrote as cached when asked again
        BlobDone(fetched, 100, "layer 2/2", cached=True),
        BlobDone(old, 50, "layer 1/2", cached=True),
        LayerApplying(fetched, 1, 2, 60, 100), LayerApplying(fetched, 1, 2, 10, 100),
    ])
    screen = renderer._screen()
    assert screen[0].startswith("0/2 layers applied, 100 B of 150 B downloaded")
    rows = {line.split()[2]: line for line in screen[1:]}
    assert "applying again" in rows[fetched.short]
    assert re.search(r"cached", rows[old.short])
    renderer.close()


def test_pipe_gets_one_line_per_step() -> None:
    a, b = Digest.of(b"a"), Digest.of(b"b")
    out = io.StringIO()
    renderer = make_renderer(stream=out)
    assert isinstance(renderer, LineProgress)
    assert make_renderer(quiet=True, stream=out) is None
    feed(renderer, [
        BlobStarted(a, 2048, "layer 2/2"), BlobProgress(a, 1024, 2048), BlobDone(a, 2048, "layer 2/2"),
        BlobDone(b, 100, "layer 1/2", cached=True),
        LayerApplying(a, 1, 2, 1024, 2048), LayerApplying(a, 1, 2, 2048, 2048),
        LayerApplying(b, 2, 2, 100, 100), Finishing(7),
    ])
    assert out.getvalue().splitlines() == [
        f"Copying layer 2/2 {a} (2.0 KiB)",
        f"Using cached layer 1/2 {b}",
        f"Applying layer 2/2 {a}",
        f"Applying layer 1/2 {b}",
        "Writing the squashfs tables (7 entries)",
    ]


def test_piped_compile_prints_a_line_per_layer(many_layers: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ocisquash", "compile", f"oci:{many_layers}:latest", "-o",
         str(tmp_path / "o.squashfs"), "--cache-dir", str(tmp_path / "c")],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    lines = proc.stderr.splitlines()
    applying = [line for line in lines if line.startswith("Applying layer ")]
    assert [line.split()[2] for line in applying] == [f"{LAYERS - i}/{LAYERS}" for i in range(LAYERS)]
    assert lines[len(applying)].startswith("Writing the squashfs tables")
    assert lines[len(applying) + 1].startswith("compiled ")


@pytest.mark.parametrize("output, said", [("erofs", "Writing the EROFS metadata"),
                                          ("tar", "Finishing the tar archive")])
def test_each_output_names_its_own_finish(many_layers: Path, tmp_path: Path, output: str,
                                          said: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ocisquash", "compile", f"oci:{many_layers}:latest", "-o",
         str(tmp_path / "o.img"), "--format", output, "--cache-dir", str(tmp_path / "c")],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert f"{said} (" in proc.stderr
    assert "squashfs" not in proc.stderr


def test_control_characters_in_a_label_are_shown_not_sent() -> None:
    out = io.StringIO()
    feed(LineProgress(out), [BlobStarted(Digest.of(b"x"), 1, "layer\x1b[2J 1/1")])
    assert "\x1b" not in out.getvalue() and "\\x1b[2J" in out.getvalue()


def test_the_callback_type_names_the_event_union() -> None:
    """A progress callback is typed by the events it receives, not by ``object``."""
    import typing

    from ocisquash.progress import BlobRetrying, ProgressCallback, ProgressEvent

    params, _ = typing.get_args(ProgressCallback)
    assert params == [ProgressEvent]
    assert set(typing.get_args(ProgressEvent)) == {
        BlobStarted, BlobProgress, BlobRetrying, BlobDone, LayerApplying, Finishing}
