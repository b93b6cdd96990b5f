"""Loopback registries: the plain-HTTP answer is remembered across runs, and a stale hint is harmless."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ocisquash.model import Platform

from .helpers import source
from .servers import RegistryProcess, TlsFiles

AMD64 = Platform("linux", "amd64")


def test_plain_http_loopback_registry_is_remembered_in_the_cache(
        registries: Any, make_options: Any, tmp_path: Path) -> None:
    opts = make_options(cache_dir=tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    src = source(f"{registries.plain.host}/app:oci", opts)
    src.resolve(AMD64).config()
    hints = json.loads((tmp_path / "cache" / "registry-schemes.json").read_text())
    assert hints == {registries.plain.host: "http"}


def test_stale_http_hint_for_a_tls_registry_falls_back_to_https(
        tls_registry: RegistryProcess, tls_material: TlsFiles, make_options: Any,
        tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "registry-schemes.json").write_text(
        json.dumps({tls_registry.host: "http"}))
    opts = make_options(cache_dir=tmp_path / "cache", ca_cert=tls_material.ca_cert)
    src = source(f"{tls_registry.host}/app:oci", opts)
    image = src.resolve(AMD64)
    image.config()
    assert src.client.transport.hints.earlier(tls_registry.host) == "http"  # it was used …
    assert src.client.transport.base_url(src.client.endpoints[0]).startswith("https://")  # … and overruled
