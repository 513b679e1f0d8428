"""Fast block digests (xxh3-128): what reads are checked against; blake2b stays the store's identity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from test_store import crops_and_rows, write

from scanstream import store as st
from scanstream.cli import main
from scanstream.store.writer import add_fast_digests

N = 21  # blocks of 8 (tests/test_store.py's shards): two full blocks and a partial one of 5


def digests(path):
    return json.loads((path / st.DIGESTS_FILE).read_text())


def as_legacy(path):
    """Make ``path`` look written before fast digests existed."""
    saved = digests(path)
    for key in ("fast", "fast_blocks"):
        saved.pop(key)
    (path / st.DIGESTS_FILE).write_text(json.dumps(saved))


def damage(path, row):
    arr = zarr.open_array(str(path / "crops"), mode="r+")
    arr[row, 0, 0, 0] = (int(arr[row, 0, 0, 0]) + 1) % 256


def read_all(store):
    v = st.BlockVerifier(store)
    for start, crops in st.iter_blocks(store, block=v.block):
        v.feed(start, crops)
    return v


def test_every_block_has_a_fast_digest_and_the_identity_is_unchanged(tmp_path):
    crops, rows = crops_and_rows(N)
    s = write(tmp_path / "a.zarr", crops, rows, batches=(3, 7))
    saved = digests(s.path)
    assert saved["fast"] == st.FAST_DIGEST and len(saved["fast_blocks"]) == 3 and len(saved["blocks"]) == 2
    assert saved["fast_blocks"] == [st.fast_digest(crops[a : a + 8]) for a in (0, 8, 16)]
    # the content hash is blake2b's, as before: a legacy store of the same crops has the same one
    assert s.content_hash == st.compute_content_hash(s)
    assert read_all(s).fast == saved["fast_blocks"]


@pytest.mark.parametrize("row", [3, 18])  # a full block and the last, partial one
def test_fast_digests_catch_damage(tmp_path, row):
    crops, rows = crops_and_rows(N)
    s = write(tmp_path / "a.zarr", crops, rows)
    damage(s.path, row)
    lo = row // 8 * 8
    with pytest.raises(st.StoreError, match=rf"crops \[{lo}, {min(lo + 8, N)}\) do not match"):
        read_all(st.open_store(s.path))


def test_resumed_and_appended_writes_keep_fast_digests_whole(tmp_path):
    crops, rows = crops_and_rows(N + 11)
    path = tmp_path / "a.zarr"
    write(path, crops[:N], rows[:N])
    with st.StoreWriter(path, source={"stage": "test"}, chunk_crops=4, shard_crops=8) as w:
        w.append(crops[N:], rows[N:])
    s = st.open_store(path)
    assert digests(path)["fast_blocks"] == [st.fast_digest(crops[a : a + 8]) for a in range(0, N + 11, 8)]
    read_all(s)


def test_legacy_store_is_checked_by_blake2b_and_upgraded_to_fast_digests(tmp_path, capsys):
    crops, rows = crops_and_rows(N)
    s = write(tmp_path / "a.zarr", crops, rows)
    want = digests(s.path)["fast_blocks"]
    as_legacy(s.path)
    assert read_all(st.open_store(s.path)).fast is None  # blake2b and the content hash
    assert st.validate_store(s.path, deep=True) == []
    assert main(["upgrade", str(s.path)]) == 0
    assert digests(s.path)["fast_blocks"] == want
    assert st.open_store(s.path).content_hash == s.content_hash
    assert add_fast_digests(st.open_store(s.path)) is False  # a second run changes nothing


def test_appending_to_a_legacy_store_leaves_it_on_blake2b(tmp_path):
    crops, rows = crops_and_rows(N + 5)
    path = tmp_path / "a.zarr"
    write(path, crops[:N], rows[:N])
    as_legacy(path)
    with st.StoreWriter(path, source={"stage": "test"}, chunk_crops=4, shard_crops=8) as w:
        w.append(crops[N:], rows[N:])
    assert "fast" not in digests(path)
    assert read_all(st.open_store(path)).fast is None


def test_upgrading_a_damaged_legacy_store_is_refused_and_writes_nothing(tmp_path):
    crops, rows = crops_and_rows(N)
    s = write(tmp_path / "a.zarr", crops, rows)
    as_legacy(s.path)
    before = (s.path / st.DIGESTS_FILE).read_bytes()
    damage(s.path, 9)
    with pytest.raises(st.StoreError, match=r"crops \[8, 16\) do not match"):
        add_fast_digests(st.open_store(s.path))
    assert (s.path / st.DIGESTS_FILE).read_bytes() == before


def test_fast_digest_is_xxh3_128_of_the_crop_bytes():
    crops = np.arange(2 * 224 * 224 * 3, dtype=np.uint64).astype(np.uint8).reshape(2, 224, 224, 3)
    import xxhash

    assert st.fast_digest(crops) == xxhash.xxh3_128(crops.tobytes()).hexdigest()
    h = st.fast_hasher()
    h.update(crops[:1].data)
    h.update(crops[1:].data)
    assert h.hexdigest() == st.fast_digest(crops)


def test_deep_validation_checks_the_fast_digests_too(tmp_path):
    crops, rows = crops_and_rows(N)
    s = write(tmp_path / "a.zarr", crops, rows)
    assert st.validate_store(s.path, deep=True) == []
    saved = digests(s.path)
    saved["fast_blocks"][2] = "0" * 32
    (s.path / st.DIGESTS_FILE).write_text(json.dumps(saved))
    (problem,) = st.validate_store(s.path, deep=True)
    assert "1 fast block digest(s)" in problem and "first: block 2" in problem
    as_legacy(s.path)  # the remedy the message gives
    assert main(["upgrade", str(s.path)]) == 0
    assert st.validate_store(s.path, deep=True) == []


def test_deep_validation_names_an_unreadable_digests_file(tmp_path):
    crops, rows = crops_and_rows(N)
    s = write(tmp_path / "a.zarr", crops, rows)
    (s.path / st.DIGESTS_FILE).write_text("{")
    (problem,) = st.validate_store(s.path, deep=True)
    assert problem.startswith(f"{s.path / st.DIGESTS_FILE}: unreadable block digests")
