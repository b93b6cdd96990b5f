"""Fixtures of the publishing tests: the registries of ``tests/registry`` (one storage
for the plain, htpasswd and token-auth docker-registry 2.8), a fresh repository per
test, and the loopback proxy that logs requests and adds the referrers API."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from registry.conftest import (  # noqa: F401  (fixtures shared with the registry tests)
    htpasswd_registry,
    registries,
    token_registry,
    token_registry_session,
)
from registry.servers import skopeo_copy

from .referrersproxy import ReferrersProxy


@pytest.fixture
def repo(registries: Any, request: pytest.FixtureRequest) -> str:  # noqa: F811
    """A repository of its own for the test, holding the three-layer test image as ``:1``."""
    name = "pub/" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:60].strip("-")
    skopeo_copy(f"oci:{registries.layout}:latest", f"docker://{registries.plain.host}/{name}:1")
    return name


@pytest.fixture
def logging_proxy(registries: Any) -> Iterator[ReferrersProxy]:  # noqa: F811
    """A proxy that forwards to the plain registry and logs (no referrers API)."""
    p = ReferrersProxy(registries.plain.host, registries.storage, referrers=False)
    yield p
    p.close()


@pytest.fixture
def referrers_proxy(registries: Any) -> Iterator[ReferrersProxy]:  # noqa: F811
    """The plain registry with the referrers API added (see ``referrersproxy``)."""
    p = ReferrersProxy(registries.plain.host, registries.storage, referrers=True)
    yield p
    p.close()


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def ocisquash(tmp_path: Path) -> Run:
    """``ocisquash(*args, check=True)``: the CLI in a subprocess, no user auth files."""
    def run(*args: str | os.PathLike[str], check: bool = True,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "ocisquash", *map(str, args)],
                              capture_output=True, text=True, input=stdin, timeout=300,
                              env={**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "none.json"),
                                   "HOME": str(tmp_path)})
        if check and proc.returncode != 0:
            raise AssertionError(f"ocisquash {args} exited {proc.returncode}: {proc.stderr}")
        return proc
    return run


def as_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    doc = json.loads(proc.stdout)
    assert isinstance(doc, dict)
    return doc
