"""``ocisquash login``/``logout`` write the containers auth.json, judged by skopeo reading it."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import HTPASSWD_PASSWORD, HTPASSWD_USER

ROOT = Path(__file__).resolve().parents[2]


def ocisquash(*args: str, stdin: str = "", env: dict[str, str] | None = None,
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ocisquash", *args], input=stdin,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})})


def skopeo_inspect(host: str, auth: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--authfile", str(auth),
                           f"docker://{host}/app:oci"], capture_output=True, text=True,
                          timeout=120)


def test_login_writes_what_skopeo_reads_and_logout_removes_it(
        htpasswd_registry: object, tmp_path: Path) -> None:
    host = htpasswd_registry.host  # type: ignore[attr-defined]
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {"other.example": {"auth": "b3RoZXI6eA=="}}}))
    assert skopeo_inspect(host, auth).returncode != 0  # the control: skopeo needs the login
    proc = ocisquash("login", "--username", HTPASSWD_USER, "--password-stdin", "--auth-file",
                     str(auth), host, stdin=HTPASSWD_PASSWORD + "\n")
    assert proc.returncode == 0, proc.stderr
    stored = json.loads(auth.read_text())["auths"]
    assert base64.b64decode(stored[host]["auth"]).decode() == f"{HTPASSWD_USER}:{HTPASSWD_PASSWORD}"
    assert "other.example" in stored  # other entries stay
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    seen = skopeo_inspect(host, auth)
    assert seen.returncode == 0, seen.stderr
    assert json.loads(seen.stdout)["Digest"].startswith("sha256:")
    # ocisquash reads the same file by $REGISTRY_AUTH_FILE
    pulled = ocisquash("pull", "-q", "--cache-dir", str(tmp_path / "c"), f"{host}/app:oci",
                       env={"REGISTRY_AUTH_FILE": str(auth)})
    assert pulled.returncode == 0, pulled.stderr
    out = ocisquash("logout", "--auth-file", str(auth), host)
    assert out.returncode == 0, out.stderr
    assert host not in json.loads(auth.read_text())["auths"]
    assert skopeo_inspect(host, auth).returncode != 0
    again = ocisquash("logout", "--auth-file", str(auth), host)
    assert again.returncode == 1 and "not logged in" in again.stderr


def test_a_refused_password_writes_nothing(htpasswd_registry: object, tmp_path: Path) -> None:
    host = htpasswd_registry.host  # type: ignore[attr-defined]
    auth = tmp_path / "auth.json"
    proc = ocisquash("login", "--username", HTPASSWD_USER, "--password-stdin", "--auth-file",
                     str(auth), host, stdin="wrong\n")
    assert proc.returncode == 4, proc.stderr
    assert "refused" in proc.stderr and "wrong" not in proc.stderr
    assert not auth.exists()


def test_default_file_is_the_containers_one(htpasswd_registry: object, tmp_path: Path) -> None:
    host = htpasswd_registry.host  # type: ignore[attr-defined]
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "run"), "REGISTRY_AUTH_FILE": ""}
    proc = ocisquash("login", "-u", HTPASSWD_USER, "--password-stdin", host,
                     stdin=HTPASSWD_PASSWORD, env=env)
    assert proc.returncode == 0, proc.stderr
    written = tmp_path / "run" / "containers" / "auth.json"
    assert skopeo_inspect(host, written).returncode == 0


@pytest.mark.parametrize("args", [["logout"], ["logout", "--all", "x.example"]])
def test_logout_needs_a_registry_or_all(args: list[str], tmp_path: Path) -> None:
    assert ocisquash(*args, "--auth-file", str(tmp_path / "a.json")).returncode == 2
