"""``compile --format erofs`` from a real registry: the same bytes as from the layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from erofs._util import dump_super, erofs_mounted, fsck
from ocisquash.compile import compile_image
from ocisquash.sources.options import SourceOptions


def test_erofs_from_registry_equals_erofs_from_layout(registries: Any, tmp_path: Path) -> None:
    from_layout = compile_image(f"oci:{registries.layout}:latest", tmp_path / "layout.erofs",
                                format="erofs",
                                source_options=SourceOptions(cache_dir=tmp_path / "c1"))
    from_registry = compile_image(f"{registries.plain.host}/app:oci", tmp_path / "reg.erofs",
                                  format="erofs",
                                  source_options=SourceOptions(cache_dir=tmp_path / "c2"))
    assert (from_layout.format, from_registry.format) == ("erofs", "erofs")
    assert not from_registry.cached
    data = (tmp_path / "reg.erofs").read_bytes()
    assert data == (tmp_path / "layout.erofs").read_bytes()
    fsck(tmp_path / "reg.erofs")
    # Random and tiny files: nothing shrinks, so nothing is stored compressed.
    assert dump_super(tmp_path / "reg.erofs")["Filesystem magic number"] == "0xE0F5E1E2"
    with erofs_mounted(tmp_path / "reg.erofs", tmp_path / "m") as m:
        assert (m / "hello.txt").read_bytes() == b"hello from the third layer\n"
        assert (m / "etc/os-release").read_bytes() == b"ID=test\n"
        assert (m / "big.bin").stat().st_size > 1 << 20
