"""The Python API: the names ``ocisquash`` documents, its example, and its ``progress=`` contract."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ocisquash

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = f"oci:{ROOT / 'examples' / 'hello' / 'layout'}:latest"


def test_dir_lists_the_public_names_and_each_resolves() -> None:
    listed = dir(ocisquash)
    for name in ("compile_image", "CompiledImage", "SourceOptions", "WriterOptions",
                 "Compression", "OcisquashError", "LayerApplying", "BlobDone", "pack_directory"):
        assert name in listed
    assert "TYPE_CHECKING" not in listed and "Any" not in listed
    for name in ocisquash.__all__:
        assert getattr(ocisquash, name) is not None


def test_star_import_gives_every_documented_name() -> None:
    namespace: dict[str, object] = {}
    exec("from ocisquash import *", namespace)
    documented = set(re.findall(r"`([A-Za-z_]+)[(`]",
                                (ROOT / "docs" / "api.md").read_text().split("## Progress")[0]))
    missing = {n for n in documented if n[0].isupper() or n in ("compile_image", "pack_directory")
               } - set(namespace) - {"Compression.GZIP"}
    assert missing == set()


def test_the_example_in_docs_api_runs(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code is not None
    script = tmp_path / "example.py"
    script.write_text(code.group(1))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    assert re.match(r"sha256:[0-9a-f]{64} \d+ 21 False\n\('/bin/hello',\)\nerror: ", out), out


class Boom(Exception):
    pass


@pytest.mark.parametrize("when", ["LayerApplying", "Finishing"])
def test_an_exception_from_the_callers_callback_comes_back_as_itself(
        when: str, tmp_path: Path) -> None:
    raised = Boom("boom")

    def progress(event: object) -> None:
        if type(event).__name__ == when:
            raise raised

    with pytest.raises(Boom) as info:
        ocisquash.compile_image(LAYOUT, tmp_path / "x.squashfs", progress=progress,
                                source_options=ocisquash.SourceOptions(cache_dir=tmp_path / "c"))
    assert info.value is raised
    assert not (tmp_path / "x.squashfs").exists()
