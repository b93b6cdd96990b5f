"""File data: block splitting, parallel compression, fragments, sparse blocks, dedup.

Format rules enforced here:

* files are "divided into fixed size blocks that are separately compressed and stored
  in order"; "there MUST NOT be any gaps between data blocks from a single file";
* "if the compressed size would exceed the input size ... the original, uncompressed
  data is stored" and bit 24 of the block size says so;
* "if a block has an on-disk size of 0 this translates to an entire block filled with
  0 bytes": all-zero full blocks are not written at all;
* tail ends shorter than a block are packed into fragment blocks of at most one block
  size, located through the fragment table (or, without fragments, stored as a short
  last block);
* identical files may share blocks ("Doing so is NOT counted as a hard link").

Duplicate files are found by a sha256 key over the file's data. A file shorter than a
block is always hashed (such sizes repeat all the time). A longer one is hashed only
when an earlier file has its size: the first file of each size is written unhashed,
and when a second one comes, the first is keyed by reading its blocks back from the
output and decoding them (once per size; like mksquashfs, which compares files of the
same size only), or, in a compile that reuses blocks, from the sha256 of each block that
the new image's block index records. The keys, and so the image, are the same as if every file were
hashed; an output that cannot be read back gets exactly that. Large files, which
rarely repeat, are then hashed rarely (figures: ``bench/README.md``).

An image may hold a million small files, so their records are kept small. A file
shorter than a block that lands in a fragment is recorded as one int
(:func:`pack_short`) instead of a :class:`FileData`. When the output can be read back,
such a file's dedup key is an int of 60 bits (40 bits of :func:`short_hash` and its
size), and a file matching a key is compared with the stored file's bytes, read back,
before it shares them; a different file with the same short key is keyed by its whole
sha256 in a second, small map. So duplicates are exactly those the whole sha256 finds,
whatever hash makes the short key: it only decides which stored file is compared. A
compile that records layer indexes computes each tail's CRC-32 for them anyway and makes
the short key of that instead: a replayed file's key is then known from its index, and
a file no stored file shares a key with is placed without its bytes
(:meth:`DataWriter.write_indexed`). A CRC-32 can be forged to match; a forged match
costs what a true copy costs (one comparison with the stored file's bytes), and a
sha256 besides.

Blocks are compressed by a thread pool but written strictly in submission order, so the
output is byte-identical whatever the thread timing. At most :data:`IN_FLIGHT_BYTES` of
blocks per worker (and at least two blocks) are in flight, which bounds memory: enough
that a worker finding the oldest block still being compressed by another has later ones
to take (fewer made compiles slower: ``bench/README.md``).

A compressing thread needs the GIL for a moment around each C call (once per zstd
block, see ``compressor._zstd_in_one_call``); a build that uses this module through
``compile_image`` or ``pack`` shortens the switch interval for that
(``interpreter.switches_shortened``). The pipeline itself leaves the interpreter's
settings alone.
"""

from __future__ import annotations

import errno
import hashlib
import io
import mmap
import os
from array import array
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO, Protocol

from isal.isal_zlib import crc32 as _crc32

from ..entry import HoleReader
from ..errors import SquashfsError
from .compressor import Compressor
from .format import DATA_UNCOMPRESSED, FRAGMENT_ENTRY, INVALID_INDEX
from .reuse import _CRC_GIL_MINSIZE, BlockReuse, crc32_holding_gil


class Placed(Protocol):
    """Told where a block landed: its offset and its size field, ``count`` times over
    for a run of zero blocks."""

    def __call__(self, position: int, field: int, count: int = 1) -> None: ...


#: Uncompressed bytes of blocks queued or being compressed, per worker.
IN_FLIGHT_BYTES = 4 << 20

#: A compressing thread takes blocks in batches of about this many bytes (at least one
#: block): each hand-over wakes it, and it needs the GIL to wake (figures:
#: ``bench/README.md``).
BATCH_BYTES = 512 << 10


def _compress_block(compressor: Compressor, data: bytes) -> tuple[bytes, int]:
    packed = compressor.compress(data)
    if len(packed) < len(data):
        return packed, len(packed)
    return data, len(data) | DATA_UNCOMPRESSED


def _compress_batch(compressor: Compressor, blocks: list[bytes]) -> list[tuple[bytes, int]]:
    done = [_compress_block(compressor, data) for data in blocks]
    blocks.clear()  # handed over, the list is this thread's: let the input go
    return done


class Known:
    """A block given by its digest, whose stored bytes an earlier image holds (a replayed
    layer's, see ``layerindex.py``); it counts as ``size`` bytes in a batch."""

    __slots__ = ("digest", "size")

    def __init__(self, digest: bytes, size: int) -> None:
        self.digest = digest
        self.size = size

    def __len__(self) -> int:
        return self.size


#: Where an earlier image holds a block's stored bytes: its descriptor and the offset.
Source = tuple[int, int]

#: A block ready to be written: its stored bytes or where an earlier image holds them,
#: its size field, and what the new image's block index keeps of it besides (its
#: digest, its length, the CRC-32 of its stored bytes).
Ready = tuple[bytes | Source, int, bytes, int, int]


def _reuse_batch(compressor: Compressor, reuse: BlockReuse, blocks: list[bytes | Known],
                 copying: bool) -> list[Ready]:
    """As :func:`_compress_batch`, taking the blocks an earlier image holds from there;
    each result also carries what the new image's block index keeps. With ``copying``,
    such a block is given by where it is (:class:`_Copier` copies it), else by its
    bytes."""
    done: list[Ready] = []
    for data in blocks:
        if type(data) is Known:
            digest = data.digest
        else:
            assert isinstance(data, bytes)
            digest = hashlib.sha256(data).digest()
        found: Ready | None = None
        if copying:
            at = reuse.locate(digest)
            if at is not None:
                found = ((at[0], at[1]), at[2], digest, at[3], at[4])
        else:
            stored = reuse.stored(digest)
            if stored is not None:
                found = (stored[0], stored[1], digest, stored[2], stored[3])
        if found is None:
            if type(data) is Known:
                from .layerindex import ReplayError

                raise ReplayError("a block a layer index names cannot be read from its image")
            assert isinstance(data, bytes)
            packed, field = _compress_block(compressor, data)
            # One call that lets the GIL go: this is a compressing thread.
            found = (packed, field, digest, len(data), _crc32(packed))
        done.append(found)
    blocks.clear()
    return done


#: Contiguous blocks of an earlier image copied in one go, at most (fewer hand-overs to
#: the copying thread, which needs the GIL for each).
COPY_RUN = 4 << 20

#: Runs handed to the copying thread and not yet done, at most: they hold no bytes, so
#: the writing thread waits for the copies only to read a block back or at the end (on
#: a loaded machine, a bound of 4 had it waiting for them a tenth of a recompile).
_COPIES_IN_FLIGHT = 64


class _Copier:
    """Copies the stored bytes of blocks that earlier images hold into the output, in a
    thread of its own, by ``os.copy_file_range``: in the kernel, and as a shared extent
    where the filesystem can. Consecutive blocks of an earlier image that land
    consecutively are one copy. The writing thread only says where each goes: copying
    226 MB through it took a fifth of a recompile's time there (bench/README.md).
    Copies land at their own offsets, so their order against the other writes does not
    matter; :meth:`wait` is called before the output is written over, and
    :meth:`wait_for` before a part of it is read back.

    Each run copied is mapped from the output, and each block of it checked against
    the CRC-32 of its stored bytes that the earlier image's block index keeps, on this
    thread: a block damaged in place in the earlier image (its size and mtime kept)
    raises :class:`~.layerindex.ReplayError` (the compile then builds again
    without copying) rather than landing in the image. The bytes checked are the ones
    written, so a change to the earlier image between a check and its copy cannot slip
    through, whether the kernel copied or shared the extents."""

    def __init__(self, out: int) -> None:
        self._out = out
        #: the run not handed over yet: descriptor, source offset, output offset, size
        self._run: list[int] | None = None
        #: the stored size and CRC-32 of each block of that run, in order
        self._checks: list[tuple[int, int]] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ocisquash-copy")
        #: the runs handed over, in order (one thread copies them in that order), each
        #: with where it lands: its first and its end offset
        self._copying: deque[tuple[Future[None], int, int]] = deque()
        #: False once the kernel refused to copy between these files: read and write
        self._in_kernel = hasattr(os, "copy_file_range")
        #: what the copying thread reads the copies back into (see :meth:`_check_read`)
        self._buffer: memoryview | None = None

    def add(self, source: Source, position: int, size: int, check: int) -> None:
        """Copy the ``size`` stored bytes of a block at ``source`` to ``position`` of the
        output; ``check`` is their CRC-32."""
        fd, at = source
        run = self._run
        if (run is not None and run[0] == fd and run[1] + run[3] == at
                and run[2] + run[3] == position and run[3] < COPY_RUN):
            run[3] += size
            self._checks.append((size, check))
            return
        self._hand_over()
        self._run = [fd, at, position, size]
        self._checks = [(size, check)]

    def _hand_over(self) -> None:
        copying = self._copying
        while copying and copying[0][0].done():
            copying.popleft()[0].result()  # raises what the copy raised
        run = self._run
        if run is None:
            return
        self._run = None
        fd, at, position, size = run
        copying.append((self._pool.submit(self._copy, fd, at, position, size, self._checks),
                        position, position + size))
        self._checks = []
        while len(copying) > _COPIES_IN_FLIGHT:
            copying.popleft()[0].result()

    def wait(self) -> None:
        """Return once every copy asked for is in the output."""
        self._hand_over()
        copying = self._copying
        while copying:
            copying.popleft()[0].result()

    def wait_for(self, start: int, end: int) -> None:
        """Return once the copies that land in ``[start, end)`` of the output are there
        (duplicate detection reads a few blocks back: it need not wait for the rest)."""
        run = self._run
        if run is not None and run[2] < end and start < run[2] + run[3]:
            self._hand_over()
        copying = self._copying
        last = -1
        for i, (_, first, stop) in enumerate(copying):
            if first < end and start < stop:
                last = i
        for _ in range(last + 1):  # the runs before it are copied first
            copying.popleft()[0].result()

    def close(self, cancel: bool = False) -> None:
        try:
            if cancel:
                self._run = None
                self._checks = []
                for future, _, _ in self._copying:
                    future.cancel()
                self._copying.clear()
            else:
                self.wait()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=cancel)

    def _copy(self, fd: int, at: int, position: int, size: int,
              checks: list[tuple[int, int]]) -> None:
        out = self._out
        start, total = position, size
        while size:
            if self._in_kernel:
                try:
                    n = os.copy_file_range(fd, out, size, at, position)
                except OSError as e:
                    if e.errno not in _NO_KERNEL_COPY:
                        raise
                    self._in_kernel = False
                    continue
            else:
                data = os.pread(fd, min(size, 1 << 20), at)
                n = os.pwrite(out, data, position) if data else 0
            if n <= 0:
                from .layerindex import ReplayError

                raise ReplayError("an earlier image ends before a block it holds")
            at += n
            position += n
            size -= n
        self._check(start, total, checks)

    def _check(self, position: int, size: int, checks: list[tuple[int, int]]) -> None:
        """Check the ``size`` bytes at ``position`` of the output, blocks of the stored
        sizes and CRC-32s ``checks`` (the pages the copy has just put in the page
        cache). They are mapped, not read: reading them into a buffer took four times
        as long as isal's CRC-32 over them (devel-v2's recompile checks 226 MB). The
        output is not truncated before every copy is done (:meth:`wait`), so the pages
        mapped stay in the file. The CRC-32 is taken in pieces that keep the GIL: letting
        it go for each block (6,000 in that recompile) had this thread wait for it behind
        the writer's, and the writer wait for the copies at the end (0.09-0.15 s
        instead of 0.03-0.05)."""
        # The run is these blocks, added one by one: else the loops below would not end.
        assert sum(stored for stored, _ in checks) == size
        base = position - position % mmap.ALLOCATIONGRANULARITY
        try:
            mapped = mmap.mmap(self._out, position + size - base, offset=base,
                               access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # a file that cannot be mapped: read back instead
            self._check_read(position, size, checks)
            return
        with mapped:
            view = memoryview(mapped)
            try:
                at = position - base
                for stored, check in checks:
                    if crc32_holding_gil(view[at:at + stored]) != check:
                        _mismatch()
                    at += stored
            finally:
                view.release()

    def _check_read(self, position: int, size: int, checks: list[tuple[int, int]]) -> None:
        """:meth:`_check` for an output that cannot be mapped: read back in chunks of
        :data:`_CHECK_CHUNK` into one buffer (a fresh buffer per run would be fresh
        pages to fault in and zero)."""
        if self._buffer is None:
            self._buffer = memoryview(bytearray(_CHECK_CHUNK))
        buffer = self._buffer
        i = 0
        left, check = checks[0]
        crc = 0
        while size:
            n = os.preadv(self._out, [buffer[:min(size, _CHECK_CHUNK)]], position)
            if n <= 0:
                from .layerindex import ReplayError

                raise ReplayError("a run copied from an earlier image cannot be read back")
            at = 0
            while at < n:
                take = min(left, n - at)  # a block may go on into the next chunk
                crc = crc32_holding_gil(buffer[at:at + take], crc)
                at += take
                left -= take
                if not left:
                    if crc != check:
                        _mismatch()
                    i += 1
                    crc = 0
                    if i < len(checks):
                        left, check = checks[i]
            position += n
            size -= n


def _mismatch() -> None:
    from .layerindex import ReplayError

    raise ReplayError("a block copied from an earlier image does not match the CRC-32 "
                      "its block index keeps")


#: Where the output cannot be mapped, the copying thread reads what it copied back in
#: chunks of this size at most.
_CHECK_CHUNK = 1 << 20


#: What ``copy_file_range`` answers when it cannot copy between two files (other
#: filesystems, or one that does not do it): they are read and written instead.
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


class _Done:
    """What a future gives, known when the block is queued (a block of an earlier image
    that is copied: no thread need look at it)."""

    __slots__ = ("_done",)

    def __init__(self, done: list[Ready]) -> None:
        self._done = done

    def result(self) -> list[Ready]:
        return self._done

    def cancel(self) -> bool:
        return False


class _Batch:
    """Blocks a compressing thread takes at once; ``future`` is None until it is handed
    over, and only then does ``blocks`` stop growing."""

    __slots__ = ("blocks", "future", "size")

    def __init__(self) -> None:
        self.blocks: list[bytes | Known] = []
        self.size = 0
        self.future: Future[list[tuple[bytes, int]]] | Future[list[Ready]] | _Done | None = None


class BlockPipeline:
    """Compresses blocks in parallel and writes them to ``out`` in submission order."""

    def __init__(self, out: BinaryIO, position: int, compressor: Compressor, workers: int,
                 block_size: int, reuse: BlockReuse | None = None,
                 out_fd: int | None = None) -> None:
        self._out = out
        self._compressor = compressor
        #: copies blocks of earlier images and indexes this one's (see ``reuse.py``)
        self._reuse = reuse
        #: with ``out_fd`` (``out``'s own descriptor, a file's): blocks of earlier images
        #: are copied from file to file, not through here
        self._copier = _Copier(out_fd) if reuse is not None and out_fd is not None else None
        #: where ``out``'s own position is (it lags ``position`` after a copy)
        self._out_at = position
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ocisquash-sqfs")
        #: each block: its batch (None for a sparse block), its index there, and whom
        #: to tell where it landed
        self._queue: deque[tuple[_Batch | None, int, Placed]] = deque()
        #: the batch that submitted blocks join, not handed over yet
        self._filling: _Batch | None = None
        self._limit = max(2, IN_FLIGHT_BYTES // block_size) * workers
        self._submitted = 0
        self._retired = 0
        #: absolute offset where the next retired block goes
        self.position = position

    @property
    def reuses(self) -> bool:
        """Whether blocks of earlier images can be copied (``submit_known``)."""
        return self._reuse is not None

    @property
    def submitted(self) -> int:
        """Number of submissions so far (a run of zero blocks is one); a mark for
        :meth:`discard_since`."""
        return self._submitted

    def submit(self, data: bytes, placed: Placed) -> None:
        """Queue ``data`` for compression; ``placed`` is told where it landed."""
        batch = self._filling
        if batch is None:
            batch = self._filling = _Batch()
        self._queue.append((batch, len(batch.blocks), placed))
        batch.blocks.append(data)
        batch.size += len(data)
        if batch.size >= BATCH_BYTES:
            self._hand_over()
        self._submitted += 1
        while len(self._queue) > self._limit:
            self._retire()

    def submit_known(self, block: Known, placed: Placed, check: bool = False) -> None:
        """Queue a block whose stored bytes an earlier image holds (needs ``reuse``);
        with ``check``, those bytes are read and checked against their CRC-32 first."""
        if self._reuse is None:
            raise SquashfsError("a block given by its digest needs earlier images")
        if check and self._reuse.read(block.digest) is None:
            from .layerindex import ReplayError

            raise ReplayError("a block of an earlier image cannot be read, or does not match "
                              "the CRC-32 its block index keeps")
        if self._copier is not None:
            # Where it is is all the copy needs: no compressing thread is woken for it
            # (a replay queues thousands of them).
            at = self._reuse.locate(block.digest)
            if at is None:
                from .layerindex import ReplayError

                raise ReplayError("a block a layer index names cannot be read from its image")
            known = _Batch()
            known.future = _Done([((at[0], at[1]), at[2], block.digest, at[3], at[4])])
            self._queue.append((known, 0, placed))
            self._submitted += 1
            while len(self._queue) > self._limit:
                self._retire()
            return
        batch = self._filling
        if batch is None:
            batch = self._filling = _Batch()
        self._queue.append((batch, len(batch.blocks), placed))
        batch.blocks.append(block)
        batch.size += block.size
        if batch.size >= BATCH_BYTES:
            self._hand_over()
        self._submitted += 1
        while len(self._queue) > self._limit:
            self._retire()

    def _hand_over(self) -> None:
        batch = self._filling
        assert batch is not None
        self._filling = None
        if self._reuse is None:
            # Only a replay submits Known blocks, and only with ``reuse``.
            batch.future = self._pool.submit(_compress_batch, self._compressor,
                                             batch.blocks)  # type: ignore[arg-type]
        else:
            batch.future = self._pool.submit(_reuse_batch, self._compressor, self._reuse,
                                             batch.blocks, self._copier is not None)

    def submit_sparse(self, placed: Placed, count: int = 1) -> None:
        """Queue ``count`` all-zero blocks: nothing is written, their size fields are 0.
        They are one item of the queue, and ``placed`` is called once per block."""
        self._queue.append((None, count, placed))
        self._submitted += 1
        # Retired as soon as the blocks before them are: a long run of zero blocks
        # must not grow the queue (a 1 TiB hole is 8 million of them).
        while len(self._queue) > self._limit:
            self._retire()

    def _retire(self) -> None:
        batch, index, placed = self._queue.popleft()
        self._retired += 1
        if batch is None:
            placed(self.position, 0, index)
            return
        if batch.future is None:
            self._hand_over()
            assert batch.future is not None
        done = batch.future.result()[index]
        payload, field = done[0], done[1]
        position = self.position
        if type(payload) is bytes:
            if self._out_at != position:
                self._out.seek(position)
            self._out.write(payload)
            size = len(payload)
            self._out_at = position + size
        else:  # in an earlier image
            assert self._copier is not None
            size = field & ~DATA_UNCOMPRESSED
            self._copier.add(payload, position, size, done[4])  # type: ignore[arg-type,misc]
        if self._reuse is not None:
            self._reuse.written(done[2], position, field, done[3], done[4])  # type: ignore[misc]
        placed(position, field)
        self.position = position + size

    def discard_since(self, mark: int, rewind_to: int | None) -> None:
        """Forget every block submitted after ``mark`` and move the write position back
        to ``rewind_to`` (the first of those blocks' offset, if any was written)."""
        while self._submitted > max(mark, self._retired):
            batch, index, _ = self._queue.pop()
            if batch is not None:
                if batch.future is None:  # still filling: the block is its last
                    batch.size -= len(batch.blocks.pop())
                elif index == 0:  # every block of the batch is forgotten
                    batch.future.cancel()
            self._submitted -= 1
        if rewind_to is not None and rewind_to != self.position:
            if self._reuse is not None:
                self._reuse.rewound(rewind_to)
            if self._copier is not None:
                self._copier.wait()  # nothing lands there after it is written again
            self.position = rewind_to
            self._out.seek(rewind_to)
            self._out_at = rewind_to

    def retire_oldest(self) -> None:
        """Write the oldest queued block (waiting for it to be compressed)."""
        if not self._queue:
            raise SquashfsError("no block is queued")
        self._retire()

    def drain(self) -> None:
        """Write every queued block (and wait for those copied), and put ``out``'s
        position after them."""
        while self._queue:
            self._retire()
        if self._copier is not None:
            self._copier.wait()
        if self._out_at != self.position:
            self._out.seek(self.position)
            self._out_at = self.position

    def known_length(self, digest: bytes) -> int | None:
        """The length of the block with ``digest`` that an earlier image holds (None:
        none does)."""
        return None if self._reuse is None else self._reuse.length(digest)

    def digest_at(self, position: int) -> bytes | None:
        """The sha256 of the block retired at ``position``, when blocks are reused (the
        block index records every block); else None."""
        return None if self._reuse is None else self._reuse.digest_at(position)

    def read_back(self, position: int, n: int) -> bytes:
        """``n`` bytes already written at ``position`` (the blocks there retired); the
        write position does not move."""
        if self._copier is not None:
            assert self._reuse is not None
            # A block an earlier image holds is read there, without waiting for its copy
            # (a replay's duplicates are compared with files in blocks copied just now).
            earlier = self._reuse.read_written(position, n)
            if earlier is not None:
                return earlier
            self._copier.wait_for(position, position + n)
        out = self._out
        here = out.tell()
        try:
            out.seek(position)
            data = out.read(n)
        finally:
            out.seek(here)
        if len(data) != n:
            raise SquashfsError(f"read back {len(data)} of {n} bytes at offset {position}")
        return data

    def close(self, cancel: bool = False) -> None:
        if cancel:
            for batch, _, _ in self._queue:
                if batch is not None and batch.future is not None:
                    batch.future.cancel()
            self._queue.clear()
            self._filling = None
        try:
            if self._copier is not None:
                self._copier.close(cancel)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=cancel)


#: Bits of a short file's size and of its fragment offset in :func:`pack_short`: both
#: are below the block size, at most 1 MiB.
_SHORT_BITS = 20
_SHORT_MASK = (1 << _SHORT_BITS) - 1


def pack_short(size: int, fragment: int, offset: int) -> int:
    """A file shorter than a block, stored in fragment ``fragment`` at ``offset`` (or
    empty, with fragment :data:`INVALID_INDEX`), as one int."""
    return size | offset << _SHORT_BITS | fragment << 2 * _SHORT_BITS


def unpack_short(packed: int) -> tuple[int, int, int]:
    """(size, fragment index, fragment offset) of a :func:`pack_short` record."""
    return (packed & _SHORT_MASK, packed >> 2 * _SHORT_BITS,
            packed >> _SHORT_BITS & _SHORT_MASK)


class FileData:
    """Where one file's contents landed: what its inode needs."""

    __slots__ = ("fragment", "fragment_offset", "size", "sizes", "sparse", "start")

    def __init__(self) -> None:
        self.size = 0
        #: absolute offset of the first block ("blocks start"); None when there is none
        self.start: int | None = None
        #: on-disk size field of each block (0 = sparse, bit 24 = uncompressed); None
        #: until the first block, as most files fit in a fragment
        self.sizes: array[int] | None = None
        self.fragment = INVALID_INDEX
        self.fragment_offset = 0
        #: "The number of bytes saved by omitting zero bytes."
        self.sparse = 0

    def placed(self, position: int, field: int, count: int = 1) -> None:
        if self.sizes is None:
            self.start = position
            self.sizes = array("I")
        if count == 1:
            self.sizes.append(field)
        else:  # a run of zero blocks
            self.sizes.frombytes(bytes(4 * count))

    def block_list(self) -> bytes:
        """The inode's "block sizes" array, packed."""
        return b"" if self.sizes is None else self.sizes.tobytes()

    @classmethod
    def of(cls, stored: Stored) -> FileData:
        """The record of a stored file, made whole from a :func:`pack_short` int."""
        if not isinstance(stored, int):
            return stored
        record = cls()
        record.size, record.fragment, record.fragment_offset = unpack_short(stored)
        return record


#: Where a file's data is: a :class:`FileData`, or a :func:`pack_short` int.
Stored = FileData | int

#: Where a replayed file's tail lies in an earlier image: the digest of the block that
#: holds it, its offset there, and the length of that block.
TailOrigin = tuple[bytes, int, int]

#: Fragment blocks read back to check small duplicates, kept decoded: copies of one
#: file tend to come many times.
_FRAGMENT_CACHE = 8


class DataWriter:
    """Streams file contents into the data area; see the module docstring for the rules."""

    def __init__(
        self,
        pipeline: BlockPipeline,
        block_size: int,
        *,
        fragments: bool,
        dedup: bool,
        decompress: Callable[[bytes, int], bytes] | None = None,
        check_tails: bool = False,
    ) -> None:
        self._pipeline = pipeline
        self._block_size = block_size
        self._zero = bytes(block_size)
        self._use_fragments = fragments
        self._dedup = dedup
        #: dedup key -> data: digest + 8-byte size as one bytes object, or for a short
        #: file checked by reading it back, a 60-bit int (see the module docstring)
        self._seen: dict[bytes | int, Stored] = {}
        #: short files whose short key was taken by a different file, by whole key
        self._collided: dict[bytes, Stored] = {}
        self._decompress = decompress
        self._short_keys = dedup and fragments and decompress is not None
        #: with ``check_tails``: a short file's dedup key is made of its CRC-32 (computed
        #: for the layer index anyway) instead of :func:`short_hash`, so that a replayed
        #: file's key is known from its index without its bytes
        self._crc_keys = self._short_keys and check_tails
        #: replayed tails are placed without their bytes (``write_indexed``)
        self.lazy_tails = fragments and (not dedup or self._crc_keys)
        #: fragment index -> decoded block, the last few read back
        self._fragment_cache: dict[int, bytes] = {}
        #: with ``decompress`` (the output can be read back): a file of a block or more
        #: is hashed only when an earlier file has its size. The first file of each
        #: size, not hashed, is kept here (None once it is keyed, by reading it back).
        self._first_of_size: dict[int, FileData | None] | None = (
            {} if dedup and decompress is not None else None)
        #: files read back to be keyed
        self.read_backs = 0
        self._fragment = bytearray()
        #: where the fragment block being filled comes from, when it holds only tails of
        #: replayed files, in the order and at the offsets they had in one block of an
        #: earlier image: that block's digest, the bytes of it the fragment holds, and
        #: its length. Once it holds the whole block it is that block, whose stored bytes
        #: are copied without hashing the fragment (see ``write_indexed``).
        self._origin: list[Any] | None = None
        #: tails in the fragment block being filled whose bytes are not there yet (zero
        #: bytes stand for them): their offset there, length, and what gives their bytes
        #: (checked against their CRC-32). Fetched only if the block is not copied whole.
        self._pending: list[tuple[int, int, Callable[[], tuple[bytes, TailOrigin | None]]]] = []
        #: fragment blocks written as a copy of an earlier image's block: that block's
        #: digest (a replayed file whose tail lies in it, at the same offset, is a
        #: duplicate of the file there without comparing bytes)
        self._copied: dict[int, bytes] = {}
        #: packed fragment table entries, in fragment index order
        self.fragment_table: list[bytes] = []
        self._fragment_count = 0
        self.bytes_in = 0
        self.duplicates = 0
        #: with ``check_tails``: the CRC-32 of the last stored file's last partial block
        #: (0: it has none), which a layer index keeps to check a replayed tail by
        self.check_tails = check_tails
        self.tail_check = 0

    @property
    def fragment_count(self) -> int:
        return self._fragment_count

    def write_file(self, stream: BinaryIO, size: int | None) -> Stored:
        """Read ``size`` bytes of ``stream`` (to EOF when None) and store them."""
        bs = self._block_size
        if size is not None and size < bs:
            data = _read_exactly(stream, size)
            if len(data) != size:
                raise SquashfsError(f"file data ended after {len(data)} of {size} bytes")
            return self.store_short(data)
        record = FileData()
        mark = self._pipeline.submitted
        # The dedup key: the size and a hash over per-block records (0x00 for a zero
        # block, 0x01 + sha256 for any other), unambiguous because records have fixed
        # sizes. A file shorter than a block (most files) is keyed by its own sha256
        # instead (see store_short): its size, in the key, tells the two kinds apart.
        hashing = self._dedup
        firsts = self._first_of_size
        if firsts is not None and size is not None and size not in firsts:
            # No earlier file has this size: none can be a copy of this one.
            firsts[size] = record
            hashing = False
        hasher = hashlib.sha256() if hashing else None
        remaining = size
        total = 0
        tail = b""
        holes = stream if isinstance(stream, HoleReader) else None
        while remaining is None or remaining > 0:
            if holes is not None:
                # Whole blocks of a hole are zero blocks, skipped without reading them.
                zeros = holes.zeros_ahead()
                if remaining is not None:
                    zeros = min(zeros, remaining)
                run = zeros // bs
                if run:
                    holes.skip_zeros(run * bs)
                    if hasher is not None:
                        for done in range(0, run, 1 << 20):
                            hasher.update(_ZERO_RECORD * min(run - done, 1 << 20))
                    record.sparse += run * bs
                    total += run * bs
                    if remaining is not None:
                        remaining -= run * bs
                    self._pipeline.submit_sparse(record.placed, run)
                    continue
            want = bs if remaining is None else min(bs, remaining)
            block = _read_exactly(stream, want)
            if remaining is not None:
                if len(block) != want:
                    raise SquashfsError(
                        f"file data ended after {total + len(block)} of {size} bytes"
                    )
                remaining -= want
            if not block:
                break
            total += len(block)
            if len(block) < bs:
                tail = block  # hashed below, once the file is known to be a block or more
                break
            if block == self._zero:
                # Zero blocks are not hashed, so sparse files cost no hashing.
                if hasher is not None:
                    hasher.update(_ZERO_RECORD)
                record.sparse += bs
                self._pipeline.submit_sparse(record.placed)
            else:
                if hasher is not None:
                    hasher.update(_record(block))
                self._pipeline.submit(block, record.placed)
        if total < bs:  # a stream of unknown size that turned out shorter than a block
            return self.store_short(tail)
        return self._finish_long(record, mark, hasher, total, tail)

    def write_indexed(self, size: int, items: list[bytes | int],
                      tail: Callable[[], tuple[bytes, TailOrigin | None]], check: int,
                      where: tuple[bytes, int] | None = None) -> Stored:
        """Store a file given by the digests of its whole blocks (or runs of zero blocks),
        which earlier images hold, and its last partial block's bytes (``tail()``, which
        checks them against their CRC-32 ``check``, and says where they are), as
        ``write_file`` stores the same bytes (see ``layerindex.py``). ``where`` (the
        digest of the block holding the tail, and its offset there) lets a file shorter
        than a block be placed without its bytes (see :meth:`_place_replayed`)."""
        bs = self._block_size
        if size < bs:
            if where is not None and size and self.lazy_tails:
                stored = self._place_replayed(size, tail, check, where)
                if stored is not None:
                    return stored
            data, origin = tail()
            if len(data) != size:
                raise SquashfsError(f"a replayed file's data is {len(data)} bytes, not {size}")
            before, count = len(self._fragment), self._fragment_count
            # ``tail()`` checked the bytes against the CRC-32 the index keeps: that is
            # the one to record (and the key), not made again.
            stored = self.store_short(data, check)
            self._follow(origin, before, count, size)
            return stored
        record = FileData()
        mark = self._pipeline.submitted
        hashing = self._dedup
        firsts = self._first_of_size
        if firsts is not None and size not in firsts:
            firsts[size] = record
            hashing = False
        hasher = hashlib.sha256() if hashing else None
        whole = 0
        for item in items:
            if isinstance(item, int):
                if hasher is not None:
                    for done in range(0, item, 1 << 20):
                        hasher.update(_ZERO_RECORD * min(item - done, 1 << 20))
                record.sparse += item * bs
                self._pipeline.submit_sparse(record.placed, item)
                whole += item
            else:
                if hasher is not None:
                    hasher.update(b"\x01" + item)
                self._pipeline.submit_known(Known(item, bs), record.placed)
                whole += 1
        left = size - whole * bs
        if not 0 <= left < bs:
            raise SquashfsError(f"a replayed file's blocks do not make its {size} bytes")
        if left and hasher is None and where is not None and self.lazy_tails:
            # Not keyed (the first file of its size): ``_finish_long`` would only place
            # the tail, which can go without its bytes.
            length = self._pipeline.known_length(where[0])
            if length is not None:
                record.size = size
                self.bytes_in += size
                self.tail_check = check
                record.fragment, record.fragment_offset = self._place_pending(
                    left, tail, where, length)
                return record
        last, origin = tail() if left else (b"", None)
        if len(last) != left:
            raise SquashfsError(f"a replayed file's blocks do not make its {size} bytes")
        checking, self.check_tails = self.check_tails, False
        before, count = len(self._fragment), self._fragment_count
        try:
            stored = self._finish_long(record, mark, hasher, size, last)
        finally:
            self.check_tails = checking
            if checking:
                self.tail_check = check if last else 0
        if left:
            self._follow(origin, before, count, left)
        return stored

    def _place_replayed(self, size: int, tail: Callable[[], tuple[bytes, TailOrigin | None]],
                        check: int, where: tuple[bytes, int]) -> Stored | None:
        """Store a replayed file shorter than a block, of CRC-32 ``check``, whose bytes
        lie at ``where`` in a block of an earlier image, without fetching them: when no
        file stored before has its key (its CRC-32 and size; so none has its bytes), it
        goes into the fragment block being filled as ``store_short`` would put it, and
        its bytes are fetched only if that block is not written as a copy of the earlier
        one (``flush_fragment``). When the file stored under its key lies at ``where``
        too, in a block copied whole, it is that file. Else None: the caller stores the
        bytes."""
        digest, offset = where
        length = self._pipeline.known_length(digest)
        if length is None:
            return None
        key = 0
        if self._crc_keys:
            key = (check & _SHORT_HASH_MASK) << _SHORT_BITS | size
            previous = self._seen.get(key)
            if previous is not None:
                if type(previous) is int and self._lies_at(previous, digest, offset):
                    self.bytes_in += size
                    self.tail_check = check
                    self.duplicates += 1
                    return previous
                return None
        elif self._dedup:
            return None
        index, at = self._place_pending(size, tail, where, length)
        packed = size | at << _SHORT_BITS | index << 2 * _SHORT_BITS
        if self._crc_keys:
            self._seen[key] = packed
        self.bytes_in += size
        self.tail_check = check
        return packed

    def _place_pending(self, n: int, tail: Callable[[], tuple[bytes, TailOrigin | None]],
                       where: tuple[bytes, int], length: int) -> tuple[int, int]:
        """Put a tail of ``n`` bytes, which lie at ``where`` in an earlier image's block
        of ``length`` bytes, into the fragment block being filled without its bytes;
        returns that block's number and the tail's offset there."""
        fragment = self._fragment
        before, count = len(fragment), self._fragment_count
        if before + n > self._block_size:
            self.flush_fragment()  # clears ``fragment`` in place
        at = len(fragment)
        self._pending.append((at, n, tail))
        fragment += self._zero[:n]
        self._follow((where[0], where[1], length), before, count, n)
        return self._fragment_count, at

    def _lies_at(self, stored: int, digest: bytes, offset: int) -> bool:
        """Whether a short file stored in a fragment block holds the bytes at ``offset`` of
        the earlier image's block with ``digest`` (of its length): its fragment block is
        a copy of that block, or is being filled with it, and it is at that offset."""
        _, fragment, at = unpack_short(stored)
        if at != offset:
            return False
        if fragment == self._fragment_count:
            origin = self._origin
            return origin is not None and origin[0] == digest and at < origin[1]
        return self._copied.get(fragment) == digest

    def _fetch_pending(self) -> None:
        """Put the bytes of the tails placed without them into the fragment block being
        filled."""
        fragment = self._fragment
        for at, n, tail in self._pending:
            data = tail()[0]
            if len(data) != n:
                raise SquashfsError(f"a replayed file's data is {len(data)} bytes, not {n}")
            fragment[at:at + n] = data
        self._pending.clear()

    def _follow(self, origin: TailOrigin | None, before: int, count: int, n: int) -> None:
        """Keep ``_origin`` for a tail of ``n`` bytes from ``origin`` just stored: the
        fragment block being filled held ``before`` bytes and was number ``count``."""
        if not self._use_fragments:
            return
        now = len(self._fragment)
        if self._fragment_count == count and now == before:
            return  # a duplicate: the fragment did not change
        known = self._origin
        if origin is None:
            self._origin = None
        elif self._fragment_count != count or before == 0:
            # It begins a fragment block (after the one it did not fit in was written).
            self._origin = [origin[0], n, origin[2]] if origin[1] == 0 and now == n else None
        elif (known is not None and known[0] == origin[0] and known[1] == before
              and origin[1] == before and now == before + n):
            known[1] = now
        else:
            self._origin = None

    def _finish_long(self, record: FileData, mark: int, hasher: Any, total: int,
                     tail: bytes) -> Stored:
        """Key a file of a block or more whose whole blocks are submitted, and store its
        tail unless an identical file is stored already."""
        firsts = self._first_of_size
        record.size = total
        self.bytes_in += total
        if self.check_tails:
            self.tail_check = crc32_holding_gil(tail) if tail else 0
        if hasher is not None:
            if tail:
                hasher.update(_record(tail))
            key = _key(hasher.digest(), total)
            if firsts is not None:
                # Key the first file of this size now: its blocks had this file's time
                # to be written. They are older than this file's, so none of this
                # file's blocks need to be written for it (the rewind below still works).
                first = firsts.get(total)
                firsts[total] = None
                if first is not None:
                    self._seen.setdefault(self._key_of_written(first), first)
            previous = self._seen.get(key)
            if previous is not None:
                self._pipeline.discard_since(mark, record.start)
                self.duplicates += 1
                return previous
            self._seen[key] = record
        self._place_tail(record, tail)
        return record

    def write_bytes(self, data: bytes) -> Stored:
        """Store a file given whole."""
        if len(data) < self._block_size:
            return self.store_short(data)
        return self.write_file(io.BytesIO(data), len(data))

    def _key_of_written(self, record: FileData) -> bytes:
        """The dedup key of a file of a block or more, from its bytes in the image (the
        same key ``write_file`` computes as it reads a file)."""
        assert self._decompress is not None
        self.read_backs += 1
        bs = self._block_size
        while not self._on_disk(record):  # write its queued blocks, and only those
            self._pipeline.retire_oldest()
        fields = record.sizes if record.sizes is not None else array("I")
        position = record.start or 0
        hasher = hashlib.sha256()
        whole = record.size // bs
        digest_at = self._pipeline.digest_at
        for i in range(whole):
            field = fields[i]
            if field == 0:
                hasher.update(_ZERO_RECORD)
                continue
            digest = digest_at(position)
            if digest is not None:
                # The block's sha256, as the block index records it: its record without
                # reading the block back and decoding it.
                hasher.update(b"\x01" + digest)
                position += field & ~DATA_UNCOMPRESSED
                continue
            block = self._read_block(position, field, bs)
            position += field & ~DATA_UNCOMPRESSED
            if len(block) != bs:
                raise SquashfsError(f"a block read back at offset {position} is "
                                    f"{len(block)} bytes, not {bs}")
            hasher.update(_record(block))
        left = record.size - whole * bs
        if left:
            if self._use_fragments:
                tail = self._fragment_piece(record.fragment, record.fragment_offset, left)
            else:
                tail = self._read_block(position, fields[whole], left)
            if len(tail) != left:
                raise SquashfsError(f"a file's tail read back is {len(tail)} bytes, not {left}")
            hasher.update(_record(tail))
        return _key(hasher.digest(), record.size)

    def _on_disk(self, record: FileData) -> bool:
        """Whether all of a file's data is written (or in the fragment being filled)."""
        bs = self._block_size
        blocks = record.size // bs if self._use_fragments else -(-record.size // bs)
        if (0 if record.sizes is None else len(record.sizes)) < blocks:
            return False
        if self._use_fragments and record.size % bs:
            return (record.fragment == self._fragment_count
                    or record.fragment < len(self.fragment_table))
        return True

    def _read_block(self, position: int, field: int, size: int) -> bytes:
        """The data of a block written at ``position`` with on-disk size ``field``."""
        assert self._decompress is not None
        raw = self._pipeline.read_back(position, field & ~DATA_UNCOMPRESSED)
        if field & DATA_UNCOMPRESSED:
            return raw
        try:
            return self._decompress(raw, size)
        except Exception as e:  # a codec's own error type: the output is not what was written
            raise SquashfsError(f"a block read back at offset {position} does not decode: "
                                f"{e}") from e

    def _fragment_piece(self, index: int, offset: int, n: int) -> bytes:
        if index == self._fragment_count:  # the fragment block still being filled
            if self._pending:
                self._fetch_pending()
            return bytes(self._fragment[offset:offset + n])
        while index >= len(self.fragment_table):  # submitted, not written yet
            self._pipeline.retire_oldest()
        cache = self._fragment_cache
        block = cache.pop(index, None)
        if block is None:
            position, field, _ = FRAGMENT_ENTRY.unpack(self.fragment_table[index])
            block = self._read_block(position, field, self._block_size)
            if len(cache) >= _FRAGMENT_CACHE:
                del cache[next(iter(cache))]
        cache[index] = block  # the most recently used last
        return block[offset:offset + n]

    def store_short(self, data: bytes, check: int | None = None) -> Stored:
        """Store a file shorter than a block (most files are): in a fragment, or as a
        short block without fragments, unless an identical file is stored already.
        ``check``: its CRC-32, when known."""
        size = len(data)
        self.bytes_in += size
        if self.check_tails:
            if check is None:
                check = _crc32(data) if size <= _CRC_GIL_MINSIZE else crc32_holding_gil(data)
            self.tail_check = check
        if self._short_keys and data:
            short = ((self.tail_check if self._crc_keys else short_hash(data))
                     & _SHORT_HASH_MASK) << _SHORT_BITS | size
            previous = self._seen.get(short)
            if previous is None:
                # _place_short in a fragment, written out: most files of an image come
                # this way, and a call is a tenth of their time here.
                fragment = self._fragment
                if len(fragment) + size > self._block_size:
                    self.flush_fragment()  # clears ``fragment`` in place
                packed = self._seen[short] = (size | len(fragment) << _SHORT_BITS
                                              | self._fragment_count << 2 * _SHORT_BITS)
                fragment += data
                return packed
            return self._short_match(data, previous)
        if not self._dedup:
            return self._place_short(data)
        if not self._short_keys:
            key = _key(_sha256_holding_gil(data), size)
            previous = self._seen.get(key)
            if previous is not None:
                self.duplicates += 1
                return previous
            stored = self._seen[key] = self._place_short(data)
            return stored
        short = ((self.tail_check if self._crc_keys else short_hash(data))
                 & _SHORT_HASH_MASK) << _SHORT_BITS | size
        previous = self._seen.get(short)
        if previous is None:
            stored = self._seen[short] = self._place_short(data)
            return stored
        return self._short_match(data, previous)

    def _short_match(self, data: bytes, previous: Stored) -> Stored:
        """A short file whose short key an earlier file ``previous`` has: that
        file if the bytes are the same, else the file of its whole key (stored now if
        none is)."""
        size = len(data)
        if size == 0 or self._short_data(previous) == data:
            self.duplicates += 1
            return previous
        key = _key(hashlib.sha256(data).digest(), size)
        same = self._collided.get(key)
        if same is not None:
            self.duplicates += 1
            return same
        stored = self._collided[key] = self._place_short(data)
        return stored

    def _short_data(self, stored: Stored) -> bytes:
        """The bytes of a short file stored in a fragment, read back."""
        assert isinstance(stored, int)
        size, fragment, offset = unpack_short(stored)
        return self._fragment_piece(fragment, offset, size)

    def _place_short(self, data: bytes) -> Stored:
        """Store a file shorter than a block; in a fragment it is recorded as an int."""
        if not self._use_fragments:
            record = FileData()
            record.size = len(data)
            self._place_tail(record, data)
            return record
        if not data:
            return pack_short(0, INVALID_INDEX, 0)
        if len(self._fragment) + len(data) > self._block_size:
            self.flush_fragment()
        stored = pack_short(len(data), self._fragment_count, len(self._fragment))
        self._fragment += data
        return stored

    def _place_tail(self, record: FileData, tail: bytes) -> None:
        """Store a file's last partial block (``b""``: none) in the fragment block being
        filled, or without fragments as the file's short last block."""
        if not tail:
            return
        if not self._use_fragments:
            self._pipeline.submit(tail, record.placed)
            return
        if len(self._fragment) + len(tail) > self._block_size:
            self.flush_fragment()
        record.fragment, record.fragment_offset = self._fragment_count, len(self._fragment)
        self._fragment += tail

    def close(self) -> None:
        """Write the last fragment block and forget the dedup map (no more files)."""
        self.flush_fragment()
        self._seen.clear()
        self._collided.clear()
        self._fragment_cache.clear()
        self._copied.clear()

    def flush_fragment(self) -> None:
        """Write the fragment block being filled, if it holds anything."""
        fragment = self._fragment
        if not fragment:
            return
        origin = self._origin
        self._origin = None
        if origin is not None and origin[1] == len(fragment) == origin[2]:
            # The whole of a block of an earlier image, byte for byte (each tail lies
            # where it lay there, and was checked against its CRC-32 or not fetched):
            # its digest is known, and its stored bytes are the ones to write. Tails not
            # fetched are vouched for by those bytes, checked against their CRC-32.
            self._pipeline.submit_known(Known(origin[0], len(fragment)), self._fragment_placed,
                                        check=bool(self._pending))
            self._pending.clear()
            self._copied[self._fragment_count] = origin[0]
        else:
            if self._pending:
                self._fetch_pending()
            self._pipeline.submit(bytes(fragment), self._fragment_placed)
        fragment.clear()
        self._fragment_count += 1

    def _fragment_placed(self, position: int, field: int, count: int = 1) -> None:
        self.fragment_table.append(FRAGMENT_ENTRY.pack(position, field, 0))


#: A zero block's record in a file's dedup key; any other block (or the tail) is
#: recorded by :func:`_record`. Records have fixed sizes, so the key is unambiguous;
#: reading a file back (``DataWriter._key_of_written``) must make the same records.
_ZERO_RECORD = b"\x00"


def _record(block: bytes) -> bytes:
    return b"\x01" + hashlib.sha256(block).digest()


def _key(digest: bytes, size: int) -> bytes:
    """A dedup key: the digest and the file's size (one bytes object, to keep it small)."""
    return digest + size.to_bytes(8, "little")


#: The bits of :func:`short_hash` a short dedup key keeps (above the size's bits).
_SHORT_HASH_MASK = (1 << 40) - 1


def short_hash(data: bytes) -> int:
    """The hash a short file's dedup key is made of (unless the writer checks tails: see
    the module docstring): the interpreter's own (SipHash-1-3 under a key drawn at
    start-up, so a layer cannot be made to collide on purpose). It
    costs a fifth of a sha256 and never lets the GIL go; a match is checked against the
    stored bytes, so it changes no image (figures: ``bench/README.md``)."""
    return hash(data if type(data) is bytes else bytes(data))


#: hashlib lets the GIL go while it hashes this many bytes or more (HASHLIB_GIL_MINSIZE).
_GIL_MINSIZE = 2048


def _sha256_holding_gil(data: bytes) -> bytes:
    """The sha256 of a file shorter than a block (the dedup key of an output that cannot be
    read back), in pieces that keep the GIL when it is at most 16 KiB: taking the GIL back
    after each hash cost more than hashing a few KiB while the compressing threads ran
    (figures: ``bench/README.md``)."""
    if len(data) < _GIL_MINSIZE or len(data) > 8 * (_GIL_MINSIZE - 1):
        return hashlib.sha256(data).digest()
    hasher = hashlib.sha256()
    view = memoryview(data)
    for start in range(0, len(data), _GIL_MINSIZE - 1):
        hasher.update(view[start:start + _GIL_MINSIZE - 1])
    return hasher.digest()


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    """Read ``n`` bytes, fewer only at EOF (raw streams and pipes return short reads)."""
    data = stream.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = stream.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)
