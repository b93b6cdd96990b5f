"""The cache's own rules for ``cache rm`` and ``cache prune`` (``ImageCache.matching``
and ``ImageCache.prune``): which entries a name picks, which age and size remove; and
its record (``CacheRecord``), typed, with a JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from ocisquash.cache import IMAGE_FILE, CacheRecord, ImageCache, entry_key
from ocisquash.digest import Digest

DAY = 86400.0
NOW = 1_800_000_000.0


def _entry(cache: ImageCache, name: str, size: int, age_days: float) -> str:
    """Publish an entry of ``size`` image bytes, built ``age_days`` before ``NOW``."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "name": name}).encode()
    manifest = json.dumps({"schemaVersion": 2, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": str(Digest.of(config)), "size": len(config)}, "layers": []}).encode()
    digest = Digest.of(manifest)
    key = entry_key(digest, "test", {})
    with cache.staging() as staged:
        (staged / IMAGE_FILE).write_bytes(os.urandom(size))
        (staged / "manifest.json").write_bytes(manifest)
        (staged / "config.json").write_bytes(config)
        cache.publish(key, staged, CacheRecord(
            reference=f"registry.test/{name}:1", source=name, digest=digest,
            manifest_digest=digest, config_digest=Digest.of(config), platform="linux/amd64",
            format="squashfs", format_version="test", options={}, squashfs_size=size,
            squashfs_sha256=Digest.of_file(staged / IMAGE_FILE).hex, files=1, layers=0,
            layer_bytes=0, created=NOW - age_days * DAY))
    return key


def _kept(cache: ImageCache) -> set[str]:
    return {e.record.source for e in cache.entries()}


def test_prune_removes_the_entries_older_than_the_age(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)
    for name, age in (("new", 1), ("week", 6.9), ("old", 8), ("older", 30)):
        _entry(cache, name, 1000, age)
    pruned = cache.prune(older_than=7 * DAY, now=NOW)
    assert pruned.images == 2
    assert _kept(cache) == {"new", "week"}


def test_prune_to_a_size_keeps_the_newest_that_fit(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)
    for name, age in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
        _entry(cache, name, 100_000, age)
    sizes = {e.record.source: e.size for e in cache.entries()}
    pruned = cache.prune(max_size=sizes["a"] + sizes["b"], now=NOW)
    assert pruned.images == 2
    assert _kept(cache) == {"a", "b"}


def test_prune_by_age_then_size_counts_only_what_the_age_kept(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)
    for name, age in (("a", 1), ("b", 2), ("old", 10)):
        _entry(cache, name, 100_000, age)
    size_of_two = sum(e.size for e in cache.entries() if e.record.source in ("a", "b"))
    pruned = cache.prune(older_than=5 * DAY, max_size=size_of_two, now=NOW)
    assert pruned.images == 1
    assert _kept(cache) == {"a", "b"}


def test_prune_with_blobs_removes_only_blobs_no_entry_uses(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)
    data = b"a blob nothing uses"
    cache.blobs.put_bytes(Digest.of(data), data)
    assert cache.prune(now=NOW).blobs == 0
    assert cache.blobs.has(Digest.of(data))
    assert cache.prune(blobs=True, now=NOW).blobs == 1
    assert not cache.blobs.has(Digest.of(data))


def test_matching_names_an_entry_by_reference_source_digest_or_prefix(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)
    key = _entry(cache, "app", 1000, 1)
    _entry(cache, "other", 1000, 1)
    digest = next(str(e.record.digest) for e in cache.entries() if e.key == key)
    for target in ("registry.test/app:1", "app", digest, key[:12], digest[:20]):
        assert [e.key for e in cache.matching(target)] == [key], target
    assert cache.matching("registry.test/nothing:1") == []


def test_the_record_round_trips_through_info_json(tmp_path: Path) -> None:
    """What publish writes is what an entry reads back, field for field, typed."""
    from ocisquash.rules import FidelityIssue

    cache = ImageCache(tmp_path)
    key = _entry(cache, "app", 1000, 1)
    entry = cache.get(key)
    assert entry is not None
    record = entry.record
    assert isinstance(record.digest, Digest) and record.key == key
    assert record.squashfs_mtime_ns is not None and record.squashfs_ino is not None
    info = json.loads((entry.path / "info.json").read_text())
    assert CacheRecord.from_json(info) == record
    assert CacheRecord.from_json(record.to_json()) == record
    issue = FidelityIssue("xattr-dropped", 2, (b"etc/a",), "dropped")
    with_more = dataclasses.replace(record, fidelity=(issue,), index_digest=Digest.of(b"i"),
                                    verity={"root_hash": "00"}, origin="published",
                                    artifact=str(Digest.of(b"a")))
    assert CacheRecord.from_json(json.loads(json.dumps(with_more.to_json()))) == with_more


def test_a_record_that_is_not_one_is_a_cache_error() -> None:
    import pytest

    from ocisquash.errors import CacheError

    for doc in ([], {"digest": "sha256:nothex"}, {"reference": "x"}):
        with pytest.raises(CacheError):
            CacheRecord.from_json(doc)
