"""``compile_image(progress=…)`` receives the registry's download events too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ocisquash


def test_progress_callback_receives_download_events(registries: Any, tmp_path: Path) -> None:
    events: list[object] = []
    result = ocisquash.compile_image(
        f"{registries.plain.host}/app:oci", tmp_path / "o.squashfs", progress=events.append,
        source_options=ocisquash.SourceOptions(cache_dir=tmp_path / "cache"))
    kinds = {type(e).__name__ for e in events}
    assert {"BlobStarted", "BlobDone", "LayerApplying", "Finishing"} <= kinds
    done = {e.digest for e in events if isinstance(e, ocisquash.BlobDone)}
    assert {d.digest for d in result.manifest.layers} <= done
