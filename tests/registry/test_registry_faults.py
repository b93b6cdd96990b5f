"""Retries, resumed downloads, integrity and redirects, through a fault-injecting proxy."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ocisquash.errors import (
    DigestMismatchError,
    RegistryError,
    RegistryUnreachableError,
    SizeMismatchError,
    TransientRegistryError,
)
from ocisquash.model import Platform
from ocisquash.progress import BlobDone, BlobRetrying
from ocisquash.registry.transport import RetryPolicy
from ocisquash.sources.registry import RegistryImage, pull

from .conftest import BIG_LAYER_SIZE, HTPASSWD_PASSWORD, HTPASSWD_USER, Registries
from .faultproxy import FaultProxy
from .helpers import file_digest, sha256, source
from .servers import free_port

AMD64 = Platform.parse("linux/amd64")


def _resolve(proxy: FaultProxy, options: Any, ref: str = "app:oci") -> RegistryImage:
    return source(f"{proxy.host}/{ref}", options).resolve(AMD64)


def _big(image: RegistryImage) -> Any:
    """The layer with the 3 MiB of random bytes."""
    return max(image.layers(), key=lambda layer: layer.descriptor.size)


def test_server_errors_are_retried_until_the_request_succeeds(
        registries: Registries, proxy: FaultProxy, make_options: Any) -> None:
    proxy.add("status", "/manifests/oci", status=500, times=2)
    image = _resolve(proxy, make_options(plain_http=True))
    assert [s.status for s in proxy.requests(path="/manifests/")] == [500, 500, 200]
    assert image.manifest().layers


def test_429_waits_as_long_as_retry_after_says(proxy: FaultProxy, make_options: Any) -> None:
    proxy.add("status", "/manifests/oci", status=429, headers={"Retry-After": "1"})
    start = time.monotonic()
    _resolve(proxy, make_options(plain_http=True))
    assert time.monotonic() - start >= 0.95
    assert [s.status for s in proxy.requests(path="/manifests/")] == [429, 200]


def test_retry_budget_is_bounded_and_the_error_says_temporary(
        proxy: FaultProxy, make_options: Any) -> None:
    proxy.add("status", "/manifests/oci", status=503, times=-1)
    with pytest.raises(TransientRegistryError) as err:
        _resolve(proxy, make_options(plain_http=True, retries=2))
    assert err.value.temporary and err.value.status == 503
    assert "gave up after 3 attempts" in err.value.hint
    assert len(proxy.requests(path="/manifests/")) == 3


def test_retry_after_beyond_the_budget_fails_without_waiting(
        proxy: FaultProxy, make_options: Any) -> None:
    proxy.add("status", "/manifests/oci", status=429, headers={"Retry-After": "3600"})
    start = time.monotonic()
    with pytest.raises(TransientRegistryError, match="429"):
        _resolve(proxy, make_options(plain_http=True))
    assert time.monotonic() - start < 5


def test_connection_cut_mid_blob_resumes_with_a_range_request(
        proxy: FaultProxy, make_options: Any) -> None:
    events: list[object] = []
    image = _resolve(proxy, make_options(plain_http=True, progress=events.append))
    big = _big(image)
    cut = 1 << 20
    proxy.add("cut", f"/blobs/{big.descriptor.digest}", after=cut)
    path = big.fetch()
    assert file_digest(path) == str(big.descriptor.digest)
    assert path.stat().st_size == big.descriptor.size > BIG_LAYER_SIZE
    gets = proxy.requests(path=f"/blobs/{big.descriptor.digest}")
    assert "range" not in gets[0].headers
    assert gets[1].headers["range"] == f"bytes={cut}-" and gets[1].status == 206
    assert any(isinstance(e, BlobRetrying) for e in events)
    assert any(isinstance(e, BlobDone) and e.digest == big.descriptor.digest for e in events)


def test_server_that_cannot_resume_makes_the_download_start_over(
        proxy: FaultProxy, make_options: Any) -> None:
    image = _resolve(proxy, make_options(plain_http=True))
    big = _big(image)
    proxy.add("cut", f"/blobs/{big.descriptor.digest}", after=500_000)
    proxy.add("no_range", f"/blobs/{big.descriptor.digest}")
    path = big.fetch()
    assert file_digest(path) == str(big.descriptor.digest)
    gets = proxy.requests(path=f"/blobs/{big.descriptor.digest}")
    assert gets[1].headers["range"] == "bytes=500000-" and gets[1].status == 200


def test_truncated_body_is_a_size_error_and_nothing_is_published(
        proxy: FaultProxy, make_options: Any) -> None:
    image = _resolve(proxy, make_options(plain_http=True, retries=1))
    big = _big(image)
    proxy.add("truncate", f"/blobs/{big.descriptor.digest}", after=1000, times=-1)
    with pytest.raises(SizeMismatchError, match=f"of {big.descriptor.size} bytes"):
        big.fetch()
    assert not image.source.store.has(big.descriptor.digest)


def test_corrupted_body_is_a_digest_error_and_nothing_is_kept(
        proxy: FaultProxy, make_options: Any) -> None:
    image = _resolve(proxy, make_options(plain_http=True))
    big = _big(image)
    proxy.add("corrupt", f"/blobs/{big.descriptor.digest}", after=12345, times=-1)
    with pytest.raises(DigestMismatchError, match=big.descriptor.digest.short) as err:
        big.fetch()
    # The message names the digest of the bytes received.
    body = bytearray(proxy_blob(proxy, big))
    body[12345] ^= 0xFF
    assert f"content has digest {sha256(bytes(body))[:19]}…" in str(err.value)
    store = image.source.store
    assert not store.has(big.descriptor.digest)
    partial = store.root / "blobs" / "partial" / f"sha256-{big.descriptor.digest.hex}.part"
    assert not partial.exists() or partial.stat().st_size == 0


def test_bad_bytes_received_before_a_resume_in_the_same_run_are_fetched_again(
        proxy: FaultProxy, make_options: Any) -> None:
    image = _resolve(proxy, make_options(plain_http=True))
    big = _big(image)
    # A damaged first answer, cut; the resumed rest is fine, the whole does not verify.
    proxy.add("cut", f"/blobs/{big.descriptor.digest}", after=1 << 20, flip=1000)
    path = big.fetch()
    assert file_digest(path) == str(big.descriptor.digest)
    ranges = [s.headers.get("range") for s in proxy.requests(path=f"/blobs/{big.descriptor.digest}")]
    assert ranges == [None, f"bytes={1 << 20}-", None]


def proxy_blob(proxy: FaultProxy, layer: Any) -> bytes:
    """The blob's bytes as the registry behind the proxy serves them."""
    import urllib.request

    url = f"http://{proxy.upstream}/v2/app/blobs/{layer.descriptor.digest}"
    with urllib.request.urlopen(url) as resp:
        return resp.read()  # type: ignore[no-any-return]


def test_bad_bytes_left_by_an_earlier_download_are_dropped_and_fetched_again(
        proxy: FaultProxy, make_options: Any) -> None:
    image = _resolve(proxy, make_options(plain_http=True))
    big = _big(image)
    store = image.source.store
    partial = store.root / "blobs" / "partial" / f"sha256-{big.descriptor.digest.hex}.part"
    partial.write_bytes(b"\0" * 4096)
    path = big.fetch()
    assert file_digest(path) == str(big.descriptor.digest)
    gets = proxy.requests(path=f"/blobs/{big.descriptor.digest}")
    assert gets[0].headers["range"] == "bytes=4096-"
    assert "range" not in gets[1].headers


def test_redirect_to_another_host_does_not_forward_the_credentials(
        auth_proxy: FaultProxy, make_options: Any) -> None:
    options = make_options(plain_http=True, username=HTPASSWD_USER, password=HTPASSWD_PASSWORD)
    image = _resolve(auth_proxy, options)
    auth_proxy.add("redirect", "/blobs/", times=-1)
    paths = pull(image)
    for layer, path in zip(image.layers(), paths, strict=True):
        assert file_digest(path) == str(layer.descriptor.digest)
    at_registry = auth_proxy.requests(path="/blobs/sha256:")
    at_storage = auth_proxy.requests("storage")
    assert len(at_storage) == len(image.layers()) + 1  # and the config
    assert all(s.status == 200 for s in at_storage)
    assert all(s.headers.get("authorization", "").startswith("Basic ") for s in at_registry)
    assert all("authorization" not in s.headers for s in at_storage)


def test_a_stalled_response_times_out_and_is_retried(
        proxy: FaultProxy, make_options: Any) -> None:
    proxy.add("stall", "/manifests/oci", delay=1.5)
    image = _resolve(proxy, make_options(plain_http=True, timeout=0.5))
    assert image.digest
    assert len(proxy.requests(path="/manifests/")) >= 2


def test_a_registry_that_never_answers_fails_naming_the_timeout(
        proxy: FaultProxy, make_options: Any) -> None:
    proxy.add("stall", "/manifests/oci", delay=1.0, times=-1)
    with pytest.raises(TransientRegistryError, match=r"did not answer within 0\.3s"):
        _resolve(proxy, make_options(plain_http=True, timeout=0.3, retries=0))


def test_refused_connection_to_a_host_never_reached_fails_at_once(make_options: Any) -> None:
    port = free_port()
    sleeps: list[float] = []
    src = source(f"127.0.0.1:{port}/app:oci", make_options(plain_http=True, retries=2))
    src.client._remotes[0].retry = RetryPolicy(3, sleep=sleeps.append)
    with pytest.raises(RegistryUnreachableError, match=f"cannot connect to 127.0.0.1:{port}") as err:
        src.resolve(AMD64)
    assert not err.value.temporary and sleeps == []
    assert "check the registry's host and port" in err.value.hint


def test_a_host_name_that_does_not_resolve_fails_at_once(make_options: Any) -> None:
    sleeps: list[float] = []
    src = source("registry.invalid/app:oci", make_options(retries=2))  # RFC 2606: never resolves
    src.client._remotes[0].retry = RetryPolicy(3, sleep=sleeps.append)
    with pytest.raises(RegistryUnreachableError,
                       match=r"cannot resolve the host name registry\.invalid") as err:
        src.resolve(AMD64)
    assert not err.value.temporary and sleeps == []


def test_refused_connection_to_a_registry_that_answered_before_is_retried(
        registries: Registries, make_options: Any) -> None:
    """A registry that answered and then refuses is restarting: worth the retries."""
    front = FaultProxy(registries.plain.host)
    src = source(f"{front.host}/app:oci", make_options(plain_http=True))
    image = src.resolve(AMD64)
    front.close()  # the port now refuses connections …
    src.client.transport.close()  # … and the kept-alive one is gone too
    sleeps: list[float] = []
    src.client._remotes[0].retry = RetryPolicy(3, sleep=sleeps.append)
    with pytest.raises(TransientRegistryError, match=f"cannot connect to {front.host}") as err:
        image.config()
    assert err.value.temporary and len(sleeps) == 2
    assert "gave up after 3 attempts" in err.value.hint


def test_plain_http_fallback_reports_both_failures(make_options: Any) -> None:
    port = free_port()
    with pytest.raises(RegistryError, match="nor over HTTP"):
        source(f"127.0.0.1:{port}/app:oci", make_options(retries=0)).resolve(AMD64)


@pytest.mark.parametrize("max_parallel", [1, 2])
def test_layers_download_in_parallel_up_to_max_parallel(
        proxy: FaultProxy, make_options: Any, max_parallel: int) -> None:
    image = _resolve(proxy, make_options(plain_http=True, max_parallel=max_parallel))
    image.config()
    proxy.max_inflight = 0
    proxy.add("delay", "/blobs/", delay=0.3, times=-1)
    paths = pull(image)
    assert [file_digest(p) for p in paths] == [str(la.descriptor.digest) for la in image.layers()]
    assert proxy.max_inflight == max_parallel


def test_one_failing_layer_fails_the_pull_and_the_others_stay_stored(
        proxy: FaultProxy, make_options: Any) -> None:
    image = _resolve(proxy, make_options(plain_http=True))
    big = _big(image)
    proxy.add("corrupt", f"/blobs/{big.descriptor.digest}", after=10, times=-1)
    with pytest.raises(DigestMismatchError):
        pull(image)
    store = image.source.store
    assert not store.has(big.descriptor.digest)
    others = [la for la in image.layers() if la is not big]
    assert all(store.has(la.descriptor.digest) for la in others)


def test_pull_and_compile_download_the_layers_in_one_order_top_first(
        proxy: FaultProxy, make_options: Any, tmp_path: Any) -> None:
    """One downloader serves both: one at a time, the top layer's blob is asked for first."""
    from ocisquash.compile import compile_image

    image = _resolve(proxy, make_options(plain_http=True, max_parallel=1))
    top_first = [f"/blobs/{la.descriptor.digest}" for la in reversed(image.layers())]
    pull(image)
    pulled = [s.path[s.path.index("/blobs/"):] for s in proxy.requests(path="/blobs/sha256:")
              if not s.path.endswith(str(image.manifest().config.digest))]
    assert pulled == top_first
    seen = len(proxy.requests(path="/blobs/sha256:"))
    compile_image(f"{proxy.host}/app:oci", tmp_path / "out.squashfs",
                  source_options=make_options(plain_http=True, max_parallel=1,
                                              cache_dir=tmp_path / "other-cache"))
    compiled = [s.path[s.path.index("/blobs/"):]
                for s in proxy.requests(path="/blobs/sha256:")[seen:]
                if not s.path.endswith(str(image.manifest().config.digest))]
    assert compiled == top_first
