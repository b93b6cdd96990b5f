"""A layer of many small files flattens in memory that grows by what the sink keeps per
file, not by a name per file in the flattener (a million small files cost 95 MB more
when it kept one)."""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from ocisquash.erofs import ErofsOptions, ErofsWriter
from ocisquash.erofs.tree import Tails
from ocisquash.flatten import flatten

from .layerkit import BlobLayer
from imagebuilder import Entry


class _Sampled(ErofsWriter):
    """Notes the memory traced when the last file comes, while the layer is read."""

    last = b""
    held = 0

    def add_file(self, path: bytes, *args: Any, **kwargs: Any) -> None:
        super().add_file(path, *args, **kwargs)
        if path == self.last:
            self.held = tracemalloc.get_traced_memory()[0]


def test_a_bottom_layer_of_small_files_costs_what_the_sink_keeps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Tails, "FLUSH", 4096)
    n = 40_000
    rng = random.Random(9)
    entries = [Entry(f"d{d:03d}", kind="dir", mode=0o755) for d in range(n // 100)]
    entries += [Entry(f"d{i // 100:03d}/file-{i:06d}.txt",
                      data=rng.randbytes(rng.randrange(16, 300))) for i in range(n)]
    # A hard link to an early file, found through the sink (no name kept per file).
    entries.append(Entry("link", kind="hardlink", linkname="d000/file-000007.txt"))
    layer = BlobLayer.of(entries, "gzip")
    with _Sampled(tmp_path / "i.erofs", ErofsOptions(mkfs_time=0, workers=1)) as w:
        w.last = b"d%03d/file-%06d.txt" % ((n - 1) // 100, n - 1)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            report = flatten([layer], w)
        finally:
            tracemalloc.stop()
        w.finish()
    assert report.files == n
    # The writer keeps a record and a name per file (under 40 bytes:
    # test_erofs_short_records); the reader's buffers, about 0.7 MB, come to some 20
    # more here. A name kept per file in the flattener made it 153.
    per_file = (w.held - before) / n
    assert per_file < 100, per_file
