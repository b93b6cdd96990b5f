"""While compile or pack builds an image, the cyclic garbage collector is off and the
switch interval short; the caller's settings are back after."""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocisquash.compile import compile_image
from ocisquash.interpreter import SWITCH_INTERVAL, collector_paused, switches_shortened
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


@pytest.fixture
def callers_switch_interval() -> Iterator[float]:
    """A program's own switch interval, longer than a build's, put back after the test."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.004)
    yield 0.004
    sys.setswitchinterval(before)


def test_the_switch_interval_is_short_only_while_held(callers_switch_interval: float) -> None:
    first, second = switches_shortened(), switches_shortened()
    first.__enter__()
    assert sys.getswitchinterval() == SWITCH_INTERVAL
    second.__enter__()
    first.__exit__(None, None, None)
    assert sys.getswitchinterval() == SWITCH_INTERVAL  # the second build is still running
    second.__exit__(None, None, None)
    assert sys.getswitchinterval() == callers_switch_interval


def test_a_switch_interval_set_during_a_build_is_kept(callers_switch_interval: float) -> None:
    with switches_shortened():
        sys.setswitchinterval(0.002)  # the program decides meanwhile
    assert sys.getswitchinterval() == 0.002


def test_compile_restores_the_callers_settings_and_builds_with_its_own(
        tmp_path: Path, callers_switch_interval: float) -> None:
    layers = [[Entry("etc", "dir"), Entry("etc/hostname", data=b"box\n" * 50_000)]]
    write_oci_layout(tmp_path / "layout", layers, compression="gzip")
    during: list[tuple[str, float, bool]] = []
    fmt = ""

    def progress(event: object) -> None:
        if isinstance(event, LayerApplying):
            during.append((fmt, sys.getswitchinterval(), gc.isenabled()))

    for fmt in ("squashfs", "erofs"):
        for use_cache in (True, False):
            compile_image(f"oci:{tmp_path / 'layout'}:latest", tmp_path / f"{use_cache}.{fmt}",
                          format=fmt, source_options=SourceOptions(cache_dir=tmp_path / "cache"),
                          progress=progress, use_cache=use_cache)
            assert (sys.getswitchinterval(), gc.isenabled()) == (callers_switch_interval, True)
    assert set(during) == {(f, SWITCH_INTERVAL, False) for f in ("squashfs", "erofs")}


def test_pack_restores_the_callers_settings(tmp_path: Path,
                                            callers_switch_interval: float) -> None:
    from ocisquash.pack import pack_directory
    from ocisquash.squashfs import WriterOptions

    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_bytes(b"x" * 300_000)
    pack_directory(tmp_path / "tree", tmp_path / "out.sqfs", WriterOptions(mkfs_time=0))
    assert (sys.getswitchinterval(), gc.isenabled()) == (callers_switch_interval, True)
