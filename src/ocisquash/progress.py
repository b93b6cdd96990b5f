"""Progress as plain data, and two renderers kept apart from it.

Downloaders and the compiler emit the frozen events below to a ``progress``
callable (``SourceOptions.progress``, ``compile_image(progress=…)``); they know
nothing about terminals. Two renderers draw them on stderr:

* ``TtyProgress`` on a terminal: a total line (layers done, bytes, speed, elapsed
  time) and one row per layer, redrawn in place a few times a second. Every row is
  cut to the terminal's width and no more rows are drawn than fit on its screen
  (the rest are summed up in one row), so a redraw always moves the cursor back over
  exactly what it drew; the size is read again after ``SIGWINCH``.
* ``LineProgress`` when stderr is a pipe or a file: one line per step (a layer
  starts downloading, is found in the cache, is applied; the tables are written), as
  ``skopeo copy`` prints ``Copying blob sha256:…``.

``make_renderer`` picks one (or none, with ``--quiet``). Layers are numbered from
the bottom, as ``inspect`` lists them, in both phases.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from .digest import Digest
from .terminal import printable


@dataclass(frozen=True, slots=True)
class BlobStarted:
    """A download starts; ``offset`` bytes are already there from an interrupted one."""

    digest: Digest
    size: int
    what: str
    offset: int = 0


@dataclass(frozen=True, slots=True)
class BlobProgress:
    """``done`` of ``size`` bytes of a blob are on disk."""

    digest: Digest
    done: int
    size: int


@dataclass(frozen=True, slots=True)
class BlobRetrying:
    """A download failed for a temporary reason and is tried again after ``delay`` seconds."""

    digest: Digest
    attempt: int
    reason: str
    delay: float


@dataclass(frozen=True, slots=True)
class BlobDone:
    """A blob is verified in the store; ``cached`` when it was there already."""

    digest: Digest
    size: int
    what: str
    cached: bool = False


@dataclass(frozen=True, slots=True)
class LayerApplying:
    """``done`` of ``size`` bytes of layer ``index`` (1 = top) have been read and applied.

    ``phase`` is ``"apply"``, or ``"scan"`` for the read of ``--format tar`` that
    settles the tree's shape before the tar is written."""

    digest: Digest
    index: int
    count: int
    done: int
    size: int
    phase: str = "apply"


@dataclass(frozen=True, slots=True)
class Finishing:
    """All layers are applied; the image's metadata is being written (``output``:
    squashfs, erofs or tar)."""

    files: int
    output: str = "squashfs"


#: What the finish of each output is called in progress lines.
_FINISHING = {"squashfs": "writing the squashfs tables", "erofs": "writing the EROFS metadata",
              "tar": "finishing the tar archive"}


def finishing_text(event: Finishing) -> str:
    return f"{_FINISHING.get(event.output, 'finishing')} ({event.files} entries)"


#: Every event a downloader or the compiler emits.
ProgressEvent = BlobStarted | BlobProgress | BlobRetrying | BlobDone | LayerApplying | Finishing

#: What a source calls with each event; it must return quickly and never raise.
ProgressCallback = Callable[[ProgressEvent], None]


def emit(callback: ProgressCallback | None, event: ProgressEvent) -> None:
    """Hand ``event`` to ``callback`` if there is one."""
    if callback is not None:
        callback(event)


def human_size(n: float) -> str:
    """``1536`` → ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop always returns


def _elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _layer_label(event: LayerApplying) -> str:
    """``layer 2/4``, counted from the bottom like the downloads and ``inspect``."""
    return f"layer {event.count - event.index + 1}/{event.count}"


@dataclass
class _Row:
    label: str
    digest: Digest
    size: int
    #: bytes downloaded, or read and applied (``applied`` > 0)
    done: int = 0
    state: str = "waiting"
    #: when the current phase of this row started (for its speed)
    since: float = 0.0
    base: int = 0
    #: a download of this blob started in this run (so a later "cached" is not one)
    fetched: bool = False
    phase: str = ""
    active: bool = False
    #: bytes counted in the total download figure
    downloaded: int = 0


class TtyProgress:
    """Draws the total and one row per layer on a terminal, redrawn in place."""

    INTERVAL = 0.1
    BAR_WIDTH = 20

    def __init__(self, stream: TextIO, *, size: Callable[[], os.terminal_size] | None = None) -> None:
        self._stream = stream
        self._size = size or self._terminal_size
        self._rows: dict[Digest, _Row] = {}
        self._drawn = 0
        self._last = 0.0
        self._start = time.monotonic()
        self._finishing: str | None = None
        self._lock = threading.Lock()
        self._resized = False
        self._previous_winch: object = None
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGWINCH"):
            try:
                self._previous_winch = signal.signal(signal.SIGWINCH, self._on_winch)
            except (ValueError, OSError):  # pragma: no cover - not the main interpreter
                self._previous_winch = None

    def _terminal_size(self) -> os.terminal_size:
        try:
            return os.get_terminal_size(self._stream.fileno())
        except (OSError, ValueError, AttributeError):
            return os.terminal_size((80, 24))

    def _on_winch(self, signum: int, frame: object) -> None:
        # Only a flag: the handler may run while this thread holds the lock.
        self._resized = True
        if callable(self._previous_winch):
            self._previous_winch(signum, frame)

    # -- events --------------------------------------------------------------------------

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            force = self._update(event)
            if force is None:
                return
            now = time.monotonic()
            if force or self._resized or now - self._last >= self.INTERVAL:
                self._last = now
                self._draw()

    def _row(self, digest: Digest, label: str, size: int) -> _Row:
        row = self._rows.get(digest)
        if row is None:
            row = self._rows[digest] = _Row(label, digest, size, since=time.monotonic())
        return row

    def _update(self, event: ProgressEvent) -> bool | None:
        """Apply ``event``; True to draw now, False to draw if due, None to ignore it."""
        now = time.monotonic()
        if isinstance(event, BlobStarted):
            row = self._row(event.digest, event.what, event.size)
            row.label, row.state, row.active, row.fetched = event.what, "downloading", True, True
            row.done = row.base = event.offset
            row.since = now
            return True
        if isinstance(event, BlobProgress):
            moving = self._rows.get(event.digest)
            if moving is None or moving.phase:
                return None
            moving.downloaded += max(0, event.done - moving.done)
            moving.done = event.done
            return False
        if isinstance(event, BlobRetrying):
            waiting = self._rows.get(event.digest)
            if waiting is None:
                return None
            waiting.state = f"retry {event.attempt} in {event.delay:.0f}s"
            return True
        if isinstance(event, BlobDone):
            row = self._row(event.digest, event.what, event.size)
            if not row.phase:
                row.downloaded += max(0, event.size - row.done) if row.fetched else 0
                row.done = event.size
                # "cached" only for a blob that was in the store before this run
                row.state = "cached" if event.cached and not row.fetched else "downloaded"
            row.active = False
            return True
        if isinstance(event, LayerApplying):
            row = self._row(event.digest, _layer_label(event), event.size)
            row.label = _layer_label(event)
            verb = "scanning" if event.phase == "scan" else "applying"
            if row.phase != event.phase or row.state not in (verb, verb + " again"):
                row.state, row.phase, row.since, row.base = verb, event.phase, now, 0
            elif event.done < row.done:
                # The layer is read a second time (a hard link's data, or a download that
                # started over): say so rather than let the bar jump back unexplained.
                row.state, row.since, row.base = verb + " again", now, 0
            row.done = event.done
            finished = event.done >= event.size
            row.active = not finished
            if finished:
                row.state = "scanned" if event.phase == "scan" else "applied"
            return finished
        if isinstance(event, Finishing):
            self._finishing = finishing_text(event)
            return True
        return None

    # -- drawing -------------------------------------------------------------------------

    def _total(self, width: int) -> str:
        rows = self._rows.values()
        layers = [r for r in rows if r.label.startswith("layer")]
        applied = sum(1 for r in layers if r.state == "applied")
        size = sum(r.size for r in rows)
        seconds = time.monotonic() - self._start
        if any(r.fetched for r in rows):
            got, verb = sum(r.downloaded for r in rows), "downloaded"
        else:  # a local source, or every blob cached: the bytes read are the news
            got, verb = sum(r.done for r in layers if r.phase), "read"
        parts = [f"{applied}/{len(layers)} layers applied" if layers else "starting",
                 f"{human_size(got)} of {human_size(size)} {verb}",
                 f"{human_size(got / seconds) if seconds > 0 else '0 B'}/s",
                 _elapsed(seconds)]
        if self._finishing:
            parts[0] = self._finishing
        return self._fit(parts, width)

    @staticmethod
    def _fit(parts: list[str], width: int) -> str:
        """Join ``parts``; drop the last ones, then cut, until the line fits ``width``."""
        while len(parts) > 1 and len(", ".join(parts)) > width:
            parts = parts[:-1]
        return ", ".join(parts)[:width]

    def _line(self, row: _Row, width: int) -> str:
        frac = min(row.done / row.size, 1.0) if row.size else 1.0
        filled = int(frac * self.BAR_WIDTH)
        bar = "[" + "#" * filled + "." * (self.BAR_WIDTH - filled) + "]"
        seconds = time.monotonic() - row.since
        speed = (f"{human_size((row.done - row.base) / seconds)}/s"
                 if row.active and seconds > 0.5 else "")
        name = f"{printable(row.label):<11} {row.digest.short}"
        amount = f"{human_size(row.done)} / {human_size(row.size)}"
        for fields in ((name, f"{row.state:<11}", bar, amount, speed),
                       (name, f"{row.state:<11}", amount, speed),
                       (name, row.state, amount),
                       (name, row.state)):
            line = "  ".join(f for f in fields if f)
            if len(line) <= width:
                return line
        return line[:width]

    def _screen(self) -> list[str]:
        """The lines to draw: never wider than the terminal, never more than fit on it."""
        cols, lines = self._size()
        # One column spare: writing the last column makes some terminals wrap at once.
        width = max(cols - 1, 10)
        height = max(lines - 1, 1)
        out = [self._total(width)]
        rows = list(self._rows.values())
        room = height - 1
        if len(rows) > room:
            # Keep the rows in motion, then the latest ones; one row sums up the rest.
            keep = max(room - 1, 0)
            order = sorted(range(len(rows)), key=lambda i: (not rows[i].active, -i))
            shown = sorted(order[:keep])
            hidden = len(rows) - len(shown)
            done = sum(1 for i in order[keep:] if rows[i].state in ("applied", "cached",
                                                                    "downloaded", "scanned"))
            out.extend(self._line(rows[i], width) for i in shown)
            if room >= 1:
                out.append(f"... {hidden} more ({done} done)"[:width])
        else:
            out.extend(self._line(r, width) for r in rows)
        return out[:height]

    def _draw(self) -> None:
        self._resized = False
        lines = self._screen()
        out = []
        if self._drawn:
            # Back to the start of the first line drawn: each drawn line took one row.
            out.append("\r" + (f"\x1b[{self._drawn - 1}A" if self._drawn > 1 else ""))
        out.append("\n".join("\x1b[2K" + line for line in lines))
        out.append("\x1b[J")  # what an earlier, taller drawing left below
        self._drawn = len(lines)
        try:
            self._stream.write("".join(out))
            self._stream.flush()
        except (OSError, ValueError):  # the terminal went away: stop drawing
            self._drawn = 0

    def close(self) -> None:
        """Draw the final state and leave the cursor below it."""
        with self._lock:
            if self._rows or self._finishing:
                self._draw()
                try:
                    self._stream.write("\n")
                    self._stream.flush()
                except (OSError, ValueError):
                    pass
                self._drawn = 0
            if self._previous_winch is not None and \
                    threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGWINCH, self._previous_winch)  # type: ignore[arg-type]
                self._previous_winch = None


class LineProgress:
    """One line per step on a stream that is no terminal (a pipe, a log file)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._fetched: set[Digest] = set()
        self._applying: dict[Digest, tuple[str, int]] = {}

    def _say(self, line: str) -> None:
        try:
            self._stream.write(printable(line) + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            if isinstance(event, BlobStarted):
                self._fetched.add(event.digest)
                resume = f", resuming at {human_size(event.offset)}" if event.offset else ""
                self._say(f"Copying {event.what} {event.digest} ({human_size(event.size)}{resume})")
            elif isinstance(event, BlobRetrying):
                self._say(f"Retrying {event.digest.short} in {event.delay:.1f}s "
                          f"(attempt {event.attempt}): {event.reason}")
            elif isinstance(event, BlobDone):
                if event.cached and event.digest not in self._fetched:
                    self._say(f"Using cached {event.what} {event.digest}")
            elif isinstance(event, LayerApplying):
                seen = self._applying.get(event.digest)
                if seen is None or seen[0] != event.phase or event.done < seen[1]:
                    verb = "Reading" if event.phase == "scan" else "Applying"
                    again = " again" if seen is not None and seen[0] == event.phase else ""
                    self._say(f"{verb} {_layer_label(event)} {event.digest}{again}")
                self._applying[event.digest] = (event.phase, event.done)
            elif isinstance(event, Finishing):
                text = finishing_text(event)
                self._say(text[0].upper() + text[1:])

    def close(self) -> None:
        """Nothing is pending: every line is written when its event arrives."""


def make_renderer(quiet: bool = False,
                  stream: TextIO | None = None) -> TtyProgress | LineProgress | None:
    """The renderer for ``stream`` (stderr): ``TtyProgress`` on a terminal, else
    ``LineProgress``; None when quiet."""
    stream = stream if stream is not None else sys.stderr
    if quiet:
        return None
    try:
        tty = stream.isatty()
    except (OSError, ValueError):
        tty = False
    return TtyProgress(stream) if tty else LineProgress(stream)
