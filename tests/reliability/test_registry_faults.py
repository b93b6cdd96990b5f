"""Registry faults through a proxy in front of the real ``docker-registry``: every compile
ends with the right image (byte-identical to the reference compile) or a clear error,
within a bounded time, and never with a wrong image.

tests/registry/test_registry_faults.py checks the client's single mechanisms (one
retry, one resume); these run whole compiles under repeated and mixed faults.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from ocisquash.compile import compile_image
from ocisquash.errors import (
    DigestMismatchError,
    IntegrityError,
    OcisquashError,
    SizeMismatchError,
    TransientRegistryError,
)

from .conftest import Site, options
from .kit import assert_cache_whole, cache_state
from .proxy import SlowProxy

#: seconds any single faulty compile may take (timeouts 5 s, 3 retries, Retry-After ≤ 1 s)
BOUND = 40.0


def _compile(site: Site, proxy: SlowProxy, tmp_path: Path, name: str = "big",
             **kw: object) -> tuple[Path, float]:
    out = tmp_path / f"{name}.squashfs"
    t0 = time.monotonic()
    try:
        compile_image(site.ref(name, proxy.host), out, source_options=options(tmp_path / "cache", **kw))
    finally:
        elapsed = time.monotonic() - t0
        assert elapsed < BOUND, f"took {elapsed:.1f}s"
    return out, elapsed


def _no_wrong_image(tmp_path: Path, name: str = "big") -> None:
    assert not (tmp_path / f"{name}.squashfs").exists()
    assert cache_state(tmp_path / "cache")["images"] == []
    assert_cache_whole(tmp_path / "cache")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_resets_at_random_offsets_still_give_the_right_image(
        site: Site, slow_proxy: SlowProxy, tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    blob = f"/blobs/{site.big_blob()}"
    for _ in range(2):  # two resets, each at a random place of what is left
        slow_proxy.add("reset", blob, after=rnd.randrange(1, 1 << 20))
    out, _ = _compile(site, slow_proxy, tmp_path)
    assert out.read_bytes() == site.reference["big"]
    ranges = [s.headers.get("range") for s in slow_proxy.requests(path=blob)]
    assert len(ranges) == 3 and ranges[0] is None and all(r and r.startswith("bytes=")
                                                          for r in ranges[1:]), ranges


def test_slow_trickle_gives_the_right_image(site: Site, slow_proxy: SlowProxy,
                                            tmp_path: Path) -> None:
    slow_proxy.trickle("/blobs/", chunk=64 << 10, delay=0.01)
    out, _ = _compile(site, slow_proxy, tmp_path)
    assert out.read_bytes() == site.reference["big"]


def test_bursts_of_5xx_on_every_request_kind(site: Site, slow_proxy: SlowProxy,
                                             tmp_path: Path) -> None:
    for path, status in (("/manifests/", 503), ("/blobs/", 500), ("/blobs/", 502)):
        slow_proxy.add("status", path, status=status, times=2)
    out, _ = _compile(site, slow_proxy, tmp_path, retries=5)
    assert out.read_bytes() == site.reference["big"]
    assert sum(1 for s in slow_proxy.requests() if s.status >= 500) == 6


def test_429_storm_with_retry_after_is_waited_out(site: Site, slow_proxy: SlowProxy,
                                                  tmp_path: Path) -> None:
    slow_proxy.add("status", "/manifests/", status=429, headers={"Retry-After": "1"}, times=2)
    slow_proxy.add("status", "/blobs/", status=429, headers={"Retry-After": "1"}, times=2)
    out, elapsed = _compile(site, slow_proxy, tmp_path, name="small-a", retries=5)
    assert out.read_bytes() == site.reference["small-a"]
    assert elapsed >= 1.9  # Retry-After was honoured, not hammered


def test_endless_429_fails_clearly_within_the_budget(site: Site, slow_proxy: SlowProxy,
                                                     tmp_path: Path) -> None:
    slow_proxy.add("status", "/manifests/", status=429, headers={"Retry-After": "1"}, times=-1)
    with pytest.raises(TransientRegistryError, match="429") as err:
        _compile(site, slow_proxy, tmp_path, name="small-a", retries=2)
    assert "gave up after 3 attempts" in err.value.hint
    _no_wrong_image(tmp_path, "small-a")


@pytest.mark.parametrize("fault", ["longer", "truncate", "corrupt"])
def test_a_body_that_does_not_match_its_digest_never_makes_an_image(
        site: Site, slow_proxy: SlowProxy, tmp_path: Path, fault: str) -> None:
    blob = f"/blobs/{site.big_blob()}"
    slow_proxy.add(fault, blob, after=rnd_offset(fault), times=-1)
    with pytest.raises(IntegrityError) as err:
        _compile(site, slow_proxy, tmp_path, retries=2)
    assert isinstance(err.value, SizeMismatchError if fault != "corrupt" else DigestMismatchError)
    assert site.big_blob().split(":")[1][:12] in str(err.value)
    _no_wrong_image(tmp_path)
    # Once the registry serves the right bytes again, the same cache gives the right image.
    slow_proxy.faults.clear()
    out, _ = _compile(site, slow_proxy, tmp_path)
    assert out.read_bytes() == site.reference["big"]


def rnd_offset(fault: str) -> int:
    return {"longer": 0, "truncate": 100_000, "corrupt": 777_777}[fault]


def test_a_substituted_manifest_for_a_digest_reference_is_refused(
        site: Site, slow_proxy: SlowProxy, tmp_path: Path) -> None:
    digest = site.layouts["big"].manifest_digest
    other = site.layouts["small-a"].manifest
    slow_proxy.add("body", f"/manifests/{digest}", times=-1, body=other,
                   headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    with pytest.raises(DigestMismatchError):
        compile_image(f"{slow_proxy.host}/big@{digest}", tmp_path / "x.squashfs",
                      source_options=options(tmp_path / "cache"))
    assert not (tmp_path / "x.squashfs").exists()


def test_mixed_faults_many_rounds(site: Site, slow_proxy: SlowProxy, tmp_path: Path) -> None:
    """Random mixes of every fault: each round ends right or with a clean error."""
    rnd = random.Random(42)
    outcomes = {"right image": 0, "clean error": 0}
    blob = f"/blobs/{site.big_blob()}"
    for i in range(4):
        slow_proxy.faults.clear()
        for _ in range(rnd.randint(1, 3)):
            kind = rnd.choice(["reset", "cut", "status", "status429", "truncate", "corrupt"])
            if kind == "status429":
                slow_proxy.add("status", rnd.choice(["/manifests/", blob]), status=429,
                               headers={"Retry-After": "0"})
            elif kind == "status":
                slow_proxy.add("status", rnd.choice(["/manifests/", "/blobs/"]),
                               status=rnd.choice([500, 502, 503, 504]))
            else:
                slow_proxy.add(kind, blob, after=rnd.randrange(1, 2 << 20))
        work = tmp_path / f"round{i}"
        work.mkdir()
        try:
            out, _ = _compile(site, slow_proxy, work)
        except OcisquashError as e:
            outcomes["clean error"] += 1
            assert str(e) and "\n" not in str(e)
            _no_wrong_image(work)
        else:
            outcomes["right image"] += 1
            assert out.read_bytes() == site.reference["big"]
    print(f"mixed faults: {outcomes}")
    assert outcomes["right image"] >= 1, outcomes
