"""Text from registries and images reaches a human's terminal with its control characters
shown, never sent; ``--json`` keeps it exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ocisquash.terminal import printable

from imagebuilder import Entry, write_oci_layout

ROOT = Path(__file__).resolve().parents[1]
CLEAR = "\x1b[2J"
TITLE = "\x1b]0;owned\x07"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ocisquash", *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def no_controls(text: str) -> bool:
    return not any((ord(c) < 32 and c != "\n") or 0x7f <= ord(c) < 0xa0 for c in text)


@pytest.mark.parametrize(("raw", "shown"), [
    ("plain text, ümlaut", "plain text, ümlaut"),
    (CLEAR, "\\x1b[2J"),
    ("a\nforged: line", "a\\x0aforged: line"),
    ("cr\rback", "cr\\x0dback"),
    ("\x9b31m", "\\x9b31m"),
    ("rtl\u202eevil", "rtl\\u202eevil"),
])
def test_printable_escapes_controls_only(raw: str, shown: str) -> None:
    assert printable(raw) == shown


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("esc") / "layout"
    write_oci_layout(root, [[
        Entry(f"etc/bad{TITLE}name", xattrs={"system.evil": b"1"}),
    ]], config={"Env": [f"X={CLEAR}"], "Cmd": [f"/bin/sh{CLEAR}"], "User": TITLE,
                "Labels": {f"k{CLEAR}": f"v{TITLE}"}})
    return root


def test_inspect_text_escapes_and_json_stays_exact(hostile: Path) -> None:
    text = run("inspect", f"oci:{hostile}:latest")
    assert text.returncode == 0, text.stderr
    assert no_controls(text.stdout)
    assert "X=\\x1b[2J" in text.stdout and "k\\x1b[2J=v\\x1b]0;owned\\x07" in text.stdout
    doc = json.loads(run("inspect", "--json", f"oci:{hostile}:latest").stdout)
    assert doc["config"]["env"] == [f"X={CLEAR}"]
    assert doc["config"]["labels"] == {f"k{CLEAR}": f"v{TITLE}"}


def test_file_names_in_warnings_are_escaped(hostile: Path, tmp_path: Path) -> None:
    proc = run("compile", f"oci:{hostile}:latest", "-o", str(tmp_path / "o.squashfs"),
               "--cache-dir", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "extended attributes" in line]
    assert warning and "bad\\x1b]0;owned\\x07name" in warning[0]
    assert no_controls(proc.stderr)


def test_error_messages_are_escaped(tmp_path: Path) -> None:
    proc = run("inspect", f"oci:{tmp_path}/no{CLEAR}where:latest")
    assert proc.returncode != 0
    assert "no\\x1b[2Jwhere" in proc.stderr and no_controls(proc.stderr)
