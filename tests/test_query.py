"""scanstream.candidates.query and `scanstream query`: every filter, hostile filter values, user SQL, formats."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import scanstream.candidates.table as cand
from scanstream.candidates.query import (
    CandidateFilter,
    check_select,
    filter_sql,
    parse_region,
    query_candidates,
)
from scanstream.cli import main
from scanstream.errors import QueryError

HOSTILE = [
    "x' OR 1=1; DROP TABLE candidates; --",
    "A'; DELETE FROM candidates; --",
    '"; ATTACH \'/tmp/evil.db\'; --',
    "A\\' OR ''='",
    "$sheet",
    "?",
]


def write_candidates(root: Path, rows: list[dict], *, threshold: float | None = 0.0, store_hash: str = "0" * 32,
                     legacy: bool = False) -> Path:
    """Write candidate rows in the table's layout: sheet-<quoted>/part-<hash12>-<start>.parquet + manifest.

    With ``legacy`` the version-1 layout (sheet=<quoted> folders, _manifest.json), which readers still take.
    """
    root.mkdir(parents=True, exist_ok=True)
    meta = {
        "threshold": None if threshold is None else {"threshold": threshold, "achieved": {"precision": 0.5}},
        "model_hashes": ["m" * 16],
        "store_hashes": {},
        "version": "test",
        "run_id": "r",
        "time": "t",
    }
    by_sheet: dict[str, list[dict]] = {}
    for r in rows:
        by_sheet.setdefault(r["sheet"], []).append(r)
    for sheet, rs in by_sheet.items():
        scores = np.array([r["score"] for r in rs], np.float32)
        ranks = np.empty(len(rs), np.int64)
        ranks[np.argsort(-scores, kind="stable")] = np.arange(1, len(rs) + 1)
        table = pa.table(
            {
                "object_id": pa.array([r["object_id"] for r in rs], pa.string()),
                "experiment": pa.array([r.get("experiment", "E07") for r in rs], pa.string()),
                "module": pa.array([r.get("module", 99) for r in rs], pa.int32()),
                "plate": pa.array([r.get("plate", 9) for r in rs], pa.int32()),
                "sheet": pa.array([sheet] * len(rs), pa.string()),
                "x_mm": pa.array([r["x_mm"] for r in rs], pa.float64()),
                "y_mm": pa.array([r["y_mm"] for r in rs], pa.float64()),
                "z_mm": pa.array([r.get("z_mm", -0.1) for r in rs], pa.float64()),
                "score": pa.array(scores, pa.float32()),
                "probability": pa.array(1 / (1 + np.exp(-scores)), pa.float32()),
                "selected": pa.array([threshold is not None and s >= threshold for s in scores], pa.bool_()),
                "rank": pa.array(ranks, pa.int64()),
                "store": pa.array([r.get("store", "s.zarr") for r in rs], pa.string()),
                "store_index": pa.array([r.get("store_index", i) for i, r in enumerate(rs)], pa.int64()),
            }
        ).replace_schema_metadata({"scanstream": json.dumps(meta)})
        d = root / f"sheet{'=' if legacy else '-'}{urllib.parse.quote(sheet, safe='')}"
        d.mkdir(exist_ok=True)
        pq.write_table(table, d / f"part-{store_hash[:12]}-{0:012d}.parquet")
    if legacy:
        (root / "_manifest.json").write_text(json.dumps({"complete": True}))
    else:
        cand.write_side(root, cand.MANIFEST, {"complete": True})
    return root


def candidates_from_store(store, root: Path, *, seed: int = 0, threshold: float = 0.0) -> Path:
    """A candidate table for every crop of ``store`` with deterministic pseudo-random scores."""
    rng = np.random.default_rng(seed)
    t = store.table
    rows = [
        {
            "object_id": oid,
            "sheet": sheet,
            "plate": int(plate),
            "x_mm": float(x),
            "y_mm": float(y),
            "z_mm": float(z),
            "score": float(rng.normal(0, 2)),
            "store": str(store.path),
            "store_index": i,
        }
        for i, (oid, sheet, plate, x, y, z) in enumerate(
            zip(*(t.column(c).to_pylist() for c in ("object_id", "sheet", "plate", "x_mm", "y_mm", "z_mm")))
        )
    ]
    return write_candidates(root, rows, threshold=threshold, store_hash=store.content_hash)


@pytest.fixture
def cands(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for sheet, plate in (("S1", 9), ("S2", 10), ("odd sheet/ü", 11)):
        for i in range(40):
            rows.append(
                {
                    "object_id": f"{sheet}-{i:04d}",
                    "sheet": sheet,
                    "plate": plate,
                    "x_mm": float(rng.uniform(0, 50)),
                    "y_mm": float(rng.uniform(0, 50)),
                    "score": float(rng.normal(0, 2)),
                }
            )
    root = write_candidates(tmp_path / "cands", rows, threshold=1.0)
    return root, pa.Table.from_pylist(rows)


def test_all_rows_highest_score_first(cands):
    root, rows = cands
    t = query_candidates(root)
    assert t.num_rows == rows.num_rows == 120
    scores = t.column("score").to_numpy()
    assert np.all(np.diff(scores) <= 0)
    assert sorted(t.column("object_id").to_pylist()) == sorted(rows.column("object_id").to_pylist())


@pytest.mark.parametrize("sheet", ["S2", "odd sheet/ü"])
def test_sheet_filter(cands, sheet):
    root, _ = cands
    t = query_candidates(root, CandidateFilter(sheet=sheet))
    assert t.num_rows == 40
    assert set(t.column("sheet").to_pylist()) == {sheet}


def test_selected_filter(cands):
    root, rows = cands
    t = query_candidates(root, CandidateFilter(selected=True))
    expected = {r["object_id"] for r in rows.to_pylist() if np.float32(r["score"]) >= 1.0}
    assert 0 < len(expected) < 120
    assert set(t.column("object_id").to_pylist()) == expected
    assert all(t.column("selected").to_pylist())


def test_min_score_filter(cands):
    root, rows = cands
    t = query_candidates(root, CandidateFilter(min_score=2.5))
    expected = {r["object_id"] for r in rows.to_pylist() if np.float32(r["score"]) >= 2.5}
    assert 0 < len(expected) < 120
    assert set(t.column("object_id").to_pylist()) == expected


def test_region_filter(cands):
    root, rows = cands
    t = query_candidates(root, CandidateFilter(region=(10, 30, 0, 25)))
    expected = {r["object_id"] for r in rows.to_pylist() if 10 <= r["x_mm"] <= 30 and 0 <= r["y_mm"] <= 25}
    assert 0 < len(expected) < 120
    assert set(t.column("object_id").to_pylist()) == expected


def test_top_filter_takes_highest(cands):
    root, rows = cands
    t = query_candidates(root, CandidateFilter(sheet="S1", top=5))
    s1 = sorted((r for r in rows.to_pylist() if r["sheet"] == "S1"), key=lambda r: -r["score"])
    assert t.column("object_id").to_pylist() == [r["object_id"] for r in s1[:5]]


def test_filters_combine(cands):
    root, rows = cands
    t = query_candidates(root, CandidateFilter(sheet="S1", min_score=0.0, region=(0, 25, 0, 50)))
    expected = {
        r["object_id"] for r in rows.to_pylist() if r["sheet"] == "S1" and r["score"] >= 0 and r["x_mm"] <= 25
    }
    assert set(t.column("object_id").to_pylist()) == expected


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_sheet_values_are_data(cands, value):
    root, rows = cands
    assert query_candidates(root, CandidateFilter(sheet=value)).num_rows == 0
    # the table is untouched afterwards
    assert query_candidates(root).num_rows == rows.num_rows


def test_hostile_value_matches_literally(tmp_path):
    evil = "x' OR 1=1; DROP TABLE candidates; --"
    rows = [
        {"object_id": "a", "sheet": evil, "x_mm": 1.0, "y_mm": 1.0, "score": 1.0},
        {"object_id": "b", "sheet": "S1", "x_mm": 1.0, "y_mm": 1.0, "score": 2.0},
    ]
    root = write_candidates(tmp_path / "c", rows)
    t = query_candidates(root, CandidateFilter(sheet=evil))
    assert t.column("object_id").to_pylist() == ["a"]


def test_filter_sql_text_has_no_values():
    text, params = filter_sql(CandidateFilter(sheet=HOSTILE[0], min_score=1.5, region=(1, 2, 3, 4), selected=True))
    assert HOSTILE[0] not in text and "1.5" not in text
    assert params == {"sheet": HOSTILE[0], "min_score": 1.5, "x0": 1.0, "x1": 2.0, "y0": 3.0, "y1": 4.0}


def test_user_sql_sees_filtered_view(cands):
    root, rows = cands
    t = query_candidates(
        root, CandidateFilter(sheet="S2"), sql="SELECT sheet, count(*) AS n, max(score) AS best FROM candidates GROUP BY sheet"
    )
    assert t.to_pylist() == [
        {"sheet": "S2", "n": 40, "best": pytest.approx(max(r["score"] for r in rows.to_pylist() if r["sheet"] == "S2"), rel=1e-6)}
    ]


def test_user_sql_with_cte_and_top(cands):
    root, _ = cands
    t = query_candidates(
        root, CandidateFilter(top=3), sql="WITH s AS (SELECT * FROM candidates WHERE plate = 10) SELECT object_id FROM s ORDER BY object_id;"
    )
    assert t.column("object_id").to_pylist() == ["S2-0000", "S2-0001", "S2-0002"]


@pytest.mark.parametrize(
    "sql",
    [
        "DROP VIEW candidates",
        "DELETE FROM candidates",
        "SELECT 1; DROP VIEW candidates",
        "COPY (SELECT * FROM candidates) TO 'out.csv'",
        "ATTACH 'evil.db'",
        "PRAGMA version",
        "SET enable_external_access = true",
        "CREATE TABLE t AS SELECT * FROM candidates",
        "INSTALL httpfs",
        "",
        "SELEKT * FROM candidates",
    ],
)
def test_non_select_sql_refused(cands, sql):
    root, rows = cands
    with pytest.raises(QueryError):
        query_candidates(root, sql=sql)
    assert query_candidates(root).num_rows == rows.num_rows


def test_select_cannot_read_other_files(cands, tmp_path):
    root, _ = cands
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    with pytest.raises(QueryError, match="query failed"):
        query_candidates(root, sql=f"SELECT * FROM read_csv('{secret}')")


def test_check_select_accepts_with():
    assert check_select("WITH a AS (SELECT 1) SELECT * FROM a;") == "WITH a AS (SELECT 1) SELECT * FROM a"


@pytest.mark.parametrize("bad", ["1,2,3", "a,b,c,d", "5,1,0,1", "0,1,5,1", "0,nan,0,1", "0,1,0,inf"])
def test_bad_region(bad):
    with pytest.raises(QueryError, match="region"):
        parse_region(bad)


def test_bad_top_and_min_score():
    with pytest.raises(QueryError, match="top"):
        CandidateFilter(top=0)
    with pytest.raises(QueryError, match="min score"):
        CandidateFilter(min_score=float("nan"))


def test_missing_and_empty_tables(tmp_path):
    with pytest.raises(QueryError, match="no such candidate table"):
        query_candidates(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(QueryError, match="no candidate parts"):
        query_candidates(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(QueryError, match="directory"):
        query_candidates(tmp_path / "file")


# -- CLI ----------------------------------------------------------------------------------


def test_cli_formats(cands, tmp_path, capsys):
    root, _ = cands
    assert main(["query", str(root), "--sheet", "S1", "--top", "4"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[0] == "object_id" and "(4 rows)" in out
    assert main(["query", str(root), "--sheet", "S1", "--top", "4", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("object_id,") and len(lines) == 5
    assert main(["query", str(root), "--selected", "--format", "json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert recs and all(r["selected"] for r in recs)
    pq_out = tmp_path / "sel.parquet"
    assert main(["query", str(root), "--min-score", "0", "--region", "0,50,0,50", "--out", str(pq_out)]) == 0
    t = pq.read_table(pq_out)
    assert t.num_rows > 0 and min(t.column("score").to_pylist()) >= 0
    assert not list(tmp_path.glob(".*tmp*"))


def test_cli_sql(cands, capsys):
    root, _ = cands
    assert main(["query", str(root), "--sql", "SELECT count(*) AS n FROM candidates", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 120}]


def test_cli_refuses_sql_with_one_line_error(cands, capsys):
    root, _ = cands
    assert main(["query", str(root), "--sql", "DROP VIEW candidates"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "SELECT" in err


def test_cli_hostile_sheet(cands, capsys):
    root, _ = cands
    assert main(["query", str(root), "--sheet", HOSTILE[0], "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_cli_selected_and_min_score_exclusive(cands, capsys):
    root, _ = cands
    with pytest.raises(SystemExit):
        main(["query", str(root), "--selected", "--min-score", "1"])


def test_cli_parquet_needs_out(cands, capsys):
    root, _ = cands
    assert main(["query", str(root), "--format", "parquet"]) == 2
    assert "--out" in capsys.readouterr().err


def test_cli_revisit(cands, tmp_path):
    root, rows = cands
    out = tmp_path / "revisit.csv"
    assert main(["query", str(root), "--revisit", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "sheet,plate,visit,object_id,x_mm,y_mm,z_mm,step_mm"
    ids = [line.split(",")[3] for line in lines[1:]]
    selected = {r["object_id"] for r in rows.to_pylist() if np.float32(r["score"]) >= 1.0}
    assert sorted(ids) == sorted(selected)


def test_a_sheet_query_reads_only_that_sheets_parts(cands):
    root, _ = cands
    other = next((root / "sheet-S2").glob("part-*.parquet"))
    other.write_bytes(b"not parquet")  # any read of S2's part would fail
    t = query_candidates(root, CandidateFilter(sheet="odd sheet/ü"))
    assert t.num_rows == 40 and set(t.column("sheet").to_pylist()) == {"odd sheet/ü"}
    assert query_candidates(root, CandidateFilter(sheet="absent")).num_rows == 0
    with pytest.raises(QueryError, match="sheet-S2/part-.*Parquet magic bytes not found"):
        query_candidates(root)  # the whole table reads it, and names it


def test_legacy_tables_are_still_queried(tmp_path):
    rows = [{"object_id": f"o{i}", "sheet": "S1", "x_mm": 0.0, "y_mm": 0.0, "score": float(i)} for i in range(5)]
    root = write_candidates(tmp_path / "old", rows, legacy=True)
    assert query_candidates(root, CandidateFilter(sheet="S1", top=2)).column("object_id").to_pylist() == ["o4", "o3"]
    assert cand.read_manifest(root) == {"complete": True}
