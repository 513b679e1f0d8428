"""The candidate table: scored crops as a Parquet dataset directory, partitioned by sheet.

Layout (table version 2)::

    CANDIDATES/
      sheet-<urlquoted sheet>/part-<store_hash[:12]>-<start:012d>.parquet
      _run.parquet        the identity of the run writing here (models, threshold, stores)
      _manifest.parquet   written last, when every crop of every store has its row

A part holds the rows of one classify task (a chunk-aligned range of one store) that fall in
one sheet; its name is fixed by the store hash and the range start, so a rerun rewrites the
same names and never duplicates a row. Every part holds all columns, ``sheet`` included, and
the folders are deliberately not hive-style (``sheet-X``, not ``sheet=X``): pandas, polars,
Dask, ``pyarrow.dataset`` and DuckDB each read the directory in one call with the same rows
and types, hive partitioning on or off, instead of tripping over a ``sheet`` that is both a
column and a folder key. The run record and the manifest are zero-row Parquet files with the
candidate schema (their JSON in the schema metadata keys ``scanstream_run`` and
``scanstream_manifest``), so a reader that takes every file in the directory adds no rows and
meets no other file type. Each part's schema metadata key ``scanstream`` carries the threshold
record, model and store hashes, version, run id and time. The ``store`` column holds the crop
store's path relative to the table directory (POSIX), so a table moved together with its
stores still finds its crops; :func:`read_candidates` returns it resolved. Files are written
under a temporary name and renamed (:mod:`scanstream.atomic`). ``rank`` is null until the run
completes; :func:`finalize` then ranks each sheet by score, rewrites the parts and writes the
manifest. Parts of stores added to a complete table wait outside it, in a hidden sibling
directory (:func:`staging_dir`), so no reader of the table sees them before they are ranked.

Tables of version 1 (``sheet=X`` folders, JSON side files, absolute store paths) are still
read; classify and watch refuse to extend one.
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

from scanstream import __version__, trust
from scanstream.atomic import exchange_dirs, recover_exchange, write_parquet
from scanstream.candidates import manifest as records
from scanstream.candidates.frames import FORMATS, METADATA_KEY, to_format
from scanstream.candidates.refs import relative_stores, resolve_store, resolve_stores
from scanstream.errors import IncompleteTableError, InputError, PipelineError
from scanstream.store import OBJECT_SCHEMA

logger = logging.getLogger(__name__)

MANIFEST = "_manifest.parquet"
RUN_FILE = "_run.parquet"
#: The side files of version-1 tables (still read).
LEGACY_MANIFEST, LEGACY_RUN_FILE = "_manifest.json", "_run.json"
SHEET_PREFIX, LEGACY_SHEET_PREFIX = "sheet-", "sheet="
#: Infix of the hidden sibling directory where the parts of stores added to a complete table
#: wait until :func:`merge_staged` switches them in.
STAGING_INFIX = ".staging-"
_SIDE_KEYS = {MANIFEST: b"scanstream_manifest", RUN_FILE: b"scanstream_run"}
TABLE_VERSION = 2

#: Columns copied from the store's object table (identity and location), in order.
_FROM_STORE = ("object_id", "experiment", "module", "plate", "sheet", "x_mm", "y_mm", "z_mm")

#: Candidate table columns, in order (docs/classify.md): the store's identity and location columns,
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
def sheet_dir(out: str | os.PathLike, sheet: str, *, legacy: bool = False) -> Path:
    """``out/sheet-<urlquoted sheet>`` (``sheet=<...>`` in a version-1 table with ``legacy``)."""
    prefix = LEGACY_SHEET_PREFIX if legacy else SHEET_PREFIX
    return Path(out) / f"{prefix}{urllib.parse.quote(str(sheet), safe='')}"


def sheet_of(directory: str | os.PathLike) -> str:
    """The sheet of a sheet directory (either layout)."""
    name = Path(directory).name
    return urllib.parse.unquote(name[len(SHEET_PREFIX):])  # both prefixes are six characters


def part_name(store_hash: str, start: int) -> str:
    """``part-<store_hash[:12]>-<start:012d>.parquet``."""
    return f"part-{store_hash[:12]}-{int(start):012d}.parquet"


def part_paths(out: str | os.PathLike, sheets: Iterable[str], store_hash: str, start: int) -> list[Path]:
    """The part files a task over the range starting at ``start`` writes, one per sheet."""
    return [sheet_dir(out, s) / part_name(store_hash, start) for s in sorted(set(sheets))]


def candidates_glob(path: str | os.PathLike) -> str:
    """The glob of every part (either layout), for DuckDB: ``read_parquet(?)`` with this bound."""
    return str(Path(path) / "sheet[-=]*" / "part-*.parquet")


def part_files(path: str | os.PathLike, sheet: str | None = None) -> list[Path]:
    """Every part file under a candidate table directory (either layout), sorted; with ``sheet``, that sheet's."""
    p = Path(path)
    if sheet is not None:
        dirs = [sheet_dir(p, sheet), sheet_dir(p, sheet, legacy=True)]
        return sorted(f for d in dirs for f in d.glob("part-*.parquet"))
    return sorted([*p.glob(f"{SHEET_PREFIX}*/part-*.parquet"), *p.glob(f"{LEGACY_SHEET_PREFIX}*/part-*.parquet")])


def is_legacy(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a version-1 table (``sheet=`` folders or JSON side files)."""
    p = Path(path)
    return any((p / f).exists() for f in (LEGACY_MANIFEST, LEGACY_RUN_FILE)) or any(p.glob("sheet=*"))


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
    return {s: table.filter(pa.array(sheets == s)) for s in dict.fromkeys(sheets.tolist())}


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
    for p in Path(out).glob(".sheet[-=]*.new-*"):  # version 1: an interrupted merge's sheet being built
        shutil.rmtree(p, ignore_errors=True)
        n += 1
    for p in Path(out).glob("**/.*.tmp-*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


def write_side(out: str | os.PathLike, name: str, doc: Mapping[str, Any]) -> Path:
    """Write a side file (:data:`MANIFEST` or :data:`RUN_FILE`): zero candidate rows, ``doc`` in the metadata."""
    path = Path(out) / name
    empty = CANDIDATE_SCHEMA.empty_table().replace_schema_metadata({_SIDE_KEYS[name]: json.dumps(doc, sort_keys=True)})
    write_parquet(path, empty)
    return path


def read_side(out: str | os.PathLike, name: str) -> dict[str, Any] | None:
    """The JSON of a side file, None when absent; a version-1 table's JSON file is read in its place.

    Raises
    ------
    InputError
        The file exists but is not a side file scanstream wrote.
    """
    path = Path(out) / name
    legacy = Path(out) / {MANIFEST: LEGACY_MANIFEST, RUN_FILE: LEGACY_RUN_FILE}[name]
    what = "manifest" if name == MANIFEST else "run record"
    try:
        if path.exists():
            meta = pq.read_schema(path).metadata or {}
            doc = json.loads(meta[_SIDE_KEYS[name]])
        elif legacy.exists():
            path, doc = legacy, json.loads(legacy.read_text())
        else:
            return None
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        raise InputError(f"{path}: unreadable {what}: {' '.join(str(exc).split()) or type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: unreadable {what} (not a JSON object)")
    return doc


def read_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a complete table, or None when the run is not complete."""
    return read_side(path, MANIFEST)


def _parts_or_fail(path: str | os.PathLike) -> list[Path]:
    p = Path(path)
    if not p.is_dir():
        raise InputError(f"{p}: no such candidate table directory")
    parts = part_files(p)
    if not parts and (p / MANIFEST).exists():  # every part gone: name the first the manifest lists
        records.verify(p, read_manifest(p) or {}, parts)
    if not parts:
        raise InputError(f"{p}: not a candidate table (no {SHEET_PREFIX}*/part-*.parquet files)")
    return parts


def read_candidates(path: str | os.PathLike, *, columns: Sequence[str] | None = None, partial: bool = False,
                    to: str = "arrow") -> Any:
    """Every row of a candidate table (all parts, in part order), ``store`` resolved to a path.

    The one reader of candidate tables (``scanstream.read_candidates``). The table is checked
    against its manifest first (:func:`require_complete`): a part missing, extra, truncated or
    replaced is refused, naming it. A table without its manifest (a run still going, or killed)
    is refused unless ``partial``, which reads whatever parts are there (with a warning; evaluate
    and range-energy read so, as they always have). ``to`` gives a pyarrow
    Table, or a pandas / polars DataFrame (:func:`scanstream.candidates.frames.to_format`). The
    table's ``scanstream`` metadata (threshold record, model and store hashes, run id: the first
    part's, as :func:`read_metadata` and ``query --out`` give it) stays on the Arrow schema and in
    pandas' ``attrs``; polars has no place for it.
    """
    if to not in FORMATS:
        raise InputError(f"to must be one of {', '.join(FORMATS)}, got {to!r}")
    manifest, parts = _checked_parts(path, partial)  # the parts just checked are the parts read
    if manifest is None:
        logger.warning("%s: candidate table is incomplete (no %s); rows may be missing", path, MANIFEST)
    try:
        dataset = ds.dataset([str(p) for p in parts], format="parquet", schema=CANDIDATE_SCHEMA)
        table = resolve_stores(dataset.to_table(columns=list(columns) if columns is not None else None), path)
        meta = (pq.read_schema(parts[0]).metadata or {}).get(METADATA_KEY) if parts else None
    except (OSError, pa.ArrowException) as exc:
        bad = records.unreadable_part(parts)
        raise InputError(f"{bad[0]}: unreadable candidate part: {bad[1]}" if bad else
                         f"{path}: unreadable candidate parts: {' '.join(str(exc).split())}") from None
    return to_format(table.replace_schema_metadata({METADATA_KEY: meta} if meta else None), to)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``scanstream`` schema metadata of a candidate table (its first part's): threshold record, hashes, run id."""
    part = _parts_or_fail(path)[0]
    meta = pq.read_schema(part).metadata or {}
    if METADATA_KEY not in meta:
        raise InputError(f"{part}: no 'scanstream' schema metadata")
    return json.loads(meta[METADATA_KEY])


def summarize_candidates(path: str | os.PathLike, *, deep: bool = False) -> dict[str, Any]:
    """A JSON-ready summary of a candidate table (``scanstream info``).

    ``complete`` is true only for a table checked whole against its manifest; a damaged one is
    refused (:func:`require_complete`). A table whose manifest lists no part digests (an earlier
    release's) reads ``complete: null`` with a ``note``. ``deep`` also compares every part's
    content digest and lists the mismatches in ``problems`` instead of refusing.
    """
    manifest = read_manifest(path)
    problems = records.check_parts(path, manifest, part_files(path), deep=True) if deep and manifest else []
    # one read (one manifest check) serves the counts and the trust fields
    table = read_candidates(path, columns=trust.TABLE_COLUMNS, partial=True) if not problems else None
    if table is None:
        return {"path": str(path), "kind": "candidate table", "complete": False, "problems": problems}
    meta = read_metadata(path)
    sheets: dict[str, dict[str, int]] = {}
    sh = table.column("sheet").to_pylist()
    sel = table.column("selected").fill_null(False).to_numpy(zero_copy_only=False)
    for s, flag in zip(sh, sel, strict=True):
        d = sheets.setdefault(s, {"rows": 0, "selected": 0})
        d["rows"] += 1
        d["selected"] += int(flag)
    threshold = meta.get("threshold") or {}
    for s, fields in trust.table_trust(table, meta.get("threshold")).items():  # label-free, per sheet
        sheets[s].update(fields)
    scores = table.column("score").to_numpy()
    unverifiable = manifest is not None and not records.verifiable(manifest)  # an earlier release's manifest
    return {
        "path": str(path),
        "kind": "candidate table",
        "table_version": 1 if is_legacy(path) else TABLE_VERSION,
        "complete": None if unverifiable else manifest is not None,
        **({"note": records.UNVERIFIABLE} if unverifiable else {}),
        **({"problems": problems} if deep else {}),
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
        manifest_sheets[sheet_of(paths[0].parent)] = _rank_sheet(paths, lambda p: p, metadata, out)
    manifest = _manifest(out, stores, metadata, manifest_sheets)  # every part's record read afresh
    write_side(out, MANIFEST, manifest)
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
    known = {resolve_store(p, out): p for p in stores}  # the stores as the parts' resolved references name them
    for part in parts:
        if part.name.split("-")[1] not in prefixes:
            raise PipelineError(f"{part}: belongs to no store of this run (a stale part from another store version?)")
        per_sheet.setdefault(part.parent, []).append(part)
        t = resolve_stores(pq.read_table(part, columns=["store", "store_index"]), out)
        for s in pc.unique(t.column("store")).to_pylist():
            if s not in known:
                raise PipelineError(f"{part}: rows of store {s!r}, which this run does not cover")
            seen[known[s]].append(t.filter(pc.equal(t.column("store"), s)).column("store_index").to_numpy())
    for s, (_, n) in stores.items():
        counts = np.bincount(np.concatenate([np.empty(0, np.int64), *seen[s]]), minlength=n)  # none: zeros
        if counts.size != n or (counts != 1).any():
            missing, dup = int((counts[:n] == 0).sum()), int((counts > 1).sum())
            raise PipelineError(f"{out}: store {s} has {n} crops but {missing} have no row and {dup} more than one")
    return per_sheet


def _rank_sheet(paths: Sequence[Path], dest: Any, metadata: Mapping[str, Any], table: Path) -> dict[str, int]:
    """Rank the rows of one sheet's parts ``paths`` by score; write each ranked part to ``dest(path)``.

    The ``store`` column is recorded relative to the table directory ``table`` first, so ties
    are broken on the references the readers see.
    """
    tables = [relative_stores(pq.read_table(p), table) for p in paths]
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
              sheets: Mapping[str, Mapping[str, int]], *, previous: Mapping[str, Any] | None = None,
              rewritten: Iterable[str] = ()) -> dict[str, Any]:
    """The manifest: totals, stores, and a record of every part (``rewritten`` sheet dirs read afresh)."""
    parts = part_files(out)
    kept = previous[records.FILES_KEY] if previous and records.verifiable(previous) else None
    return {
        "scanstream_candidates": TABLE_VERSION,
        "complete": True,
        "rows": sum(int(v["rows"]) for v in sheets.values()),
        "selected": sum(int(v["selected"]) for v in sheets.values()),
        "sheets": {k: dict(v) for k, v in sorted(sheets.items())},
        "parts": [str(p.relative_to(out)) for p in parts],
        records.FILES_KEY: records.part_records(out, parts, kept, rewritten),  # without kept records, every part read
        "digest": records.DIGEST,
        "stores": {path: {"hash": h, "rows": n} for path, (h, n) in stores.items()},
        "model_hashes": metadata.get("model_hashes"),
        "threshold": (metadata.get("threshold") or {}).get("threshold"),
        "run_id": metadata.get("run_id"),
        "version": __version__,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# -- readers' completeness check ------------------------------------------------------------
def require_complete(path: str | os.PathLike, allow_partial: bool = False) -> dict[str, Any] | None:
    """The manifest of a complete candidate table; refuse one without it unless ``allow_partial``.

    Every reader (query, gallery, review, info, evaluate, range-energy, the watcher's summary,
    :func:`read_candidates`) calls this first, so rows of an unfinished run (unranked, or ranked
    by a pass that did not finish) are never served as a result, and a complete table is checked
    against its manifest's part records (:func:`scanstream.candidates.manifest.verify`: one
    footer read per part). With ``allow_partial`` an incomplete table returns None and the
    caller labels its output; a table with a manifest is checked all the same.

    Raises
    ------
    IncompleteTableError
        ``path`` has part files but no ``_manifest.json`` (and ``allow_partial`` is false).
    TableIntegrityError
        A part is missing, extra, truncated or replaced since the manifest was written.
    InputError
        ``path`` is not a candidate table, or its manifest is unreadable.
    """
    return _checked_parts(path, allow_partial)[0]


def _checked_parts(path: str | os.PathLike, allow_partial: bool) -> tuple[dict[str, Any] | None, list[Path]]:
    """:func:`require_complete`'s manifest, and the part files it checked (listed once for both)."""
    parts = _parts_or_fail(path)
    manifest = read_manifest(path)
    if manifest is not None:
        records.verify(path, manifest, parts)
        if not records.verifiable(manifest):
            logger.warning("%s: %s", path, records.UNVERIFIABLE)
    if manifest is None and not allow_partial:
        raise IncompleteTableError(
            f"{path}: candidate table is incomplete: {MANIFEST} is missing ({len(parts)} part file(s) of an "
            "unfinished run); rerun classify to finish it, or pass --allow-partial to look anyway"
        )
    return manifest, parts


# -- adding stores to a complete table ----------------------------------------------------
def staging_dir(out: str | os.PathLike, run_id: str) -> Path:
    """``<parent>/.<table name>.staging-<run_id>``: where the tasks of stores added to a complete table write.

    A hidden sibling of the table, on the same file system (a sheet is switched in by an
    atomic directory exchange), outside every reader's view of the table.
    """
    out = Path(out).absolute()
    return out.parent / f".{out.name}{STAGING_INFIX}{run_id}"


def store_counts(out: str | os.PathLike, store_hash: str) -> dict[str, dict[str, int]]:
    """Objects and selected rows per sheet of one store, read from that store's parts only."""
    counts: dict[str, dict[str, int]] = {}
    for part in Path(out).glob(f"{SHEET_PREFIX}*/part-{store_hash[:12]}-*.parquet"):
        t = pq.read_table(part, columns=["sheet", "selected"])
        sheet = sheet_of(part.parent)
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
    builds = {}
    for staged_dir, staged in sorted(per_sheet.items()):  # every touched sheet built whole first
        target, build = out / staged_dir.name, staging / f".{staged_dir.name}.new"
        recover_exchange(build, target)  # finish a switch killed between its renames (no exchange)
        names = {p.name for p in staged}
        kept = sorted(p for p in target.glob("part-*.parquet") if p.name not in names) if target.is_dir() else []
        builds[target] = build
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir()
        sheets[sheet_of(staged_dir)] = _rank_sheet(kept + sorted(staged), lambda p, b=build: b / p.name, metadata, out)
    # readers accept either version of a touched sheet while the sheets are switched in one by one
    pending = {f"{t.name}/{rel.split('/', 1)[1]}": r for t, b in builds.items()
               for rel, r in records.part_records(staging, sorted(b.glob("part-*.parquet"))).items()}
    write_side(out, MANIFEST, {**previous, records.PENDING_KEY: pending})
    for target, build in builds.items():
        exchange_dirs(build, target)
        shutil.rmtree(build, ignore_errors=True)  # the sheet as it was
    manifest = _manifest(out, stores, metadata, sheets, previous=previous,
                         rewritten=[d.name for d in per_sheet])
    write_side(out, MANIFEST, manifest)
    shutil.rmtree(staging, ignore_errors=True)
    return manifest
