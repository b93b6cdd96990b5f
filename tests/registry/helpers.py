"""Small helpers shared by the registry tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ocisquash.reference import parse_reference
from ocisquash.sources.options import SourceOptions
from ocisquash.sources.registry import RegistrySource


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    return sha256(path.read_bytes())


def source(ref: str, options: SourceOptions) -> RegistrySource:
    return RegistrySource(parse_reference(ref), options)
