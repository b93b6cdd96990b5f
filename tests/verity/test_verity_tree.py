"""The hash tree is byte for byte what ``veritysetup format`` writes, at every depth."""

from __future__ import annotations

import io
import random
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocisquash import verity
from ocisquash.errors import IntegrityError, UsageError
from ocisquash.verity import HashTreeBuilder, hash_device_size, hash_image, verify_image

from ._util import dump, veritysetup

UUID = uuid.UUID("0f0e0d0c-0b0a-4908-8706-050403020100")


def _data(path: Path, blocks: int, seed: int) -> Path:
    path.write_bytes(random.Random(seed).randbytes(blocks * 4096))
    return path


def _reference(tmp_path: Path, data: Path, salt: bytes) -> tuple[bytes, str]:
    ref = tmp_path / "ref.verity"
    out = veritysetup("format", "--salt", salt.hex(), "--uuid", str(UUID), data, ref).stdout
    root = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                if line.startswith("Root hash"))
    return ref.read_bytes(), root


def _ours(data: Path, salt: bytes) -> tuple[bytes, str]:
    with hash_image(data, salt) as tree:
        buf = io.BytesIO()
        tree.write(buf, UUID)
        assert len(buf.getvalue()) == tree.size
        return buf.getvalue(), tree.root_hash.hex()


# 1 block: no level at all; 2 and 128: one level; 129: two; 128*128+1: three.
@pytest.mark.parametrize("blocks", [1, 2, 127, 128, 129, 300, 128 * 128, 128 * 128 + 1])
def test_tree_equals_veritysetup_format(tmp_path: Path, blocks: int) -> None:
    data = _data(tmp_path / "data", blocks, blocks)
    salt = random.Random(blocks).randbytes(32)
    ours, root = _ours(data, salt)
    ref, ref_root = _reference(tmp_path, data, salt)
    assert root == ref_root
    assert ours == ref
    assert len(ours) == hash_device_size(blocks)


def test_levels_match_the_dump(tmp_path: Path) -> None:
    data = _data(tmp_path / "data", 128 * 128 + 1, 1)
    ours, root = _ours(data, b"\x01" * 32)
    (tmp_path / "ours.verity").write_bytes(ours)
    fields = dump(tmp_path / "ours.verity")
    assert fields["Hash type"] == "1"
    assert fields["Data blocks"] == str(128 * 128 + 1)
    assert fields["Data block size"] == fields["Hash block size"] == "4096"
    assert fields["Hash algorithm"] == "sha256"
    assert fields["Salt"] == "01" * 32
    assert fields["UUID"] == str(UUID)
    # three levels: 1 + 2 + 129 hash blocks
    assert fields["Hash blocks"] == "132"
    veritysetup("verify", data, tmp_path / "ours.verity", root)


@pytest.mark.parametrize("salt", [b"\x5a", bytes(range(256))])
def test_short_and_longest_salts_equal_veritysetup(tmp_path: Path, salt: bytes) -> None:
    data = _data(tmp_path / "data", 200, 7)
    assert _ours(data, salt) == _reference(tmp_path, data, salt)


def test_spilled_levels_give_the_same_bytes(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data(tmp_path / "data", 128 * 130, 3)
    in_memory = _ours(data, b"s" * 32)
    monkeypatch.setattr(verity, "SPILL_BYTES", 4096)
    spilled = _ours(data, b"s" * 32)
    assert spilled == in_memory
    assert spilled == _reference(tmp_path, data, b"s" * 32)


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=20000), min_size=1, max_size=40))
def test_read_sizes_do_not_change_the_tree(sizes: list[int]) -> None:
    data = random.Random(5).randbytes(4096 * 140)
    whole = HashTreeBuilder(b"salt")
    whole.update(data)
    expected = whole.finish()
    pieces = HashTreeBuilder(b"salt")
    offset = 0
    for size in sizes:
        pieces.update(data[offset:offset + size])
        offset += size
    pieces.update(data[offset:])
    got = pieces.finish()
    a, b = io.BytesIO(), io.BytesIO()
    expected.write(a, UUID)
    got.write(b, UUID)
    assert got.root_hash == expected.root_hash
    assert a.getvalue() == b.getvalue()


def test_data_that_is_not_whole_blocks_is_refused() -> None:
    builder = HashTreeBuilder(b"x")
    builder.update(bytes(4097))
    with pytest.raises(UsageError, match="4096"):
        builder.finish()


def test_append_layout_equals_veritysetup_hash_offset(tmp_path: Path) -> None:
    blocks = 300
    data = _data(tmp_path / "data", blocks, 9)
    salt = b"\xab" * 32
    ref = tmp_path / "ref"
    ref.write_bytes(data.read_bytes())
    offset = blocks * 4096
    out = veritysetup("format", "--salt", salt.hex(), "--uuid", str(UUID),
                      f"--hash-offset={offset}", f"--data-blocks={blocks}", ref, ref).stdout
    ours, root = _ours(data, salt)
    assert root in out
    assert ref.read_bytes() == data.read_bytes() + ours


def test_a_changed_upper_level_names_the_hash_block(tmp_path: Path) -> None:
    data = _data(tmp_path / "img", 129, 4)  # two levels: the root block at 4096, level 0 at 8192
    ours, root = _ours(data, b"salt")
    tree = bytearray(ours)
    tree[4096 + 5] ^= 1  # level 0 block 0's digest, in the root block
    (tmp_path / "img.verity").write_bytes(tree)
    assert veritysetup("verify", data, tmp_path / "img.verity", root,
                       check=False).returncode != 0
    with pytest.raises(IntegrityError, match="hash block at byte offset 8192"):
        verify_image(data, root_hash=root)
