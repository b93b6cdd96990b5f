"""Shared pytest configuration. Fixture modules live beside this file and are loaded here."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

IN_CI = os.environ.get("CI") == "true"
#: the sources of the ocisquash under test, for a command run as another user
SRC = Path(__file__).resolve().parents[1] / "src"
#: the unprivileged user (nobody) the tests that need another user run as
NOBODY = 65534


@contextlib.contextmanager
def reachable_by_others(path: Path) -> Iterator[None]:
    """Give o+x to every ancestor of ``path`` that lacks it (the interpreter under a
    0700 ``/root``, say), for a command run as another user; the modes are put back
    after."""
    changed = []
    try:
        for parent in [path, *path.parents]:
            mode = stat.S_IMODE(parent.stat().st_mode)
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
                changed.append((parent, mode))
        yield
    finally:
        for parent, mode in changed:
            os.chmod(parent, mode)


def run_ocisquash_as_nobody(*args: str, env: dict[str, str] | None = None,
                           cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m ocisquash ARGS`` as uid and gid 65534 with no other groups (setpriv,
    run as root), from this checkout's sources, its output captured as text. ``env``
    (default: this process's) gets ``PYTHONPATH``; the interpreter's directories are
    made reachable while it runs (:func:`reachable_by_others`)."""
    with reachable_by_others(Path(sys.executable).resolve().parent):
        return subprocess.run(
            [shutil.which("setpriv") or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
             "--clear-groups", sys.executable, "-m", "ocisquash", *args],
            capture_output=True, text=True, check=False, cwd=cwd,
            env={**(os.environ if env is None else env), "PYTHONPATH": str(SRC)})


def require_or_skip(condition: bool, reason: str) -> None:
    """Skip when ``condition`` is false — but under ``CI=true`` fail instead, so CI never skips silently."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)
