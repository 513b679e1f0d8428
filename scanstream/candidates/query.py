"""Querying candidate tables with DuckDB: filters, user SQL, output formats.

The candidate table (:mod:`scanstream.candidates.table`: ``CANDIDATES/sheet-*/part-*.parquet``) is opened
as an Arrow dataset and registered in an in-memory DuckDB connection. The standard filters
(sheet, selected, minimum score, stage region) narrow it with bound parameters, never with
values spliced into SQL text, and the result is exposed to a user's SQL as a view named
``candidates``.

User SQL is read-only by construction: it must parse as exactly one SELECT (or WITH ...
SELECT) statement, and the connection has file-system access disabled and its configuration
locked before it runs, so a query can read ``candidates`` and nothing else on the machine.
"""

from __future__ import annotations

import csv
import decimal
import io
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from scanstream.atomic import write_parquet, write_text
from scanstream.candidates.table import MANIFEST, METADATA_KEY, read_metadata, require_complete, resolve_stores
from scanstream.candidates.table import part_files as candidate_parts
from scanstream.errors import QueryError

logger = logging.getLogger(__name__)

FORMATS = ("table", "csv", "parquet", "json")
#: The label of everything made from a table without its manifest (``allow_partial``).
PARTIAL_LABEL = "PARTIAL: unfinished run (no _manifest.parquet); rows may be missing or unranked"


@dataclass(frozen=True)
class CandidateFilter:
    """Row filters on a candidate table; all given conditions must hold.

    Attributes
    ----------
    sheet : str, optional
        Keep one sheet (exact match).
    selected : bool
        Keep only rows whose score passed the threshold.
    min_score : float, optional
        Keep rows with ``score >= min_score`` (logit).
    region : (x0, x1, y0, y1), optional
        Keep rows with ``x0 <= x_mm <= x1`` and ``y0 <= y_mm <= y1`` (stage mm).
    top : int, optional
        Keep the ``top`` rows (highest score first without ``sql``; the first rows of the
        SQL result with it).
    """

    sheet: str | None = None
    selected: bool = False
    min_score: float | None = None
    region: tuple[float, float, float, float] | None = None
    top: int | None = None

    def __post_init__(self) -> None:
        if self.min_score is not None and not math.isfinite(float(self.min_score)):
            raise QueryError(f"min score must be a finite number, got {self.min_score!r}")
        if self.top is not None and int(self.top) < 1:
            raise QueryError(f"top must be a positive number of rows, got {self.top!r}")
        if self.region is not None:
            x0, x1, y0, y1 = parse_region(self.region)
            object.__setattr__(self, "region", (x0, x1, y0, y1))


def parse_region(value: str | tuple | list) -> tuple[float, float, float, float]:
    """Parse ``"X0,X1,Y0,Y1"`` (mm) into a validated tuple with ``X0 <= X1`` and ``Y0 <= Y1``.

    Examples
    --------
    >>> parse_region("0,10.5,2,3")
    (0.0, 10.5, 2.0, 3.0)
    """
    parts = value.split(",") if isinstance(value, str) else list(value)
    if len(parts) != 4:
        raise QueryError(f"region must be X0,X1,Y0,Y1 in mm (four numbers), got {value!r}")
    try:
        x0, x1, y0, y1 = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise QueryError(f"region must be X0,X1,Y0,Y1 in mm (four numbers), got {value!r}") from None
    if not all(math.isfinite(v) for v in (x0, x1, y0, y1)):
        raise QueryError(f"region bounds must be finite, got {value!r}")
    if x0 > x1 or y0 > y1:
        raise QueryError(f"region must have X0 <= X1 and Y0 <= Y1, got {value!r}")
    return x0, x1, y0, y1


def filter_sql(f: CandidateFilter, source: str = "_source") -> tuple[str, dict[str, Any]]:
    """The filtering SELECT over ``source`` and its named parameters (pure).

    Only column names and ``$name`` placeholders appear in the text; every value travels in
    the returned parameter mapping.
    """
    where: list[str] = []
    params: dict[str, Any] = {}
    if f.sheet is not None:
        where.append("sheet = $sheet")
        params["sheet"] = str(f.sheet)
    if f.selected:
        where.append("selected")
    if f.min_score is not None:
        where.append("score >= $min_score")
        params["min_score"] = float(f.min_score)
    if f.region is not None:
        where.append("x_mm BETWEEN $x0 AND $x1 AND y_mm BETWEEN $y0 AND $y1")
        params.update(dict(zip(("x0", "x1", "y0", "y1"), f.region)))
    text = f"SELECT * FROM {source}"
    if where:
        text += " WHERE " + " AND ".join(f"({w})" for w in where)
    return text, params


def check_select(sql: str) -> str:
    """Refuse anything but a single SELECT / WITH ... SELECT statement; return it trimmed.

    Raises
    ------
    QueryError
        Empty text, a parse error, more than one statement, or a statement of another kind
        (INSERT, DROP, COPY, ATTACH, PRAGMA, SET, ...).
    """
    import duckdb

    text = (sql or "").strip()
    if not text:
        raise QueryError("--sql is empty; give a SELECT ... FROM candidates statement")
    con = duckdb.connect()
    try:
        statements = con.extract_statements(text)
    except duckdb.Error as exc:
        raise QueryError(f"--sql does not parse: {_one_line(exc)}") from None
    finally:
        con.close()
    if len(statements) != 1:
        raise QueryError(f"--sql must be a single SELECT statement, got {len(statements)} statements")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryError(f"--sql must be a read-only SELECT statement, got {kind.name}: {text[:60]!r}")
    return statements[0].query.strip().rstrip(";")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def part_files(path: str | os.PathLike, sheet: str | None = None) -> list[str]:
    """The candidate part files under ``path`` (sorted), per the candidate-table layout.

    With ``sheet``, only that sheet's parts (a sheet's query costs its parts, not the table's).
    """
    p = Path(path)
    if not p.exists():
        raise QueryError(f"{p}: no such candidate table")
    if not p.is_dir():
        raise QueryError(f"{p}: a candidate table is a directory of sheet-*/part-*.parquet files")
    files = [str(f) for f in candidate_parts(p, sheet)] if sheet is not None else []
    if not files:  # the whole table (or, for a sheet it lacks, one part: the schema, no row of it)
        files = [str(f) for f in candidate_parts(p)][: None if sheet is None else 1]
    if not files and (p / MANIFEST).exists():
        require_complete(p)  # a complete table whose every part is gone: named as damaged
    if not files:
        raise QueryError(f"{p}: no candidate parts (sheet-*/part-*.parquet); classify or watch writes them")
    return files


def connect(path: str | os.PathLike, f: CandidateFilter | None = None, *, allow_partial: bool = False):
    """A locked-down DuckDB connection with the (filtered) candidates as view ``candidates``.

    The parts are read through an Arrow dataset registered as ``_source``; external file
    access is then disabled and the configuration locked, so SQL run on the returned
    connection can only see these rows. A table without its manifest (an unfinished run) is
    refused unless ``allow_partial`` (:func:`scanstream.candidates.table.require_complete`).
    """
    import duckdb

    f = f or CandidateFilter()
    files = part_files(path, f.sheet)
    require_complete(path, allow_partial=allow_partial)
    try:
        dataset = ds.dataset(files, format="parquet")
    except (pa.ArrowInvalid, OSError) as exc:
        raise QueryError(f"{path}: unreadable candidate parts: {_one_line(exc)}") from None
    con = duckdb.connect(":memory:")
    con.register("_source", dataset)
    text, params = filter_sql(f)
    missing = _missing_columns(dataset.schema, f)
    if missing:
        raise QueryError(f"{path}: candidate table lacks column(s) {missing} needed by the filters")
    con.sql(text, params=params).create_view("candidates")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _missing_columns(schema: pa.Schema, f: CandidateFilter) -> list[str]:
    need = {"score", "object_id"}
    if f.sheet is not None:
        need.add("sheet")
    if f.selected:
        need.add("selected")
    if f.region is not None:
        need |= {"x_mm", "y_mm"}
    return sorted(need - set(schema.names))


def query_candidates(
    path: str | os.PathLike, f: CandidateFilter | None = None, *, sql: str | None = None, allow_partial: bool = False
) -> pa.Table:
    """Run the filters (and optionally a user SELECT) over a candidate table.

    Parameters
    ----------
    path : path-like
        The candidate table directory.
    f : CandidateFilter, optional
        Row filters; they narrow the ``candidates`` view the SQL sees.
    sql : str, optional
        A single SELECT over ``candidates``. Without it the result is every filtered row,
        highest score first (ties by object_id).
    allow_partial : bool
        Read a table without its manifest (an unfinished run) instead of refusing it; the
        caller labels the result as partial.

    Returns
    -------
    pyarrow.Table
        The result rows (at most ``f.top``), a ``store`` column resolved to paths, and the
        table's ``scanstream`` schema metadata with the query added under ``query``.

    Raises
    ------
    QueryError
        A missing or empty table, a refused statement, or SQL that fails to run.
    IncompleteTableError
        The table has no manifest and ``allow_partial`` is false.
    """
    import duckdb

    f = f or CandidateFilter()
    user = check_select(sql) if sql is not None else None
    con = connect(path, f, allow_partial=allow_partial)
    try:
        rel = con.sql(user) if user is not None else con.sql("SELECT * FROM candidates ORDER BY score DESC, object_id")
        if f.top is not None:
            rel = rel.limit(int(f.top))
        result = rel.arrow()
    except duckdb.Error as exc:
        raise QueryError(f"query failed: {_one_line(exc)}") from None
    finally:
        con.close()
    if isinstance(result, pa.RecordBatchReader):
        result = result.read_all()
    meta = read_metadata(path)
    meta["query"] = {"table": str(Path(path).absolute()), "sql": user, "filters": _filters_record(f)}
    return resolve_stores(result, path).replace_schema_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True)})


def _filters_record(f: CandidateFilter) -> dict[str, Any]:
    return {k: v for k, v in vars(f).items() if v not in (None, False)}


# -- output -------------------------------------------------------------------------------


def infer_format(out: str | os.PathLike | None, fmt: str | None) -> str:
    """The output format: ``fmt`` if given, else from ``out``'s suffix, else table (stdout)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise QueryError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if fmt == "parquet" and out is None:
            raise QueryError("--format parquet needs --out FILE")
        return fmt
    if out is None:
        return "table"
    suffix = Path(out).suffix.lower().lstrip(".")
    return {"csv": "csv", "parquet": "parquet", "pq": "parquet", "json": "json"}.get(suffix, "csv")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return json.dumps(v)
    return str(v)


def format_text(table: pa.Table, *, max_width: int = 40) -> str:
    """A fixed-width text table (one header line, one line per row)."""
    names = table.column_names
    rows = [[_cell(v) for v in row.values()] for row in table.to_pylist()]
    rows = [[c if len(c) <= max_width else c[: max_width - 1] + "~" for c in r] for r in rows]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append(f"({table.num_rows} rows)")
    return "\n".join(lines)


def format_csv(table: pa.Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.column_names)
    for row in table.to_pylist():
        w.writerow([_cell(v) if not isinstance(v, float) else repr(v) for v in row.values()])
    return buf.getvalue()


def _json_value(v: Any) -> Any:
    """JSON for values :func:`json.dumps` does not take: DuckDB's sums arrive as Decimal, times as datetime."""
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return str(v)


def format_json(table: pa.Table) -> str:
    """The rows as a JSON array of objects; numbers stay numbers (a sum is 28, not "28")."""
    rows = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
            for r in table.to_pylist()]
    return json.dumps(rows, indent=1, default=_json_value, allow_nan=False) + "\n"


def write_result(table: pa.Table, fmt: str, out: str | os.PathLike | None = None) -> str | None:
    """Write ``table`` as ``fmt`` to ``out`` atomically, or return the text for stdout.

    Returns
    -------
    str or None
        The text when ``out`` is None, else None.
    """
    if fmt not in FORMATS:
        raise QueryError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if out is None:
        if fmt == "parquet":
            raise QueryError("parquet output needs --out FILE")
        return {"table": format_text, "csv": format_csv, "json": format_json}[fmt](table)
    dest = Path(out)
    if dest.is_dir():
        raise QueryError(f"{dest}: --out is a directory; give a file name")
    if not dest.parent.exists():
        raise QueryError(f"{dest.parent}: no such directory for --out")
    if fmt == "parquet":
        write_parquet(dest, table)
    else:
        write_text(dest, {"table": format_text, "csv": format_csv, "json": format_json}[fmt](table))
    return None
