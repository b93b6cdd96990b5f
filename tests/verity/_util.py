"""Helpers for the dm-verity tests: the external judges (veritysetup, openssl) and test keys."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
from pathlib import Path

from conftest import require_or_skip


def veritysetup(*args: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    require_or_skip(shutil.which("veritysetup") is not None,
                    "veritysetup (cryptsetup-bin) is not installed")
    return subprocess.run(["veritysetup", *map(str, args)], capture_output=True, text=True,
                          check=check)


def dump(hash_device: Path, *offset: str) -> dict[str, str]:
    """``veritysetup dump`` as a dict of its fields."""
    out = veritysetup("dump", *offset, hash_device).stdout
    fields = {}
    for line in out.splitlines():
        if ":" in line:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def openssl_verify(p7s: Path, content: Path, cert: Path) -> subprocess.CompletedProcess[str]:
    require_or_skip(shutil.which("openssl") is not None, "openssl is not installed")
    return subprocess.run(
        ["openssl", "smime", "-verify", "-binary", "-inform", "DER", "-in", str(p7s),
         "-content", str(content), "-certfile", str(cert), "-CAfile", str(cert),
         "-purpose", "any", "-out", os.devnull],
        capture_output=True, text=True)


def make_key_pair(directory: Path, name: str, kind: str = "rsa") -> tuple[Path, Path]:
    """A private key and a self-signed certificate for it, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.x509.oid import NameOID

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, None if kind == "ed25519" else hashes.SHA256()))
    key_path = directory / f"{name}.key.pem"
    cert_path = directory / f"{name}.cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path
