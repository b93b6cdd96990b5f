"""The README's first command, run exactly as written: it must install ocisquash the way a
user would (a fresh virtual environment on Debian 12) and compile the example."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import require_or_skip

ROOT = Path(__file__).resolve().parents[1]
VENV = Path("/opt/ocisquash")


def first_command() -> str:
    readme = (ROOT / "README.md").read_text()
    quick = readme[readme.index("## Quick start"):]
    block = re.search(r"```sh\n(.*?)\n```", quick, re.S)
    assert block is not None
    return block.group(1)


def test_first_command_is_an_install_not_the_test_setup() -> None:
    command = first_command()
    assert ".ci/" not in command and "-e " not in command and "[test]" not in command
    assert "python3 -m venv" in command and "pip install ." in command


@pytest.mark.slow
def test_readme_first_command_installs_and_compiles(tmp_path: Path) -> None:
    # It installs packages and writes /opt/ocisquash: CI runs it; elsewhere ask for it.
    require_or_skip(os.geteuid() == 0 and (os.environ.get("CI") == "true"
                                           or os.environ.get("OCISQUASH_TEST_README") == "1"),
                    "runs the README's install as root; set OCISQUASH_TEST_README=1")
    if VENV.exists():
        # Only ever a virtual environment an earlier run of this test made.
        assert (VENV / "pyvenv.cfg").is_file(), f"{VENV} exists and is not a virtual environment"
        shutil.rmtree(VENV)
    checkout = tmp_path / "ocisquash"
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", ".mypy_cache", ".ruff_cache",
        ".pytest_cache", "*.squashfs"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(["bash", "-c", first_command()], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "squashfs-root/bin/hello" in proc.stdout
    assert (VENV / "bin" / "ocisquash").is_file()
    # The installed package is the one that ran, not this checkout's source tree.
    where = subprocess.run([str(VENV / "bin" / "python"), "-c",
                            "import ocisquash; print(ocisquash.__file__)"],
                           capture_output=True, text=True, check=True, env=env).stdout
    assert where.startswith(str(VENV)), where
    shutil.rmtree(VENV)
