"""Shared pytest configuration. Fixture modules live beside this file and are loaded here."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

IN_CI = os.environ.get("CI") == "true"


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


def require_or_skip(condition: bool, reason: str) -> None:
    """Skip when ``condition`` is false — but under ``CI=true`` fail instead, so CI never skips silently."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)
