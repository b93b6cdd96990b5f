"""Interpreter settings that ocisquash changes while ``compile_image`` or ``pack`` builds
an image, and only then.

Both are process-wide, so they are held (:class:`HeldSetting`) by the operations a
program calls, never by the parts it may use on its own: a ``SquashfsWriter`` made by
a library user runs with the caller's settings. Each is restored when the last
concurrent build ends, unless the program set its own meanwhile. What each buys on
the bench machine is in ``bench/README.md`` ("Mechanisms and what they buy").

* The cyclic garbage collector is off (:func:`collector_paused`). A build makes a few
  objects for every tar member and keeps most of them (the squashfs tree, the
  flattener's decisions) until the image is finished, so the collector's walks of
  the older generations grow with the image. None of those objects form reference
  cycles: there is nothing for a collection to free until the build ends.
* The GIL's switch interval is at most :data:`SWITCH_INTERVAL` while squashfs blocks
  or EROFS pclusters are compressed (:func:`switches_shortened`). A compressing thread
  needs the GIL for a moment around each C call (an EROFS pcluster takes three), and
  the thread parsing the layers runs Python most of the time: at CPython's 5 ms, a
  compressing thread waits that long to hand a block back, and the writer then waits
  for blocks that are not ready.
"""

from __future__ import annotations

import contextlib
import gc
import sys
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


#: The switch interval while squashfs blocks or EROFS pclusters are compressed (see the
#: module docstring).
SWITCH_INTERVAL = 0.0005

_SWITCH: HeldSetting[float] = HeldSetting(
    sys.getswitchinterval, sys.setswitchinterval, lambda saved: min(saved, SWITCH_INTERVAL))


def switches_shortened() -> contextlib.AbstractContextManager[None]:
    """Shorten the GIL's switch interval to at most :data:`SWITCH_INTERVAL` for a
    ``with`` block; the caller's comes back when the last concurrent build ends."""
    return _SWITCH.held()
