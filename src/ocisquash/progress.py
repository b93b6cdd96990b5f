"""Progress as plain data, and a terminal renderer kept apart from it.

Downloaders emit the frozen events below to a ``progress`` callable
(``SourceOptions.progress``); they know nothing about terminals. ``TtyProgress``
draws one line per blob on a terminal (stderr), redrawing at most a few times a
second; ``make_renderer`` returns None when nothing should be drawn (``--quiet``
or output that is not a terminal), so callers just pass its result on.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from .digest import Digest

#: What a source calls with each event; it must return quickly and never raise.
ProgressCallback = Callable[[object], None]


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
    """All layers are applied; the squashfs tables are being written."""

    files: int


ProgressEvent = BlobStarted | BlobProgress | BlobRetrying | BlobDone | LayerApplying | Finishing


class CallerCallback:
    """A caller's ``progress`` callable, wrapped so that its own exception survives.

    The callback runs deep inside ocisquash (in a layer's read, on a download
    thread), where code that turns stream errors into ``LayerError`` would report a
    caller's bug as an invalid layer. The first exception it raises is kept; every
    later call raises it again at once, so that the work stops, and
    :meth:`reraise` hands it back to the caller as itself.
    """

    def __init__(self, callback: ProgressCallback) -> None:
        self.callback = callback
        self.error: BaseException | None = None

    def __call__(self, event: object) -> None:
        if self.error is not None:
            raise self.error
        try:
            self.callback(event)
        except BaseException as e:
            self.error = e
            raise

    def close(self) -> None:
        """Draw a renderer's final state (``TtyProgress.close``), if it has one."""
        close = getattr(self.callback, "close", None)
        if callable(close):
            close()

    def reraise(self) -> None:
        """Raise the callback's own exception, if it raised one."""
        if self.error is not None:
            raise self.error.with_traceback(self.error.__traceback__) from None


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


@dataclass
class _Row:
    what: str
    digest: Digest
    size: int
    done: int = 0
    state: str = "downloading"


class TtyProgress:
    """Draws one line per blob on a terminal and redraws them in place."""

    BAR_WIDTH = 24
    INTERVAL = 0.1

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._rows: dict[Digest, _Row] = {}
        self._drawn = 0
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, event: object) -> None:
        with self._lock:
            force = True
            if isinstance(event, BlobStarted):
                self._rows[event.digest] = _Row(event.what, event.digest, event.size, event.offset)
            elif isinstance(event, BlobProgress):
                row = self._rows.get(event.digest)
                if row is None:
                    return
                row.done = event.done
                force = False
            elif isinstance(event, BlobRetrying):
                row = self._rows.get(event.digest)
                if row is None:
                    return
                row.state = f"retry {event.attempt} in {event.delay:.1f}s"
            elif isinstance(event, BlobDone):
                row = self._rows.setdefault(event.digest, _Row(event.what, event.digest, event.size))
                row.done = event.size
                row.state = "cached" if event.cached else "done"
            elif isinstance(event, LayerApplying):
                key = Digest("apply", f"{event.index}-{event.digest.hex}")
                row = self._rows.setdefault(
                    key, _Row(f"apply {event.index}/{event.count}", event.digest, event.size))
                row.done = event.done
                row.state = "applied" if event.done >= event.size else "applying"
                force = event.done >= event.size
            elif isinstance(event, Finishing):
                key = Digest("finish", "")
                self._rows[key] = _Row("squashfs", key, 1, 1, f"writing tables of {event.files} files")
            else:
                return
            now = time.monotonic()
            if force or now - self._last >= self.INTERVAL:
                self._last = now
                self._draw()

    def _line(self, row: _Row) -> str:
        frac = row.done / row.size if row.size else 1.0
        filled = int(frac * self.BAR_WIDTH)
        bar = "#" * filled + "." * (self.BAR_WIDTH - filled)
        state = "" if row.state in ("downloading", "applying") else f"  {row.state}"
        if row.digest.algorithm == "finish":
            return f"{row.what:<12} {row.state}"
        return (f"{row.what:<12} {row.digest.short}  [{bar}] "
                f"{human_size(row.done):>10} / {human_size(row.size)}{state}")

    def _draw(self) -> None:
        out = []
        if self._drawn:
            out.append(f"\x1b[{self._drawn}F")  # back to the first line drawn
        for row in self._rows.values():
            out.append("\x1b[2K" + self._line(row) + "\n")
        self._drawn = len(self._rows)
        self._stream.write("".join(out))
        self._stream.flush()

    def close(self) -> None:
        """Draw the final state."""
        with self._lock:
            if self._rows:
                self._draw()


def make_renderer(quiet: bool = False, stream: TextIO | None = None) -> TtyProgress | None:
    """A renderer for ``stream`` (stderr), or None when quiet or not a terminal."""
    stream = stream if stream is not None else sys.stderr
    if quiet or not stream.isatty():
        return None
    return TtyProgress(stream)
