"""The rule table: small images, each named after the OCI layering rule it exercises.

A case is a list of layers (bottom first) and the expected outcome of a few paths in
the flattened tree: ``"file:DATA"``, ``"dir"``, ``"symlink->TARGET"``, ``"fifo"``,
``"char"``, ``None`` for absent. The umoci comparison checks every path of every case
on top of this.
"""

from __future__ import annotations

import os
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imagebuilder import Entry, make_tar

Layer = list[Entry] | bytes | Callable[[], bytes]

#: security.capability v2 granting cap_net_raw (effective), as setcap writes it
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def F(path: str | bytes, data: bytes = b"", **kw: object) -> Entry:
    return Entry(path, "file", data, **kw)  # type: ignore[arg-type]


def D(path: str | bytes, mode: int = 0o755, **kw: object) -> Entry:
    return Entry(path, "dir", mode=mode, **kw)  # type: ignore[arg-type]


def S(path: str, target: str) -> Entry:
    return Entry(path, "symlink", mode=0o777, linkname=target)


def H(path: str, target: str) -> Entry:
    return Entry(path, "hardlink", linkname=target)


def W(path: str) -> Entry:
    """A whiteout of ``path``."""
    head, _, name = path.rpartition("/")
    return F(f"{head}/.wh.{name}" if head else f".wh.{name}")


def O(directory: str) -> Entry:  # noqa: E743 - reads like the marker it makes
    """The opaque marker of ``directory``."""
    return F(f"{directory}/.wh..wh..opq")


def gnu_tar(build: Callable[[Path], None], *options: str) -> Callable[[], bytes]:
    """A layer made by GNU tar (sparse files, GNU/PAX formats) from a directory ``build`` fills."""

    def make() -> bytes:
        with tempfile.TemporaryDirectory() as d:
            root = Path(d, "root")
            root.mkdir()
            build(root)
            return subprocess.run(
                ["tar", "-c", "-f", "-", "--numeric-owner", "--sort=name",
                 "--mtime=@1700000000", *options, "-C", str(root), "."],
                check=True, capture_output=True).stdout

    return make


def _sparse_tree(root: Path) -> None:
    with open(root / "sparse.img", "wb") as f:
        f.seek(3 << 20)
        f.write(b"middle")
        f.seek(9 << 20)
        f.write(b"end")
        f.truncate(12 << 20)  # ends in a hole
    (root / ("n" * 150)).write_bytes(b"long name")
    os.makedirs(root / ("d" * 120) / "sub")
    os.symlink("x" * 130, root / "longlink")


def _gnu_magic(tar: bytes) -> bytes:
    """``tar`` with every header's magic rewritten to GNU's (``ustar  \\0``), as Go 1.7
    and older wrote headers whose name needed the ustar prefix field."""
    out = bytearray(tar)
    at = 0
    while at + 512 <= len(out) and any(out[at:at + 512]):
        block = out[at:at + 512]
        size = int(bytes(block[124:136]).rstrip(b"\0 ") or b"0", 8)
        block[257:265] = b"ustar  \0"
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\0 " % sum(block)
        out[at:at + 512] = block
        at += 512 + size + (-size % 512)
    return bytes(out)


@dataclass
class Case:
    name: str
    layers: list[Layer]
    expect: dict[bytes, str | None] = field(default_factory=dict)
    #: the independent implementation to compare with: "umoci", "gnutar" (single-layer
    #: cases umoci 0.4 cannot read, e.g. GNU sparse entries) or None (ocisquash
    #: deliberately differs, see flatten.py)
    reference: str | None = "umoci"
    #: fidelity issue kinds the report must contain
    fidelity: tuple[str, ...] = ()


def layer_bytes(layer: Layer, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    if isinstance(layer, bytes):
        return layer
    if callable(layer):
        return layer()
    return make_tar(layer, format=fmt)


CASES = [
    Case("test_upper_file_replaces_lower_file",
         [[F("a", b"old")], [F("a", b"new")]], {b"a": "file:new"}),
    Case("test_whiteout_removes_lower_file",
         [[F("a", b"1"), F("b", b"2")], [W("a")]], {b"a": None, b"b": "file:2", b".wh.a": None}),
    Case("test_whiteout_of_directory_removes_subtree",
         [[D("d"), F("d/x", b"1"), D("d/e"), F("d/e/y", b"2")], [W("d")]],
         {b"d": None, b"d/x": None, b"d/e/y": None}),
    Case("test_whiteout_does_not_hide_same_layer_entry",
         [[F("a", b"lower")], [F("a", b"same"), W("a")]], {b"a": "file:same"}),
    Case("test_whiteout_then_recreate_directory_in_same_layer_hides_lower_children",
         [[D("d"), F("d/old", b"o")], [W("d"), D("d", 0o700), F("d/new", b"n")]],
         {b"d": "dir", b"d/old": None, b"d/new": "file:n"}),
    Case("test_opaque_marker_after_siblings_keeps_siblings",
         [[D("d"), F("d/old", b"o")], [D("d", 0o750), F("d/new", b"n"), O("d")]],
         {b"d/old": None, b"d/new": "file:n", b"d/.wh..wh..opq": None}),
    Case("test_opaque_marker_before_siblings_keeps_siblings",
         [[D("d"), F("d/old", b"o")], [D("d", 0o750), O("d"), F("d/new", b"n")]],
         {b"d/old": None, b"d/new": "file:n"}),
    Case("test_opaque_marker_hides_only_lower_layers_not_upper",
         [[D("d"), F("d/a", b"1")], [D("d"), O("d"), F("d/b", b"2")], [F("d/c", b"3")]],
         {b"d/a": None, b"d/b": "file:2", b"d/c": "file:3"}),
    Case("test_opaque_marker_without_directory_entry_keeps_lower_directory_metadata",
         [[D("d", 0o711, uid=7), F("d/a", b"1")], [O("d"), F("d/b", b"2")]],
         {b"d": "dir", b"d/a": None, b"d/b": "file:2"}),
    Case("test_directory_over_directory_merges_children_upper_metadata_wins",
         [[D("d", 0o700, uid=1), F("d/a", b"1")], [D("d", 0o755, uid=2), F("d/b", b"2")]],
         {b"d/a": "file:1", b"d/b": "file:2"}),
    Case("test_implicit_parent_takes_lower_directory_metadata",
         [[D("d", 0o701, uid=5, gid=6, mtime=1_600_000_000), F("d/a", b"1")], [F("d/b", b"2")]],
         {b"d": "dir", b"d/a": "file:1", b"d/b": "file:2"}),
    Case("test_file_replaces_directory",
         [[D("d"), F("d/x", b"1")], [F("d", b"now a file")]],
         {b"d": "file:now a file", b"d/x": None}),
    Case("test_directory_replaces_file",
         [[F("d", b"file")], [D("d"), F("d/y", b"2")]], {b"d": "dir", b"d/y": "file:2"}),
    Case("test_symlink_replaces_directory",
         [[D("d"), F("d/x", b"1")], [S("d", "elsewhere")]],
         {b"d": "symlink->elsewhere", b"d/x": None}),
    Case("test_directory_replaces_symlink",
         [[S("d", "/tmp")], [D("d"), F("d/y", b"2")]], {b"d": "dir", b"d/y": "file:2"}),
    Case("test_type_change_across_three_layers",
         [[F("p", b"f")], [D("p"), F("p/q", b"q")], [S("p", "target")]],
         {b"p": "symlink->target", b"p/q": None}),
    Case("test_file_in_a_middle_layer_clobbers_lower_children_of_a_directory_above",
         [[D("d"), F("d/x", b"1")], [F("d", b"f")], [D("d"), F("d/y", b"2")]],
         {b"d": "dir", b"d/x": None, b"d/y": "file:2"}),
    Case("test_same_layer_file_then_directory_starts_the_directory_empty",
         [[D("d"), F("d/x", b"1")], [F("d", b"f"), D("d", 0o700)]],
         {b"d": "dir", b"d/x": None}),
    Case("test_implicit_parent_takes_the_last_of_duplicate_lower_directory_entries",
         [[D("g", 0o700, uid=1), D("g", 0o750, uid=1000)], [F("g/a", b"a")]],
         {b"g": "dir", b"g/a": "file:a"}),
    Case("test_opaque_marker_keeps_a_directory_lower_layers_create_only_implicitly",
         [[F("d/e/a", b"a")], [O("d/e")]], {b"d/e": "dir", b"d/e/a": None}),
    Case("test_opaque_marker_at_the_layer_root_hides_every_lower_entry",
         [[D("usr"), D("usr/lib"), F("usr/lib/a", b"a"), D("etc"), F("etc/x", b"x"), F("top", b"t")],
          [W("etc"), D("var"), F("var/log", b"l")],
          [F(".wh..wh..opq"), D("new"), F("new/f", b"n")]],
         {b"usr": None, b"usr/lib": None, b"usr/lib/a": None, b"etc": None, b"etc/x": None,
          b"top": None, b"var": None, b"var/log": None, b"new/f": "file:n"}),
    Case("test_parents_of_a_whited_out_entry_still_exist",
         [[D("d/e")], [W("d/e")]], {b"d": "dir", b"d/e": None}),
    Case("test_same_layer_duplicate_path_last_entry_wins",
         [[F("a", b"first"), F("a", b"second")]], {b"a": "file:second"}),
    Case("test_same_layer_directory_then_file_last_entry_wins",
         [[D("a"), F("a/x", b"1"), F("a", b"file")]], {b"a": "file:file", b"a/x": None}),
    Case("test_child_before_its_directory_entry_gets_the_entry_metadata",
         [[F("d/x", b"1"), D("d", 0o700, uid=3)]], {b"d": "dir", b"d/x": "file:1"}),
    Case("test_hardlink_in_same_layer_shares_inode",
         [[F("a", b"data", mode=0o751), H("b", "a")]], {b"a": "file:data", b"b": "file:data"}),
    Case("test_hardlink_target_removed_by_upper_whiteout_keeps_data",
         [[F("a", b"data"), H("b", "a"), H("c", "a")], [W("a")]],
         {b"a": None, b"b": "file:data", b"c": "file:data"}),
    Case("test_hardlink_target_overwritten_by_upper_layer_keeps_old_data",
         [[F("a", b"old"), H("b", "a")], [F("a", b"new")]],
         {b"a": "file:new", b"b": "file:old"}),
    Case("test_hardlink_target_hidden_by_upper_opaque_directory",
         [[D("d"), F("d/a", b"data"), H("b", "d/a")], [D("d"), O("d")]],
         {b"d/a": None, b"b": "file:data"}),
    Case("test_hardlink_target_replaced_later_in_same_layer_keeps_old_inode",
         [[F("a", b"one"), H("b", "a"), F("a", b"two"), H("c", "a")]],
         {b"a": "file:two", b"b": "file:one", b"c": "file:two"}),
    Case("test_file_relisted_as_directory_leaves_the_layers_other_files_files",
         # The layer's other non-directories share one decision object with the one
         # relisted: changing it must not turn "b" into a directory for the layer below.
         [[D("b"), F("b/under", b"u")], [F("a", b"1"), F("b", b"2"), D("a"), F("a/x", b"x")]],
         {b"a": "dir", b"a/x": "file:x", b"b": "file:2", b"b/under": None}),
    Case("test_link_through_a_hidden_link_to_a_replaced_file_reads_the_old_data_again",
         # "a" holds only its metadata and position until "h" links to it; "c" then
         # finds no written name holding the old inode, so a second pass reads it.
         [[F("a", b"old", mode=0o640), H("h", "a"), F("a", b"new"), H("c", "h")], [W("h")]],
         {b"a": "file:new", b"c": "file:old", b"h": None}),
    Case("test_link_through_a_hidden_link_finds_the_last_member_of_the_name_before_it",
         # "a" is known by name only when "h" links to it: the second pass must take
         # the member named "a" last listed before "h", not the first nor the last.
         [[F("a", b"first"), F("a", b"old", mode=0o640), H("h", "a"), F("a", b"new"),
           H("c", "h")], [W("h")]],
         {b"a": "file:new", b"c": "file:old", b"h": None}),
    Case("test_hardlink_itself_whited_out_leaves_target",
         [[F("a", b"data"), H("b", "a")], [W("b")]], {b"a": "file:data", b"b": None}),
    Case("test_hardlink_to_hidden_symlink_becomes_symlink",
         [[S("s", "t"), H("h", "s")], [W("s")]], {b"s": None, b"h": "symlink->t"}),
    Case("test_whiteout_of_upper_implicit_directory_drops_lower_metadata_and_children",
         [[D("d", 0o700, uid=9), F("d/old", b"o")], [W("d")], [F("d/new", b"n")]],
         {b"d/old": None, b"d/new": "file:n"}),
    Case("test_root_directory_entry_sets_root_metadata",
         [[D(".", 0o750, uid=1, gid=2), F("a", b"1")]], {b"": "dir", b"a": "file:1"}),
    Case("test_setuid_setgid_sticky_modes_survive",
         [[F("su", b"x", mode=0o4755), F("sg", b"x", mode=0o2755), D("tmp", 0o1777)]],
         {b"su": "file:x", b"tmp": "dir"}),
    Case("test_devices_and_fifos",
         [[D("dev"), Entry("dev/null", "char", mode=0o666, devmajor=1, devminor=3),
           Entry("dev/sda", "block", mode=0o660, devmajor=8, devminor=0, gid=6),
           Entry("run/fifo", "fifo", mode=0o600)]],
         {b"dev/null": "char", b"dev/sda": "block", b"run/fifo": "fifo"}),
    Case("test_pax_long_names_large_ids_fractional_mtime_and_xattrs",
         [[F("p/" + "x" * 180, b"long", uid=3_000_000, gid=4_000_000),
           F("t", b"frac", mtime=1_700_000_000.75),  # type: ignore[arg-type]
           F("bin/ping", b"\x7fELF", mode=0o755,
             xattrs={"security.capability": CAP_NET_RAW, "user.note": b"hello",
                     "trusted.test": b"y"}),
           S("lnk", "/" + "t" * 150)]],
         {b"p/" + b"x" * 180: "file:long", b"bin/ping": "file:\x7fELF"}),
    Case("test_gnu_format_long_names_and_base256_ids",
         [make_tar([F("g/" + "y" * 150, b"gnu", uid=3_000_000, gid=2**25),
                    H("g/" + "z" * 120, "g/" + "y" * 150)], format=tarfile.GNU_FORMAT)],
         {b"g/" + b"y" * 150: "file:gnu", b"g/" + b"z" * 120: "file:gnu"}),
    Case("test_non_utf8_names_are_kept_as_bytes",
         [[F(b"caf\xe9", b"latin1"), D(b"dir\xff"), F(b"dir\xff/x\x80y", b"z")], [W("caf\udce9")]],
         {b"caf\xe9": None, b"dir\xff/x\x80y": "file:z"}),
    Case("test_gnu_sparse_file_holes_become_zeros",
         [gnu_tar(_sparse_tree, "--sparse", "--format=gnu")],
         {b"n" * 150: "file:long name", b"longlink": "symlink->" + "x" * 130},
         reference="gnutar"),
    Case("test_pax_sparse_file_holes_become_zeros",
         [gnu_tar(_sparse_tree, "--sparse", "--format=pax")], {b"n" * 150: "file:long name"}),
    Case("test_pax_sparse_0_0_file_holes_become_zeros",
         [gnu_tar(_sparse_tree, "--sparse", "--format=pax", "--sparse-version=0.0")],
         {b"n" * 150: "file:long name"}, reference="gnutar"),
    Case("test_pax_sparse_0_1_file_holes_become_zeros",
         [gnu_tar(_sparse_tree, "--sparse", "--format=pax", "--sparse-version=0.1")],
         {b"n" * 150: "file:long name"}, reference="gnutar"),
    Case("test_ustar_prefix_field_holds_the_start_of_long_paths",
         [make_tar([F("p" * 90 + "/" + "q" * 60 + "/file", b"split")], format=tarfile.USTAR_FORMAT)],
         {("p" * 90 + "/" + "q" * 60 + "/file").encode(): "file:split"}),
    Case("test_gnu_magic_with_a_ustar_prefix_joins_the_prefix_as_go_does",
         [_gnu_magic(make_tar([F("p" * 90 + "/" + "q" * 60 + "/file", b"split")],
                              format=tarfile.USTAR_FORMAT))],
         {("p" * 90 + "/" + "q" * 60 + "/file").encode(): "file:split", b"file": None}),
    Case("test_absolute_and_dot_slash_paths_are_made_relative",
         [[F("/abs/file", b"a"), F("./rel//file", b"r")]],
         {b"abs/file": "file:a", b"rel/file": "file:r"}),
    Case("test_entry_below_lower_symlink_makes_a_directory_not_a_write_through",
         [[S("lib", "usr/lib"), D("usr"), D("usr/lib"), F("usr/lib/libc", b"c")],
          [F("lib/extra", b"e")]],
         {b"lib": "dir", b"lib/extra": "file:e", b"usr/lib/libc": "file:c",
          b"usr/lib/extra": None},
         reference=None, fidelity=("symlink-replaced-by-directory",)),
]
