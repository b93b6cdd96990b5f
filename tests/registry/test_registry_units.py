"""Table tests of the registry client's parsing rules (no registry needed)."""

from __future__ import annotations

import base64
import email.utils
import json
from pathlib import Path

import pytest

from ocisquash.errors import AuthError, TransientRegistryError, UsageError
from ocisquash.registry.auth import Challenge, parse_challenges
from ocisquash.registry.credentials import (
    Credentials,
    from_auth_file,
    helper_server,
    normalize_key,
)
from ocisquash.registry.options import RegistryOptions
from ocisquash.registry.transport import Endpoint, RetryPolicy, parse_retry_after, redact_url
from ocisquash.sources.options import SourceOptions


@pytest.mark.parametrize(("header", "expected"), [
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
     'scope="repository:library/alpine:pull"',
     [Challenge("bearer", (("realm", "https://auth.docker.io/token"),
                           ("service", "registry.docker.io"),
                           ("scope", "repository:library/alpine:pull")))]),
    ('Basic realm="Registry Realm"', [Challenge("basic", (("realm", "Registry Realm"),))]),
    ('Bearer realm=http://127.0.0.1:1/token, service=svc',
     [Challenge("bearer", (("realm", "http://127.0.0.1:1/token"), ("service", "svc")))]),
    ('Bearer realm="a\\"b",error="invalid_token"',
     [Challenge("bearer", (("realm", 'a"b'), ("error", "invalid_token")))]),
])
def test_www_authenticate_challenges_parse_with_quoted_and_bare_values(
        header: str, expected: list[Challenge]) -> None:
    assert parse_challenges([header]) == expected


def test_scope_with_several_actions_keeps_its_commas() -> None:
    (c,) = parse_challenges(['Bearer realm="r",scope="repository:a/b:pull,push"'])
    assert c.get("scope") == "repository:a/b:pull,push"


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("7") == 7.0
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_backoff_doubles_and_retry_after_overrides_it() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=4.0)
    err = TransientRegistryError("x")
    delays = [policy.delay(i, err) for i in range(4)]
    assert 0.75 <= delays[0] <= 1.0 and 1.5 <= delays[1] <= 2.0 and 3.0 <= delays[3] <= 4.0
    assert policy.delay(0, TransientRegistryError("x", retry_after=9)) == 9.0


@pytest.mark.parametrize(("key", "normal"), [
    ("https://index.docker.io/v1/", "docker.io"),
    ("index.docker.io", "docker.io"),
    ("registry-1.docker.io", "docker.io"),
    ("docker.io", "docker.io"),
    ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000"),
    ("quay.io/org/app/", "quay.io/org/app"),
])
def test_auth_file_keys_are_normalised(key: str, normal: str) -> None:
    assert normalize_key(key) == normal


def test_docker_hub_is_asked_of_helpers_by_its_legacy_url() -> None:
    assert helper_server("docker.io") == "https://index.docker.io/v1/"
    assert helper_server("ghcr.io") == "ghcr.io"


def _auth(user: str, pw: str) -> str:
    return base64.b64encode(f"{user}:{pw}".encode()).decode()


def test_the_most_specific_auths_entry_wins(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {
        "quay.io": {"auth": _auth("general", "g")},
        "quay.io/org": {"auth": _auth("org", "o")},
        "quay.io/org/app": {"auth": _auth("app", "a")},
    }}))
    assert from_auth_file(path, "quay.io", "org/app")[1] == Credentials("app", "a", source=str(path))
    assert from_auth_file(path, "quay.io", "org/other")[1] == Credentials("org", "o", source=str(path))
    assert from_auth_file(path, "quay.io", "else/x")[1] == Credentials("general", "g",
                                                                        source=str(path))
    assert from_auth_file(path, "ghcr.io", "org/app") == (False, None)


def test_docker_hub_entry_under_its_legacy_url_is_found(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": _auth("u", "p")}}}))
    found, creds = from_auth_file(path, "docker.io", "library/alpine")
    assert found and creds is not None and creds.username == "u"


def test_malformed_auth_entry_is_an_auth_error_without_its_content(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {"r.io": {"auth": "bm8tY29sb24="}}}))  # "no-colon"
    with pytest.raises(AuthError, match="not base64 of 'user:password'") as err:
        from_auth_file(path, "r.io", "x")
    assert "no-colon" not in str(err.value) and "bm8tY29sb24" not in str(err.value)


def test_helper_without_stored_credentials_means_anonymous(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helper = tmp_path / "docker-credential-empty"
    helper.write_text("#!/bin/sh\necho 'credentials not found in native keychain'\nexit 1\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"credsStore": "empty"}))
    assert from_auth_file(path, "r.io", "x") == (False, None)


def test_secrets_never_show_in_reprs() -> None:
    creds = Credentials("user", "hunter2-secret", source="x")
    token = Credentials(identity_token="refresh-secret", source="y")
    assert "hunter2-secret" not in repr(creds) and "hunter2-secret" not in str(creds)
    assert "refresh-secret" not in repr(token)
    assert "hunter2-secret" not in repr(SourceOptions(username="u", password="hunter2-secret"))
    assert "hunter2-secret" not in repr(RegistryOptions(username="u", password="hunter2-secret"))


def test_signed_storage_urls_are_redacted() -> None:
    assert redact_url("https://u:p@s3.example/bucket/blob?X-Amz-Signature=abc") == \
        "https://s3.example/bucket/blob"


@pytest.mark.parametrize(("text", "options", "expected"), [
    ("mirror.example", RegistryOptions(), Endpoint("mirror.example", "https")),
    ("http://127.0.0.1:5000", RegistryOptions(), Endpoint("127.0.0.1:5000", "http")),
    ("127.0.0.1:5000", RegistryOptions(), Endpoint("127.0.0.1:5000", "auto")),
    ("mirror.example", RegistryOptions(insecure=True), Endpoint("mirror.example", "auto")),
    ("mirror.example", RegistryOptions(plain_http=True), Endpoint("mirror.example", "http")),
])
def test_endpoint_scheme_follows_the_tls_options(
        text: str, options: RegistryOptions, expected: Endpoint) -> None:
    assert Endpoint.parse(text, options) == expected


def test_a_mirror_url_of_another_scheme_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="invalid registry mirror"):
        Endpoint.parse("ftp://mirror", RegistryOptions())


def test_the_registry_package_imports_nothing_from_the_sources() -> None:
    """Dependencies point down: the sources use the registry client, never the reverse."""
    import ast

    import ocisquash.registry

    package = Path(ocisquash.registry.__file__).parent
    found = []
    for module in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom):
                name = "." * node.level + (node.module or "")
                if name.lstrip(".").startswith("sources") or "ocisquash.sources" in name:
                    found.append(f"{module.name}: {name}")
            elif isinstance(node, ast.Import):
                found += [f"{module.name}: {a.name}" for a in node.names if "sources" in a.name]
    assert found == []
    assert len(list(package.glob("*.py"))) >= 8  # the check did read the package
