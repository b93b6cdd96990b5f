"""What flatten reports, and how often it reads each layer."""

from __future__ import annotations

from ocisquash.flatten import FlattenProgress, flatten

from .cases import D, F, H, W
from .layerkit import BlobLayer, RecordingSink


def test_each_layer_is_read_once_and_hidden_data_is_skipped() -> None:
    lower = BlobLayer.of([D("d"), F("d/big", b"x" * 100_000), F("keep", b"k")])
    upper = BlobLayer.of([W("d"), F("new", b"n")])
    sink = RecordingSink()
    report = flatten([lower, upper], sink)
    assert (lower.opened, upper.opened) == (1, 1)
    assert report.second_passes == 0
    assert (report.layers, report.entries, report.files, report.bytes) == (2, 5, 2, 2)
    assert report.hidden == 2  # d and d/big
    assert report.whiteouts == 1
    assert [c for c in sink.calls if c[1].startswith(b"d")] == []


def test_hidden_hardlink_target_costs_one_second_pass_of_that_layer_only() -> None:
    base = BlobLayer.of([F("other", b"o")])
    lower = BlobLayer.of([F("a", b"payload"), H("b", "a")])
    upper = BlobLayer.of([W("a")])
    report = flatten([base, lower, upper], RecordingSink())
    assert (base.opened, lower.opened, upper.opened) == (1, 2, 1)
    assert report.second_passes == 1
    assert (report.files, report.bytes) == (2, len(b"payload") + 1)


def test_progress_events_follow_the_layers_from_the_top() -> None:
    layers = [BlobLayer.of([F("a", b"1")]), BlobLayer.of([F("b", b"22")])]
    events: list[FlattenProgress] = []
    flatten(layers, RecordingSink(), progress=events.append)
    assert [(e.phase, e.layer, e.digest) for e in events] == [
        ("start", 1, str(layers[1].descriptor.digest)),
        ("done", 1, str(layers[1].descriptor.digest)),
        ("start", 2, str(layers[0].descriptor.digest)),
        ("done", 2, str(layers[0].descriptor.digest)),
    ]
    assert events[-1].bytes == 3 and events[-1].entries == 2
