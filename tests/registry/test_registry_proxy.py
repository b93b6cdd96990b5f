"""Registries reached through a real forward proxy: HTTPS_PROXY, HTTP_PROXY, NO_PROXY.

The proxy (``forwardproxy.ForwardProxy``) runs on 127.0.0.1 in front of the real
docker-registry fixtures. Loopback hosts never use a proxy, so the registries are
addressed as ``registry.test:PORT``, a name only the proxy resolves (to 127.0.0.1):
a request that reaches the registry at all went through the proxy. The tests
that need a literal loopback address (NO_PROXY by address, redirects to another
host) give the client proxy settings of their own, read from the variables'
values as the environment's are but without the implicit loopback entries.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ocisquash.compile import compile_image
from ocisquash.errors import (
    ImageNotFoundError,
    RegistryError,
    RegistryUnreachableError,
    TransientRegistryError,
)
from ocisquash.registry.proxies import ProxySettings, parse_proxy, redact_proxy
from ocisquash.sources.registry import pull

from .conftest import HTPASSWD_PASSWORD, HTPASSWD_USER, Registries
from .faultproxy import FaultProxy
from .forwardproxy import ForwardProxy, basic
from .helpers import file_digest, source
from .servers import RegistryProcess, TlsFiles, free_port, make_tls

NAME = "registry.test"
PROXY_USER, PROXY_PASSWORD = "proxyuser", "pr0xy-s3cret-pw"
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy",
              "ALL_PROXY", "all_proxy")


@pytest.fixture(scope="module")
def named_tls(registries: Registries,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryProcess, TlsFiles]]:
    work = tmp_path_factory.mktemp("proxy-tls")
    tls = make_tls(work / "tls", names=(NAME,))
    reg = RegistryProcess(work / "registry", registries.storage, tls=tls)
    yield reg, tls
    reg.stop()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fwd() -> Iterator[ForwardProxy]:
    p = ForwardProxy({NAME: "127.0.0.1"})
    yield p
    p.close()


@pytest.fixture
def auth_fwd() -> Iterator[ForwardProxy]:
    p = ForwardProxy({NAME: "127.0.0.1"}, require_auth=(PROXY_USER, PROXY_PASSWORD))
    yield p
    p.close()


def _with_auth(proxy: ForwardProxy, password: str = PROXY_PASSWORD) -> str:
    return f"http://{PROXY_USER}:{password}@127.0.0.1:{proxy.port}"


def _dead_proxy() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_compile_over_tls_through_a_connect_tunnel_is_byte_identical(
        registries: Registries, named_tls: tuple[RegistryProcess, TlsFiles], fwd: ForwardProxy,
        make_options: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    reg, tls = named_tls
    direct = compile_image(f"{registries.plain.host}/app:oci", tmp_path / "direct.squashfs",
                           source_options=make_options(cache_dir=tmp_path / "c1"))
    # Lower case wins over upper case, as curl reads them: the upper-case proxy is dead.
    monkeypatch.setenv("HTTPS_PROXY", _dead_proxy())
    monkeypatch.setenv("https_proxy", fwd.url)
    ref = f"{NAME}:{reg.port}/app:oci"
    proxied = compile_image(ref, tmp_path / "proxied.squashfs",
                            source_options=make_options(cache_dir=tmp_path / "c2", ca_cert=tls.ca_cert))
    assert proxied.digest == direct.digest
    assert (tmp_path / "proxied.squashfs").read_bytes() == (tmp_path / "direct.squashfs").read_bytes()
    seen = fwd.requests()
    assert seen and all(s.method == "CONNECT" and s.target == f"{NAME}:{reg.port}" for s in seen)
    # --insecure works through the tunnel as without a proxy.
    before = len(fwd.requests())
    insecure = source(ref, make_options(cache_dir=tmp_path / "c4", insecure=True)).resolve(None)
    assert insecure.digest == direct.digest and len(fwd.requests("CONNECT")) > before
    # TLS is end to end: without the test CA the registry's certificate is refused.
    with pytest.raises(RegistryError, match=r"TLS certificate of registry\.test:\d+ not trusted"):
        compile_image(ref, tmp_path / "x.squashfs",
                      source_options=make_options(cache_dir=tmp_path / "c3", retries=0))


def test_plain_http_goes_through_http_proxy_as_absolute_uris_with_proxy_credentials(
        registries: Registries, auth_fwd: ForwardProxy, make_options: Any,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HTTP_PROXY", _with_auth(auth_fwd))
    monkeypatch.setenv("HTTPS_PROXY", _dead_proxy())  # not used for http:// URLs
    image = source(f"{NAME}:{registries.plain.port}/app:oci",
                   make_options(plain_http=True)).resolve(None)
    paths = pull(image)
    for layer, path in zip(image.layers(), paths, strict=True):
        assert file_digest(path) == str(layer.descriptor.digest)
    seen = auth_fwd.requests()
    prefix = f"http://{NAME}:{registries.plain.port}/v2/"
    assert seen and all(s.method in ("GET", "HEAD") and s.target.startswith(prefix) for s in seen)
    assert any("/blobs/sha256:" in s.target for s in seen)
    assert all(s.proxy_authorization == basic(PROXY_USER, PROXY_PASSWORD) for s in seen)


@pytest.mark.parametrize("plain", [False, True], ids=["connect", "absolute-uri"])
def test_proxy_refusing_the_credentials_is_a_clear_error_without_the_password(
        registries: Registries, named_tls: tuple[RegistryProcess, TlsFiles],
        auth_fwd: ForwardProxy, make_options: Any, monkeypatch: pytest.MonkeyPatch,
        plain: bool) -> None:
    reg, tls = named_tls
    monkeypatch.setenv("HTTP_PROXY" if plain else "HTTPS_PROXY", _with_auth(auth_fwd, "wr0ng-pw"))
    port = registries.plain.port if plain else reg.port
    options = make_options(plain_http=plain, ca_cert=tls.ca_cert, retries=0)
    with pytest.raises(RegistryError) as err:
        source(f"{NAME}:{port}/app:oci", options).resolve(None)
    text = f"{err.value} {err.value.hint}"
    assert f"proxy http://127.0.0.1:{auth_fwd.port} refused" in text and "407" in text
    assert "wr0ng-pw" not in text and PROXY_USER not in text
    assert not err.value.temporary  # other credentials will not come by waiting
    assert [s.status for s in auth_fwd.requests()] == [407]


def test_cli_with_proxy_credentials_works_and_a_dead_proxy_is_named(
        named_tls: tuple[RegistryProcess, TlsFiles], auth_fwd: ForwardProxy,
        tmp_path: Path) -> None:
    reg, tls = named_tls
    base = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    args = [sys.executable, "-m", "ocisquash", "inspect", f"{NAME}:{reg.port}/app:oci", "--json",
            "--ca-cert", str(tls.ca_cert), "--cache-dir", str(tmp_path / "cache"),
            "--auth-file", str(tmp_path / "none.json")]
    ok = subprocess.run(args, env={**base, "HTTPS_PROXY": _with_auth(auth_fwd)},
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert '"layers"' in ok.stdout
    assert auth_fwd.requests("CONNECT")[0].proxy_authorization == basic(PROXY_USER, PROXY_PASSWORD)
    dead = free_port()
    bad = subprocess.run(args, env={**base, "HTTPS_PROXY": f"http://{PROXY_USER}:{PROXY_PASSWORD}"
                                                          f"@127.0.0.1:{dead}"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    lines = [line for line in bad.stderr.splitlines() if line.startswith("ocisquash:")]
    assert len(lines) == 1, bad.stderr
    assert f"cannot reach the registry through proxy http://127.0.0.1:{dead}: " in lines[0]
    assert "refused" in lines[0]
    assert PROXY_PASSWORD not in bad.stderr and PROXY_USER not in bad.stderr


def test_dead_proxy_fails_at_once_naming_the_proxy(
        make_options: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ocisquash.registry.transport")
    dead = free_port()
    monkeypatch.setenv("https_proxy", f"{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{dead}")  # no scheme
    with pytest.raises(RegistryUnreachableError) as err:
        source(f"{NAME}:5000/app:oci", make_options(retries=1)).resolve(None)
    assert not err.value.temporary  # it refused and never answered: waiting will not help
    assert err.value.message == (f"cannot reach the registry through proxy http://127.0.0.1:{dead}: "
                                 "connection refused")
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]
    assert PROXY_PASSWORD not in caplog.text
    assert PROXY_PASSWORD not in f"{err.value} {err.value.hint}"


def test_proxy_that_cannot_reach_the_registry_says_so(
        fwd: ForwardProxy, make_options: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", fwd.url)
    port = free_port()  # nothing listens there
    with pytest.raises(TransientRegistryError,
                       match=rf"proxy {fwd.url} refused to connect to {NAME}:{port}: 502"):
        source(f"{NAME}:{port}/app:oci", make_options(retries=0)).resolve(None)


def test_http_proxy_that_cannot_reach_the_registry_is_named_in_the_error(
        fwd: ForwardProxy, make_options: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Over plain HTTP the proxy relays the request itself and reports its failure as
    # an ordinary status (502 from this proxy): the error must not blame the registry.
    monkeypatch.setenv("HTTP_PROXY", fwd.url)
    port = free_port()  # nothing listens there
    with pytest.raises(TransientRegistryError) as err:
        source(f"{NAME}:{port}/app:oci", make_options(plain_http=True, retries=0)).resolve(None)
    assert err.value.message == (f"HTTP 502 through proxy {fwd.url}: the proxy, or the "
                                 "registry behind it, failed")
    assert err.value.status == 502 and err.value.temporary
    assert "NO_PROXY" in (err.value.hint or "")
    assert [s.status for s in fwd.requests()] == [502]


def test_registry_errors_relayed_by_an_http_proxy_keep_their_meaning(
        registries: Registries, fwd: ForwardProxy, make_options: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", fwd.url)
    with pytest.raises(ImageNotFoundError, match="not found in the registry") as err:
        source(f"{NAME}:{registries.plain.port}/app:no-such-tag",
               make_options(plain_http=True, retries=0)).resolve(None)
    assert "proxy" not in err.value.message
    assert fwd.requests()  # the request did go through the proxy


@pytest.mark.parametrize("no_proxy,proxied", [
    ("127.0.0.1", False), ("example.com, 127.0.0.0/8", False), ("*", False),
    ("127.0.0.1:{port}", False), ("127.0.0.1:1", True), ("127.0.0.2,other.test", True),
])
def test_no_proxy_decides_per_host(
        registries: Registries, fwd: ForwardProxy, make_options: Any,
        no_proxy: str, proxied: bool) -> None:
    proxies = ProxySettings.parse(http=fwd.url, no_proxy=no_proxy.format(port=registries.plain.port))
    image = source(f"{registries.plain.host}/app:oci", make_options(plain_http=True),
                   proxies=proxies).resolve(None)
    assert image.digest
    assert bool(fwd.requests()) is proxied


def test_loopback_registries_never_use_the_proxy(
        registries: Registries, make_options: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", _dead_proxy())
    monkeypatch.setenv("HTTPS_PROXY", _dead_proxy())
    for host in (registries.plain.host, f"localhost:{registries.plain.port}"):
        assert source(f"{host}/app:oci", make_options()).resolve(None).digest


def test_redirect_to_storage_elsewhere_follows_the_rules_of_that_host(
        auth_proxy: FaultProxy, fwd: ForwardProxy, make_options: Any) -> None:
    """The registry (127.0.0.1) is in NO_PROXY, its blob storage (127.0.0.2) is not."""
    proxies = ProxySettings.parse(http=_with_auth(fwd), no_proxy="127.0.0.1")
    options = make_options(plain_http=True, username=HTPASSWD_USER, password=HTPASSWD_PASSWORD)
    image = source(f"{auth_proxy.host}/app:oci", options, proxies=proxies).resolve(None)
    auth_proxy.add("redirect", "/blobs/", times=-1)
    paths = pull(image)
    for layer, path in zip(image.layers(), paths, strict=True):
        assert file_digest(path) == str(layer.descriptor.digest)
    through = fwd.requests()
    assert len(through) == len(image.layers()) + 1  # and the config
    assert all(s.target.startswith(f"http://{auth_proxy.storage}/storage/") for s in through)
    assert all(s.authorization is None for s in through)  # registry credentials stay home
    assert all(s.proxy_authorization == basic(PROXY_USER, PROXY_PASSWORD) for s in through)
    direct = auth_proxy.requests()
    assert direct and all("proxy-authorization" not in s.headers for s in direct)


@pytest.mark.parametrize("host,no_proxy,expected", [
    ("registry.example.com", "example.com", None),
    ("registry.example.com", ".example.com", None),
    ("example.com", ".example.com", None),
    ("registry.example.com", "*.example.com", None),
    ("notexample.com", "example.com", "http://proxy:3128"),
    ("registry.example.com:5000", "registry.example.com:5000", None),
    ("registry.example.com:5000", "registry.example.com:443", "http://proxy:3128"),
    ("registry.example.com", "registry.example.com:443", None),
    ("10.1.2.3:5000", "10.0.0.0/8", None),
    ("[fd00::5]:5000", "fd00::/8", None),
    ("[fd00::5]:5000", "[fd00::5]:5000", None),
    ("10.1.2.3", "10.1.2.4", "http://proxy:3128"),
    ("[::1]:5000", "", None),
    ("127.0.0.5", "", None),
    ("localhost:5000", "", None),
])
def test_no_proxy_matching_rules(host: str, no_proxy: str, expected: str | None,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://u:p@proxy:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    proxy = ProxySettings.from_environment().proxy_for(f"https://{host}/v2/")
    assert (proxy.url if proxy else None) == expected
    if proxy is not None:
        assert proxy.authorization == basic("u", "p")


def test_proxy_urls_are_shown_without_credentials() -> None:
    proxy = parse_proxy("http://u:hidden@proxy:3128", "HTTPS_PROXY")
    assert proxy.authorization and proxy.authorization not in repr(proxy) and "hidden" not in repr(proxy)
    assert redact_proxy("http://u:p@proxy:3128") == "http://proxy:3128"
    assert redact_proxy("u:p/w@d@proxy:3128/") == "http://proxy:3128"
    with pytest.raises(Exception, match=r"unsupported proxy socks5://proxy:1080 in HTTPS_PROXY") as err:
        parse_proxy("socks5://u:secret@proxy:1080", "HTTPS_PROXY")
    assert "secret" not in str(err.value)
