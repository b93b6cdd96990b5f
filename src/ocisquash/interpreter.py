"""Interpreter settings that ocisquash changes while it builds an image.

Two are process-wide and changed only while at least one build runs
(:class:`HeldSetting`): the cyclic garbage collector is off (here), and the GIL's
switch interval is short while squashfs blocks are compressed (``squashfs/blocks.py``).

Why the collector pauses: a build makes a few objects for every tar member and keeps
most of them (the squashfs tree, the flattener's decisions) until the image is
finished. CPython's collector runs every 700 net allocations and, every tenth and
hundredth time, walks the older generations, so the walks grow with the image:
compiling the 100,000-file bench image, collections took 0.45-0.55 s of the 4.5-5.6 s
build (6 full ones among 1,000), and the build's main thread used 0.4-0.9 s more CPU
with the collector on. None of those objects form reference cycles (a collection
right after the build freed nothing, on each bench image), so there is nothing for a
collection to free until the build ends.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class HeldSetting(Generic[T]):
    """A process-wide setting changed while any holder holds it.

    The first :meth:`acquire` saves the setting and applies ``during(saved)``; the last
    :meth:`release` puts the saved value back, unless the setting no longer has the value
    applied: then the program using ocisquash has set its own meanwhile, and that stays.
    """

    def __init__(self, get: Callable[[], T], set_: Callable[[T], None],
                 during: Callable[[T], T]) -> None:
        self._get, self._set, self._during = get, set_, during
        self._lock = threading.Lock()
        self._holders = 0
        #: (the value saved, the value applied) while held
        self._state: tuple[T, T] | None = None

    def acquire(self) -> None:
        with self._lock:
            if self._holders == 0:
                saved = self._get()
                self._set(self._during(saved))
                self._state = (saved, self._get())
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0 and self._state is not None:
                saved, applied = self._state
                self._state = None
                if self._get() == applied:
                    self._set(saved)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


def _set_collector(on: bool) -> None:
    if on:
        gc.enable()
    else:
        gc.disable()


_COLLECTOR: HeldSetting[bool] = HeldSetting(gc.isenabled, _set_collector, lambda _was: False)


def collector_paused() -> contextlib.AbstractContextManager[None]:
    """Switch the cyclic collector off for a ``with`` block (see the module docstring);
    it comes back on when the last concurrent build ends, if it was on before."""
    return _COLLECTOR.held()
