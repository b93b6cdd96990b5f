"""``--json``: one versioned, snake_case schema in compile, inspect, pull, cache ls and pack
(docs/json.md), with the whole runtime config, plain enum names and RFC 3339 times."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imagebuilder import Entry, write_oci_layout

ROOT = Path(__file__).resolve().parents[1]
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
SNAKE = re.compile(r"[a-z][a-z0-9_]*")
#: objects whose keys are the image's own data, not the schema's
DATA_KEYS = ("labels",)
RUNTIME = {"created", "entrypoint", "cmd", "env", "working_dir", "user", "labels",
           "exposed_ports", "volumes", "stop_signal"}


def schema_keys(doc: Any, where: str = "") -> list[str]:
    """Every key of ``doc`` that is part of the schema, with where it was found."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append(f"{where}.{k}")
            if k not in DATA_KEYS:
                out.extend(schema_keys(v, f"{where}.{k}"))
    elif isinstance(doc, list):
        for v in doc:
            out.extend(schema_keys(v, where + "[]"))
    return out


def check_conventions(doc: dict[str, Any]) -> None:
    assert next(iter(doc)) == "schema_version" and doc["schema_version"] == 1
    bad = [k for k in schema_keys(doc) if not SNAKE.fullmatch(k.rsplit(".", 1)[1])]
    assert bad == []
    text = json.dumps(doc)
    assert "Compression." not in text and "<" not in text  # no enum reprs


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("json") / "layout"
    write_oci_layout(root, [[Entry("etc/motd", data=b"hi\n")]], config={
        "Entrypoint": ["/bin/server"], "Cmd": ["--port", "8080"], "Env": ["A=1"],
        "WorkingDir": "/srv", "User": "1000:1000", "Labels": {"org.example.Key": "v\x1b[2J"},
        "ExposedPorts": {"8080/tcp": {}}, "Volumes": {"/data": {}}, "StopSignal": "SIGQUIT",
    })
    return root


def ocisquash(*args: str, cwd: Path | None = None) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "ocisquash", *args], capture_output=True,
                          text=True, check=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def test_compile_json_has_the_whole_runtime_config_and_the_reference_typed_this_time(
        layout: Path, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    first = ocisquash("compile", "--json", f"oci:{layout}:latest", "-o", str(tmp_path / "a"),
                      "--cache-dir", cache)
    check_conventions(first)
    assert set(first["config"]) == RUNTIME
    c = first["config"]
    assert (c["exposed_ports"], c["volumes"], c["stop_signal"]) == (["8080/tcp"], ["/data"],
                                                                    "SIGQUIT")
    assert c["labels"] == {"org.example.Key": "v\x1b[2J"}  # exact in JSON
    assert RFC3339.fullmatch(c["created"])
    assert first["stats"]["squashfs"]["compression"] == "zstd"
    # The same image by another spelling: a cache hit that names what was typed now.
    relative = os.path.relpath(layout, tmp_path)
    second = ocisquash("compile", "--json", f"oci:{relative}", "-o", str(tmp_path / "b"),
                       "--cache-dir", cache, cwd=tmp_path)
    assert second["cached"] is True and second["digest"] == first["digest"]
    assert second["reference"] == f"oci:{relative}"


def test_cache_ls_json_has_plain_names_and_rfc3339_times(layout: Path, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    ocisquash("compile", "--json", f"oci:{layout}:latest", "--cache-dir", cache)
    listed = ocisquash("cache", "--cache-dir", cache, "ls", "--json")
    check_conventions(listed)
    (image,) = listed["images"]
    assert image["options"]["compression"] == "zstd" and image["options"]["level"] == 5
    assert RFC3339.fullmatch(image["created"])
    assert Path(image["path"]).is_file() and image["files"] == 3


def test_inspect_and_pull_json_share_the_schema(layout: Path, tmp_path: Path) -> None:
    ref = f"oci:{layout}:latest"
    inspected = ocisquash("inspect", "--json", ref)
    pulled = ocisquash("pull", "--json", ref, "--cache-dir", str(tmp_path / "cache"))
    for doc in (inspected, pulled):
        check_conventions(doc)
        assert doc["reference"] == ref
        assert set(doc["config"]) == RUNTIME
        assert doc["layers"][0]["media_type"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert inspected["digest"] == pulled["digest"]
    assert pulled["pinned"].endswith("@" + pulled["digest"])


def test_pack_json_is_versioned(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_text("x")
    check_conventions(ocisquash("pack", "--json", str(tmp_path / "tree"), str(tmp_path / "o")))


def test_docs_json_names_every_key_the_commands_print(layout: Path, tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "json.md").read_text()
    printed = [
        ocisquash("compile", "--json", f"oci:{layout}:latest", "--cache-dir", str(tmp_path / "c")),
        ocisquash("cache", "--cache-dir", str(tmp_path / "c"), "ls", "--json"),
        ocisquash("inspect", "--json", f"oci:{layout}:latest"),
        ocisquash("pull", "--json", f"oci:{layout}:latest", "--cache-dir", str(tmp_path / "c")),
    ]
    undocumented = {k.rsplit(".", 1)[1] for d in printed for k in schema_keys(d)
                    if ".stats." not in k and ".options." not in k and ".fidelity" not in k} \
        - set(re.findall(r"`([a-z_0-9]+)`", doc))
    assert undocumented == set()
