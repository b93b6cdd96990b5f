"""A caller's callback, guarded so that its own exception reaches the caller unchanged."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .progress import ProgressCallback, ProgressEvent


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

    def __call__(self, event: ProgressEvent) -> None:
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
