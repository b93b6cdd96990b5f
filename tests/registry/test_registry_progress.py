"""Progress of a compile from a registry: downloads and layers in a terminal, and in a pipe."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from test_progress import PROGRESS_LINE, ROW, emulate, run_in_terminal

ROOT = Path(__file__).resolve().parents[2]


def test_terminal_shows_one_row_per_layer_and_the_download_total(
        registries: Any, tmp_path: Path) -> None:
    ref = f"{registries.plain.host}/app:oci"
    data = run_in_terminal(["compile", ref, "-o", "o.squashfs", "--cache-dir",
                            str(tmp_path / "cache")], 80, 24, tmp_path)
    history, screen = emulate(data, 80, 24)
    assert history == []
    progress = [line for line in screen if line and PROGRESS_LINE.fullmatch(line)]
    total, rows = progress[0], progress[1:]
    assert re.fullmatch(r"writing the squashfs tables \(\d+ entries\), [\d.]+ (B|KiB|MiB) of "
                        r"[\d.]+ (B|KiB|MiB) downloaded.*", total), total
    assert all(ROW.fullmatch(r) for r in rows), rows
    layers = sorted(r.split()[1] for r in rows if r.startswith("layer"))
    assert layers == ["1/3", "2/3", "3/3"]
    assert all(" applied " in r for r in rows), rows
    assert len(rows) == 3  # downloading and applying a layer share its row


def test_pipe_gets_a_line_per_download_and_layer(registries: Any, tmp_path: Path) -> None:
    ref = f"{registries.plain.host}/app:oci"
    proc = subprocess.run([sys.executable, "-m", "ocisquash", "compile", ref, "-o",
                           str(tmp_path / "o.squashfs"), "--cache-dir", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=120, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    lines = proc.stderr.splitlines()
    copying = [line for line in lines if line.startswith("Copying layer ")]
    assert sorted(line.split()[2] for line in copying) == ["1/3", "2/3", "3/3"]
    applying = [line.split()[2] for line in lines if line.startswith("Applying layer ")]
    assert applying == ["3/3", "2/3", "1/3"]  # applied from the top, numbered from the bottom
    # A second compile with the blobs in the cache says so, and downloads nothing.
    (tmp_path / "o.squashfs").unlink()
    again = subprocess.run([sys.executable, "-m", "ocisquash", "compile", "--pull", "always", ref,
                            "-o", str(tmp_path / "o.squashfs"), "--cache-dir", str(tmp_path / "c")],
                           capture_output=True, text=True, timeout=120, check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert not [line for line in again.stderr.splitlines() if line.startswith("Copying")]
    assert len([line for line in again.stderr.splitlines()
                if line.startswith("Using cached layer ")]) == 3
