"""``ocisquash pull`` and ``ocisquash inspect`` against the real registry; Docker Hub mirrors."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from ocisquash.cli import main
from ocisquash.model import Platform
from ocisquash.reference import parse_reference
from ocisquash.registry.client import RegistryClient
from ocisquash.registry.transport import Endpoint
from ocisquash.sources.registry import registry_options

from .conftest import HTPASSWD_PASSWORD, HTPASSWD_USER, Registries
from .faultproxy import FaultProxy
from .helpers import file_digest, sha256, source
from .servers import RegistryProcess, free_port, skopeo_inspect_raw


def test_pull_puts_manifest_config_and_layers_in_the_cache(
        registries: Registries, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    ref = f"{registries.plain.host}/app:v2s2"
    status = main(["pull", "--platform", "linux/amd64", "--cache-dir", str(cache),
                   "--auth-file", str(tmp_path / "none.json"), ref])
    assert status == 0
    raw = skopeo_inspect_raw(ref)
    assert capsys.readouterr().out.strip() == f"{ref}@{sha256(raw)}"
    manifest = json.loads(raw)
    blobs = cache / "blobs" / "sha256"
    for desc in [manifest["config"], *manifest["layers"]]:
        path = blobs / desc["digest"].split(":")[1]
        assert file_digest(path) == desc["digest"]
        assert path.stat().st_size == desc["size"]
    assert file_digest(blobs / sha256(raw).split(":")[1]) == sha256(raw)


def test_pull_with_password_on_stdin(
        htpasswd_registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(HTPASSWD_PASSWORD + "\n"))
    status = main(["pull", "-q", "--cache-dir", str(tmp_path / "c"), "--username", HTPASSWD_USER,
                   "--password-stdin", f"{htpasswd_registry.host}/app:oci"])
    assert status == 0
    assert "@sha256:" in capsys.readouterr().out


def test_pull_of_a_missing_tag_fails_with_one_line_naming_it(
        registries: Registries, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = f"{registries.plain.host}/app:absent"
    status = main(["pull", "--cache-dir", str(tmp_path / "c"), ref])
    assert status == 3  # an image error (README's exit status table)
    err = capsys.readouterr().err
    assert err.startswith(f"ocisquash: manifest of {ref}: not found")


def test_inspect_json_of_an_index_shows_platforms_layers_and_config(
        registries: Registries, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = f"{registries.plain.host}/multi:latest"
    assert main(["inspect", "--json", "--platform", "linux/arm64", "--cache-dir",
                 str(tmp_path / "c"), ref]) == 0
    info = json.loads(capsys.readouterr().out)
    index = json.loads(skopeo_inspect_raw(ref))
    arm = next(m for m in index["manifests"] if m["platform"]["architecture"] == "arm64")
    manifest = json.loads(skopeo_inspect_raw(f"{registries.plain.host}/multi@{arm['digest']}"))
    assert info["digest"] == arm["digest"]
    assert info["platform"] == "linux/arm64/v8"
    assert info["index"]["media_type"] == index["mediaType"]
    assert [m["platform"] for m in info["index"]["manifests"]] == ["linux/amd64", "linux/arm64/v8"]
    assert [(d["digest"], d["size"], d["media_type"]) for d in info["layers"]] == [
        (d["digest"], d["size"], d["mediaType"]) for d in manifest["layers"]]
    assert info["config"]["cmd"] == ["/bin/sh"]


def test_inspect_text_shows_the_runtime_config(
        registries: Registries, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--cache-dir", str(tmp_path / "c"),
                 f"{registries.plain.host}/app:oci"]) == 0
    out = capsys.readouterr().out
    for line in ('Entrypoint:  ["/bin/app"]', 'Cmd:         ["--serve"]', "WorkingDir:  /srv",
                 "User:        1000:1000", "  MODE=test", "  org.example.team=squash",
                 "Layers:      3"):
        assert line in out


# --- Docker Hub mirrors -----------------------------------------------------------------------


def test_docker_hub_reference_is_served_by_the_mirror(
        proxy: FaultProxy, registries: Registries, make_options: Any) -> None:
    options = make_options(registry_mirrors=(f"http://{proxy.host}",))
    image = source("docker.io/library/app:oci", options).resolve(Platform.parse("linux/amd64"))
    assert str(image.digest) == sha256(skopeo_inspect_raw(f"{registries.plain.host}/library/app:oci"))
    image.config()
    assert [s.path for s in proxy.requests()] == [
        "/v2/library/app/manifests/oci", f"/v2/library/app/blobs/{image.manifest().config.digest}"]


def test_a_dead_mirror_is_skipped_for_the_next(
        proxy: FaultProxy, make_options: Any) -> None:
    dead = f"127.0.0.1:{free_port()}"
    options = make_options(registry_mirrors=(f"http://{dead}", proxy.host), retries=0)
    src = source("app:oci", options)
    assert [e.host for e in src.client.endpoints] == [dead, proxy.host, "registry-1.docker.io"]
    assert src.resolve(Platform.parse("linux/amd64")).manifest().layers
    assert proxy.requests(path="/v2/library/app/manifests/oci")


def test_a_mirror_without_the_image_falls_back_to_the_origin(
        proxy: FaultProxy, registries: Registries, make_options: Any) -> None:
    proxy.add("status", "/manifests/", status=404, times=-1)
    src = source("app:oci", make_options(registry_mirrors=(f"http://{proxy.host}",)))
    # The origin is Docker Hub; the tests have no network, so the plain registry stands in.
    src.client._remotes[-1].endpoint = Endpoint(registries.plain.host, "http")
    image = src.resolve(Platform.parse("linux/amd64"))
    assert str(image.digest) == sha256(skopeo_inspect_raw(f"{registries.plain.host}/library/app:oci"))
    assert [s.status for s in proxy.requests()] == [404]


def test_mirrors_apply_to_docker_hub_only(make_options: Any) -> None:
    options = make_options(registry_mirrors=("mirror.example:5000",))
    client = RegistryClient(parse_reference("quay.io/org/app:1"), registry_options(options))
    assert [e.host for e in client.endpoints] == ["quay.io"]
    hub = RegistryClient(parse_reference("alpine"), registry_options(options))
    assert [e.host for e in hub.endpoints] == ["mirror.example:5000", "registry-1.docker.io"]


# --- an unreachable registry, --timeout and --retries ---------------------------------------


def test_pull_missing_uses_the_compiled_image_when_the_registry_is_down(
        registries: Registries, tmp_path: Path) -> None:
    import subprocess
    import sys

    front = FaultProxy(registries.plain.host)
    ref = f"{front.host}/app:oci"
    args = [sys.executable, "-m", "ocisquash", "compile", "--platform", "linux/amd64",
            "--cache-dir", str(tmp_path / "cache"), "--auth-file", str(tmp_path / "none.json"), ref]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args + list(extra), capture_output=True, text=True, timeout=120)

    first = run("-o", str(tmp_path / "up.squashfs"))
    assert first.returncode == 0, first.stderr
    front.close()  # the registry is down: its port refuses connections
    down = run("-o", str(tmp_path / "down.squashfs"))
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "down.squashfs").read_bytes() == (tmp_path / "up.squashfs").read_bytes()
    warning = [line for line in down.stderr.splitlines() if "cannot reach the registry" in line]
    assert len(warning) == 1 and warning[0].endswith(f"; using {ref} as compiled before")
    assert f"cannot connect to {front.host}" in warning[0]
    # Only --pull missing settles for the compiled image; --pull always needs the registry.
    always = run("--pull", "always", "-o", str(tmp_path / "always.squashfs"))
    assert always.returncode == 4  # a network error (README exit status table)
    lines = [line for line in always.stderr.splitlines() if line.startswith("ocisquash:")]
    assert len(lines) == 1 and f"cannot connect to {front.host}" in lines[0], always.stderr
    assert not (tmp_path / "always.squashfs").exists()


def test_timeout_and_retries_options_reach_the_registry_client(
        proxy: FaultProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proxy.add("stall", "/manifests/oci", delay=1.0, times=-1)
    status = main(["inspect", "--cache-dir", str(tmp_path / "c"), "--plain-http",
                   "--timeout", "0.3", "--retries", "1", f"{proxy.host}/app:oci"])
    assert status == 4  # a network error
    err = capsys.readouterr().err
    assert "did not answer within 0.3s" in err and "gave up after 2 attempts" in err
    assert len(proxy.requests(path="/manifests/")) == 2


@pytest.mark.parametrize("args,message", [
    (["--timeout", "0"], "--timeout must be a positive number of seconds, not 0.0"),
    (["--retries", "-1"], "--retries must not be negative, not -1"),
])
def test_bad_timeout_or_retries_is_a_usage_error(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", *args, "127.0.0.1:1/app:1"]) == 2
    assert capsys.readouterr().err.startswith(f"ocisquash: {message}")
