"""Fixtures of the reliability suite: one real ``docker-registry`` with a few images, their
reference compiles, and a slow fault-injecting proxy in front of it.

The registry process and the helpers come from tests/registry (imported, not
copied). Reference compiles are made once per session straight from the registry
into a private cache; every faulty run is compared with them byte for byte.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ocisquash.compile import compile_image
from ocisquash.registry.auth import clear_token_cache
from ocisquash.sources.options import SourceOptions
from registry.servers import RegistryProcess, skopeo_copy

from .proxy import SlowProxy
from conftest import require_or_skip
from imagebuilder import BuiltImage, Entry, write_oci_layout

#: random bytes do not compress: the big layer's blob is this large, room to cut it anywhere
BIG_BYTES = 2 << 20


def big_layers(seed: int = 11) -> list[list[Entry]]:
    rnd = random.Random(seed)
    return [
        [Entry("etc", "dir"), Entry("etc/os-release", data=b"ID=reliability\n"),
         Entry("bin", "dir"), Entry("bin/sh", "symlink", linkname="busybox")],
        [Entry("data", "dir"), *(Entry(f"data/chunk{i:02d}", data=rnd.randbytes(BIG_BYTES // 16))
                                 for i in range(16))],
        [Entry("etc/.wh.os-release"), Entry("etc/motd", data=b"top layer\n")],
    ]


def small_layers(name: str) -> list[list[Entry]]:
    return [[Entry("etc", "dir"), Entry("etc/hostname", data=f"{name}\n".encode()),
             Entry(f"{name}.txt", data=name.encode() * 2000)]]


@dataclass
class Site:
    """The registry, its images (repository name → layout) and their reference compiles."""

    registry: RegistryProcess
    layouts: dict[str, BuiltImage]
    reference: dict[str, bytes] = field(default_factory=dict)
    workdir: Path = Path()

    def ref(self, name: str, host: str | None = None) -> str:
        return f"{host or self.registry.host}/{name}:1"

    def big_blob(self) -> str:
        """The digest of the big layer's blob."""
        return self.layouts["big"].layer_digests[1]


def need_registry_tools() -> None:
    require_or_skip(os.path.exists("/usr/bin/docker-registry")
                    or shutil.which("docker-registry") is not None,
                    "docker-registry (Debian package docker-registry) is not installed")
    require_or_skip(shutil.which("skopeo") is not None, "skopeo is not installed")


def options(cache: Path, **kw: object) -> SourceOptions:
    """SourceOptions for the suite: plain HTTP, no user auth files, a tight time budget."""
    kw.setdefault("timeout", 5.0)
    kw.setdefault("retries", 3)
    return SourceOptions(cache_dir=cache, plain_http=True, auth_file=cache.parent / "no-auth.json",
                         **kw)  # type: ignore[arg-type]


def cli_source_args(cache: Path) -> list[str]:
    """Options of a ``compile`` from the site's registry; its ``-o`` may exist from an
    earlier run of the same test, which compiles again to replace it (``--force``)."""
    return ["--cache-dir", str(cache), "--plain-http", "--auth-file",
            str(cache.parent / "no-auth.json"), "--quiet", "--force"]


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    need_registry_tools()
    base = tmp_path_factory.mktemp("reliability-registry")
    storage = base / "storage"
    storage.mkdir()
    images = {"big": (big_layers(), ["gzip", "gzip", "zstd"]),
              "small-a": (small_layers("a"), ["gzip"]), "small-b": (small_layers("b"), ["zstd"])}
    layouts = {}
    reg = RegistryProcess(base / "registry", storage)
    try:
        for name, (layers, comp) in images.items():
            layouts[name] = write_oci_layout(base / f"layout-{name}", layers, compression=comp)
            skopeo_copy(f"oci:{base / f'layout-{name}'}:latest", f"docker://{reg.host}/{name}:1")
        s = Site(reg, layouts, workdir=base)
        clear_token_cache()
        for name in images:
            out = base / f"reference-{name}.squashfs"
            compile_image(s.ref(name), out, source_options=options(base / "reference-cache"))
            s.reference[name] = out.read_bytes()
        yield s
    finally:
        reg.stop()


@pytest.fixture
def slow_proxy(site: Site) -> Iterator[SlowProxy]:
    p = SlowProxy(site.registry.host)
    yield p
    p.close()


@pytest.fixture
def fresh_cache(tmp_path: Path) -> Callable[[str], Path]:
    def make(name: str = "cache") -> Path:
        return tmp_path / name

    return make
