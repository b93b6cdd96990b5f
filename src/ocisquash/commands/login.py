"""``ocisquash login REGISTRY`` / ``logout``: credentials in the containers ``auth.json``.

The file and its format are the ones podman, skopeo and buildah use
(containers-auth.json(5)): ``{"auths": {"REGISTRY": {"auth": base64("user:password")}}}``,
at ``--auth-file``, else ``$REGISTRY_AUTH_FILE``, else
``$XDG_RUNTIME_DIR/containers/auth.json``, else ``~/.config/containers/auth.json``;
each of these is also where ocisquash (and skopeo) look for credentials when pulling.
``login`` asks the registry first, as ``skopeo login`` does, and writes nothing if it
refuses. The file is replaced atomically and kept private (0600).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "login", help="log in to a registry (writes the containers auth.json)",
        description=(
            "Check USER's password with REGISTRY, then store it in the containers auth.json "
            "that podman, skopeo, buildah and ocisquash read."),
        epilog=(
            "examples:\n"
            "  echo \"$TOKEN\" | ocisquash login --username me --password-stdin ghcr.io\n"
            "  ocisquash login --auth-file ./auth.json 127.0.0.1:5000\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("registry", metavar="REGISTRY", help="registry host[:port] (docker.io, ghcr.io, …)")
    p.add_argument("-u", "--username", metavar="USER", help="user name (asked for on a terminal)")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password (or token) from stdin")
    add_file_arguments(p)
    p.add_argument("--ca-cert", metavar="FILE", type=Path,
                   help="PEM file of a CA to trust for the registry's TLS certificate")
    p.add_argument("--insecure", action="store_true",
                   help="do not verify the registry's TLS certificate (and allow plain HTTP)")
    p.add_argument("--plain-http", action="store_true", help="talk to the registry over plain HTTP")
    p.set_defaults(func=run)


def add_file_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--auth-file", metavar="FILE", type=Path,
                   help="the auth.json to write (default: $REGISTRY_AUTH_FILE, else "
                        "$XDG_RUNTIME_DIR/containers/auth.json, else "
                        "~/.config/containers/auth.json)")


def auth_file(given: Path | None) -> Path:
    """The auth.json that ``login`` writes and ``logout`` edits."""
    if given is not None:
        return given
    env = os.environ
    if env.get("REGISTRY_AUTH_FILE"):
        return Path(env["REGISTRY_AUTH_FILE"])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    config_home = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config_home) / "containers" / "auth.json"


def registry_key(text: str) -> str:
    """The ``auths`` key of what the user typed: ``https://index.docker.io/v1/`` and
    ``docker.io`` are both ``docker.io``; a namespace (``quay.io/org``) is kept."""
    from ..errors import UsageError
    from ..registry.credentials import normalize_key

    key = normalize_key(text)
    if not key or key.startswith("/") or any(c.isspace() for c in key):
        raise UsageError(f"invalid registry {text!r}", hint="give a host[:port], e.g. ghcr.io")
    return key


def load(path: Path) -> dict[str, Any]:
    from ..errors import UsageError

    try:
        obj = json.loads(path.read_bytes() or b"{}")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from e
    except ValueError:
        raise UsageError(f"{path} is not valid JSON",
                         hint="fix or remove it; it is the containers auth.json") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("auths", {}), dict):
        raise UsageError(f"{path} is not a containers auth.json (no 'auths' object)")
    return obj


def save(path: Path, obj: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``obj``, readable by its owner only."""
    import tempfile

    from ..errors import OutputError

    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".auth.json.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o600)
                json.dump(obj, f, indent="\t")
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e


def _ask(args: argparse.Namespace) -> tuple[str, str]:
    from ..errors import UsageError

    username = args.username
    if args.password_stdin:
        if not username:
            raise UsageError("--password-stdin needs --username")
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        import getpass

        username = username or input("Username: ")
        password = getpass.getpass("Password: ")
    else:
        raise UsageError("no terminal to ask for the password",
                         hint="echo \"$PASSWORD\" | ocisquash login --username USER "
                              "--password-stdin REGISTRY")
    if not username or not password:
        raise UsageError("login needs a user name and a password")
    return username, password


def run(args: argparse.Namespace) -> int:
    from ..reference import Reference
    from ..registry.client import RegistryClient
    from ..registry.options import RegistryOptions
    from ..terminal import printable

    key = registry_key(args.registry)
    path = auth_file(args.auth_file)
    obj = load(path)  # a broken file is reported before the registry is asked
    username, password = _ask(args)
    host, _, namespace = key.partition("/")
    options = RegistryOptions(username=username, password=password, ca_cert=args.ca_cert,
                              insecure=args.insecure, plain_http=args.plain_http, retries=1)
    # The token scope names a repository; any name does to prove the password.
    client = RegistryClient(Reference(host, namespace or "library/ocisquash-login", None, None),
                            options)
    try:
        client.check_access()
    finally:
        client.transport.close()
    auth = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    obj.setdefault("auths", {})[key] = {"auth": auth}
    save(path, obj)
    if not args.quiet:
        print(f"Login succeeded: {printable(key)} (in {printable(path)})", file=sys.stderr)
    return 0
