"""The candidate table: scored crops as a Parquet dataset directory, partitioned by sheet.

Layout (contracts.md, "Candidate table")::

    CANDIDATES/
      sheet=<urlquoted sheet>/part-<store_hash[:12]>-<start:012d>.parquet
      _run.json          the identity of the run writing here (models, threshold, stores)
      _manifest.json     written last, when every crop of every store has its row

A part holds the rows of one classify task (a chunk-aligned range of one store) that fall in
one sheet; its name is fixed by the store hash and the range start, so a rerun rewrites the
same names and never duplicates a row. Every part holds all columns, ``sheet`` included, so
readers need no hive partitioning; each file's schema metadata key ``scanstream`` carries the
threshold record, model and store hashes, version, run id and time. Files are written under a
temporary name and renamed (:mod:`scanstream.atomic`). ``rank`` is null until the run
completes; :func:`finalize` then ranks each sheet by score, rewrites the parts and writes the
manifest.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from scanstream import __version__
from scanstream.atomic import exchange_dirs, write_json, write_parquet
from scanstream.errors import IncompleteTableError, InputError, PipelineError
from scanstream.store import OBJECT_SCHEMA

logger = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
RUN_FILE = "_run.json"
#: Prefix of the hidden directory where the parts of stores added to a complete table wait
#: (out of the readers' ``sheet=*`` glob) until :func:`merge_staged` switches them in.
STAGING_PREFIX = ".staging-"
METADATA_KEY = b"scanstream"
TABLE_VERSION = 1

#: Columns copied from the store's object table (identity and location), in order.
_FROM_STORE = ("object_id", "experiment", "module", "plate", "sheet", "x_mm", "y_mm", "z_mm")

#: Candidate table columns, in order (DESIGN.md): the store's identity and location columns,
#: then the classification.
CANDIDATE_SCHEMA = pa.schema(
    [OBJECT_SCHEMA.field(name) for name in _FROM_STORE]
    + [
        pa.field("score", pa.float32()),
        pa.field("probability", pa.float32()),
        pa.field("selected", pa.bool_()),
        pa.field("rank", pa.int64()),
        pa.field("store", pa.string()),
        pa.field("store_index", pa.int64()),
    ]
)


# -- names --------------------------------------------------------------------------------
def sheet_dir(out: str | os.PathLike, sheet: str) -> Path:
    """``out/sheet=<urlquoted sheet>``."""
    return Path(out) / f"sheet={urllib.parse.quote(str(sheet), safe='')}"


def part_name(store_hash: str, start: int) -> str:
    """``part-<store_hash[:12]>-<start:012d>.parquet``."""
    return f"part-{store_hash[:12]}-{int(start):012d}.parquet"


def part_paths(out: str | os.PathLike, sheets: Iterable[str], store_hash: str, start: int) -> list[Path]:
    """The part files a task over the range starting at ``start`` writes, one per sheet."""
    return [sheet_dir(out, s) / part_name(store_hash, start) for s in sorted(set(sheets))]


def candidates_glob(path: str | os.PathLike) -> str:
    """The glob of every part, for DuckDB: ``read_parquet(?)`` with this bound."""
    return str(Path(path) / "sheet=*" / "part-*.parquet")


def part_files(path: str | os.PathLike) -> list[Path]:
    """Every part file under a candidate table directory, sorted."""
    return sorted(Path(path).glob("sheet=*/part-*.parquet"))


# -- building parts (pure) ----------------------------------------------------------------
def sigmoid(x: np.ndarray) -> np.ndarray:
    """float32 logistic of float logits, without overflow warnings."""
    x = np.asarray(x, dtype=np.float64)
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def build_part(
    rows: pa.Table, scores: np.ndarray, *, threshold: float | None, store: str, start: int
) -> pa.Table:
    """Candidate rows for crops ``start : start + len(scores)`` of one store.

    Parameters
    ----------
    rows : pyarrow.Table
        The store's object table rows for the range (at least the columns of :data:`_FROM_STORE`).
    scores : ndarray, float32 (k,)
        Mean logits of the crops, in row order.
    threshold : float or None
        Logit cut; ``selected = score >= threshold`` (null when there is no threshold).
    store : str
        The store path, recorded with ``store_index`` so a crop can be read back.
    start : int
        Store row of the first crop.
    """
    scores = np.asarray(scores, dtype=np.float32).ravel()
    if rows.num_rows != scores.size:
        raise InputError(f"{store}: {rows.num_rows} object rows but {scores.size} scores at [{start}, ...)")
    cols = [rows.column(name).cast(CANDIDATE_SCHEMA.field(name).type) for name in _FROM_STORE]
    selected = (
        pa.nulls(scores.size, pa.bool_()) if threshold is None else pa.array(scores >= np.float64(threshold), pa.bool_())
    )
    cols += [
        pa.array(scores, pa.float32()),
        pa.array(sigmoid(scores), pa.float32()),
        selected,
        pa.nulls(scores.size, pa.int64()),
        pa.array([store] * scores.size, pa.string()),
        pa.array(np.arange(start, start + scores.size, dtype=np.int64), pa.int64()),
    ]
    return pa.Table.from_arrays(cols, schema=CANDIDATE_SCHEMA)


def split_by_sheet(table: pa.Table) -> dict[str, pa.Table]:
    """Rows of ``table`` grouped by sheet, order kept."""
    sheets = table.column("sheet").fill_null("").to_numpy(zero_copy_only=False)
    out = {}
    for s in dict.fromkeys(sheets.tolist()):
        out[s] = table.filter(pa.array(sheets == s))
    return out


def with_metadata(table: pa.Table, metadata: Mapping[str, Any]) -> pa.Table:
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True)})


# -- files --------------------------------------------------------------------------------
def write_parts(
    out: str | os.PathLike, table: pa.Table, *, store_hash: str, start: int, metadata: Mapping[str, Any]
) -> list[Path]:
    """Write a task's rows as one part per sheet (each atomically); return the paths."""
    paths = []
    for sheet, part in split_by_sheet(table).items():
        path = sheet_dir(out, sheet) / part_name(store_hash, start)
        write_parquet(path, with_metadata(part, metadata))
        paths.append(path)
    return paths


def remove_temporaries(out: str | os.PathLike) -> int:
    """Delete temporary files a killed run left behind; return how many."""
    n = 0
    for p in Path(out).glob(".sheet=*.new-*"):  # an interrupted merge's sheet being built (or the old one)
        shutil.rmtree(p, ignore_errors=True)
        n += 1
    for p in Path(out).glob("**/.*.tmp-*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


def read_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a complete table, or None when the run is not complete."""
    f = Path(path) / MANIFEST
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text())
    except ValueError as exc:
        raise InputError(f"{f}: unreadable manifest: {exc}") from None


def _parts_or_fail(path: str | os.PathLike) -> list[Path]:
    p = Path(path)
    if not p.is_dir():
        raise InputError(f"{p}: no such candidate table directory")
    parts = part_files(p)
    if not parts:
        raise InputError(f"{p}: not a candidate table (no sheet=*/part-*.parquet files)")
    return parts


def read_candidates(path: str | os.PathLike, *, columns: Sequence[str] | None = None) -> pa.Table:
    """Every row of a candidate table (all parts, no hive partitioning), in part order."""
    parts = _parts_or_fail(path)
    if read_manifest(path) is None:
        logger.warning("%s: candidate table is incomplete (no %s); rows may be missing", path, MANIFEST)
    dataset = ds.dataset([str(p) for p in parts], format="parquet", schema=CANDIDATE_SCHEMA)
    return dataset.to_table(columns=list(columns) if columns is not None else None)


FORMATS = ("arrow", "pandas", "polars")


def read_candidate_table(path: str | os.PathLike, *, to: str = "arrow", columns: Sequence[str] | None = None,
                         allow_partial: bool = False) -> Any:
    """A finished candidate table as a pyarrow Table, or a pandas / polars DataFrame (``to``).

    The public reader (``scanstream.read_candidates``): a table without its manifest (a run
    still going, or killed) is refused unless ``allow_partial``. pandas and polars are not
    dependencies of scanstream; asking for one that is not installed is an InputError.
    """
    if to not in FORMATS:
        raise InputError(f"to must be one of {', '.join(FORMATS)}, got {to!r}")
    require_complete(path, allow_partial=allow_partial)
    table = read_candidates(path, columns=columns)
    if to == "arrow":
        return table
    try:
        if to == "pandas":
            return table.to_pandas()
        import polars

        return polars.from_arrow(table)
    except ModuleNotFoundError as exc:
        raise InputError(f"to={to!r} needs {exc.name}, which is not installed (pip install {exc.name})") from None


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``scanstream`` schema metadata JSON of the table (from its first part)."""
    part = _parts_or_fail(path)[0]
    meta = pq.read_schema(part).metadata or {}
    if METADATA_KEY not in meta:
        raise InputError(f"{part}: no 'scanstream' schema metadata")
    return json.loads(meta[METADATA_KEY])


def summarize_candidates(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-ready summary of a candidate table (``scanstream info``)."""
    table = read_candidates(path, columns=["sheet", "selected", "score"])
    meta = read_metadata(path)
    manifest = read_manifest(path)
    sheets: dict[str, dict[str, int]] = {}
    sh = table.column("sheet").to_pylist()
    sel = table.column("selected").fill_null(False).to_numpy(zero_copy_only=False)
    for s, flag in zip(sh, sel, strict=True):
        d = sheets.setdefault(s, {"rows": 0, "selected": 0})
        d["rows"] += 1
        d["selected"] += int(flag)
    threshold = meta.get("threshold") or {}
    scores = table.column("score").to_numpy()
    return {
        "path": str(path),
        "kind": "candidate table",
        "complete": manifest is not None,
        "rows": table.num_rows,
        "selected": int(sel.sum()),
        "parts": len(part_files(path)),
        "sheets": dict(sorted(sheets.items())),
        "score_range": [float(scores.min()), float(scores.max())] if scores.size else None,
        "threshold": threshold.get("threshold"),
        "target": threshold.get("target"),
        "model_hashes": meta.get("model_hashes"),
        "store_hashes": meta.get("store_hashes"),
        "run_id": meta.get("run_id"),
        "version": meta.get("version"),
        "time": meta.get("time"),
    }


# -- completing a run ---------------------------------------------------------------------
def rank_within_sheet(score: np.ndarray, store: Sequence[str], store_index: np.ndarray) -> np.ndarray:
    """int64 ranks, 1 = highest score; ties broken by store path then store row (stable, total)."""
    t = pa.table({"score": pa.array(score, pa.float32()), "store": pa.array(store, pa.string()), "i": store_index})
    order = pc.sort_indices(
        t, sort_keys=[("score", "descending"), ("store", "ascending"), ("i", "ascending")]
    ).to_numpy()
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    return rank


def finalize(
    out: str | os.PathLike,
    *,
    stores: Mapping[str, tuple[str, int]],
    metadata: Mapping[str, Any],
) -> dict[str, Any]:
    """Check one row per crop, rank each sheet, rewrite the parts, write the manifest last.

    Parameters
    ----------
    out : path-like
        The candidate table directory.
    stores : mapping
        ``store path -> (content hash, rows)`` of every store the table covers.
    metadata : mapping
        The final ``scanstream`` schema metadata for every part.

    Raises
    ------
    PipelineError
        A store's rows are missing, duplicated, or a part belongs to no known store.
    """
    out = Path(out)
    per_sheet = _check_rows(part_files(out), stores, out)
    manifest_sheets: dict[str, dict[str, int]] = {}
    for paths in per_sheet.values():  # one sheet in memory at a time
        sheet = urllib.parse.unquote(paths[0].parent.name[len("sheet=") :])
        manifest_sheets[sheet] = _rank_sheet(paths, lambda p: p, metadata)
    manifest = _manifest(out, stores, metadata, manifest_sheets)
    write_json(out / MANIFEST, manifest)
    return manifest


def _check_rows(parts: Sequence[Path], stores: Mapping[str, tuple[str, int]], out: Path) -> dict[Path, list[Path]]:
    """Check that ``parts`` hold exactly one row per crop of ``stores``; the parts grouped by sheet directory.

    Raises
    ------
    PipelineError
        A store's rows are missing, duplicated, or a part belongs to no store of ``stores``.
    """
    prefixes = {h[:12]: path for path, (h, _) in stores.items()}
    per_sheet: dict[Path, list[Path]] = {}
    seen: dict[str, list[np.ndarray]] = {p: [] for p in stores}
    for part in parts:
        if part.name.split("-")[1] not in prefixes:
            raise PipelineError(f"{part}: belongs to no store of this run (a stale part from another store version?)")
        per_sheet.setdefault(part.parent, []).append(part)
        t = pq.read_table(part, columns=["store", "store_index"])
        for s in pc.unique(t.column("store")).to_pylist():
            if s not in seen:
                raise PipelineError(f"{part}: rows of store {s!r}, which this run does not cover")
            seen[s].append(t.filter(pc.equal(t.column("store"), s)).column("store_index").to_numpy())
    for s, (_, n) in stores.items():
        idx = np.concatenate(seen[s]) if seen[s] else np.empty(0, np.int64)
        counts = np.bincount(idx, minlength=n) if idx.size else np.zeros(n, np.int64)
        if counts.size != n or (counts != 1).any():
            missing, dup = int((counts[:n] == 0).sum()), int((counts > 1).sum())
            raise PipelineError(f"{out}: store {s} has {n} crops but {missing} have no row and {dup} more than one")
    return per_sheet


def _rank_sheet(paths: Sequence[Path], dest: Any, metadata: Mapping[str, Any]) -> dict[str, int]:
    """Rank the rows of one sheet's parts ``paths`` by score; write each ranked part to ``dest(path)``."""
    tables = [pq.read_table(p) for p in paths]
    whole = pa.concat_tables(tables)
    rank = rank_within_sheet(
        whole.column("score").to_numpy(), whole.column("store").to_pylist(), whole.column("store_index").to_numpy()
    )
    offset = 0
    for path, t in zip(paths, tables, strict=True):
        r = pa.array(rank[offset : offset + t.num_rows], pa.int64())
        offset += t.num_rows
        t = t.set_column(CANDIDATE_SCHEMA.get_field_index("rank"), CANDIDATE_SCHEMA.field("rank"), r)
        write_parquet(dest(path), with_metadata(t, metadata))
    n_sel = int(pc.sum(whole.column("selected").fill_null(False).cast(pa.int64())).as_py() or 0)
    return {"rows": whole.num_rows, "selected": n_sel}


def _manifest(out: Path, stores: Mapping[str, tuple[str, int]], metadata: Mapping[str, Any],
              sheets: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    threshold = metadata.get("threshold") or {}
    return {
        "scanstream_candidates": TABLE_VERSION,
        "complete": True,
        "rows": sum(int(v["rows"]) for v in sheets.values()),
        "selected": sum(int(v["selected"]) for v in sheets.values()),
        "sheets": {k: dict(v) for k, v in sorted(sheets.items())},
        "parts": [str(p.relative_to(out)) for p in part_files(out)],
        "stores": {path: {"hash": h, "rows": n} for path, (h, n) in stores.items()},
        "model_hashes": metadata.get("model_hashes"),
        "threshold": threshold.get("threshold"),
        "run_id": metadata.get("run_id"),
        "version": __version__,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# -- readers' completeness check ------------------------------------------------------------
def require_complete(path: str | os.PathLike, allow_partial: bool = False) -> dict[str, Any] | None:
    """The manifest of a complete candidate table; refuse one without it unless ``allow_partial``.

    Readers (query, gallery, review) call this first, so rows of an unfinished run (unranked,
    or ranked by a pass that did not finish) are never served as a result. With
    ``allow_partial`` an incomplete table returns None and the caller labels its output.

    Raises
    ------
    IncompleteTableError
        ``path`` has part files but no ``_manifest.json`` (and ``allow_partial`` is false).
    InputError
        ``path`` is not a candidate table, or its manifest is unreadable.
    """
    parts = _parts_or_fail(path)
    manifest = read_manifest(path)
    if manifest is not None and not isinstance(manifest, dict):
        raise InputError(f"{Path(path) / MANIFEST}: unreadable manifest (not a JSON object)")
    if manifest is None and not allow_partial:
        raise IncompleteTableError(
            f"{path}: candidate table is incomplete: {MANIFEST} is missing ({len(parts)} part file(s) of an "
            "unfinished run); rerun classify to finish it, or pass --allow-partial to look anyway"
        )
    return manifest


# -- adding stores to a complete table ----------------------------------------------------
def staging_dir(out: str | os.PathLike, run_id: str) -> Path:
    """``out/.staging-<run_id>``: where the tasks of stores added to a complete table write."""
    return Path(out) / f"{STAGING_PREFIX}{run_id}"


def store_counts(out: str | os.PathLike, store_hash: str) -> dict[str, dict[str, int]]:
    """Objects and selected rows per sheet of one store, read from that store's parts only."""
    counts: dict[str, dict[str, int]] = {}
    for part in Path(out).glob(f"sheet=*/part-{store_hash[:12]}-*.parquet"):
        t = pq.read_table(part, columns=["sheet", "selected"])
        sheet = urllib.parse.unquote(part.parent.name[len("sheet=") :])
        d = counts.setdefault(sheet, {"objects": 0, "selected": 0})
        d["objects"] += t.num_rows
        d["selected"] += int(pc.sum(t.column("selected").fill_null(False).cast(pa.int64())).as_py() or 0)
    return dict(sorted(counts.items()))


def merge_staged(
    out: str | os.PathLike,
    staging: str | os.PathLike,
    *,
    stores: Mapping[str, tuple[str, int]],
    metadata: Mapping[str, Any],
    previous: Mapping[str, Any],
) -> dict[str, Any]:
    """Add the staged parts of new stores to a complete table, ranking only the sheets they touch.

    The work grows with the touched sheets, not with the table: the new stores' rows are checked
    (one row per crop) in the staged parts alone, the stores of ``previous`` (the manifest of the
    complete table) are taken as it recorded them, and only a touched sheet is read, ranked and
    rewritten. Each touched sheet is built whole in a hidden directory beside it and switched in
    with one atomic exchange (:func:`scanstream.atomic.exchange_dirs`); the previous manifest
    stays until every switch is done and the new one replaces it, so readers see a complete
    table throughout. A staged part replaces a part of the same name (a merge interrupted after
    some switches is simply run again).

    Parameters
    ----------
    out, staging : path-like
        The table and its staging directory (:func:`staging_dir`).
    stores : mapping
        ``store path -> (content hash, rows)`` of every store the table will cover.
    metadata : mapping
        The ``scanstream`` schema metadata of the rewritten parts (the new run id).
    previous : mapping
        The table's manifest before the stores were added.

    Raises
    ------
    PipelineError
        A new store's rows are missing or duplicated, or a staged part belongs to no new store.
    """
    out, staging = Path(out), Path(staging)
    old_hashes = {p: v["hash"] for p, v in previous["stores"].items()}
    new = {p: v for p, v in stores.items() if old_hashes.get(p) != v[0]}
    per_sheet = _check_rows(part_files(staging), new, staging)
    sheets = {k: dict(v) for k, v in previous.get("sheets", {}).items()}
    for staged_dir, staged in sorted(per_sheet.items()):
        target = out / staged_dir.name
        names = {p.name for p in staged}
        kept = sorted(p for p in target.glob("part-*.parquet") if p.name not in names) if target.is_dir() else []
        build = out / f".{staged_dir.name}.new-{metadata.get('run_id', 'run')}"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir()
        paths = kept + sorted(staged)
        sheet = urllib.parse.unquote(staged_dir.name[len("sheet=") :])
        sheets[sheet] = _rank_sheet(paths, lambda p, b=build: b / p.name, metadata)
        exchange_dirs(build, target)
        shutil.rmtree(build, ignore_errors=True)  # the sheet as it was
    manifest = _manifest(out, stores, metadata, sheets)
    write_json(out / MANIFEST, manifest)
    shutil.rmtree(staging, ignore_errors=True)
    return manifest
