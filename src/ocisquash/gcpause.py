"""The cyclic garbage collector pauses while an image is built.

A build makes a few objects for every tar member and keeps most of them (the squashfs
tree, the flattener's decisions) until the image is finished. CPython's collector
runs every 700 net allocations and, every tenth and hundredth time, walks the older
generations, so the walks grow with the image: compiling the 100,000-file bench image,
collections took 0.45-0.55 s of the 4.5-5.6 s build (6 full ones among 1,000), and
the build's main thread used 0.4-0.9 s more CPU with the collector on. None of those
objects form reference cycles (a collection right after the build freed nothing, on
each bench image), so there is nothing for a collection to free until the build ends.

The pause is process-wide, like the collector: it starts when the first build in the
process starts and ends when the last one ends, and the collector is switched back on
only if it was on before.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_builds = 0
_was_enabled = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Switch the cyclic collector off for the ``with`` block (see the module docstring)."""
    global _builds, _was_enabled
    with _lock:
        if _builds == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _builds += 1
    try:
        yield
    finally:
        with _lock:
            _builds -= 1
            if _builds == 0 and _was_enabled:
                gc.enable()
