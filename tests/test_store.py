"""The crop store: round trips, crash safety, resume, append, rollback, validation, ``info``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from fixtures import drop_table_digest

from scanstream import store as st
from scanstream.cli import main
from scanstream.errors import IncompleteStoreError, InputError, StoreExistsError, StoreNotFoundError
from scanstream.store import writer as store_writer
from scanstream.store.crops import check_object_table

CHUNK, SHARD = 4, 8  # small blocks so a few dozen crops cross several shard boundaries


def crops_and_rows(n: int, *, seed: int = 0, prefix: str = "o"):
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
    rows = [
        {
            "object_id": f"{prefix}{i:05d}",
            "experiment": "E07",
            "module": 99,
            "plate": 9,
            "sheet": "S1" if i % 2 else "S2",
            "x_mm": float(i),
            "y_mm": -float(i),
            "z_mm": 0.001 * i,
            "label": int(i % 3) - 1,
            "category": "alpha_th" if i % 3 == 2 else None,
            "multiplicity": 5,
            "track_lengths_um": [1.5, float(i)],
        }
        for i in range(n)
    ]
    return crops, rows


def write(path, crops, rows, batches=(5,), **kw):
    """Write with a StoreWriter in batches of the given sizes (cycled)."""
    with st.StoreWriter(path, source={"stage": "test"}, chunk_crops=CHUNK, shard_crops=SHARD, **kw) as w:
        i, b = 0, 0
        while i < len(crops):
            k = batches[b % len(batches)]
            w.append(crops[i : i + k], rows[i : i + k])
            i, b = i + k, b + 1
    return st.open_store(path)


def one_shot_hash(tmp_path, crops, rows) -> str:
    return write(tmp_path / "oneshot.zarr", crops, rows, batches=(len(crops),)).content_hash


# -- round trips ------------------------------------------------------------------------
def test_round_trip_pixels_table_and_attributes(tmp_path):
    crops, rows = crops_and_rows(21)
    s = write(tmp_path / "a.zarr", crops, rows, batches=(3, 7, 1))
    assert s.complete and len(s) == s.n == 21
    np.testing.assert_array_equal(s.read(), crops)
    np.testing.assert_array_equal(s.read(5, 9), crops[5:9])
    assert s.table.schema.names[: len(st.OBJECT_SCHEMA)] == st.OBJECT_SCHEMA.names
    for field in st.OBJECT_SCHEMA:
        assert s.table.schema.field(field.name).type == field.type
    assert s.table.to_pylist() == st.rows_to_table(rows).to_pylist()
    assert s.labels.dtype == np.int8 and s.labels.tolist() == [r["label"] for r in rows]
    assert s.object_ids == [r["object_id"] for r in rows]
    assert s.attrs["scanstream_schema"] == st.SCHEMA_VERSION
    assert s.attrs["crop_size"] == 224 and s.attrs["pixel_size_um"] == pytest.approx(87 / 224)
    assert s.attrs["source"] == {"stage": "test"} and s.attrs["n_objects"] == 21
    assert s.crops.chunks == (CHUNK, 224, 224, 3) and s.crops.shards == (SHARD, 224, 224, 3)
    assert s.crops.dtype == np.uint8
    assert s.content_hash == st.compute_content_hash(s)
    assert not (s.path / st.PARTS_DIR).exists()
    assert st.validate_store(s.path, deep=True) == []


def test_default_chunking_matches_module_constants(tmp_path):
    crops, rows = crops_and_rows(3)
    s = st.create_store(tmp_path / "d.zarr", crops, rows, source={"stage": "test"})
    assert s.crops.chunks[0] == st.CHUNK_CROPS and s.crops.shards[0] == st.SHARD_CROPS
    assert s.attrs["chunk_crops"] == st.CHUNK_CROPS and s.attrs["shard_crops"] == st.SHARD_CROPS
    assert [c.to_dict()["name"] for c in s.crops.compressors] == ["zstd"]


def test_content_hash_independent_of_batching_and_sensitive_to_content(tmp_path):
    crops, rows = crops_and_rows(19)
    h1 = write(tmp_path / "a.zarr", crops, rows, batches=(19,)).content_hash
    h2 = write(tmp_path / "b.zarr", crops, rows, batches=(1, 2, 9)).content_hash
    assert h1 == h2
    crops2 = crops.copy()
    crops2[17, 3, 3, 0] ^= 1
    assert write(tmp_path / "c.zarr", crops2, rows).content_hash != h1
    rows2 = [dict(r) for r in rows]
    rows2[0]["label"] = 1 if rows2[0]["label"] != 1 else 0
    assert write(tmp_path / "d.zarr", crops, rows2).content_hash != h1


def test_empty_store_round_trip(tmp_path):
    s = st.create_store(tmp_path / "e.zarr", np.zeros((0, 224, 224, 3), np.uint8), [], source={"stage": "t"})
    assert s.complete and s.n == 0 and s.read().shape == (0, 224, 224, 3)
    assert st.validate_store(s.path, deep=True) == []
    assert s.chunk_ranges() == []


def test_extra_columns_kept_after_standard_ones(tmp_path):
    crops, rows = crops_and_rows(3)
    for i, r in enumerate(rows):
        r["truth_energy_mev"] = 5.0 + i
    s = st.create_store(tmp_path / "x.zarr", crops, rows, source={"stage": "t"})
    assert s.table.column_names[-1] == "truth_energy_mev"
    assert s.table.column("truth_energy_mev").to_pylist() == [5.0, 6.0, 7.0]


def test_rows_to_table_defaults_and_types():
    t = st.rows_to_table([{"object_id": "a"}, {"object_id": "b", "label": 1, "module": "7"}])
    assert t.schema.names == st.OBJECT_SCHEMA.names
    assert t.column("label").to_pylist() == [-1, 1]
    assert t.column("module").to_pylist() == [None, 7]  # a value missing from one row is null
    assert st.rows_to_table([{"object_id": "a"}]).column("module").to_pylist() == [0]  # a missing column: default
    assert t.column("category").to_pylist() == [None, None]
    assert t.column("x_mm").type == pa.float64()


@pytest.mark.parametrize(
    "rows, match",
    [
        ([{"label": 1}], "no 'object_id'"),
        ([{"object_id": None}], "missing object_id"),
        ([{"object_id": "a", "label": 3}], r"labels must be .*\[3\]"),
        ([{"object_id": "a", "x_mm": "left"}], "'x_mm'"),
    ],
)
def test_rows_to_table_rejects(rows, match):
    with pytest.raises(InputError, match=match):
        st.rows_to_table(rows)


# -- bad appends ------------------------------------------------------------------------
def test_append_rejects_duplicates_shape_and_count(tmp_path):
    crops, rows = crops_and_rows(4)
    with pytest.raises(InputError, match="duplicate object id 'o00000'"), st.StoreWriter(tmp_path / "a.zarr", source={}) as w:
        w.append(crops[:2], rows[:2])
        w.append(crops[2:3], rows[:1])
    with st.StoreWriter(tmp_path / "b.zarr", source={}) as w:
        with pytest.raises(InputError, match="duplicate object id 'o00001'"):
            w.append(crops[:2], [rows[1], rows[1]])
        with pytest.raises(InputError, match="uint8"):
            w.append(crops[:1].astype(np.float32), rows[:1])
        with pytest.raises(InputError, match=r"\(1, 112, 112, 3\)"):
            w.append(np.zeros((1, 112, 112, 3), np.uint8), rows[:1])
        with pytest.raises(InputError, match="2 crops but 1 object rows"):
            w.append(crops[:2], rows[:1])
        w.append(crops[0], rows[:1])  # a single (224, 224, 3) crop is accepted
    assert st.open_store(tmp_path / "b.zarr").object_ids == ["o00000"]


def test_create_store_refuses_existing_unless_overwrite(tmp_path):
    crops, rows = crops_and_rows(2)
    st.create_store(tmp_path / "a.zarr", crops, rows, source={})
    with pytest.raises(StoreExistsError, match="store exists"):
        st.create_store(tmp_path / "a.zarr", crops, rows, source={})
    s = st.create_store(tmp_path / "a.zarr", crops[:1], rows[:1], source={}, overwrite=True)
    assert s.n == 1
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreExistsError, match="not a scanstream crop store"):
        st.StoreWriter(tmp_path / "plain", source={})
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp leftovers


def test_shard_multiple_of_chunk_required(tmp_path):
    with pytest.raises(InputError, match="not a multiple"):
        st.StoreWriter(tmp_path / "a.zarr", source={}, chunk_crops=4, shard_crops=6)
    assert not (tmp_path / "a.zarr").exists()


# -- crash safety and resume --------------------------------------------------------------
class Boom(RuntimeError):
    pass


def test_exception_mid_write_leaves_incomplete_store_that_resumes(tmp_path):
    crops, rows = crops_and_rows(30)
    path = tmp_path / "a.zarr"
    with pytest.raises(Boom), st.StoreWriter(path, source={"stage": "test"}, chunk_crops=CHUNK, shard_crops=SHARD) as w:
        for i in range(0, 19, 3):
            w.append(crops[i : i + 3], rows[i : i + 3])
        raise Boom
    assert st.is_store(path)
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        st.open_store(path)
    part = st.open_store(path, require_complete=False)
    assert not part.complete and part.n == 16  # two whole shards committed, the buffer lost
    np.testing.assert_array_equal(part.read(), crops[:16])
    assert st.validate_store(path) == [f"{path}: incomplete (no completion marker)"]
    # the rerun skips what is there and completes the store
    with st.StoreWriter(path, source={"stage": "test"}) as w:
        todo = [i for i, r in enumerate(rows) if r["object_id"] not in w]
        assert todo == list(range(16, 30))
        w.append(crops[todo], [rows[i] for i in todo])
    s = st.open_store(path)
    np.testing.assert_array_equal(s.read(), crops)
    assert s.object_ids == [r["object_id"] for r in rows]
    assert s.content_hash == one_shot_hash(tmp_path, crops, rows)


def test_crops_beyond_committed_rows_are_dropped(tmp_path, monkeypatch):
    """A crash after the crops of a shard were written but before its rows were committed."""
    crops, rows = crops_and_rows(24)
    path = tmp_path / "a.zarr"
    real = store_writer.write_parquet
    calls = []

    def failing(p, table):
        calls.append(p)
        if len(calls) == 2:
            raise Boom("disk full")
        real(p, table)

    monkeypatch.setattr(store_writer, "write_parquet", failing)
    with pytest.raises(Boom):
        write(path, crops, rows, batches=(6,))
    monkeypatch.setattr(store_writer, "write_parquet", real)
    assert zarr.open_array(str(path / "crops"), mode="r").shape[0] == 16  # 8 committed + 8 uncommitted
    assert st.open_store(path, require_complete=False).n == 8
    with st.StoreWriter(path, source={"stage": "test"}) as w:
        assert w.n == 8
        assert zarr.open_array(str(path / "crops"), mode="r").shape[0] == 8
        w.append(crops[8:], rows[8:])
    s = st.open_store(path)
    np.testing.assert_array_equal(s.read(), crops)
    assert s.content_hash == one_shot_hash(tmp_path, crops, rows)


def test_crash_in_finalize_after_table_merge_does_not_duplicate_rows(tmp_path, monkeypatch):
    crops, rows = crops_and_rows(13)
    path = tmp_path / "a.zarr"

    real = shutil.rmtree

    def no_rmtree(p, *a, **k):
        if str(p).endswith(st.PARTS_DIR):
            raise Boom("killed")
        real(p, *a, **k)

    monkeypatch.setattr(store_writer.shutil, "rmtree", no_rmtree)
    with pytest.raises(Boom):
        write(path, crops, rows)
    monkeypatch.undo()
    assert (path / st.TABLE_FILE).exists() and any((path / st.PARTS_DIR).iterdir())
    part = st.open_store(path, require_complete=False)
    assert not part.complete and part.n == 13 and part.object_ids == [r["object_id"] for r in rows]
    with st.StoreWriter(path, source={"stage": "test"}) as w:
        assert w.n == 13
    s = st.open_store(path)
    assert s.n == 13 and s.content_hash == one_shot_hash(tmp_path, crops, rows)


def test_append_to_complete_store_equals_one_shot(tmp_path):
    crops, rows = crops_and_rows(27)
    path = tmp_path / "a.zarr"
    first = write(path, crops[:11], rows[:11])
    with st.StoreWriter(path, source={"stage": "test"}) as w:
        assert w.n == 11 and "o00003" in w and "o00020" not in w
        assert st.open_store(path).complete  # still complete until a crop is written
        w.append(crops[11:], rows[11:])
    s = st.open_store(path)
    assert s.n == 27 and s.content_hash != first.content_hash
    np.testing.assert_array_equal(s.read(), crops)
    assert s.content_hash == one_shot_hash(tmp_path, crops, rows)
    assert st.validate_store(path, deep=True) == []


def test_reopening_complete_store_without_adding_changes_nothing(tmp_path):
    crops, rows = crops_and_rows(9)
    path = tmp_path / "a.zarr"
    before = write(path, crops, rows)
    table_mtime = (path / st.TABLE_FILE).stat().st_mtime_ns
    with st.StoreWriter(path, source={"stage": "other"}):
        pass
    with pytest.raises(Boom), st.StoreWriter(path, source={"stage": "other"}):
        raise Boom
    after = st.open_store(path)
    assert after.complete and after.attrs == before.attrs
    assert (path / st.TABLE_FILE).stat().st_mtime_ns == table_mtime
    assert not (path / st.PARTS_DIR).exists()


def test_rollback_removes_a_created_store(tmp_path):
    crops, rows = crops_and_rows(20)
    w = st.StoreWriter(tmp_path / "a.zarr", source={}, chunk_crops=CHUNK, shard_crops=SHARD)
    w.append(crops, rows)
    assert w.created
    w.rollback()
    assert not (tmp_path / "a.zarr").exists()


def test_rollback_restores_an_existing_complete_store(tmp_path):
    crops, rows = crops_and_rows(30)
    path = tmp_path / "a.zarr"
    before = write(path, crops[:10], rows[:10])
    w = st.StoreWriter(path, source={"stage": "again"})
    w.append(crops[10:], rows[10:])  # crosses two shard boundaries: written and committed
    assert not st.open_store(path, require_complete=False).complete
    w.rollback()
    after = st.open_store(path)
    assert after.complete and after.attrs == before.attrs and after.n == 10
    np.testing.assert_array_equal(after.read(), crops[:10])
    assert st.validate_store(path, deep=True) == []


def test_rollback_of_resumed_store_keeps_earlier_commits(tmp_path):
    crops, rows = crops_and_rows(30)
    path = tmp_path / "a.zarr"
    with pytest.raises(Boom), st.StoreWriter(path, source={}, chunk_crops=CHUNK, shard_crops=SHARD) as w:
        w.append(crops[:9], rows[:9])
        raise Boom
    w = st.StoreWriter(path, source={})
    assert w.n == 8
    w.append(crops[8:], rows[8:])
    w.rollback()
    s = st.open_store(path, require_complete=False)
    assert not s.complete and s.n == 8 and s.crops.shape[0] == 8


# -- opening and validation ---------------------------------------------------------------
def test_open_store_errors(tmp_path):
    with pytest.raises(StoreNotFoundError, match="no such crop store"):
        st.open_store(tmp_path / "missing.zarr")
    (tmp_path / "dir").mkdir()
    with pytest.raises(StoreNotFoundError, match="not a scanstream crop store"):
        st.open_store(tmp_path / "dir")
    assert not st.is_store(tmp_path / "dir") and not st.is_store(tmp_path / "missing.zarr")
    assert st.validate_store(tmp_path / "dir")[0].endswith("(no zarr.json with scanstream attributes)")


def test_validate_catches_crops_table_length_mismatch(tmp_path):
    crops, rows = crops_and_rows(10)
    path = write(tmp_path / "a.zarr", crops, rows).path
    zarr.open_array(str(path / "crops"), mode="r+").resize((7, 224, 224, 3))
    problems = st.validate_store(path)
    assert problems == [f"{path}: object table has 10 rows but crops has 7"]
    with pytest.raises(st.StoreError, match="10 rows but crops has 7"):
        st.open_store(path)


def test_validate_catches_duplicate_ids(tmp_path):
    crops, rows = crops_and_rows(4)
    path = write(tmp_path / "a.zarr", crops, rows).path
    t = pq.read_table(path / st.TABLE_FILE)
    ids = t.column("object_id").to_pylist()
    ids[3] = ids[0]
    pq.write_table(t.set_column(0, t.schema.field(0), pa.array(ids, pa.string())), path / st.TABLE_FILE)
    assert st.validate_store(path) == [f"{path}: 1 duplicate object id(s), e.g. {ids[0]!r}"]
    with pytest.raises(st.StoreError, match="duplicate object ids"):
        st.StoreWriter(path, source={})


def test_validate_catches_wrong_column_type_and_missing_column(tmp_path):
    crops, rows = crops_and_rows(3)
    path = write(tmp_path / "a.zarr", crops, rows).path
    t = pq.read_table(path / st.TABLE_FILE)
    t = t.set_column(5, "x_mm", t.column("x_mm").cast(pa.float32())).drop_columns(["category"])
    pq.write_table(t, path / st.TABLE_FILE)
    problems = st.validate_store(path)
    assert f"{path}: column 'x_mm' is float, expected double" in problems
    assert f"{path}: no 'category' column" in problems


def test_validate_asks_for_every_column_while_open_asks_for_those_stages_read(tmp_path):
    """One validator, two strictnesses: an optional column missing opens, and validate_store names it."""
    crops, rows = crops_and_rows(3)
    path = write(tmp_path / "a.zarr", crops, rows).path
    pq.write_table(pq.read_table(path / st.TABLE_FILE).drop_columns(["category"]), path / st.TABLE_FILE)
    drop_table_digest(path)  # as a store written before the column existed
    assert st.open_store(path).n == 3
    assert check_object_table(st.open_store(path).table) == []
    assert st.validate_store(path) == [f"{path}: no 'category' column"]


def test_validate_catches_a_table_edited_after_completion(tmp_path):
    """validate_store refuses what open_store refuses: a row moved to another sheet."""
    crops, rows = crops_and_rows(3)
    path = write(tmp_path / "a.zarr", crops, rows).path
    t = pq.read_table(path / st.TABLE_FILE)
    i = t.schema.get_field_index("sheet")
    pq.write_table(t.set_column(i, t.schema.field(i), pa.array(["S9", *t.column("sheet").to_pylist()[1:]])),
                   path / st.TABLE_FILE)
    (problem,) = st.validate_store(path)
    assert problem == f"{path}: the table does not match the digest recorded when the store was completed (edited since?)"
    with pytest.raises(st.StoreError, match="does not match the digest"):
        st.open_store(path)


def test_deep_validation_catches_edited_crops(tmp_path):
    crops, rows = crops_and_rows(10)
    path = write(tmp_path / "a.zarr", crops, rows).path
    assert st.validate_store(path, deep=True) == []
    arr = zarr.open_array(str(path / "crops"), mode="r+")
    arr[9, 0, 0, 0] = (int(crops[9, 0, 0, 0]) + 1) % 256
    assert st.validate_store(path) == []  # shallow: cannot see it
    assert st.validate_store(path, deep=True) == [
        f"{path}: content hash does not match the crops and table (corrupted or edited)"
    ]


def test_chunk_ranges_are_chunk_aligned(tmp_path):
    crops, rows = crops_and_rows(21)
    s = write(tmp_path / "a.zarr", crops, rows)
    assert s.chunk_ranges() == [(0, 8), (8, 16), (16, 21)]  # default: one shard
    assert s.chunk_ranges(5) == [(0, 8), (8, 16), (16, 21)]  # rounded up to whole chunks
    assert s.chunk_ranges(1) == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20), (20, 21)]
    blocks = list(st.iter_blocks(s, block=12))
    assert [b[0] for b in blocks] == [0, 12]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), crops)


# -- summary and `scanstream info` ----------------------------------------------------------
def test_summarize_store(tmp_path):
    crops, rows = crops_and_rows(9)
    s = write(tmp_path / "a.zarr", crops, rows)
    summary = st.summarize_store(s)
    assert summary["objects"] == 9 and summary["complete"] is True
    assert summary["labels"] == {"alpha": 3, "other": 3, "unknown": 3}
    assert summary["categories"] == {"None": 6, "alpha_th": 3}
    assert summary["sheets"] == {"S1": 4, "S2": 5}
    assert summary["chunk_shape"] == [CHUNK, 224, 224, 3] and summary["shard_shape"] == [SHARD, 224, 224, 3]
    on_disk = sum(f.stat().st_size for f in (s.path / "crops").rglob("*") if f.is_file())
    assert summary["compressed_bytes"] == on_disk > 0
    assert summary["bytes_per_crop"] == round(on_disk / 9, 1)
    assert summary["content_hash"] == s.content_hash
    json.dumps(summary)


def test_info_cli(tmp_path, capsys):
    crops, rows = crops_and_rows(5)
    path = write(tmp_path / "a.zarr", crops, rows).path
    assert main(["info", str(path), "--validate"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["objects"] == 5 and out["problems"] == [] and out["labels"]["unknown"] == 2


def test_info_cli_shows_incomplete_store_and_validation_failure(tmp_path, capsys):
    crops, rows = crops_and_rows(12)
    path = tmp_path / "a.zarr"
    with pytest.raises(Boom), st.StoreWriter(path, source={}, chunk_crops=CHUNK, shard_crops=SHARD) as w:
        w.append(crops, rows)
        raise Boom
    assert main(["info", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["complete"] is False and out["objects"] == 8
    assert main(["info", str(path), "--validate"]) == 1
    assert json.loads(capsys.readouterr().out)["problems"] == [f"{path}: incomplete (no completion marker)"]


def test_info_cli_rejects_non_store(tmp_path, capsys):
    (tmp_path / "f.txt").write_text("x")
    assert main(["info", str(tmp_path / "f.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"scanstream info: error: {tmp_path / 'f.txt'}: neither a crop store, a volume store nor a candidate table"


def test_store_directory_copy_is_self_contained(tmp_path):
    crops, rows = crops_and_rows(6)
    path = write(tmp_path / "a.zarr", crops, rows).path
    shutil.copytree(path, tmp_path / "b.zarr")
    s = st.open_store(tmp_path / "b.zarr")
    np.testing.assert_array_equal(s.read(), crops)
    assert st.validate_store(s.path, deep=True) == []
