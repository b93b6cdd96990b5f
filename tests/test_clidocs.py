"""The man page and the bash completion, generated from the parser: judged by groff/man and bash."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ocisquash.cli import COMMANDS, build_parser

from conftest import require_or_skip

ROOT = Path(__file__).resolve().parents[1]


def ocisquash(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "ocisquash", *args], capture_output=True,
                          text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout


def test_man_page_renders_without_warnings_and_lists_everything(tmp_path: Path) -> None:
    require_or_skip(shutil.which("groff") is not None and shutil.which("man") is not None,
                    "groff and man are not installed")
    page = tmp_path / "ocisquash.1"
    page.write_text(ocisquash("man"))
    lint = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)],
                          capture_output=True, text=True)
    assert lint.returncode == 0 and lint.stderr == "", lint.stderr
    shown = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True, check=True,
                           env={**os.environ, "MANWIDTH": "200", "MAN_KEEP_FORMATTING": ""}
                           ).stdout
    text = " ".join(shown.replace("\u2010", "-").replace("\u2011", "-").split())
    for section in ("NAME", "SYNOPSIS", "GLOBAL OPTIONS", "COMMANDS", "EXIT STATUS", "SEE ALSO"):
        assert section in shown
    for name in COMMANDS:
        assert f"ocisquash {name}" in text, name
    # every option of every command, as the parser has it
    parser = build_parser()
    for action in parser._subparsers._group_actions[0].choices["compile"]._actions:  # type: ignore[union-attr]
        for flag in action.option_strings:
            assert flag in text, flag
    assert "ocisquash cache ls" in text and "143 terminated" in text


def complete(script: Path, *words: str) -> list[str]:
    """What bash offers after ``ocisquash WORDS…`` (the last word is being completed)."""
    quoted = " ".join(f"'{w}'" for w in ("ocisquash", *words))
    out = subprocess.run(
        ["bash", "-c", f"source {script}; COMP_WORDS=({quoted}); "
                       "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); _ocisquash; "
                       "printf '%s\\n' \"${COMPREPLY[@]}\""],
        capture_output=True, text=True, check=True)
    assert out.stderr == ""
    return sorted(filter(None, out.stdout.splitlines()))


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "ocisquash.bash"
    path.write_text(ocisquash("completion", "bash"))
    return path


@pytest.mark.parametrize(("words", "offered"), [
    (["co"], ["compile", "completion"]),
    (["cache", ""], ["ls", "prune", "rm", "verify"]),
    (["--cache-dir", "/tmp", "cache", "v"], ["verify"]),
    (["compile", "--pl"], ["--plain-http", "--platform"]),
    (["compile", "--format", ""], ["erofs", "squashfs", "tar"]),
    (["cache", "ls", "--j"], ["--json"]),
    (["compile", "-o", "x", "--js"], ["--json"]),
    (["completion", ""], ["bash"]),
    (["lo"], ["login", "logout"]),
])
def test_bash_completion_offers_what_the_parser_accepts(
        script: Path, words: list[str], offered: list[str]) -> None:
    assert complete(script, *words) == offered


def test_bash_completion_completes_paths_for_path_options(script: Path, tmp_path: Path) -> None:
    (tmp_path / "cache-here").mkdir()
    assert complete(script, "compile", "--cache-dir", str(tmp_path / "cache-h")) == [
        str(tmp_path / "cache-here")]
