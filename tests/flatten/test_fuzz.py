"""Fuzzing: damaged tar headers and compressed streams end in success or a clean
``OcisquashError``, never in another exception."""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tarfile

import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocisquash.digest import Digest
from ocisquash.errors import OcisquashError
from ocisquash.flatten import flatten

from .cases import CAP_NET_RAW, D, F, H, O, S, W, _sparse_tree, gnu_tar
from .layerkit import MEDIA, BlobLayer, RecordingSink
from imagebuilder import Entry, make_tar

_ENTRIES = [
    D("etc"), F("etc/" + "long" * 40, b"data" * 300, uid=3_000_000,
                xattrs={"security.capability": CAP_NET_RAW}),
    H("etc/hard", "etc/" + "long" * 40), S("etc/sym", "/" + "t" * 120), W("gone"), O("etc"),
    Entry("dev/null", "char", devmajor=1, devminor=3), F("tail", b"x" * 5000),
]
BASES = [make_tar(_ENTRIES, format=tarfile.PAX_FORMAT), make_tar(_ENTRIES, format=tarfile.GNU_FORMAT)]
#: the patterns that were quadratic or unbounded (bench/bench_hostile.py times them):
#: global headers, links and directories replaced in their own layer
_GLOBALS = b"".join(tarfile.TarInfo._create_pax_generic_header(  # type: ignore[attr-defined]
    {"comment": "c" * 600, f"SCHILY.xattr.user.g{i}": "v", "uid": str(i)}, tarfile.XGLTYPE,
    "utf-8") for i in range(3))
BASES += [
    _GLOBALS + make_tar([F("a", b"x"), H("l1", "a"), H("l2", "a"), F("l2", b"y"), F("l1", b"z"),
                         D("d"), H("d/x", "a"), F("d", b"f"), H("z", "a")]),
    make_tar([F("a", b"x"), H("l1", "a"), F("a", b"2"), H("l2", "l1"), F("l1", b"y"),
              D("d"), D("d/e"), F("d/e/f"), F("d", b"f"), D("d"), F("d/g")],
             format=tarfile.GNU_FORMAT),
]
if shutil.which("tar"):  # sparse entries: old GNU 'S' headers and PAX sparse 1.0 maps
    BASES += [gnu_tar(_sparse_tree, "--sparse", "--format=gnu")(),
              gnu_tar(_sparse_tree, "--sparse", "--format=pax")()]

FUZZ = settings(max_examples=int(os.environ.get("OCISQUASH_FUZZ_EXAMPLES", "50")), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(blob: bytes, diff_id: Digest | None, media: str) -> None:
    with contextlib.suppress(OcisquashError):
        flatten([BlobLayer(blob, diff_id, media)], RecordingSink())


@FUZZ
@given(base=st.sampled_from(BASES),
       edits=st.lists(st.tuples(st.integers(0, 16383), st.integers(0, 255)), min_size=1,
                      max_size=12),
       cut=st.one_of(st.none(), st.integers(0, 6000)))
def test_damaged_tar_headers_fail_cleanly(base: bytes, edits: list[tuple[int, int]],
                                          cut: int | None) -> None:
    tar = bytearray(base)
    for pos, value in edits:  # the first 16 KiB hold the PAX/GNU/sparse headers
        tar[pos % len(tar)] = value
    blob = bytes(tar[:cut] if cut is not None else tar)
    run(blob, Digest.of(blob), MEDIA["tar"])


@FUZZ
@given(compression=st.sampled_from(["gzip", "zstd"]),
       edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 4000)))
def test_damaged_compressed_streams_fail_cleanly(compression: str, edits: list[tuple[int, int]],
                                                 cut: int | None) -> None:
    tar = BASES[0]
    blob = bytearray(gzip.compress(tar) if compression == "gzip" else zstandard.compress(tar))
    for pos, value in edits:
        blob[pos % len(blob)] = value
    data = bytes(blob[:cut] if cut is not None else blob)
    run(data, Digest.of(tar), MEDIA[compression])


@FUZZ
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_fail_cleanly(data: bytes) -> None:
    run(data, None, MEDIA["tar"])
    run(b"\x1f\x8b" + data, None, MEDIA["gzip"])
    run(b"\x28\xb5\x2f\xfd" + data, None, MEDIA["zstd"])
