"""Where a user's registry credentials come from.

Looked up in this order, the first hit wins:

1. ``RegistryOptions.username``/``password`` (``--username``, ``--password-stdin``);
2. the auth files of podman/skopeo/buildah and Docker: ``RegistryOptions.auth_file``
   alone when given, else ``$REGISTRY_AUTH_FILE``,
   ``$XDG_RUNTIME_DIR/containers/auth.json``, ``~/.config/containers/auth.json``
   and ``$DOCKER_CONFIG/config.json`` (``~/.docker/config.json``).

In one file, ``credHelpers[registry]`` comes first, then an ``auths`` entry
(``auth`` is base64 ``user:password``; ``identitytoken`` is an OAuth2 refresh
token), then ``credsStore``. A helper is run as ``docker-credential-NAME get``
with the server on stdin and answers ``{"Username": …, "Secret": …}``; the
username ``<token>`` marks the secret as an identity token. ``auths`` keys may
name a repository or namespace (``quay.io/org/app``), and the longest match wins,
as in containers-auth.json(5).

Secrets never appear in ``repr()``, logs or error messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AuthError
from .options import RegistryOptions

log = logging.getLogger(__name__)

#: How credential helpers and Docker's config name Docker Hub.
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
_DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")
_HELPER_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username with a password, or an identity token; ``source`` says where they came from."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    source: str = ""

    def __repr__(self) -> str:
        secret = "identity_token=<redacted>" if self.identity_token else "password=<redacted>"
        return f"Credentials(username={self.username!r}, {secret}, source={self.source!r})"

    @property
    def basic_auth(self) -> str:
        """The ``Authorization: Basic`` value of username and password."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def auth_file_paths(options: RegistryOptions) -> list[Path]:
    """The auth files consulted, in order."""
    if options.auth_file is not None:
        return [Path(options.auth_file)]
    env = os.environ
    paths: list[Path] = []
    if env.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        paths.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    config_home = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    paths.append(Path(config_home) / "containers" / "auth.json")
    docker_dir = env.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    paths.append(Path(docker_dir) / "config.json")
    return paths


def normalize_key(key: str) -> str:
    """``https://index.docker.io/v1/`` → ``docker.io``; ``quay.io/org/`` → ``quay.io/org``."""
    k = key.strip()
    for scheme in ("https://", "http://"):
        if k.startswith(scheme):
            k = k[len(scheme):]
    k = k.rstrip("/")
    host, _, path = k.partition("/")
    if path in ("v1", "v2"):
        path = ""
    if host in _DOCKER_HUB_ALIASES:
        host = "docker.io"
    return f"{host}/{path}" if path else host


def _candidates(registry: str, repository: str) -> list[str]:
    """Keys to look for, most specific first: ``reg/a/b``, ``reg/a``, ``reg``."""
    host = normalize_key(registry)
    parts = [p for p in repository.split("/") if p]
    out = [f"{host}/{'/'.join(parts[:n])}" for n in range(len(parts), 0, -1)]
    out.append(host)
    return out


def helper_server(registry: str) -> str:
    """The server name a credential helper is asked about."""
    return DOCKER_HUB_SERVER if normalize_key(registry) == "docker.io" else registry


def run_helper(name: str, registry: str) -> Credentials | None:
    """Ask ``docker-credential-NAME`` for the credentials of ``registry``.

    A helper that is not installed is skipped with a warning (stale Docker
    configs often name one); a helper that fails otherwise raises ``AuthError``.
    """
    import subprocess  # here: most pulls never run a helper

    program = f"docker-credential-{name}"
    server = helper_server(registry)
    try:
        proc = subprocess.run(
            [program, "get"], input=server.encode(), capture_output=True,
            timeout=_HELPER_TIMEOUT, check=False,
        )
    except FileNotFoundError:
        log.warning("credential helper %s is not installed; pulling from %s anonymously",
                    program, registry)
        return None
    except subprocess.TimeoutExpired:
        raise AuthError(f"credential helper {program} did not answer within "
                        f"{_HELPER_TIMEOUT:.0f}s", context=registry) from None
    if proc.returncode != 0:
        # The protocol's answer for "nothing stored"; anything else is a failure.
        if b"credentials not found" in proc.stdout.lower() + proc.stderr.lower():
            return None
        raise AuthError(f"credential helper {program} failed with exit status {proc.returncode}",
                        context=registry, hint=f"run '{program} get' by hand to see why")
    try:
        obj = json.loads(proc.stdout)
        username, secret = str(obj.get("Username", "")), str(obj.get("Secret", ""))
    except (ValueError, AttributeError):
        raise AuthError(f"credential helper {program} answered with invalid JSON",
                        context=registry) from None
    if not secret:
        return None
    if username == "<token>":
        return Credentials(identity_token=secret, source=program)
    return Credentials(username, secret, source=program)


def _load(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("cannot read auth file %s: %s", path, e.strerror)
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        raise AuthError("auth file is not valid JSON", context=str(path)) from None
    return obj if isinstance(obj, dict) else None


def _from_entry(entry: Any, where: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    token = entry.get("identitytoken")
    if isinstance(token, str) and token:
        return Credentials(identity_token=token, source=where)
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthError("an 'auth' entry is not base64 of 'user:password'",
                            context=where) from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise AuthError("an 'auth' entry is not base64 of 'user:password'", context=where)
        return Credentials(username, password, source=where)
    user, pw = entry.get("username"), entry.get("password")
    if isinstance(user, str) and isinstance(pw, str) and user:
        return Credentials(user, pw, source=where)
    return None


def from_auth_file(path: Path, registry: str, repository: str) -> tuple[bool, Credentials | None]:
    """Look ``registry``/``repository`` up in one file; ``(found, credentials)``.

    ``found`` is true when the file speaks for this registry (so later files are
    not consulted), even if its helper had nothing stored.
    """
    obj = _load(path)
    if obj is None:
        return False, None
    where = str(path)
    host = normalize_key(registry)
    helpers = obj.get("credHelpers")
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if normalize_key(str(key)) == host and isinstance(helper, str) and helper:
                return True, run_helper(helper, registry)
    auths = obj.get("auths")
    if isinstance(auths, dict):
        by_key = {normalize_key(str(k)): v for k, v in auths.items()}
        for cand in _candidates(registry, repository):
            if cand in by_key:
                creds = _from_entry(by_key[cand], where)
                if creds is not None:
                    return True, creds
    store = obj.get("credsStore")
    if isinstance(store, str) and store:
        creds = run_helper(store, registry)
        return creds is not None, creds
    return False, None


def find_credentials(registry: str, repository: str, options: RegistryOptions) -> Credentials | None:
    """The credentials to use for ``registry`` (a host as written in the reference), or None."""
    if options.username:
        if options.password is None:
            raise AuthError("a username was given without a password", context=registry,
                            hint="pass the password on stdin with --password-stdin")
        return Credentials(options.username, options.password, source="--username")
    for path in auth_file_paths(options):
        found, creds = from_auth_file(path, registry, repository)
        if found:
            if creds is not None:
                log.debug("using credentials for %s from %s", registry, creds.source)
            return creds
    return None
