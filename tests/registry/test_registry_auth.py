"""TLS, HTTP Basic and token authentication against real registries; where credentials come from."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from ocisquash.errors import AuthError, RegistryError
from ocisquash.model import Platform
from ocisquash.sources.registry import pull

from .conftest import (
    HTPASSWD_PASSWORD,
    HTPASSWD_USER,
    REFRESH_TOKEN,
    TOKEN_PASSWORD,
    TOKEN_USER,
    TokenRegistry,
)
from .helpers import file_digest, source
from .servers import RegistryProcess, TlsFiles

AMD64 = Platform.parse("linux/amd64")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _no_secret(err: BaseException, *secrets: str) -> None:
    shown = f"{err} {getattr(err, 'hint', '')} {err!r}"
    for secret in secrets:
        assert secret not in shown


@pytest.fixture
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME without auth files, and no auth-file environment of the user's."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return home


# --- TLS -------------------------------------------------------------------------------------


def test_tls_registry_with_the_test_ca_is_verified(
        tls_registry: RegistryProcess, tls_material: TlsFiles, make_options: Any) -> None:
    src = source(f"{tls_registry.host}/app:oci", make_options(ca_cert=tls_material.ca_cert))
    image = src.resolve(AMD64)
    image.config()
    assert src.client.transport.base_url(src.client.endpoints[0]).startswith("https://")


def test_untrusted_certificate_is_refused_not_downgraded(
        tls_registry: RegistryProcess, make_options: Any) -> None:
    with pytest.raises(RegistryError, match="not trusted") as err:
        source(f"{tls_registry.host}/app:oci", make_options()).resolve(AMD64)
    assert "--ca-cert" in err.value.hint


def test_insecure_skips_verification(tls_registry: RegistryProcess, make_options: Any) -> None:
    image = source(f"{tls_registry.host}/app:oci", make_options(insecure=True)).resolve(AMD64)
    assert image.manifest().layers


def test_ssl_cert_file_is_honoured(tls_registry: RegistryProcess, tls_material: TlsFiles,
                                   make_options: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_material.ca_cert))
    image = source(f"{tls_registry.host}/app:oci", make_options()).resolve(AMD64)
    assert image.digest


# --- HTTP Basic (htpasswd) ------------------------------------------------------------------


def test_basic_auth_registry_without_credentials_asks_for_them(
        htpasswd_registry: RegistryProcess, make_options: Any) -> None:
    with pytest.raises(AuthError, match="requires a username and password") as err:
        source(f"{htpasswd_registry.host}/app:oci", make_options()).resolve(AMD64)
    assert "--username" in err.value.hint


def test_basic_auth_with_wrong_password_fails_without_showing_it(
        htpasswd_registry: RegistryProcess, make_options: Any) -> None:
    options = make_options(username=HTPASSWD_USER, password="wrong-pw-123")
    with pytest.raises(AuthError, match="refused the credentials from --username") as err:
        source(f"{htpasswd_registry.host}/app:oci", options).resolve(AMD64)
    _no_secret(err.value, "wrong-pw-123", _b64(f"{HTPASSWD_USER}:wrong-pw-123"))
    assert "wrong-pw-123" not in repr(options)


def test_basic_auth_with_credentials_pulls(htpasswd_registry: RegistryProcess,
                                           make_options: Any) -> None:
    options = make_options(username=HTPASSWD_USER, password=HTPASSWD_PASSWORD)
    image = source(f"{htpasswd_registry.host}/app:oci", options).resolve(AMD64)
    for layer, path in zip(image.layers(), pull(image), strict=True):
        assert file_digest(path) == str(layer.descriptor.digest)


@pytest.mark.parametrize("where", ["auth_file", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR",
                                   "XDG_CONFIG_HOME", "DOCKER_CONFIG", "HOME"])
def test_credentials_come_from_each_auth_file_location(
        htpasswd_registry: RegistryProcess, make_options: Any, isolated_home: Path,
        monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    base = isolated_home.parent / "conf"
    path = {
        "auth_file": base / "given.json",
        "REGISTRY_AUTH_FILE": base / "env.json",
        "XDG_RUNTIME_DIR": base / "run" / "containers" / "auth.json",
        "XDG_CONFIG_HOME": base / "config" / "containers" / "auth.json",
        "DOCKER_CONFIG": base / "docker" / "config.json",
        "HOME": isolated_home / ".docker" / "config.json",
    }[where]
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"auth": _b64(f"{HTPASSWD_USER}:{HTPASSWD_PASSWORD}")}
    path.write_text(json.dumps({"auths": {htpasswd_registry.host: entry}}))
    env = {"REGISTRY_AUTH_FILE": path, "XDG_RUNTIME_DIR": base / "run",
           "XDG_CONFIG_HOME": base / "config", "DOCKER_CONFIG": base / "docker"}
    if where in env:
        monkeypatch.setenv(where, str(env[where]))
    options = make_options(auth_file=path if where == "auth_file" else None)
    image = source(f"{htpasswd_registry.host}/app:oci", options).resolve(AMD64)
    assert image.manifest().layers


def test_credential_helper_is_asked_for_the_registry(
        htpasswd_registry: RegistryProcess, make_options: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    asked = tmp_path / "asked.txt"
    helper = bindir / "docker-credential-ocitest"
    helper.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = get ] || exit 3\ncat > {asked}\n'
        f"printf '%s' '{json.dumps({'ServerURL': '', 'Username': HTPASSWD_USER, 'Secret': HTPASSWD_PASSWORD})}'\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{__import__('os').environ['PATH']}")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"credHelpers": {htpasswd_registry.host: "ocitest"}}))
    image = source(f"{htpasswd_registry.host}/app:oci", make_options(auth_file=config)).resolve(AMD64)
    assert image.digest
    assert asked.read_text() == htpasswd_registry.host


# --- token authentication -------------------------------------------------------------------


def _token_gets(reg: TokenRegistry) -> list[Any]:
    return [r for r in reg.tokens.requests if r.method == "GET"]


def test_anonymous_token_for_a_public_repository_is_fetched_once(
        token_registry: TokenRegistry, make_options: Any) -> None:
    image = source(f"{token_registry.host}/app:oci", make_options()).resolve(AMD64)
    paths = pull(image)
    for layer, path in zip(image.layers(), paths, strict=True):
        assert file_digest(path) == str(layer.descriptor.digest)
    (req,) = token_registry.tokens.requests  # manifest, config and 3 layers: one token
    assert req.authorization is None
    assert req.query["scope"] == ["repository:app:pull"]
    assert req.query["service"] == [token_registry.tokens.SERVICE]


def test_private_repository_refuses_anonymous_access(
        token_registry: TokenRegistry, make_options: Any) -> None:
    with pytest.raises(AuthError, match="refused anonymous access") as err:
        source(f"{token_registry.host}/private/app:oci", make_options()).resolve(AMD64)
    assert "--username" in err.value.hint


def test_token_with_credentials_uses_basic_auth_at_the_realm(
        token_registry: TokenRegistry, make_options: Any) -> None:
    options = make_options(username=TOKEN_USER, password=TOKEN_PASSWORD)
    image = source(f"{token_registry.host}/private/app:oci", options).resolve(AMD64)
    image.config()
    (req,) = token_registry.tokens.requests
    assert req.authorization == "Basic " + _b64(f"{TOKEN_USER}:{TOKEN_PASSWORD}")
    assert req.query["account"] == [TOKEN_USER]
    assert req.query["scope"] == ["repository:private/app:pull"]


def test_token_server_refusing_credentials_is_an_auth_error_without_the_password(
        token_registry: TokenRegistry, make_options: Any) -> None:
    options = make_options(username=TOKEN_USER, password="not-the-pw-987")
    with pytest.raises(AuthError, match="refused the credentials") as err:
        source(f"{token_registry.host}/private/app:oci", options).resolve(AMD64)
    _no_secret(err.value, "not-the-pw-987", _b64(f"{TOKEN_USER}:not-the-pw-987"))


def test_identity_token_uses_the_refresh_token_grant(
        token_registry: TokenRegistry, make_options: Any, tmp_path: Path) -> None:
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {token_registry.host: {"identitytoken": REFRESH_TOKEN}}}))
    image = source(f"{token_registry.host}/app:oci", make_options(auth_file=auth)).resolve(AMD64)
    assert image.digest
    (req,) = token_registry.tokens.requests
    assert req.method == "POST"
    assert req.form["grant_type"] == ["refresh_token"]
    assert req.form["refresh_token"] == [REFRESH_TOKEN]
    assert req.form["scope"] == ["repository:app:pull"]


def test_token_is_cached_until_it_expires(token_registry: TokenRegistry,
                                          make_options: Any) -> None:
    token_registry.tokens.expires_in = 2
    options = make_options()
    image = source(f"{token_registry.host}/app:oci", options).resolve(AMD64)
    source(f"{token_registry.host}/app:oci", options).resolve(AMD64)  # cached: no new token
    assert len(_token_gets(token_registry)) == 1
    time.sleep(2.1)
    image.config()
    assert len(_token_gets(token_registry)) == 2


def test_token_scope_is_per_repository(token_registry: TokenRegistry, make_options: Any) -> None:
    options = make_options()
    source(f"{token_registry.host}/app:oci", options).resolve(AMD64)
    source(f"{token_registry.host}/multi:latest", options).resolve(AMD64)
    scopes = [urllib.parse.unquote(r.query["scope"][0]) for r in _token_gets(token_registry)]
    assert scopes == ["repository:app:pull", "repository:multi:pull"]


def test_debug_logs_carry_no_secrets(token_registry: TokenRegistry, make_options: Any,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="ocisquash")
    options = make_options(username=TOKEN_USER, password=TOKEN_PASSWORD)
    image = source(f"{token_registry.host}/private/app:oci", options).resolve(AMD64)
    pull(image)
    assert caplog.records  # the flow did log
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert TOKEN_PASSWORD not in text and _b64(f"{TOKEN_USER}:{TOKEN_PASSWORD}") not in text
    assert "Bearer " not in text and "eyJ" not in text  # no JWT
