"""Compile applies a registry image's layers while they download.

The fault proxy sends the 3 MiB layer slowly (``pace``), so the flattener reads
it from the store's partial file as it arrives; cuts, a server that cannot resume,
and damaged bytes then happen while the layer is being applied. The judge of every
image is the compile of the same image from its OCI layout: the bytes must be equal.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from ocisquash.compile import compile_image
from ocisquash.errors import DigestMismatchError
from ocisquash.layers import read_layer
from ocisquash.model import Platform
from ocisquash.progress import BlobDone, BlobProgress, LayerApplying
from ocisquash.sources.options import SourceOptions

from .faultproxy import FaultProxy
from .helpers import file_digest, source

#: seconds between the proxy's 64 KiB pieces: the 3 MiB layer takes about a second
PACE = 0.02


@pytest.fixture(scope="module")
def layout_bytes(registries: Any, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    tmp = tmp_path_factory.mktemp("layout-compile")
    compile_image(f"oci:{registries.layout}:latest", tmp / "layout.squashfs",
                  source_options=SourceOptions(cache_dir=tmp / "cache"))
    return (tmp / "layout.squashfs").read_bytes()


def _big(registries: Any) -> str:
    """The digest of the layer holding 3 MiB of random bytes (the second of three)."""
    return str(registries.image.layer_digests[1])


def _applied_while_arriving(events: list[object], digest: str, past: int = 0) -> bool:
    """Whether more than ``past`` bytes of the layer were applied before its first BlobDone."""
    done = next(i for i, e in enumerate(events)
                if isinstance(e, BlobDone) and str(e.digest) == digest)
    return any(isinstance(e, LayerApplying) and str(e.digest) == digest and e.done > past
               for e in events[:done])


def _compile(proxy: FaultProxy, tmp_path: Path, layout_bytes: bytes) -> list[object]:
    """Compile the test image through ``proxy``; check it against the layout's compile;
    return the progress events (downloads and layers applied, in the order they came)."""
    events: list[object] = []
    out = tmp_path / "registry.squashfs"
    compile_image(f"{proxy.host}/app:oci", out, progress=events.append,
                  source_options=SourceOptions(cache_dir=tmp_path / "cache", plain_http=True,
                                               progress=events.append))
    assert out.read_bytes() == layout_bytes
    return events


def test_a_layer_is_applied_while_it_downloads(
        registries: Any, proxy: FaultProxy, layout_bytes: bytes, tmp_path: Path) -> None:
    big = _big(registries)
    proxy.add("slow", f"/blobs/{big}", pace=PACE)
    events = _compile(proxy, tmp_path, layout_bytes)
    assert _applied_while_arriving(events, big), "the layer was read after its download ended"
    assert sum(isinstance(e, BlobDone) and str(e.digest) == big for e in events) == 1
    # Each blob was asked for once, and stored whole.
    blobs = [s.path for s in proxy.requests(path="/blobs/")]
    assert len(blobs) == len(set(blobs))
    stored = tmp_path / "cache" / "blobs" / "sha256" / big.split(":")[1]
    assert file_digest(stored) == big


def test_a_cut_while_the_layer_is_applied_resumes_with_a_range_request(
        registries: Any, proxy: FaultProxy, layout_bytes: bytes, tmp_path: Path) -> None:
    big = _big(registries)
    proxy.add("cut", f"/blobs/{big}", after=1 << 20, pace=PACE)
    proxy.add("slow", f"/blobs/{big}", pace=PACE)
    events = _compile(proxy, tmp_path, layout_bytes)
    asked = proxy.requests(path=f"/blobs/{big}")
    assert len(asked) == 2 and asked[1].headers.get("range") == f"bytes={1 << 20}-"
    assert _applied_while_arriving(events, big)


def test_a_server_that_cannot_resume_starts_the_layer_over_and_the_image_is_right(
        registries: Any, proxy: FaultProxy, layout_bytes: bytes, tmp_path: Path) -> None:
    big = _big(registries)
    proxy.add("cut", f"/blobs/{big}", after=1 << 20, pace=PACE)
    proxy.add("no_range", f"/blobs/{big}", pace=PACE)
    events = _compile(proxy, tmp_path, layout_bytes)
    offsets = [e.done for e in events if isinstance(e, BlobProgress) and str(e.digest) == big]
    assert any(b < a for a, b in itertools.pairwise(offsets)), "the download did not start over"


def test_bytes_read_before_a_download_started_over_are_read_again_from_the_store(
        registries: Any, proxy: FaultProxy, layout_bytes: bytes, tmp_path: Path) -> None:
    # The first answer is damaged early and cut; the resumed download then fails its
    # digest, and the store downloads the blob afresh. The flattener had read the
    # damaged bytes: compile must not keep what it built from them.
    big = _big(registries)
    proxy.add("cut", f"/blobs/{big}", after=1 << 20, flip=100_000, pace=PACE)
    proxy.add("slow", f"/blobs/{big}", pace=PACE, times=2)
    events = _compile(proxy, tmp_path, layout_bytes)
    ranges = [s.headers.get("range") for s in proxy.requests(path=f"/blobs/{big}")]
    assert ranges == [None, f"bytes={1 << 20}-", None]
    assert _applied_while_arriving(events, big, past=100_000), \
        "the damaged bytes were not read as they arrived"


def test_a_layer_damaged_on_every_attempt_fails_naming_the_blob(
        registries: Any, proxy: FaultProxy, tmp_path: Path) -> None:
    big = _big(registries)
    proxy.add("corrupt", f"/blobs/{big}", after=200_000, pace=PACE / 4, times=-1)
    out = tmp_path / "o.squashfs"
    with pytest.raises(DigestMismatchError) as err:
        compile_image(f"{proxy.host}/app:oci", out,
                      source_options=SourceOptions(cache_dir=tmp_path / "cache", plain_http=True))
    assert big.split(":")[1][:12] in str(err.value)
    assert not out.exists()
    assert not (tmp_path / "cache" / "blobs" / "sha256" / big.split(":")[1]).exists()
    assert not list((tmp_path / "cache").glob("images/*/image.squashfs"))


def test_closing_a_layer_reader_while_it_waits_for_bytes_does_not_wait_for_them(
        registries: Any, proxy: FaultProxy, tmp_path: Path) -> None:
    big = _big(registries)
    # The first MiB, then a cut; the resumed request is answered only after 3 s.
    proxy.add("cut", f"/blobs/{big}", after=1 << 20, pace=0.01)
    proxy.add("delay", f"/blobs/{big}", delay=3.0)
    events: list[object] = []
    image = source(f"{proxy.host}/app:oci", SourceOptions(
        cache_dir=tmp_path / "cache", plain_http=True, progress=events.append)).resolve(
        Platform.parse("linux/amd64"))
    layer = next(x for x in image.layers() if str(x.descriptor.digest) == big)
    with image.downloading():
        members = read_layer(layer)
        entry, _data = next(members)
        assert entry.path == b"big.bin"
        # The decoding thread now waits for bytes past the first MiB: closing must end
        # that wait rather than outlast the delayed answer.
        members.close()
        assert len(proxy.requests(path=f"/blobs/{big}")) == 1
    # Leaving the block waited for the download, which the reader's end did not cancel.
    assert any(isinstance(e, BlobDone) and str(e.digest) == big for e in events)
    assert len(proxy.requests(path=f"/blobs/{big}")) == 2


def test_a_tar_output_is_written_while_the_layers_download(
        registries: Any, proxy: FaultProxy, tmp_path: Path) -> None:
    big = _big(registries)
    compile_image(f"oci:{registries.layout}:latest", tmp_path / "layout.tar", format="tar",
                  source_options=SourceOptions(cache_dir=tmp_path / "c1"))
    # A cut while the layer is applied, so the resumed download is exercised as well.
    proxy.add("cut", f"/blobs/{big}", after=1 << 20, pace=PACE)
    proxy.add("slow", f"/blobs/{big}", pace=PACE)
    events: list[object] = []
    compile_image(f"{proxy.host}/app:oci", tmp_path / "registry.tar", format="tar",
                  progress=events.append,
                  source_options=SourceOptions(cache_dir=tmp_path / "c2", plain_http=True,
                                               progress=events.append))
    assert (tmp_path / "registry.tar").read_bytes() == (tmp_path / "layout.tar").read_bytes()
    assert _applied_while_arriving(events, big)
