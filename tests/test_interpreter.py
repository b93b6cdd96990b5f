"""The cyclic garbage collector is off while an image is built, and back after."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocisquash.compile import compile_image
from ocisquash.interpreter import collector_paused
from ocisquash.progress import LayerApplying
from ocisquash.sources.options import SourceOptions

from imagebuilder import Entry, write_oci_layout


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_the_collector_is_off_inside_and_on_after() -> None:
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_an_error_inside_still_switches_it_back_on() -> None:
    with pytest.raises(ValueError), collector_paused():
        raise ValueError("a failed build")
    assert gc.isenabled()


def test_it_stays_off_until_the_last_of_several_builds_ends() -> None:
    first, second = collector_paused(), collector_paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_builds_in_two_threads_switch_it_on_once_both_are_done() -> None:
    inside, release = threading.Barrier(2), threading.Event()
    seen: list[bool] = []

    def build(wait: bool) -> None:
        with collector_paused():
            inside.wait(timeout=10)
            if wait:
                release.wait(timeout=10)
            seen.append(gc.isenabled())

    slow = threading.Thread(target=build, args=(True,))
    slow.start()
    build(False)
    assert not gc.isenabled()  # the slow build is still running
    release.set()
    slow.join(timeout=10)
    assert seen == [False, False]
    assert gc.isenabled()


def test_a_collector_switched_off_before_stays_off() -> None:
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_compile_builds_with_the_collector_off(tmp_path: Path) -> None:
    layers = [[Entry("etc", "dir"), Entry("etc/hostname", data=b"box\n")],
              [Entry("etc/motd", data=b"hello\n")]]
    write_oci_layout(tmp_path / "layout", layers, compression="gzip")
    during: list[bool] = []

    def progress(event: object) -> None:
        if isinstance(event, LayerApplying):
            during.append(gc.isenabled())

    result = compile_image(f"oci:{tmp_path / 'layout'}:latest", tmp_path / "out.squashfs",
                           source_options=SourceOptions(cache_dir=tmp_path / "cache"),
                           progress=progress)
    assert result.files and during and not any(during)
    assert gc.isenabled()
