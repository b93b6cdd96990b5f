"""Credentials belong to the registry: never to blob storage a redirect leads to.

The registries are the real docker-registry fixtures (htpasswd and token auth),
behind the fault proxy that redirects blob requests. The redirect target is a
small server of this module's, ``ChallengingStorage``: blob storage that answers
with a ``401`` and an auth challenge of its own. No registry the tests can run
behaves that way, yet a hostile or broken storage host can, and it is the case
where a client must not answer with the registry's username and password.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ocisquash.errors import AuthError
from ocisquash.model import Platform

from .conftest import HTPASSWD_PASSWORD, HTPASSWD_USER, TOKEN_PASSWORD, TOKEN_USER, TokenRegistry
from .faultproxy import FaultProxy
from .helpers import source
from .servers import RegistryProcess, TokenServer

AMD64 = Platform.parse("linux/amd64")


@dataclass(frozen=True)
class Request:
    path: str
    authorization: str | None


class ChallengingStorage:
    """Blob storage on 127.0.0.2 that challenges every request (``Bearer`` with a token
    realm of its own, or ``Basic``) and records each request it gets."""

    def __init__(self, scheme: str) -> None:
        self.requests: list[Request] = []
        lock = threading.Lock()
        storage = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with lock:
                    storage.requests.append(Request(self.path, self.headers.get("Authorization")))
                if self.path.startswith("/token"):
                    body = json.dumps({"token": "storage-token", "expires_in": 300}).encode()
                    self.send_response(200)
                else:
                    body = b'{"errors":[{"code":"UNAUTHORIZED","message":"log in"}]}'
                    self.send_response(401)
                    challenge = (f'Bearer realm="http://{storage.host}/token",service="storage"'
                                 if scheme == "bearer" else 'Basic realm="storage"')
                    self.send_header("WWW-Authenticate", challenge)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self._httpd.daemon_threads = True
        self.host = f"127.0.0.2:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(params=["bearer", "basic"])
def storage(request: pytest.FixtureRequest) -> Iterator[ChallengingStorage]:
    s = ChallengingStorage(request.param)
    yield s
    s.close()


@pytest.fixture(params=["htpasswd", "token"])
def front(request: pytest.FixtureRequest) -> Iterator[tuple[FaultProxy, str, str, str]]:
    """A fault proxy in front of a registry that wants credentials: (proxy, repo, user, password)."""
    if request.param == "htpasswd":
        reg: RegistryProcess = request.getfixturevalue("htpasswd_registry")
        proxy = FaultProxy(reg.host)
        yield proxy, "app:oci", HTPASSWD_USER, HTPASSWD_PASSWORD
    else:
        token: TokenRegistry = request.getfixturevalue("token_registry")
        proxy = FaultProxy(token.host)
        yield proxy, "private/app:oci", TOKEN_USER, TOKEN_PASSWORD
    proxy.close()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_a_challenge_from_redirected_storage_never_gets_the_registry_credentials(
        front: tuple[FaultProxy, str, str, str], storage: ChallengingStorage,
        make_options: Any) -> None:
    proxy, repo, user, password = front
    options = make_options(plain_http=True, username=user, password=password)
    image = source(f"{proxy.host}/{repo}", options).resolve(AMD64)  # the registry's own auth works
    proxy.add("redirect", "/blobs/", times=-1, target=f"http://{storage.host}")
    with pytest.raises(AuthError) as err:
        image.config()
    # The error blames the storage host and names the registry that sent the client there.
    assert err.value.message.startswith(f"{storage.host}, where the registry {proxy.host} "
                                        "redirected the request, answered HTTP 401")
    assert "refused the credentials" not in err.value.message
    assert storage.host in err.value.hint and "never sent" in err.value.hint
    # Storage saw the signed request only: no credentials, no visit to its token realm.
    assert storage.requests and all(r.authorization is None for r in storage.requests)
    assert not [r for r in storage.requests if r.path.startswith("/token")]
    secret = _b64(f"{user}:{password}")
    assert all(secret not in (s.headers.get("authorization") or "") for s in proxy.requests("storage"))


def test_a_token_realm_on_another_host_gets_the_credentials_with_one_warning(
        token_registry: TokenRegistry, make_options: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ocisquash")
    proxy = FaultProxy(token_registry.host)
    try:
        # The registry's own challenge names a realm on "localhost", another host name
        # than the registry's 127.0.0.1: the token server of the fixture, reached by name.
        realm = f"http://localhost:{token_registry.tokens.port}/token"
        challenge = (f'Bearer realm="{realm}",service="{TokenServer.SERVICE}",'
                     'scope="repository:private/app:pull"')
        options = make_options(plain_http=True, username=TOKEN_USER, password=TOKEN_PASSWORD)
        for _ in range(2):
            proxy.add("status", "/manifests/", status=401, headers={"WWW-Authenticate": challenge})
            assert source(f"{proxy.host}/private/app:oci", options).resolve(AMD64).digest
    finally:
        proxy.close()
    asked = [r for r in token_registry.tokens.requests if r.method == "GET"]
    assert asked and asked[0].authorization == "Basic " + _b64(f"{TOKEN_USER}:{TOKEN_PASSWORD}")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [f"registry {proxy.host} sends its credentials to a token server on "
                      "another host, localhost"]


def test_a_token_realm_on_the_registry_host_warns_nothing(
        token_registry: TokenRegistry, make_options: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ocisquash")
    options = make_options(username=TOKEN_USER, password=TOKEN_PASSWORD)
    assert source(f"{token_registry.host}/private/app:oci", options).resolve(AMD64).digest
    assert token_registry.tokens.requests[0].authorization is not None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_token_is_never_sent_to_another_registry_that_names_the_same_realm(
        token_registry: TokenRegistry, make_options: Any) -> None:
    # A token fetched for one registry is cached by realm, service, scope and user.
    # A second registry (here a proxy on another port, in front of the same
    # registry, so that its challenge names the same realm and service) must not be
    # given that token: with a wrong password for it, the pull fails at the token
    # server instead of succeeding with the first registry's token.
    good = make_options(plain_http=True, username=TOKEN_USER, password=TOKEN_PASSWORD)
    assert source(f"{token_registry.host}/private/app:oci", good).resolve(AMD64).digest
    issued = [r for r in token_registry.tokens.requests if r.method == "GET"]
    assert len(issued) == 1
    other = FaultProxy(token_registry.host)
    try:
        wrong = make_options(plain_http=True, username=TOKEN_USER, password="not-the-password")
        with pytest.raises(AuthError):
            source(f"{other.host}/private/app:oci", wrong).resolve(AMD64)
        sent = [s.headers.get("authorization") or "" for s in other.requests()]
    finally:
        other.close()
    asked = [r for r in token_registry.tokens.requests if r.method == "GET"]
    assert len(asked) == 2
    assert asked[1].authorization == "Basic " + _b64(f"{TOKEN_USER}:not-the-password")
    assert sent and not [h for h in sent if h.startswith("Bearer ")]
