"""``compile --use-published`` on a "second host" (a fresh cache): the bytes of a local
compile without fetching a layer; tampered artifacts are refused and the image is
compiled; ``=verify`` reports any difference; the referrers-API path."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ocisquash.digest import Digest
from ocisquash.reference import parse_reference
from ocisquash.registry import RegistryOptions
from ocisquash.registry.upload import Uploader
from registry.servers import skopeo_inspect_raw

from .conftest import Run, as_json
from .helpers import fallback_index, put_index, subject_of
from .referrersproxy import ReferrersProxy


def layer_digests(host: str, repo: str) -> list[str]:
    manifest = json.loads(skopeo_inspect_raw(f"{host}/{repo}:1"))
    return [layer["digest"] for layer in manifest["layers"]]


def listing(path: Path) -> str:
    return subprocess.run(["unsquashfs", "-lln", str(path)], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.parametrize("verity", [False, True], ids=["plain", "verity"])
def test_second_host_gets_the_bytes_of_a_local_compile_without_fetching_layers(
        registries: Any, repo: str, ocisquash: Run, logging_proxy: ReferrersProxy,
        tmp_path: Path, verity: bool) -> None:
    host = registries.plain.host
    extra = ["--verity"] if verity else []
    ocisquash("push", f"{host}/{repo}:1", "-q", "--cache-dir", tmp_path / "first-host", *extra)
    local = tmp_path / "local.squashfs"
    ocisquash("compile", f"{host}/{repo}:1", "-o", local, "-q", "--cache-dir",
              tmp_path / "local-cache", *extra)
    mark = len(logging_proxy.requests())
    fetched = tmp_path / "fetched.squashfs"
    doc = as_json(ocisquash("compile", f"{logging_proxy.host}/{repo}:1", "-o", fetched,
                            "--use-published", "--json", "-q",
                            "--cache-dir", tmp_path / "second-host", *extra))
    assert doc["source"] == "published" and doc["published"]["used"]
    assert fetched.read_bytes() == local.read_bytes()
    assert listing(fetched) == listing(local)
    seen = logging_proxy.requests()[mark:]
    for layer in layer_digests(host, repo):
        assert [s for s in seen if layer in s.path] == []
    if verity:
        for suffix in (".verity", ".roothash"):
            assert Path(f"{fetched}{suffix}").read_bytes() == Path(f"{local}{suffix}").read_bytes()
        root = Path(f"{fetched}.roothash").read_text().strip()
        assert doc["verity"]["root_hash"] == root
        judged = subprocess.run(["veritysetup", "verify", str(fetched), f"{fetched}.verity", root],
                                capture_output=True, text=True)
        assert judged.returncode == 0, judged.stderr
    # The entry is in the cache as if compiled here: the next compile is a cache hit.
    again = as_json(ocisquash("compile", f"{logging_proxy.host}/{repo}:1", "--json", "-q",
                              "--use-published", "--cache-dir", tmp_path / "second-host", *extra))
    assert again["source"] == "cache"
    ocisquash("cache", "--cache-dir", tmp_path / "second-host", "verify")  # exits 0: whole


def test_without_a_published_compile_it_compiles_and_says_so(
        registries: Any, repo: str, ocisquash: Run, tmp_path: Path) -> None:
    proc = ocisquash("compile", f"{registries.plain.host}/{repo}:1", "--use-published",
                     "--json", "-q", "--cache-dir", tmp_path / "c")
    doc = as_json(proc)
    assert doc["source"] == "compiled"
    assert doc["published"] == {"mode": "use", "artifact": None, "used": False,
                                "problem": "no matching artifact", "differences": []}
    assert "no published compile matches" in proc.stderr
    # Without the flag nothing is looked up and nothing is said.
    plain = as_json(ocisquash("compile", f"{registries.plain.host}/{repo}:1", "--json", "-q",
                              "--cache-dir", tmp_path / "d"))
    assert plain["source"] == "compiled" and plain["published"] is None


def _artifact(host: str, repo: str, digest: str) -> dict[str, Any]:
    doc = json.loads(skopeo_inspect_raw(f"{host}/{repo}@{digest}"))
    assert isinstance(doc, dict)
    return doc


def _replace_artifact(host: str, repo: str, subject: str, new: dict[str, Any]) -> str:
    """Push ``new`` as the artifact and make the fallback index list only it."""
    raw = json.dumps(new).encode()
    up = Uploader(parse_reference(f"{host}/{repo}"), RegistryOptions(timeout=10, retries=1))
    digest = str(Digest.of(raw))
    up.put_manifest(digest, raw, new["mediaType"])
    up.transport.close()
    put_index(host, repo, "sha256-" + subject.split(":")[1], [{
        "mediaType": new["mediaType"], "digest": digest, "size": len(raw),
        "artifactType": new["artifactType"], "annotations": new["annotations"]}])
    return digest


def _use(ocisquash: Run, ref: str, cache: Path, out: Path,
         *extra: str) -> tuple[dict[str, Any], str]:
    proc = ocisquash("compile", ref, "-o", out, "--use-published", "--json", "-q",
                     "--cache-dir", cache, *extra)
    return as_json(proc), proc.stderr


def test_a_replaced_blob_is_refused_and_the_image_compiled(
        registries: Any, repo: str, ocisquash: Run, tmp_path: Path) -> None:
    host = registries.plain.host
    # Options no other test uses, so that the image blob damaged below is this test's alone.
    opts = ["--compression", "gzip", "--block-size", "64K"]
    pushed = as_json(ocisquash("push", f"{host}/{repo}:1", "--json", "-q", "--cache-dir",
                               tmp_path / "c1", *opts))
    image_blob = _artifact(host, repo, pushed["artifact"])["layers"][0]["digest"]
    hexa = image_blob.split(":")[1]
    data = registries.storage / "docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data"
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # the storage serves other bytes under the digest
    data.write_bytes(bytes(damaged))
    doc, stderr = _use(ocisquash, f"{host}/{repo}:1", tmp_path / "c2", tmp_path / "o.squashfs",
                       *opts)
    assert doc["source"] == "compiled" and not doc["published"]["used"]
    assert "rejected" in stderr and "sha256" in doc["published"]["problem"]
    local = tmp_path / "local.squashfs"
    ocisquash("compile", f"{host}/{repo}:1", "-o", local, "-q", "--cache-dir", tmp_path / "c3",
              *opts)
    assert (tmp_path / "o.squashfs").read_bytes() == local.read_bytes()


@pytest.mark.parametrize("field,value,problem", [
    ("io.ocisquash.verity.roothash", "00" * 32, "says root hash 0000"),
    ("io.ocisquash.options", '{"compression":"none"}', "do not hash to"),
    ("org.opencontainers.image.created", "1999-01-01T00:00:00Z", "was created '1999"),
    # listed as written by another format version: not even a candidate
    ("io.ocisquash.format.version", "999", "no matching artifact"),
])
def test_replaced_annotations_are_refused_and_the_image_compiled(
        registries: Any, repo: str, ocisquash: Run, tmp_path: Path, field: str,
        value: str, problem: str) -> None:
    host = registries.plain.host
    subject = subject_of(host, repo)["digest"]
    pushed = as_json(ocisquash("push", f"{host}/{repo}:1", "--verity", "--json", "-q",
                               "--cache-dir", tmp_path / "c1"))
    forged = _artifact(host, repo, pushed["artifact"])
    forged["annotations"][field] = value
    forged_digest = _replace_artifact(host, repo, subject, forged)
    assert [e["digest"] for e in fallback_index(host, repo, subject)["manifests"]] == [forged_digest]
    doc, stderr = _use(ocisquash, f"{host}/{repo}:1", tmp_path / "c2", tmp_path / "o.squashfs",
                       "--verity")
    assert doc["source"] == "compiled" and not doc["published"]["used"]
    assert problem in doc["published"]["problem"]
    assert "compiling here" in stderr


def test_a_replaced_image_with_a_consistent_manifest_fails_the_root_hash(
        registries: Any, repo: str, ocisquash: Run, tmp_path: Path) -> None:
    """An attacker who can write the repository swaps in another image whose blob digest
    the manifest names correctly: only the root hash recomputed from the image tells."""
    host = registries.plain.host
    subject = subject_of(host, repo)["digest"]
    pushed = as_json(ocisquash("push", f"{host}/{repo}:1", "--verity", "--json", "-q",
                               "--cache-dir", tmp_path / "c1"))
    forged = _artifact(host, repo, pushed["artifact"])
    entry = next((tmp_path / "c1" / "images").iterdir())
    evil = bytearray((entry / "image.squashfs").read_bytes())
    evil[-5000] ^= 0x01  # one bit of file data
    up = Uploader(parse_reference(f"{host}/{repo}"), RegistryOptions(timeout=10, retries=1))
    from ocisquash.model import Descriptor

    desc = Descriptor(forged["layers"][0]["mediaType"], Digest.of(bytes(evil)), len(evil))
    up.push_blob(desc, bytes(evil))
    up.transport.close()
    forged["layers"][0]["digest"] = str(desc.digest)
    _replace_artifact(host, repo, subject, forged)
    doc, _ = _use(ocisquash, f"{host}/{repo}:1", tmp_path / "c2", tmp_path / "o.squashfs",
                  "--verity")
    assert doc["source"] == "compiled"
    assert "root hash" in doc["published"]["problem"]


def test_verify_reports_a_difference_that_use_cannot_see(
        registries: Any, repo: str, ocisquash: Run, tmp_path: Path) -> None:
    """Without verity an artifact that is a valid squashfs of other content passes every
    check a download can make; ``=verify`` compiles too and reports the difference."""
    host = registries.plain.host
    subject = subject_of(host, repo)["digest"]
    pushed = as_json(ocisquash("push", f"{host}/{repo}:1", "--json", "-q",
                               "--cache-dir", tmp_path / "c1"))
    honest = as_json(ocisquash("compile", f"{host}/{repo}:1", "--use-published=verify",
                               "--json", "-q", "--cache-dir", tmp_path / "c2"))
    assert honest["published"]["artifact"] == pushed["artifact"]
    assert honest["published"]["differences"] == [] and honest["source"] == "compiled"
    # Another image's squashfs under this image's artifact.
    other = tmp_path / "other.squashfs"
    ocisquash("compile", f"oci:{registries.multi_layout}:latest", "-o", other, "-q",
              "--platform", "linux/amd64", "--cache-dir", tmp_path / "c3")
    forged = _artifact(host, repo, pushed["artifact"])
    from ocisquash.model import Descriptor

    desc = Descriptor(forged["layers"][0]["mediaType"], Digest.of_file(other),
                      other.stat().st_size)
    up = Uploader(parse_reference(f"{host}/{repo}"), RegistryOptions(timeout=10, retries=1))
    up.push_blob(desc, other)
    up.transport.close()
    forged["layers"][0].update(digest=str(desc.digest), size=desc.size)
    forged_digest = _replace_artifact(host, repo, subject, forged)
    proc = ocisquash("compile", f"{host}/{repo}:1", "--use-published=verify", "--json", "-q",
                     "--cache-dir", tmp_path / "c4", check=False)
    assert proc.returncode == 1
    doc = as_json(proc)
    assert doc["published"]["artifact"] == forged_digest
    assert doc["published"]["differences"] and \
        doc["published"]["differences"][0].startswith("image.squashfs: published")
    assert "differs from the compile here" in proc.stderr


def test_referrers_api_is_used_where_the_registry_has_it(
        registries: Any, repo: str, ocisquash: Run, referrers_proxy: ReferrersProxy,
        tmp_path: Path) -> None:
    host = registries.plain.host
    subject = subject_of(host, repo)["digest"]
    ref = f"{referrers_proxy.host}/{repo}:1"
    pushed = as_json(ocisquash("push", ref, "--json", "-q", "--cache-dir", tmp_path / "c1"))
    assert pushed["listed"] == "referrers" and not pushed["wrote_index"]
    tag = "sha256-" + subject.split(":")[1]
    assert referrers_proxy.requests(path=f"/manifests/{tag}") == []
    with pytest.raises(RuntimeError, match="manifest unknown"):
        skopeo_inspect_raw(f"{host}/{repo}:{tag}")  # no fallback index was written
    mark = len(referrers_proxy.requests())
    doc = as_json(ocisquash("compile", ref, "--use-published", "--json", "-q",
                            "--cache-dir", tmp_path / "c2"))
    assert doc["source"] == "published" and doc["published"]["artifact"] == pushed["artifact"]
    seen = referrers_proxy.requests()[mark:]
    lookups = [s for s in seen if "/referrers/" in s.path]
    assert [(s.status, s.path.endswith("artifactType=application%2Fvnd.ocisquash.squashfs.v1"))
            for s in lookups] == [(200, True)]
    assert [s for s in seen if tag in s.path] == []
    for layer in layer_digests(host, repo):
        assert [s for s in seen if layer in s.path] == []


def test_trust_cert_takes_only_a_root_hash_its_key_signed(
        registries: Any, repo: str, ocisquash: Run, tmp_path: Path) -> None:
    from verity._util import make_key_pair, openssl_verify

    key, cert = make_key_pair(tmp_path, "fleet signer")
    _, other_cert = make_key_pair(tmp_path, "someone else")
    host = registries.plain.host
    ocisquash("push", f"{host}/{repo}:1", "--verity", "--verity-sign", key, "--verity-cert", cert,
              "-q", "--cache-dir", tmp_path / "c1")
    out = tmp_path / "trusted.raw"
    doc, _ = _use(ocisquash, f"{host}/{repo}:1", tmp_path / "c2", out, "--verity",
                  "--trust-cert", cert)
    assert doc["source"] == "published" and doc["verity"]["signed"]
    root = Path(tmp_path / "trusted.roothash").read_text().strip()
    (tmp_path / "root.txt").write_text(root)
    judged = openssl_verify(tmp_path / "trusted.roothash.p7s", tmp_path / "root.txt", cert)
    assert judged.returncode == 0, judged.stderr
    # Signed by another key than the one trusted: refused, compiled here.
    doc, stderr = _use(ocisquash, f"{host}/{repo}:1", tmp_path / "c3", tmp_path / "o.raw",
                       "--verity", "--trust-cert", other_cert)
    assert doc["source"] == "compiled" and "rejected" in stderr
    assert not Path(tmp_path / "o.roothash.p7s").exists()
    # Without --trust-cert an unsigned compile takes it, and leaves the signature out,
    # as a compile here without a key would.
    doc, _ = _use(ocisquash, f"{host}/{repo}:1", tmp_path / "c4", tmp_path / "u.raw", "--verity")
    assert doc["source"] == "published" and not doc["verity"]["signed"]
    assert not Path(tmp_path / "u.roothash.p7s").exists()
    assert Path(tmp_path / "u.raw").read_bytes() == out.read_bytes()


def test_trust_cert_without_use_published_is_a_usage_error(
        registries: Any, repo: str, ocisquash: Run, tmp_path: Path) -> None:
    proc = ocisquash("compile", f"{registries.plain.host}/{repo}:1", "--verity", "--trust-cert",
                     tmp_path / "c.pem", "-q", "--cache-dir", tmp_path / "c", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("ocisquash: ")
    assert "--use-published" in proc.stderr


def test_compile_publish_then_the_api_uses_it(
        registries: Any, repo: str, ocisquash: Run, tmp_path: Path) -> None:
    from ocisquash.compile import compile_image
    from ocisquash.sources.options import SourceOptions

    ref = f"{registries.plain.host}/{repo}:1"
    doc = as_json(ocisquash("compile", ref, "--publish", "--json", "-q", "-o",
                            tmp_path / "first.squashfs", "--cache-dir", tmp_path / "c1"))
    assert doc["source"] == "compiled" and doc["pushed"]["wrote_manifest"]
    artifact = doc["pushed"]["artifact"]
    result = compile_image(ref, tmp_path / "api.squashfs", published="use",
                           source_options=SourceOptions(cache_dir=tmp_path / "c2"))
    assert result.source == "published" and result.published is not None
    assert result.published.artifact == artifact and result.published.used
    assert (tmp_path / "api.squashfs").read_bytes() == (tmp_path / "first.squashfs").read_bytes()
    assert result.files == doc["files"]
    again = compile_image(ref, None, published="use",
                          source_options=SourceOptions(cache_dir=tmp_path / "c2"))
    assert again.source == "cache" and again.published is None


def test_an_erofs_image_with_appended_verity_comes_from_the_registry(
        registries: Any, repo: str, ocisquash: Run, tmp_path: Path) -> None:
    ref = f"{registries.plain.host}/{repo}:1"
    opts = ["--format", "erofs", "--verity=append"]
    ocisquash("push", ref, "-q", "--cache-dir", tmp_path / "c1", *opts)
    local = as_json(ocisquash("compile", ref, "-o", tmp_path / "local.erofs", "--json", "-q",
                              "--cache-dir", tmp_path / "c2", *opts))
    doc = as_json(ocisquash("compile", ref, "-o", tmp_path / "fetched.erofs", "--json", "-q",
                            "--use-published", "--cache-dir", tmp_path / "c3", *opts))
    assert doc["source"] == "published"
    assert (tmp_path / "fetched.erofs").read_bytes() == (tmp_path / "local.erofs").read_bytes()
    assert doc["files"] == local["files"]  # the inode count, read from the EROFS superblock
    assert doc["verity"] == local["verity"] and doc["verity"]["hash_offset"]
    root = doc["verity"]["root_hash"]
    judged = subprocess.run(["veritysetup", "verify", str(tmp_path / "fetched.erofs"),
                             str(tmp_path / "fetched.erofs"), root,
                             f"--hash-offset={doc['verity']['hash_offset']}"],
                            capture_output=True, text=True)
    assert judged.returncode == 0, judged.stderr
