"""Small helpers shared by the registry tests."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from ocisquash.reference import parse_reference
from ocisquash.registry import ProxySettings, RegistryClient, SchemeHints
from ocisquash.sources.options import SourceOptions
from ocisquash.sources.registry import RegistrySource, registry_options


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    return sha256(path.read_bytes())


def source(ref: str, options: SourceOptions, *,
           proxies: ProxySettings | None = None) -> RegistrySource:
    """The registry source of ``ref``; ``proxies`` replace the environment's (whose
    loopback hosts, where every test registry lives, never use a proxy)."""
    reference = parse_reference(ref)
    if proxies is None:
        return RegistrySource(reference, options)
    ropts = dataclasses.replace(registry_options(options), proxies=proxies)
    client = RegistryClient(reference, ropts, hints=SchemeHints.in_cache(options.cache_dir))
    return RegistrySource(reference, options, client=client)
