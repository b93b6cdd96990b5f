"""Real registries for the tests: ``docker-registry`` processes, TLS material, a token server.

``RegistryProcess`` runs ``/usr/bin/docker-registry`` (distribution v2.8) on
127.0.0.1 with a generated ``config.yml``; several processes may share one
storage directory, so images pushed once are served by the plain, TLS, htpasswd
and token registries alike. ``TokenServer`` is a small distribution "token
authentication" server whose JWTs (RS256, with an ``x5c`` header holding the
signing certificate that the registry's ``rootcertbundle`` trusts) grant what
its policy allows; it records each request so tests can check the flow.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

REGISTRY_BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 15.0,
                  proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")


# --- TLS material ---------------------------------------------------------------------------


@dataclass
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_tls(directory: Path, *, names: tuple[str, ...] = ()) -> TlsFiles:
    """A test CA and a server certificate for 127.0.0.1, localhost and ``names`` signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (x509.CertificateBuilder().subject_name(_name("ocisquash test CA"))
          .issuer_name(_name("ocisquash test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), *(x509.DNSName(n) for n in names),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    return files


# --- the registry process -------------------------------------------------------------------


class RegistryProcess:
    """A ``docker-registry`` serving ``storage`` on 127.0.0.1; ``stop()`` kills it."""

    def __init__(self, workdir: Path, storage: Path, *, tls: TlsFiles | None = None,
                 htpasswd: Path | None = None, token: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            "version: 0.1",
            "log:",
            "  level: error",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {storage}",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: {self.host}",
            "  secret: ocisquash-tests",
        ]
        if tls is not None:
            lines += ["  tls:", f"    certificate: {tls.server_cert}", f"    key: {tls.server_key}"]
        if htpasswd is not None:
            lines += ["auth:", "  htpasswd:", "    realm: ocisquash-tests", f"    path: {htpasswd}"]
        if token is not None:
            lines += ["auth:", "  token:"] + [f"    {k}: {v}" for k, v in token.items()]
        self.config = workdir / "config.yml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = workdir / "registry.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([REGISTRY_BINARY, "serve", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        try:
            wait_for_port("127.0.0.1", self.port, proc=self.proc)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{e}; log: {self.log.read_text()[-2000:]}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def write_htpasswd(path: Path, users: dict[str, str]) -> None:
    """An htpasswd file with bcrypt hashes, the only kind distribution accepts."""
    lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}"
             for u, p in users.items()]
    path.write_text("\n".join(lines) + "\n")


# --- a token server -------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    form: dict[str, list[str]] = field(default_factory=dict)


class TokenServer:
    """Issues registry JWTs. Policy: the user ``users`` may do anything; anonymous
    clients and identity-token holders may pull, anonymous ones only outside
    ``private/``. Wrong credentials get 401."""

    SERVICE = "ocisquash-test-registry"
    ISSUER = "ocisquash-test-issuer"

    def __init__(self, workdir: Path, users: dict[str, str], refresh_tokens: dict[str, str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.users = users
        self.refresh_tokens = refresh_tokens
        self.expires_in = 300
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        now = datetime.datetime.now(datetime.UTC)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        # No extended key usage: Go's chain check then accepts the certificate for any use.
        self._cert = (x509.CertificateBuilder().subject_name(_name("ocisquash token signer"))
                      .issuer_name(_name("ocisquash token signer"))
                      .public_key(self._key.public_key())
                      .serial_number(x509.random_serial_number())
                      .not_valid_before(now - datetime.timedelta(hours=1))
                      .not_valid_after(now + datetime.timedelta(days=2))
                      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                      .sign(self._key, hashes.SHA256()))
        self.rootcertbundle = workdir / "token-signer.pem"
        self.rootcertbundle.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, form: dict[str, list[str]]) -> None:
                parts = urllib.parse.urlsplit(self.path)
                req = TokenRequest(self.command, parts.path, urllib.parse.parse_qs(parts.query),
                                   self.headers.get("Authorization"), form)
                with server._lock:
                    server.requests.append(req)
                status, body = server.decide(req)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer({})

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                self._answer(urllib.parse.parse_qs(self.rfile.read(n).decode()))

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def registry_config(self) -> dict[str, str]:
        return {"realm": self.realm, "service": self.SERVICE, "issuer": self.ISSUER,
                "rootcertbundle": str(self.rootcertbundle)}

    def decide(self, req: TokenRequest) -> tuple[int, dict[str, Any]]:
        user = ""
        params = req.form or req.query
        if req.method == "POST":
            if params.get("grant_type") != ["refresh_token"]:
                return 400, {"error": "unsupported_grant_type"}
            user = self.refresh_tokens.get((params.get("refresh_token") or [""])[0], "")
            if not user:
                return 401, {"error": "invalid_grant"}
        elif req.authorization:
            scheme, _, value = req.authorization.partition(" ")
            name, _, password = base64.b64decode(value).decode().partition(":")
            if scheme != "Basic" or self.users.get(name) != password:
                return 401, {"details": "incorrect username or password"}
            user = name
        access = []
        for scope in params.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = actions.split(",")
            if user in self.users:
                granted = wanted
            elif user or not name.startswith("private/"):
                granted = [a for a in wanted if a == "pull"]
            else:
                granted = []
            if granted:
                access.append({"type": kind, "name": name, "actions": granted})
        token = self.sign({
            "iss": self.ISSUER, "sub": user, "aud": (params.get("service") or [""])[0],
            "exp": int(time.time()) + self.expires_in, "nbf": int(time.time()) - 60,
            "iat": int(time.time()), "jti": uuid.uuid4().hex, "access": access,
        })
        return 200, {"token": token, "expires_in": self.expires_in}

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()]}
        signing_input = (_b64url(json.dumps(header).encode()) + "." +
                         _b64url(json.dumps(claims).encode()))
        sig = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(sig)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
        self.expires_in = 300

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def skopeo_copy(src: str, dest: str, *extra: str) -> None:
    """``skopeo copy`` to a test registry (TLS verification off: the tests' registries)."""
    cmd = ["skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false", *extra, src, dest]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": os.environ.get("HOME", "/root")})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")


def skopeo_inspect_raw(ref: str, *extra: str) -> bytes:
    proc = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", *extra,
                           f"docker://{ref}"], capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"skopeo inspect {ref} failed: {proc.stderr.decode().strip()}")
    return proc.stdout


def skopeo_copy_from(src: str, dest: str) -> None:
    """``skopeo copy`` from a test registry to a local directory."""
    cmd = ["skopeo", "--insecure-policy", "copy", "-q", "--src-tls-verify=false", src, dest]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
