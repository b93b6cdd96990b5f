"""Command-line conventions: global options on either side of the command, one table of exit
statuses (in --help and the README), and hints that name the defaults that apply."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ocisquash.cli import EXIT_STATUS

ROOT = Path(__file__).resolve().parents[1]
HELLO = f"oci:{ROOT / 'examples' / 'hello' / 'layout'}:latest"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ocisquash", *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                          timeout=120)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("conv") / "cache"
    assert run("compile", "-q", HELLO, "--cache-dir", str(where)).returncode == 0
    return where


@pytest.mark.parametrize("args", [
    ["cache", "ls", "--cache-dir", "{cache}"],
    ["cache", "--cache-dir", "{cache}", "ls"],
    ["--cache-dir", "{cache}", "cache", "ls"],
    ["cache", "verify", "--cache-dir", "{cache}"],
    ["--cache-dir", "{cache}", "-q", "compile", "--pull", "never", HELLO, "-o", "-"],
    ["compile", "--debug", "--pull", "never", HELLO, "--cache-dir", "{cache}", "-o", "-"],
    ["--debug", "compile", "-q", "--pull", "never", HELLO, "--cache-dir", "{cache}", "-o", "-"],
])
def test_global_and_group_options_work_on_either_side_of_the_command(
        args: list[str], cache: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ocisquash",
                           *[a.replace("{cache}", str(cache)) for a in args]],
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    if "ls" in args:
        assert b"oci:" in proc.stdout  # the entry compiled into this cache
    if "compile" in args:
        assert proc.stdout[:4] == b"hsqs"  # --pull never found the image in this cache
    if "-q" in args:
        assert proc.stderr == b""


def test_an_option_before_the_command_is_not_reset_by_the_command(tmp_path: Path) -> None:
    proc = run("--cache-dir", str(tmp_path / "mine"), "compile", HELLO)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(tmp_path / "mine")


@pytest.mark.parametrize(("args", "status"), [
    (["compile", "--bogus", HELLO], 2),
    (["compile", "--level", "99", HELLO], 2),
    (["compile", "-c", "none", "--level", "3", HELLO], 2),
    (["compile", "-c", "lz4hc", "--level", "13", HELLO], 2),
    (["compile", "bad::reference"], 2),
    (["compile", "oci:/nonexistent/layout"], 3),
    (["pack", "/nonexistent/dir", "out.squashfs"], 3),
    (["compile", "--platform", "linux/s390x", HELLO], 3),
    (["inspect", "127.0.0.1:1/app:1"], 4),
])
def test_exit_statuses_follow_the_table(args: list[str], status: int, tmp_path: Path) -> None:
    proc = run(*args, "--cache-dir", str(tmp_path / "c"), cwd=tmp_path)
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_table_is_in_help_and_readme() -> None:
    help_text = run("--help").stdout
    assert EXIT_STATUS in help_text
    readme = (ROOT / "README.md").read_text()
    for code in re.findall(r"^  (\d+) ", EXIT_STATUS, re.M):
        assert re.search(rf"^\| {code} \|", readme, re.M), code


def test_level_hint_names_compiles_default() -> None:
    proc = run("compile", "--level", "99", HELLO)
    assert "compile's default is zstd level 5" in proc.stderr
    proc = run("compile", "-c", "zstd", "--level", "99", HELLO)
    assert "without --level, -c zstd uses level 15" in proc.stderr
    proc = run("compile", "-c", "lz4hc", "--level", "13", HELLO)
    assert proc.stderr.startswith("ocisquash: lz4hc level 13 is outside 1..12")
    assert "without --level, -c lz4hc uses level 9" in proc.stderr
