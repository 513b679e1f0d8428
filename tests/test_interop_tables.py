"""A candidate table made by classify opens in one call with the tools users already have.

pandas, polars (hive partitioning on and off), Dask, ``pyarrow.dataset`` with hive
partitioning and DuckDB's recursive glob must each read the directory and get the same rows
with the same types; the table must still find its crops after it is moved together with its
stores; ``query`` keeps the table's metadata and writes numbers as numbers. polars is a test
extra, not a dependency: its test skips where it is absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from fixtures import draw_crops, make_checkpoint

from scanstream.candidates import table as cand
from scanstream.cli import main
from scanstream.inference.classify import classify
from scanstream.store import StoreWriter, open_store

N = 48
#: Sheet names that trip hive-style readers: one that looks like a number, one with a slash.
SHEETS = ("7", "S2/b")
KEY = ["object_id", "sheet", "score", "rank", "selected", "store_index"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("interop")
    rows = [{"object_id": f"o{i:03d}", "sheet": SHEETS[i % 2], "plate": 9, "x_mm": float(i), "y_mm": 0.0,
             "label": int(i % 3 == 0)} for i in range(N)]
    store_path = root / "data" / "sheet.zarr"
    with StoreWriter(store_path, source={"stage": "test"}, chunk_crops=16, shard_crops=16) as w:
        w.append(draw_crops(np.array([r["label"] for r in rows]), seed=3), rows)
    model = make_checkpoint(root / "m.safetensors", 1, open_store(store_path).read(0, 16))
    out = root / "cands"
    result = classify([store_path], [model], out, workers=1, processes=False, device="cpu", precision="fp32",
                      progress=False)
    assert result.complete
    return root, out


def _canonical(t: pa.Table) -> list[tuple]:
    """The key columns of ``t`` as sorted plain tuples (string views and large strings compare equal)."""
    cols = [t.column(c).to_pylist() for c in KEY]
    return sorted(zip(*cols, strict=True))


def test_side_files_and_folders_are_reader_friendly(made):
    _, out = made
    assert sorted(p.name for p in out.iterdir()) == ["_manifest.parquet", "_run.parquet", "sheet-7", "sheet-S2%2Fb"]
    assert all(p.suffix == ".parquet" for p in out.rglob("*") if p.is_file())
    for side in (cand.MANIFEST, cand.RUN_FILE):
        assert pq.read_metadata(out / side).num_rows == 0 and pq.read_schema(out / side).equals(cand.CANDIDATE_SCHEMA)
    assert cand.read_manifest(out)["rows"] == N


@pytest.mark.filterwarnings("ignore:The inplace keyword:Warning")  # dask 2026.8 under pandas 3.1
def test_pandas_dask_pyarrow_duckdb_read_the_same_rows_and_types(made):
    import dask.dataframe as dd
    import duckdb

    pd = pytest.importorskip("pandas")
    _, out = made
    want = cand.read_candidates(out)
    expected = _canonical(want)
    assert len(expected) == N
    frames = {
        "pandas": pa.Table.from_pandas(pd.read_parquet(out), preserve_index=False),
        "dask": pa.Table.from_pandas(dd.read_parquet(out).compute(), preserve_index=False),
        "pyarrow.dataset": ds.dataset(out, partitioning="hive").to_table(),
        "duckdb": duckdb.sql(f"FROM '{out}/**/*.parquet'").to_arrow_table(),
    }
    for name, t in frames.items():
        assert set(t.column_names) == set(cand.CANDIDATE_SCHEMA.names), name
        assert _canonical(t) == expected, name
        for field in ("score", "probability", "rank", "store_index", "x_mm"):
            assert t.schema.field(field).type == cand.CANDIDATE_SCHEMA.field(field).type, (name, field)
        assert pa.types.is_string(t.schema.field("sheet").type) or pa.types.is_large_string(
            t.schema.field("sheet").type), (name, t.schema.field("sheet").type)  # never a dictionary or a number


def test_polars_reads_the_directory_with_and_without_hive_partitioning(made):
    pl = pytest.importorskip("polars")
    _, out = made
    expected = _canonical(cand.read_candidates(out))
    for hive in (False, True):
        df = pl.scan_parquet(out, hive_partitioning=hive).collect()
        assert df.schema["sheet"] == pl.String and df.schema["score"] == pl.Float32 and df.schema["rank"] == pl.Int64
        assert _canonical(df.to_arrow()) == expected, hive
    assert pl.read_parquet(out).height == N


def test_store_column_is_relative_and_survives_moving_table_and_stores(made, tmp_path, capsys):
    root, out = made
    raw = ds.dataset(cand.part_files(out)).to_table(columns=["store"]).column("store").to_pylist()
    assert set(raw) == {"../data/sheet.zarr"}
    moved = tmp_path / "elsewhere"
    shutil.copytree(root / "data", moved / "data")
    shutil.copytree(out, moved / "cands")
    assert set(cand.read_candidates(moved / "cands").column("store").to_pylist()) == {
        str((moved / "data" / "sheet.zarr").resolve())}
    assert main(["gallery", str(moved / "cands"), "--out", str(tmp_path / "g"), "--top", "5"]) == 0
    assert len(list((tmp_path / "g" / "crops").glob("*.png"))) == 5
    # a table moved without its stores is pointed at them with --store
    alone = tmp_path / "alone"
    shutil.copytree(out, alone)
    assert main(["gallery", str(alone), "--out", str(tmp_path / "g2"), "--top", "3",
                 "--store", str(moved / "data" / "sheet.zarr")]) == 0
    capsys.readouterr()


def test_query_out_parquet_keeps_metadata_and_json_keeps_numbers(made, tmp_path, capsys):
    _, out = made
    dest = tmp_path / "top.parquet"
    assert main(["query", str(out), "--top", "5", "--out", str(dest)]) == 0
    meta = json.loads(pq.read_schema(dest).metadata[b"scanstream"])
    assert meta["run_id"] == cand.read_metadata(out)["run_id"] and meta["query"]["filters"] == {"top": 5}
    assert pq.read_table(dest).num_rows == 5
    capsys.readouterr()
    sql = "SELECT sheet, count(*) AS n, sum(store_index) AS s, avg(score) AS a FROM candidates GROUP BY sheet ORDER BY sheet"
    assert main(["query", str(out), "--format", "json", "--sql", sql]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["n"] for r in rows] == [N // 2, N // 2]
    assert all(isinstance(r["s"], int) and isinstance(r["a"], float) for r in rows)


def test_classify_refuses_to_extend_a_version_1_table(made, tmp_path):
    root, out = made
    legacy = tmp_path / "old"
    shutil.copytree(out, legacy)
    for d in [p for p in legacy.iterdir() if p.name.startswith(cand.SHEET_PREFIX)]:
        d.rename(legacy / ("sheet=" + d.name[len(cand.SHEET_PREFIX):]))
    (legacy / cand.MANIFEST).rename(legacy / "_manifest.parquet.old")
    v1 = {k: v for k, v in cand.read_side(out, cand.MANIFEST).items() if k not in ("files", "digest")}  # as v1 wrote
    (legacy / "_manifest.json").write_text(json.dumps(v1))
    (legacy / "_manifest.parquet.old").unlink()
    assert cand.read_candidates(legacy).num_rows == N and cand.read_manifest(legacy)["rows"] == N
    assert cand.summarize_candidates(legacy)["table_version"] == 1
    assert cand.summarize_candidates(out)["table_version"] == cand.TABLE_VERSION == 2
    with pytest.raises(Exception, match="earlier scanstream .version 1"):
        classify([root / "data" / "sheet.zarr"], [root / "m.safetensors"], legacy, workers=1, processes=False,
                 device="cpu", precision="fp32", progress=False)


def test_results_are_plain_paths_to_existing_stores(made):
    _, out = made
    for s in cand.read_candidates(out).column("store").to_pylist():
        assert Path(s).is_absolute() and (Path(s) / "zarr.json").exists()
