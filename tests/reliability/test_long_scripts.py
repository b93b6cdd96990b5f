"""The long fuzz and kill loops, run briefly: they work, and they would report a failure."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .conftest import need_registry_tools

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, cwd: Path, timeout: float = 240,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout, env={**os.environ, **(env or {})})


def test_fuzz_script_runs_for_the_given_time(tmp_path: Path) -> None:
    proc = _run("fuzz/fuzz_parsers.py", "--seconds", "6", "--seed", "7", "--memory-mb", "2048",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"fuzz seed 7: (\d+) inputs in 6s \((.*)\); 0 crash", proc.stdout)
    assert m and int(m.group(1)) >= 20, proc.stdout
    for target in ("references", "manifests", "configs", "layers", "cli"):
        assert target in m.group(2)
    assert os.listdir(tmp_path) == [], "the fuzzer wrote into its working directory"


def test_fuzz_script_reports_a_crash(tmp_path: Path) -> None:
    """An old bug put back (deep JSON nesting escaping as RecursionError) is found."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import ocisquash.model as m\n"
        "import json\n"
        "def _load_json(raw, what):\n"
        "    return json.loads(raw)\n"
        "m._load_json = _load_json\n")
    proc = _run("fuzz/fuzz_parsers.py", "--seconds", "4", "--seed", "1", "--targets",
                "manifests", "--crash-dir", str(tmp_path / "crashes"), cwd=tmp_path,
                env={"PYTHONPATH": str(shim)})
    assert proc.returncode == 1, proc.stdout
    assert "CRASH manifests: RecursionError" in proc.stderr
    assert list((tmp_path / "crashes").iterdir())


def test_kill_loop_runs_a_few_rounds(tmp_path: Path) -> None:
    need_registry_tools()
    proc = _run("scripts/kill_loop.py", "--count", "2", "--seed", "4", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    for mode in ("local", "registry"):
        m = re.search(rf"^{mode}: (\d+) kills .*: (\d+) clean recoveries.*, 0 failures$",
                      proc.stdout, re.M)
        assert m and m.group(1) == m.group(2) == "2", proc.stdout
