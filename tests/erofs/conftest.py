"""Fixtures shared by the EROFS tests."""

from __future__ import annotations

import pytest

from ocisquash.erofs import compress


@pytest.fixture
def small_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """A few hundred KiB in flight instead of 8 MiB per worker, in segments of 256 KiB:
    large files (and the metabox) stream past the limit in many segments, each with its
    own padded end."""
    monkeypatch.setattr(compress, "IN_FLIGHT_BYTES", 200_000)
    monkeypatch.setattr(compress, "SEGMENT_BYTES", 256 << 10)
