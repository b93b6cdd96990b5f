"""Session fixtures: real registries (plain, TLS, htpasswd, token auth) sharing one storage.

Images are built with ``imagebuilder`` and pushed once with ``skopeo`` to the
plain registry; the other registries serve the same storage directory. Every
registry process is killed when the session ends.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ocisquash.registry.auth import clear_token_cache
from ocisquash.sources.options import SourceOptions

from .faultproxy import FaultProxy
from .servers import (
    RegistryProcess,
    TlsFiles,
    TokenServer,
    make_tls,
    skopeo_copy,
    skopeo_copy_from,
    write_htpasswd,
)
from conftest import require_or_skip
from imagebuilder import BuiltImage, Entry, write_oci_layout

HTPASSWD_USER, HTPASSWD_PASSWORD = "alice", "alice-s3cret-pw"
TOKEN_USER, TOKEN_PASSWORD = "bob", "bob-t0ken-pw"
REFRESH_TOKEN = "refresh-identity-xyz"

#: The big layer: random bytes do not compress, so the blob is ~3 MB — room to cut it mid-way.
BIG_LAYER_SIZE = 3 << 20


@dataclass
class Registries:
    storage: Path
    plain: RegistryProcess
    layout: Path
    image: BuiltImage
    multi_layout: Path
    multi: BuiltImage
    judged: dict[str, Path] = field(default_factory=dict)

    def skopeo_dir(self, ref: str) -> Path:
        """The image as ``skopeo copy`` to a ``dir:`` fetches it: the judge of our downloads."""
        if ref not in self.judged:
            target = self.storage.parent / "judged" / ref.replace("/", "_").replace(":", "_")
            target.parent.mkdir(exist_ok=True)
            skopeo_copy_from(f"docker://{self.plain.host}/{ref}", f"dir:{target}")
            self.judged[ref] = target
        return self.judged[ref]


def _need_tools() -> None:
    require_or_skip(os.path.exists("/usr/bin/docker-registry") or bool(shutil.which("docker-registry")),
                    "docker-registry (Debian package docker-registry) is not installed")
    require_or_skip(bool(shutil.which("skopeo")), "skopeo is not installed")


@pytest.fixture(scope="session")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registries]:
    """The plain-HTTP registry with every test image pushed."""
    _need_tools()
    base = tmp_path_factory.mktemp("registries")
    storage = base / "storage"
    storage.mkdir()
    big = os.urandom(BIG_LAYER_SIZE)
    layers = [
        [Entry("etc", kind="dir", mode=0o755), Entry("etc/os-release", data=b"ID=test\n")],
        [Entry("big.bin", data=big)],
        [Entry("hello.txt", data=b"hello from the third layer\n")],
    ]
    layout = base / "app-layout"
    image = write_oci_layout(layout, layers, compression=["gzip", "gzip", "tar"], config={
        "Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["PATH=/usr/bin", "MODE=test"],
        "WorkingDir": "/srv", "User": "1000:1000", "Labels": {"org.example.team": "squash"},
    })
    multi_layout = base / "multi-layout"
    multi = write_oci_layout(multi_layout, [[Entry("arch.txt", data=b"same layers\n")]],
                             extra_platforms=[("arm64", "v8")])
    plain = RegistryProcess(base / "plain", storage)
    try:
        src = f"oci:{layout}:latest"
        for repo in ("app:oci", "library/app:oci", "private/app:oci"):
            skopeo_copy(src, f"docker://{plain.host}/{repo}")
        skopeo_copy(src, f"docker://{plain.host}/app:v2s2", "--format", "v2s2")
        skopeo_copy(f"oci:{multi_layout}:latest", f"docker://{plain.host}/multi:latest", "--all")
        skopeo_copy(f"oci:{multi_layout}:latest", f"docker://{plain.host}/multi:list", "--all",
                    "--format", "v2s2")
        yield Registries(storage, plain, layout, image, multi_layout, multi)
    finally:
        plain.stop()


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def tls_registry(registries: Registries, tls_material: TlsFiles,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    reg = RegistryProcess(tmp_path_factory.mktemp("tls-registry"), registries.storage,
                          tls=tls_material)
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def htpasswd_registry(registries: Registries,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    work = tmp_path_factory.mktemp("htpasswd-registry")
    write_htpasswd(work / "htpasswd", {HTPASSWD_USER: HTPASSWD_PASSWORD})
    reg = RegistryProcess(work, registries.storage, htpasswd=work / "htpasswd")
    yield reg
    reg.stop()


@dataclass
class TokenRegistry:
    registry: RegistryProcess
    tokens: TokenServer

    @property
    def host(self) -> str:
        return self.registry.host


@pytest.fixture(scope="session")
def token_registry_session(registries: Registries,
                           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenRegistry]:
    work = tmp_path_factory.mktemp("token-registry")
    tokens = TokenServer(work, {TOKEN_USER: TOKEN_PASSWORD}, {REFRESH_TOKEN: TOKEN_USER})
    reg = RegistryProcess(work, registries.storage, token=tokens.registry_config())
    yield TokenRegistry(reg, tokens)
    reg.stop()
    tokens.stop()


@pytest.fixture
def token_registry(token_registry_session: TokenRegistry) -> TokenRegistry:
    """The token-auth registry with the token server's log emptied and no cached tokens."""
    token_registry_session.tokens.reset()
    clear_token_cache()
    return token_registry_session


@pytest.fixture
def proxy(registries: Registries) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the plain registry."""
    p = FaultProxy(registries.plain.host)
    yield p
    p.close()


@pytest.fixture
def auth_proxy(htpasswd_registry: RegistryProcess) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the htpasswd registry; its storage host logs in itself."""
    basic = base64.b64encode(f"{HTPASSWD_USER}:{HTPASSWD_PASSWORD}".encode()).decode()
    p = FaultProxy(htpasswd_registry.host, upstream_auth=f"Basic {basic}")
    yield p
    p.close()


@pytest.fixture
def make_options(tmp_path: Path) -> Iterator[object]:
    """``make_options(**kw)``: SourceOptions with a private cache and no user auth files."""
    clear_token_cache()

    def make(**kw: object) -> SourceOptions:
        kw.setdefault("cache_dir", tmp_path / "cache")
        kw.setdefault("auth_file", tmp_path / "no-auth.json")
        kw.setdefault("timeout", 10.0)
        kw.setdefault("retries", 3)
        return SourceOptions(**kw)  # type: ignore[arg-type]

    yield make
    clear_token_cache()
