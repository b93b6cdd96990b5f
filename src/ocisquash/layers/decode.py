"""The uncompressed tar stream of a layer, decoded on a thread of its own beside the
tar parser, hashed for the diff_id check, and held to the ratio limit."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ..digest import HashBehind
from ..errors import LayerError, LimitExceededError, OcisquashError
from ..rules import Limits
from .compression import Compression, PeekReader

#: bytes read and handed on at once
CHUNK = 1 << 20


class TarStream:
    """The uncompressed tar stream, decoded on a thread of its own.

    The thread reads the blob (whose reader checks the blob's digest at its end),
    decompresses it, hashes every uncompressed byte for the diff_id check (unless the
    blob's own check is that check), enforces the ratio limit, maps decoder errors to
    ``LayerError``, and hands chunks of about 1 MiB to the parser through a short
    queue; errors travel the same queue, in stream order. Hashing there rather than in
    the parser's thread takes CPU off the thread that parses the tar and feeds the
    squashfs writer (isal, zstandard and hashlib release the GIL, so both threads run
    at once; figures: ``bench/README.md``). With 4 cores or more both digests are
    computed behind this thread, on threads of their own (``digest.HashBehind``).
    """

    #: chunks decoded ahead of the parser
    QUEUED = 4

    def __init__(self, inner: Any, raw: PeekReader, algorithm: str | None,
                 compression: Compression, limits: Limits, context: str,
                 abort: Callable[[], None] | None = None, marks: bool = False) -> None:
        #: the uncompressed bytes' hash; None when nothing is to be checked against it
        self.hash = HashBehind(algorithm) if algorithm else None
        #: ends a read of the blob that waits for bytes (a layer read as it downloads)
        self._abort = abort
        self.count = 0
        self.eof = False
        self._chunk = b""
        self._pos = 0
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(self.QUEUED)
        self._stopped = False
        #: the compressed bytes read by the end of each chunk not handed out yet, kept
        #: when asked for (for ``compressed``)
        self._marks: deque[int] | None = deque() if marks else None
        #: the compressed bytes read by the end of the last chunk handed out (with
        #: ``marks``): the same for the same blob whatever the timing, as the decoders
        #: read the blob in pieces of fixed sizes (``PeekReader`` waits for whole pieces)
        #: and the chunks are of fixed sizes
        self.compressed = 0
        self._thread = threading.Thread(
            target=self._decode, args=(inner, raw, compression, limits, context),
            name="ocisquash-decode", daemon=True)
        self._thread.start()

    def _decode(self, inner: Any, raw: PeekReader, compression: Compression, limits: Limits,
                context: str) -> None:
        item: bytes | BaseException = b""
        try:
            while True:
                try:
                    data: bytes = inner.read(CHUNK)
                except OcisquashError:
                    raise
                except EOFError:
                    raise LayerError(f"{compression} stream truncated", context=context) from None
                except Exception as e:
                    raise LayerError(f"invalid {compression} stream: {e}", context=context) from None
                if not data:
                    break
                if self.hash is not None:
                    self.hash.update(data)
                self.count += len(data)
                marks = self._marks
                if marks is not None:
                    marks.append(raw.count)
                if self.count > limits.ratio_floor and self.count > limits.max_ratio * max(raw.count, 1):
                    raise LimitExceededError(
                        f"layer expands more than {limits.max_ratio}× ({raw.count} compressed "
                        f"bytes gave {self.count})",
                        context=context,
                        hint="a decompression bomb? raise Limits.max_ratio if the image is genuine",
                    )
                if not self._put(data):
                    return
            while raw.read(CHUNK):  # the source's stream checks the blob digest at its EOF
                pass
        except BaseException as e:  # handed to the parser's thread, raised there
            item = e
        finally:
            if self.hash is not None:
                self.hash.close()  # all it will get is hashed; hexdigest still answers
        self._put(item)

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stopped:
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (``b""`` only at the end); whole chunks are passed on uncopied."""
        if self._pos >= len(self._chunk):
            if self.eof:
                return b""
            item = self._queue.get()
            if isinstance(item, BaseException):
                self.eof = True
                raise item
            if not item:
                self.eof = True
                return b""
            self._chunk, self._pos = item, 0
            if self._marks is not None:
                self.compressed = self._marks.popleft()
        chunk, pos = self._chunk, self._pos
        if pos == 0 and (n is None or n < 0 or n >= len(chunk)):
            self._pos = len(chunk)
            return chunk
        out = chunk[pos:] if n is None or n < 0 else chunk[pos:pos + n]
        self._pos = pos + len(out)
        return out

    def drain(self) -> None:
        """Read to the end: the blob's and the tar's digests are then both checked."""
        while self.read(CHUNK):
            pass

    def close(self) -> None:
        """Stop the thread (it may be waiting to hand over a chunk, or for the blob's
        bytes to arrive) and wait for it."""
        self._stopped = True
        if self._abort is not None and self._thread.is_alive():
            self._abort()
        while self._thread.is_alive():
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(0.05)
