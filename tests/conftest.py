"""Shared pytest configuration. Fixture modules live beside this file and are loaded here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

IN_CI = os.environ.get("CI") == "true"


def require_or_skip(condition: bool, reason: str) -> None:
    """Skip when ``condition`` is false — but under ``CI=true`` fail instead, so CI never skips silently."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)
