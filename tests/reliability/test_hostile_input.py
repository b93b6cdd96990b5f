"""Hostile input: manifests, indexes and configs (JSON) and whole images run through the CLI.

Every input ends in success or a clean ``OcisquashError`` (the CLI: one
``ocisquash:`` line, no traceback). Tar headers and compressed streams are fuzzed
in tests/flatten/test_fuzz.py and references in tests/test_reference.py; this file
covers the JSON documents and whole-image runs on mutated layouts.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocisquash.errors import OcisquashError
from ocisquash.model import ImageConfig, Index, Manifest, parse_manifest_or_index

from .kit import clean_error_line, run_cli, sha256, write_raw_layout
from imagebuilder import Entry, compress, make_tar

EXAMPLES = int(os.environ.get("OCISQUASH_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DIGEST = "sha256:" + "ab" * 32
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=False), st.text(max_size=20),
                     st.sampled_from([DIGEST, "sha512:" + "0" * 128, "sha256:xyz", "md5:00",
                                      "application/vnd.oci.image.manifest.v1+json",
                                      "application/vnd.oci.image.index.v1+json", "linux", "amd64"]))
_json = st.recursive(_scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=12), kids, max_size=4)),
    max_leaves=20)
_KEYS = ["schemaVersion", "mediaType", "config", "layers", "manifests", "digest", "size",
         "platform", "annotations", "urls", "os", "architecture", "variant", "os.features",
         "os.version", "rootfs", "diff_ids", "Entrypoint", "Cmd", "Env", "WorkingDir", "User",
         "Labels", "ExposedPorts", "Volumes", "StopSignal", "created"]


def _shaped(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects whose keys are the ones the parsers look at, with any values."""
    return st.dictionaries(st.sampled_from(_KEYS), values, max_size=8)


def _descriptor() -> st.SearchStrategy[dict[str, Any]]:
    good = st.fixed_dictionaries({"mediaType": st.text(max_size=40), "digest": st.just(DIGEST),
                                  "size": st.integers(0, 2**40)})
    return st.one_of(good, _shaped(_json), good.flatmap(
        lambda d: _shaped(_json).map(lambda extra: {**d, **extra})))


_documents = st.one_of(
    _json,
    _shaped(_json),
    st.fixed_dictionaries({"schemaVersion": st.just(2), "config": _descriptor(),
                           "layers": st.lists(_descriptor(), max_size=3)},
                          optional={"mediaType": _json, "annotations": _json}),
    st.fixed_dictionaries({"schemaVersion": st.just(2),
                           "manifests": st.lists(_descriptor().flatmap(
                               lambda d: _shaped(_json).map(lambda p: {**d, "platform": p})),
                               max_size=3)},
                          optional={"mediaType": _json, "annotations": _json}),
    st.fixed_dictionaries({"rootfs": st.one_of(_json, st.fixed_dictionaries(
        {"diff_ids": st.lists(st.one_of(st.just(DIGEST), _scalars), max_size=3)})),
        "config": st.one_of(_json, _shaped(_json))},
        optional={"architecture": _json, "os": _json, "variant": _json, "created": _json}),
)


def _raw(doc: Any, garbage: bytes, how: int) -> bytes:
    text = json.dumps(doc).encode()
    if how == 0:
        return text
    if how == 1:
        return text[: len(text) // 2] + garbage
    if how == 2:
        return b"[" * 1100 + text + b"]" * 1100  # nesting deeper than json's recursion limit
    return garbage


@FUZZ
@given(doc=_documents, garbage=st.binary(max_size=40), how=st.integers(0, 3),
       media_type=st.sampled_from(["", "application/vnd.docker.distribution.manifest.v2+json",
                                   "application/vnd.oci.image.index.v1+json", "text/html"]))
def test_manifest_and_index_json_parse_or_fail_cleanly(doc: Any, garbage: bytes, how: int,
                                                       media_type: str) -> None:
    raw = _raw(doc, garbage, how)
    try:
        parsed = parse_manifest_or_index(raw, media_type)
    except OcisquashError:
        return
    assert isinstance(parsed, Manifest | Index) and parsed.raw == raw
    if isinstance(parsed, Index):
        for d in parsed.manifests:
            assert d.size >= 0 and str(d.digest).count(":") == 1


@FUZZ
@given(doc=_documents, garbage=st.binary(max_size=40), how=st.integers(0, 3))
def test_image_config_json_parses_or_fails_cleanly(doc: Any, garbage: bytes, how: int) -> None:
    raw = _raw(doc, garbage, how)
    try:
        cfg = ImageConfig.parse(raw)
    except OcisquashError:
        return
    assert cfg.raw == raw
    assert all(isinstance(s, str) for s in cfg.config.env)
    str(cfg.platform)


# --- whole images through the CLI ---------------------------------------------------------

_TAR = make_tar([Entry("etc", "dir"), Entry("etc/hostname", data=b"fuzz\n"),
                 Entry("bin", "dir"), Entry("bin/sh", "symlink", linkname="/bin/busybox")])
_LAYER = compress(_TAR, "gzip")


def _valid_documents() -> tuple[bytes, bytes]:
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/sh"], "Env": ["A=1"]},
                         "rootfs": {"type": "layers", "diff_ids": [sha256(_TAR)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(_LAYER), "size": len(_LAYER)}]}).encode()
    return manifest, config


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    b = bytearray(data)
    for pos, value in edits:
        if b:
            b[pos % len(b)] = value
    return bytes(b[:cut] if cut is not None else b)


_edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4)


@settings(max_examples=max(EXAMPLES // 10, 5), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(["manifest", "config", "layer", "index"]), edits=_edits,
       cut=st.one_of(st.none(), st.integers(0, 600)))
def test_cli_on_a_mutated_layout_succeeds_or_prints_one_error_line(
        tmp_path_factory: Any, target: str, edits: list[tuple[int, int]], cut: int | None) -> None:
    """Digests are recomputed after the mutation, so the damage reaches the parsers."""
    work = tmp_path_factory.mktemp("mutated")
    manifest, config = _valid_documents()
    index = None
    layer = _LAYER
    if target == "manifest":
        manifest = _mutate(manifest, edits, cut)
    elif target == "config":
        config = _mutate(config, edits, cut)
        manifest = manifest.replace(sha256(_valid_documents()[1]).encode(), sha256(config).encode())
        manifest = manifest.replace(b'"size": %d' % len(_valid_documents()[1]),
                                    b'"size": %d' % len(config), 1)
    elif target == "layer":
        layer = _mutate(_LAYER, edits, cut)
        manifest = json.dumps({**json.loads(manifest), "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256(layer), "size": len(layer)}]}).encode()
    else:
        layout_index = json.dumps({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(manifest),
            "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}).encode()
        index = _mutate(layout_index, edits, cut)
    layout = write_raw_layout(work / "layout", manifest=manifest, config=config, layers=[layer],
                              index=index)
    out = work / "out.squashfs"
    proc = run_cli("compile", f"oci:{layout}:latest", "-o", str(out), "--cache-dir",
                   str(work / "cache"), "--quiet", timeout=60)
    if proc.returncode == 0:
        assert out.is_file() and "Traceback" not in proc.stderr
    else:
        clean_error_line(proc)
        assert not out.exists()
    # nothing written outside the cache and the output
    assert sorted(p.name for p in work.iterdir()) in (["cache", "layout"],
                                                       ["cache", "layout", "out.squashfs"])


def test_unparsable_layout_documents_give_one_error_line(tmp_path: Path) -> None:
    """A fixed corpus the fuzzer may not hit every run: deep nesting, wrong types, bad digests."""
    manifest, config = _valid_documents()
    corpus = {
        "deep-manifest": {"manifest": b"[" * 5000 + b"]" * 5000},
        "deep-config": {"config": b'{"config":' * 3000 + b"{}" + b"}" * 3000},
        "features-not-a-list": {"index": json.dumps({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(manifest), "size": len(manifest),
            "platform": {"os": "linux", "architecture": "amd64", "os.features": 5},
            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}).encode()},
        "ports-not-an-object": {"config": json.dumps({
            "architecture": "amd64", "os": "linux", "config": {"ExposedPorts": 80},
            "rootfs": {"type": "layers", "diff_ids": [sha256(_TAR)]}}).encode()},
        "bad-diff-id": {"config": json.dumps({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ["sha256:nothex"]}}).encode()},
        "negative-size": {"manifest": manifest.replace(b'"size": %d' % len(_LAYER), b'"size": -1')},
    }
    for name, parts in corpus.items():
        cfg = parts.get("config", config)
        man = parts.get("manifest")
        if man is None:
            man = manifest.replace(sha256(config).encode(), sha256(cfg).encode()).replace(
                b'"size": %d' % len(config), b'"size": %d' % len(cfg), 1)
        layout = write_raw_layout(tmp_path / name, manifest=man, config=cfg, layers=[_LAYER],
                                  index=parts.get("index"))
        if "index" in parts:  # the index names the manifest by its digest: write that blob
            (layout / "blobs" / "sha256" / sha256(manifest).split(":")[1]).write_bytes(manifest)
        proc = run_cli("compile", f"oci:{layout}:latest", "-o", str(tmp_path / f"{name}.sqfs"),
                       "--cache-dir", str(tmp_path / "cache"), "--quiet")
        line = clean_error_line(proc)
        assert not (tmp_path / f"{name}.sqfs").exists(), name
        assert len(line) < 400, line


def _raw_tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    out = b""
    for ti, data in members:
        ti.size = len(data)
        out += ti.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512)
    return out + bytes(1024)


def test_pax_record_without_a_length_fails_instead_of_hanging(tmp_path: Path) -> None:
    """Found by fuzz/fuzz_parsers.py: a PAX record with no space in its first 20 bytes,
    right after a good record, looped forever (growing a list) in the tar parser."""
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    tar = _raw_tar((pax, b"7 a=bc\n" + b"X" * 25), (tarfile.TarInfo("file"), b"data"))
    layout = write_raw_layout(tmp_path / "layout", layers=[tar],
                              layer_media="application/vnd.oci.image.layer.v1.tar")
    proc = run_cli("compile", f"oci:{layout}:latest", "-o", str(tmp_path / "o.squashfs"),
                   "--cache-dir", str(tmp_path / "cache"), "--quiet", timeout=30)
    line = clean_error_line(proc)
    assert "invalid PAX header record" in line, line


def test_a_fifo_in_a_layout_or_as_an_archive_is_refused_not_waited_on(tmp_path: Path) -> None:
    """A FIFO planted as index.json, as a manifest or config blob, or given as an
    archive used to block the compile forever, waiting for a writer."""
    manifest, config = _valid_documents()
    fifo_at = {"index": "index.json",
               "manifest": "blobs/sha256/" + sha256(manifest).split(":")[1],
               "config": "blobs/sha256/" + sha256(config).split(":")[1]}
    targets = {}
    for name, member in fifo_at.items():
        layout = write_raw_layout(tmp_path / name, manifest=manifest, config=config,
                                  layers=[_LAYER])
        (layout / member).unlink()
        os.mkfifo(layout / member)
        targets[name] = f"oci:{layout}:latest"
    os.mkfifo(tmp_path / "archive.tar")
    targets["archive"] = f"docker-archive:{tmp_path / 'archive.tar'}"
    for name, target in targets.items():
        proc = run_cli("compile", target, "-o", str(tmp_path / f"{name}.sqfs"),
                       "--cache-dir", str(tmp_path / "cache"), "--quiet", timeout=60)
        line = clean_error_line(proc)
        assert "is a FIFO, not a regular file" in line, (name, line)


def test_a_config_descriptor_of_size_0_is_reported_as_such(tmp_path: Path) -> None:
    """It was reported as "size is 1 bytes, expected 0": one byte past the size is all
    that is read."""
    manifest, config = _valid_documents()
    doc = json.loads(manifest)
    doc["config"]["size"] = 0
    layout = write_raw_layout(tmp_path / "layout", manifest=json.dumps(doc).encode(),
                              config=config, layers=[_LAYER])
    proc = run_cli("compile", f"oci:{layout}:latest", "-o", str(tmp_path / "o.sqfs"),
                   "--cache-dir", str(tmp_path / "cache"), "--quiet")
    line = clean_error_line(proc)
    assert "size is more than the 0 bytes its descriptor says" in line, line
