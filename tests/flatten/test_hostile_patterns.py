"""The layer patterns that once made the flattener quadratic, as properties: whatever
their size and order, the tree is the one the rules give. Their time is bounded by
``bench/bench_hostile.py``, not here.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ocisquash.flatten import flatten

from .cases import D, F, H
from .layerkit import BlobLayer, RecordingSink

PROPERTY = settings(max_examples=40, deadline=None)


def _replaced(draw: st.DrawFn, n: int) -> list[int]:
    """Which of ``n`` names a layer replaces later, in the order it does."""
    chosen = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
    return draw(st.permutations(chosen))


@PROPERTY
@given(st.data(), st.integers(1, 60))
def test_hard_links_replaced_in_any_order_leave_the_rest_linked(data: st.DataObject,
                                                                n: int) -> None:
    replaced = _replaced(data.draw, n)
    layer = [F("a", b"x")] + [H(f"l{i}", "a") for i in range(n)]
    layer += [F(f"l{i}", b"y") for i in replaced] + [H("last", "a")]
    sink = RecordingSink()
    flatten([BlobLayer.of(layer)], sink)
    inode = sink.nodes[b"a"].inode
    for i in range(n):
        node = sink.nodes[f"l{i}".encode()]
        assert (node.data, node.inode == inode) == ((b"y", False) if i in replaced else
                                                    (b"x", True))
    assert sink.nodes[b"last"].inode == inode


@PROPERTY
@given(st.data(), st.integers(1, 60), st.booleans())
def test_hard_links_waiting_for_a_hidden_target_and_replaced_in_any_order(
        data: st.DataObject, n: int, link_after: bool) -> None:
    replaced = _replaced(data.draw, n)
    lower = [F("a", b"x")] + [H(f"l{i}", "a") for i in range(n)]
    lower += [F(f"l{i}", b"y") for i in replaced]
    if link_after:
        lower.append(H("late", "a"))
    sink = RecordingSink()
    report = flatten([BlobLayer.of(lower), BlobLayer.of([F(".wh.a")])], sink)
    assert b"a" not in sink.nodes
    kept = [f"l{i}".encode() for i in range(n) if i not in replaced]
    kept += [b"late"] if link_after else []
    assert {sink.nodes[k].inode for k in kept} | {0} == ({sink.nodes[kept[0]].inode, 0}
                                                         if kept else {0})
    assert all(sink.nodes[k].data == b"x" for k in kept)
    assert all(sink.nodes[f"l{i}".encode()].data == b"y" for i in replaced)
    assert report.second_passes == (1 if kept else 0)


@PROPERTY
@given(st.data(), st.integers(1, 40))
def test_directories_replaced_by_files_in_any_order_drop_their_links(data: st.DataObject,
                                                                     n: int) -> None:
    replaced = _replaced(data.draw, n)
    layer = [F("t", b"t")]
    for i in range(n):
        layer += [D(f"d{i}"), H(f"d{i}/x", "t"), F(f"d{i}/y", b"y")]
    layer += [F(f"d{i}", b"f") for i in replaced]
    # A link to a name that was under a replaced directory has nothing to point at.
    sink = RecordingSink()
    flatten([BlobLayer.of([*layer, H("z", "t")])], sink)
    for i in range(n):
        if i in replaced:
            assert sink.nodes[f"d{i}".encode()].data == b"f"
            assert f"d{i}/x".encode() not in sink.nodes
        else:
            assert sink.nodes[f"d{i}/x".encode()].inode == sink.nodes[b"t"].inode
    assert sink.nodes[b"z"].inode == sink.nodes[b"t"].inode


@PROPERTY
@given(st.lists(st.sampled_from(["file-elsewhere", "file-at-d", "file-under-d"]),
                min_size=1, max_size=60))
def test_a_lower_file_under_an_upper_directory_is_noted_only_over_its_own_entries(
        steps: list[str]) -> None:
    lower = []
    for i, step in enumerate(steps):
        lower.append({"file-elsewhere": F(f"x{i}"), "file-at-d": F("d", b"f"),
                      "file-under-d": F(f"d/y{i}")}[step])
    sink = RecordingSink()
    report = flatten([BlobLayer.of(lower), BlobLayer.of([D("d"), F("d/top", b"t")])], sink)
    assert sink.nodes[b"d"].kind == "dir" and sink.nodes[b"d/top"].data == b"t"
    noted = {i.kind: i.count for i in report.fidelity}.get("same-layer-replacement-ignored", 0)
    # Each file at d after some entry of the layer beneath d is one note.
    want = sum(1 for i, s in enumerate(steps) if s == "file-at-d" and "file-under-d" in steps[:i])
    assert noted == want
