"""The candidate table: parts, names, ranks, finalize checks, readers (no models involved)."""

from __future__ import annotations

import json
import os

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scanstream.candidates import table as cand
from scanstream.errors import InputError, PipelineError
from scanstream.store import rows_to_table

HASH = "ab" * 16


def _rows(n: int, sheets=("S1",), start: int = 0) -> pa.Table:
    return rows_to_table(
        [
            {"object_id": f"o{start + i}", "sheet": sheets[i % len(sheets)], "plate": 9, "x_mm": float(i), "y_mm": 1.0}
            for i in range(n)
        ]
    )


def _meta(**kw):
    m = {"threshold": {"threshold": 0.0}, "model_hashes": ["m1"], "store_hashes": {"s.zarr": HASH}, "version": "t",
         "run_id": "r1", "time": "now"}
    m.update(kw)
    return m


def test_build_part_columns_and_values():
    scores = np.array([-2.0, 0.0, 3.5], np.float32)
    t = cand.build_part(_rows(3), scores, threshold=0.0, store="s.zarr", start=10)
    assert t.schema == cand.CANDIDATE_SCHEMA
    assert t.column("selected").to_pylist() == [False, True, True]
    np.testing.assert_allclose(t.column("probability").to_numpy(), 1 / (1 + np.exp(-scores)), rtol=1e-6)
    assert t.column("store_index").to_pylist() == [10, 11, 12]
    assert t.column("store").to_pylist() == ["s.zarr"] * 3
    assert t.column("rank").null_count == 3  # ranks come when the run completes
    assert t.column("object_id").to_pylist() == ["o0", "o1", "o2"]


def test_build_part_without_threshold_leaves_selected_null():
    t = cand.build_part(_rows(2), np.zeros(2, np.float32), threshold=None, store="s", start=0)
    assert t.column("selected").null_count == 2


def test_build_part_rejects_count_mismatch():
    with pytest.raises(InputError, match="3 object rows but 2 scores"):
        cand.build_part(_rows(3), np.zeros(2, np.float32), threshold=0.0, store="s", start=0)


def test_sigmoid_is_stable_for_large_logits():
    p = cand.sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    assert p.tolist() == [0.0, 0.5, 1.0]


def test_write_parts_one_file_per_sheet_with_quoted_names(tmp_path):
    t = cand.build_part(_rows(6, sheets=("S1", "odd/sheet ü")), np.arange(6, dtype=np.float32), threshold=2.0,
                        store="s.zarr", start=64)
    paths = cand.write_parts(tmp_path, t, store_hash=HASH, start=64, metadata=_meta())
    names = sorted(str(p.relative_to(tmp_path)) for p in paths)
    assert names == [
        f"sheet-S1/part-{HASH[:12]}-000000000064.parquet",
        f"sheet-odd%2Fsheet%20%C3%BC/part-{HASH[:12]}-000000000064.parquet",
    ]
    assert sorted(cand.part_paths(tmp_path, ["odd/sheet ü", "S1", "S1"], HASH, 64)) == sorted(paths)
    back = pq.read_table(paths[0])
    assert set(back.column("sheet").to_pylist()) == {"S1"}  # every file holds its sheet column
    assert json.loads(back.schema.metadata[b"scanstream"]) == _meta()
    assert not list(tmp_path.glob("**/.*tmp*"))


def test_remove_temporaries(tmp_path):
    (tmp_path / "sheet-A").mkdir()
    (tmp_path / "sheet-A" / ".part-x.parquet.tmp-123").write_text("half")
    (tmp_path / "sheet-A" / "part-x.parquet").write_text("kept")
    assert cand.remove_temporaries(tmp_path) == 1
    assert [p.name for p in (tmp_path / "sheet-A").iterdir()] == ["part-x.parquet"]


def test_rank_within_sheet_matches_reference_and_breaks_ties():
    rng = np.random.default_rng(0)
    score = np.round(rng.normal(size=300), 1).astype(np.float32)
    store = np.where(rng.random(300) < 0.5, "b.zarr", "a.zarr")
    idx = np.arange(300)
    rank = cand.rank_within_sheet(score, store.tolist(), idx)
    ref_order = sorted(range(300), key=lambda i: (-score[i], store[i], idx[i]))
    ref = np.empty(300, np.int64)
    ref[ref_order] = np.arange(1, 301)
    np.testing.assert_array_equal(rank, ref)


def _write_store_parts(out, n=10, step=4, sheets=("S1", "S2"), store="s.zarr", h=HASH, seed=0):
    scores = np.random.default_rng(seed).normal(size=n).astype(np.float32)
    rows = _rows(n, sheets=sheets)
    for start in range(0, n, step):
        stop = min(start + step, n)
        t = cand.build_part(rows.slice(start, stop - start), scores[start:stop], threshold=0.0, store=store, start=start)
        cand.write_parts(out, t, store_hash=h, start=start, metadata=_meta(run_id="partial"))
    return scores


def test_finalize_ranks_rewrites_and_writes_manifest(tmp_path):
    scores = _write_store_parts(tmp_path)
    manifest = cand.finalize(tmp_path, stores={"s.zarr": (HASH, 10)}, metadata=_meta())
    assert manifest["complete"] and manifest["rows"] == 10
    assert manifest["selected"] == int((scores >= 0).sum())
    assert manifest["sheets"]["S1"]["rows"] == 5 and manifest["sheets"]["S2"]["rows"] == 5
    assert cand.read_manifest(tmp_path) == manifest
    t = cand.read_candidates(tmp_path)
    assert t.num_rows == 10 and t.column("rank").null_count == 0
    for sheet in ("S1", "S2"):
        sub = t.filter(pa.compute.equal(t.column("sheet"), sheet))
        order = np.argsort(-sub.column("score").to_numpy(), kind="stable")
        assert sub.column("rank").to_numpy()[order].tolist() == list(range(1, 6))
    assert cand.read_metadata(tmp_path)["run_id"] == "r1"  # final metadata on every part
    for p in cand.part_files(tmp_path):
        assert json.loads(pq.read_schema(p).metadata[b"scanstream"])["run_id"] == "r1"


def test_finalize_refuses_missing_rows(tmp_path):
    _write_store_parts(tmp_path)
    (tmp_path / "sheet-S1" / f"part-{HASH[:12]}-000000000004.parquet").unlink()
    with pytest.raises(PipelineError, match="s.zarr has 10 crops but 2 have no row"):
        cand.finalize(tmp_path, stores={"s.zarr": (HASH, 10)}, metadata=_meta())
    assert not (tmp_path / cand.MANIFEST).exists()


def test_finalize_refuses_duplicate_rows(tmp_path):
    _write_store_parts(tmp_path)
    # the same range written under another start: two rows for crops 0..3
    src = next((tmp_path / "sheet-S1").glob("part-*-000000000000.parquet"))
    (tmp_path / "sheet-S1" / f"part-{HASH[:12]}-000000000100.parquet").write_bytes(src.read_bytes())
    with pytest.raises(PipelineError, match="more than one"):
        cand.finalize(tmp_path, stores={"s.zarr": (HASH, 10)}, metadata=_meta())


def test_finalize_refuses_part_of_unknown_store(tmp_path):
    _write_store_parts(tmp_path)
    _write_store_parts(tmp_path, h="cd" * 16, store="old.zarr")
    with pytest.raises(PipelineError, match="belongs to no store of this run"):
        cand.finalize(tmp_path, stores={"s.zarr": (HASH, 10)}, metadata=_meta())


def test_finalize_ranks_across_stores_of_one_sheet(tmp_path):
    a = _write_store_parts(tmp_path, sheets=("S1",), store="a.zarr", h="aa" * 16, seed=1)
    b = _write_store_parts(tmp_path, sheets=("S1",), store="b.zarr", h="bb" * 16, seed=2)
    cand.finalize(tmp_path, stores={"a.zarr": ("aa" * 16, 10), "b.zarr": ("bb" * 16, 10)}, metadata=_meta())
    t = cand.read_candidates(tmp_path)
    assert sorted(t.column("rank").to_pylist()) == list(range(1, 21))
    best = t.filter(pa.compute.equal(t.column("rank"), 1))
    assert best.column("score")[0].as_py() == pytest.approx(max(a.max(), b.max()))


def test_readers_and_duckdb(tmp_path):
    _write_store_parts(tmp_path)
    cand.finalize(tmp_path, stores={"s.zarr": (HASH, 10)}, metadata=_meta())
    con = duckdb.connect()
    n, sel = con.execute("SELECT count(*), sum(selected::INT) FROM read_parquet(?)", [cand.candidates_glob(tmp_path)]).fetchone()
    assert n == 10
    kv = con.execute("SELECT key, value FROM parquet_kv_metadata(?)", [str(cand.part_files(tmp_path)[0])]).fetchall()
    meta = dict(kv)[b"scanstream"]
    assert json.loads(meta)["threshold"] == {"threshold": 0.0}
    s = cand.summarize_candidates(tmp_path)
    assert s["complete"] and s["rows"] == 10 and s["selected"] == sel and s["threshold"] == 0.0
    assert set(s["sheets"]) == {"S1", "S2"}
    assert cand.read_candidates(tmp_path, columns=["object_id"]).column_names == ["object_id"]


def test_readers_refuse_non_tables(tmp_path):
    with pytest.raises(InputError, match="no such candidate table"):
        cand.read_candidates(tmp_path / "nope")
    with pytest.raises(InputError, match="not a candidate table"):
        cand.read_metadata(tmp_path)


def _complete_table(out, sheets=("S1", "S2")):
    """A complete table of two stores, one per sheet; the manifest."""
    _write_store_parts(out, sheets=sheets[:1], store="a.zarr", h="aa" * 16, seed=1)
    _write_store_parts(out, sheets=sheets[1:], store="b.zarr", h="bb" * 16, seed=2)
    return cand.finalize(out, stores={"a.zarr": ("aa" * 16, 10), "b.zarr": ("bb" * 16, 10)}, metadata=_meta())


def test_merge_staged_rewrites_only_the_touched_sheet(tmp_path):
    previous = _complete_table(tmp_path)
    untouched = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "sheet-S2").iterdir()}
    staging = cand.staging_dir(tmp_path, "r2")
    c = _write_store_parts(staging, sheets=("S1",), store="c.zarr", h="cc" * 16, seed=3)
    # until the merge, readers see the previous complete table and nothing of the staged store
    assert cand.read_manifest(tmp_path) == previous and cand.read_candidates(tmp_path).num_rows == 20
    stores = {"a.zarr": ("aa" * 16, 10), "b.zarr": ("bb" * 16, 10), "c.zarr": ("cc" * 16, 10)}
    m = cand.merge_staged(tmp_path, staging, stores=stores, metadata=_meta(run_id="r2"), previous=previous)
    assert m["rows"] == 30 and m["sheets"]["S1"]["rows"] == 20 and m["sheets"]["S2"] == previous["sheets"]["S2"]
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "sheet-S2").iterdir()} == untouched
    t = cand.read_candidates(tmp_path)
    s1 = t.filter(pa.compute.equal(t.column("sheet"), "S1"))
    assert sorted(s1.column("rank").to_pylist()) == list(range(1, 21))
    assert s1.filter(pa.compute.equal(s1.column("rank"), 1)).column("score")[0].as_py() == pytest.approx(
        max(c.max(), s1.column("score").to_numpy().max()))
    assert not staging.exists() and not list(tmp_path.parent.glob(".*.staging-*"))
    assert cand.read_manifest(tmp_path) == m and m["run_id"] == "r2"


def test_merge_staged_again_after_an_interruption_adds_no_duplicate(tmp_path):
    previous = _complete_table(tmp_path)
    staging = cand.staging_dir(tmp_path, "r2")
    _write_store_parts(staging, sheets=("S1", "S3"), store="c.zarr", h="cc" * 16, seed=3)
    stores = {"a.zarr": ("aa" * 16, 10), "b.zarr": ("bb" * 16, 10), "c.zarr": ("cc" * 16, 10)}
    # a merge killed after switching sheet S1 in: S1 already holds the staged parts
    for p in (staging / "sheet-S1").iterdir():
        (tmp_path / "sheet-S1" / p.name).write_bytes(p.read_bytes())
    half = staging / ".sheet-S3.new"  # and a sheet half built
    half.mkdir()
    (half / "part-junk.parquet").write_bytes(b"half")
    m = cand.merge_staged(tmp_path, staging, stores=stores, metadata=_meta(run_id="r2"), previous=previous)
    t = cand.read_candidates(tmp_path)
    assert t.num_rows == m["rows"] == 30 and m["sheets"]["S3"]["rows"] == 5
    assert len(set(zip(t.column("store").to_pylist(), t.column("store_index").to_pylist(), strict=True))) == 30


def test_merge_staged_refuses_missing_rows_and_keeps_the_previous_table(tmp_path):
    previous = _complete_table(tmp_path)
    staging = cand.staging_dir(tmp_path, "r2")
    _write_store_parts(staging, sheets=("S1",), store="c.zarr", h="cc" * 16, seed=3)
    next((staging / "sheet-S1").iterdir()).unlink()
    stores = {"a.zarr": ("aa" * 16, 10), "b.zarr": ("bb" * 16, 10), "c.zarr": ("cc" * 16, 10)}
    with pytest.raises(PipelineError, match="c.zarr has 10 crops"):
        cand.merge_staged(tmp_path, staging, stores=stores, metadata=_meta(run_id="r2"), previous=previous)
    assert cand.read_manifest(tmp_path) == previous and cand.read_candidates(tmp_path).num_rows == 20


def test_exchange_dirs_swaps_in_one_step(tmp_path):
    from scanstream.atomic import exchange_dirs

    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "f").write_text("new")
    (tmp_path / "cur").mkdir()
    (tmp_path / "cur" / "f").write_text("old")
    exchange_dirs(tmp_path / "new", tmp_path / "cur")
    assert (tmp_path / "cur" / "f").read_text() == "new" and (tmp_path / "new" / "f").read_text() == "old"
    exchange_dirs(tmp_path / "new", tmp_path / "absent")
    assert (tmp_path / "absent" / "f").read_text() == "old" and not (tmp_path / "new").exists()


# -- the manifest describes the whole table -------------------------------------------------------
def _damage(out, how):
    """Damage one part of a complete table ``how``; return the part named in the refusal."""
    part = min((out / "sheet-S1").glob("part-*.parquet"))
    if how == "deleted":
        part.unlink()
    elif how == "truncated":
        part.write_bytes(part.read_bytes()[:-100])
    elif how == "replaced":  # another run's part of the same rows: same names, other metadata
        pq.write_table(pq.read_table(part).replace_schema_metadata({b"scanstream": b'{"run_id": "other"}'}), part)
    elif how == "added":
        part = out / "sheet-S1" / f"part-{'aa' * 6}-000000000999.parquet"
        part.write_bytes(min((out / "sheet-S2").glob("part-*.parquet")).read_bytes())
    return part


@pytest.mark.parametrize("how", ["deleted", "truncated", "replaced", "added"])
def test_readers_refuse_a_table_whose_parts_differ_from_the_manifest(tmp_path, how):
    from scanstream.errors import TableIntegrityError

    _complete_table(tmp_path)
    part = _damage(tmp_path, how)
    for read in (cand.read_candidates, cand.require_complete, cand.summarize_candidates,
                 lambda p: cand.read_candidates(p, partial=True)):
        with pytest.raises(TableIntegrityError, match=part.name) as err:
            read(tmp_path)
        assert "\n" not in str(err.value)


def test_the_manifest_records_every_part_and_deep_checks_their_content(tmp_path):
    from scanstream.candidates import manifest as records

    m = _complete_table(tmp_path)
    parts = cand.part_files(tmp_path)
    assert sorted(m["files"]) == sorted(p.relative_to(tmp_path).as_posix() for p in parts)
    assert sum(r["rows"] for r in m["files"].values()) == m["rows"] == 20
    assert cand.summarize_candidates(tmp_path, deep=True)["problems"] == []
    # a byte changed inside the data, size and footer kept: the cheap check passes, the deep one names it
    data = bytearray(parts[0].read_bytes())
    data[10] ^= 0xFF
    parts[0].write_bytes(bytes(data))
    assert records.check_parts(tmp_path, m, parts) == []
    s = cand.summarize_candidates(tmp_path, deep=True)
    assert s["complete"] is False and len(s["problems"]) == 1 and parts[0].name in s["problems"][0]


def test_a_table_of_an_earlier_release_is_read_with_a_note(tmp_path, caplog):
    m = _complete_table(tmp_path)
    cand.write_side(tmp_path, cand.MANIFEST, {k: v for k, v in m.items() if k != "files"})
    assert cand.read_candidates(tmp_path).num_rows == 20
    assert "cannot be checked" in caplog.text
    s = cand.summarize_candidates(tmp_path)
    assert s["complete"] is None and "no part digests" in s["note"] and s["rows"] == 20
    _complete_table(tmp_path / "new")
    assert cand.summarize_candidates(tmp_path / "new")["complete"] is True


def test_a_merge_cut_between_two_sheet_switches_is_still_whole_and_the_rerun_completes(tmp_path, monkeypatch):
    previous = _complete_table(tmp_path)
    staging = cand.staging_dir(tmp_path, "r2")
    _write_store_parts(staging, sheets=("S1", "S3"), store="c.zarr", h="cc" * 16, seed=3)
    stores = {"a.zarr": ("aa" * 16, 10), "b.zarr": ("bb" * 16, 10), "c.zarr": ("cc" * 16, 10)}
    real, calls = cand.exchange_dirs, []

    def cut(new, path):
        if calls:
            raise KeyboardInterrupt  # the kill, after the first sheet was switched in
        calls.append(path)
        real(new, path)

    monkeypatch.setattr(cand, "exchange_dirs", cut)
    with pytest.raises(KeyboardInterrupt):
        cand.merge_staged(tmp_path, staging, stores=stores, metadata=_meta(run_id="r2"), previous=previous)
    assert cand.read_candidates(tmp_path).num_rows == 25  # S1 switched in (15 rows), S3 not yet
    monkeypatch.setattr(cand, "exchange_dirs", real)
    m = cand.merge_staged(tmp_path, staging, stores=stores, metadata=_meta(run_id="r2"),
                          previous=cand.read_manifest(tmp_path))
    assert m["rows"] == cand.read_candidates(tmp_path).num_rows == 30 and "pending" not in m
    assert cand.summarize_candidates(tmp_path, deep=True)["problems"] == []


def test_a_merge_killed_between_the_renames_of_a_switch_loses_no_row_on_rerun(tmp_path, monkeypatch):
    previous = _complete_table(tmp_path)
    staging = cand.staging_dir(tmp_path, "r2")
    _write_store_parts(staging, sheets=("S1",), store="c.zarr", h="cc" * 16, seed=3)
    stores = {"a.zarr": ("aa" * 16, 10), "b.zarr": ("bb" * 16, 10), "c.zarr": ("cc" * 16, 10)}
    real = cand.exchange_dirs

    def cut(new, path):  # a filesystem without an exchange, killed after its first rename
        os.replace(path, new.with_name(new.name + ".old"))
        raise KeyboardInterrupt

    monkeypatch.setattr(cand, "exchange_dirs", cut)
    with pytest.raises(KeyboardInterrupt):
        cand.merge_staged(tmp_path, staging, stores=stores, metadata=_meta(run_id="r2"), previous=previous)
    assert not (tmp_path / "sheet-S1").exists()
    monkeypatch.setattr(cand, "exchange_dirs", real)
    m = cand.merge_staged(tmp_path, staging, stores=stores, metadata=_meta(run_id="r2"),
                          previous=cand.read_manifest(tmp_path))
    assert m["rows"] == cand.read_candidates(tmp_path).num_rows == 30
    assert cand.summarize_candidates(tmp_path, deep=True)["problems"] == []
