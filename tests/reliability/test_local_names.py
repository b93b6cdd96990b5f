"""A registry reference that is also the name of something local: when the registry
has no such image, the error's hint names the transport that reads the local one."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from ocisquash.errors import ImageNotFoundError
from ocisquash.sources.open import open_source

from .conftest import Site, options


def test_a_missing_image_named_like_a_local_tar_gets_the_transport_as_hint(
        site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "HOST:PORT/saved.tar" is a valid reference and, from tmp_path, a path to a tar.
    name = f"{site.registry.host}/saved.tar"
    local = tmp_path / name
    local.parent.mkdir(parents=True)
    with tarfile.open(local, "w") as tar:
        tar.add(site.workdir / "layout-small-a", arcname=".")
    monkeypatch.chdir(tmp_path)
    source = open_source(name, options=options(tmp_path / "cache"))
    with pytest.raises(ImageNotFoundError) as info:
        source.resolve()
    assert info.value.hint == (f"{name} is a tar here: give a `docker save` archive as "
                               f"docker-archive:{name}, an OCI layout in a tar as "
                               f"oci-archive:{name}")
    # The same reference with docker:// means the registry only: its own hint stays.
    source = open_source(f"docker://{name}", options=options(tmp_path / "cache"))
    with pytest.raises(ImageNotFoundError) as info:
        source.resolve()
    assert "is a tar here" not in info.value.hint
