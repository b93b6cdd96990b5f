"""Digests of files agree with coreutils' sha256sum/sha512sum."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ocisquash.digest import Digest


@pytest.mark.parametrize(("algorithm", "tool"), [("sha256", "sha256sum"), ("sha512", "sha512sum")])
def test_file_digest_matches_coreutils(algorithm: str, tool: str, tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3 << 20) + b"tail")  # more than one 1 MiB read
    expected = subprocess.run([tool, str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0]
    digest = Digest.of_file(path, algorithm)
    assert digest == Digest(algorithm, expected)
    assert digest.matches_file(path)
    with open(path, "r+b") as f:
        f.seek(2 << 20)
        f.write(b"\xff" if f.read(1) != b"\xff" else b"\x00")
    assert not digest.matches_file(path)
