"""Review verdicts: an append-only record of what each candidate really is, and the labelled
crop store made from it for the next training run.

A verdicts table is a directory of JSON-lines files, one per review session
(``session-<UTC time>-<pid>-<random>.jsonl``). Each verdict is one line, appended with a
single write and fsync'd, so a crash loses at most the line being written; a torn line is
skipped on read (with a warning) and never corrupts the lines after it. Reading merges every
session and keeps the latest verdict per object (by time, then session, then sequence number),
so a reviewer can change their mind. Undo on the review page appends a withdrawal (a line with
``withdraws: {"session": ..., "seq": ...}`` instead of a verdict): reading drops the withdrawn
record, so the object's earlier verdict, or none, is current again and nothing is rewritten.

``verdicts to-store`` turns alpha / not-alpha verdicts into a crop store (labels 1 / 0) by
copying the crops from the source stores; "unsure" verdicts are left out.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from scanstream.errors import InputError, StoreExistsError, VerdictError
from scanstream.store import CropStore, StoreWriter, is_store, open_store

logger = logging.getLogger(__name__)

#: The verdicts a reviewer can give, and the training label of each (None: not a label).
VERDICTS: dict[str, int | None] = {"alpha": 1, "not_alpha": 0, "unsure": None}
SESSION_GLOB = "session-*.jsonl"
#: Fields copied from a candidate row into its verdict record.
CANDIDATE_FIELDS = ("object_id", "sheet", "plate", "x_mm", "y_mm", "z_mm", "score", "rank", "store", "store_index")



def parse_verdict(value: str) -> str:
    """Normalise a verdict name (``not-alpha`` / ``not alpha`` -> ``not_alpha``) and check it."""
    v = str(value).strip().lower().replace("-", "_").replace(" ", "_")
    if v not in VERDICTS:
        raise VerdictError(f"verdict must be one of {', '.join(VERDICTS)}, got {value!r}")
    return v


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


class VerdictLog:
    """Appends verdicts of one review session to ``DIR/session-....jsonl`` (thread-safe).

    Parameters
    ----------
    directory : path-like
        The verdicts table directory (created if missing).
    context : mapping, optional
        Fields added to every record (e.g. the candidate table path).
    """

    def __init__(self, directory: str | os.PathLike, *, context: Mapping[str, Any] | None = None) -> None:
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise VerdictError(f"{self.directory}: the verdicts table must be a directory, found a file")
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        self.session = f"{stamp}-{os.getpid()}-{secrets.token_hex(3)}"
        self.path = self.directory / f"session-{self.session}.jsonl"
        self.context = dict(context or {})
        self._lock = threading.Lock()
        self._seq = 0

    def append(self, candidate: Mapping[str, Any], verdict: str, **extra: Any) -> dict[str, Any]:
        """Record ``verdict`` for ``candidate`` (a candidate row); return the record written."""
        verdict = parse_verdict(verdict)
        if not candidate.get("object_id"):
            raise VerdictError("a verdict needs the candidate's object_id")
        with self._lock:
            self._seq += 1
            record = {k: candidate.get(k) for k in CANDIDATE_FIELDS}
            record.update(self.context)
            record.update(extra)
            record.update(
                {"verdict": verdict, "label": VERDICTS[verdict], "time": _now(), "session": self.session, "seq": self._seq}
            )
            self._write((json.dumps(record, default=_json_default) + "\n").encode())
        return record

    def withdraw(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Withdraw ``record`` (one this table holds, with its ``session`` and ``seq``): undo.

        Appends a withdrawal line in the same way as a verdict; return it.
        """
        if not isinstance(record.get("session"), str) or not isinstance(record.get("seq"), int):
            raise VerdictError(f"only a recorded verdict (with session and seq) can be withdrawn, got {dict(record)!r}")
        with self._lock:
            self._seq += 1
            line = {k: record.get(k) for k in ("object_id", "store", "store_hash")}
            line.update({"withdraws": {"session": record["session"], "seq": record["seq"]}, "time": _now(),
                         "session": self.session, "seq": self._seq})
            self._write((json.dumps(line, default=_json_default) + "\n").encode())
        return line

    def _write(self, line: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def session_files(path: str | os.PathLike) -> list[Path]:
    """The session files of a verdicts table (a directory) or the single file given."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise VerdictError(f"{p}: no such verdicts table")
    return sorted(p.glob(SESSION_GLOB))


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every verdict record of every session, unmerged, less the withdrawn ones (undone on the
    review page); torn or malformed lines are skipped."""
    out: list[dict[str, Any]] = []
    withdrawn: set[tuple[str, int]] = set()
    for f in session_files(path):
        bad = 0
        with open(f, "rb") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                    if isinstance(rec, dict) and "withdraws" in rec:
                        withdrawn.add(_withdrawn(rec))
                    else:
                        out.append(_checked_record(rec))
                except (ValueError, KeyError, TypeError, InputError):
                    bad += 1
        if bad:
            logger.warning("%s: skipped %d unreadable line(s) (a crash while writing?)", f, bad)
    return [r for r in out if (r.get("session"), r.get("seq")) not in withdrawn] if withdrawn else out


def _withdrawn(rec: dict[str, Any]) -> tuple[str, int]:
    """(session, seq) of the record a withdrawal line names; TypeError for anything else."""
    w = rec["withdraws"]
    if not isinstance(w, dict) or not isinstance(w.get("session"), str) or not isinstance(w.get("seq"), int):
        raise TypeError("withdraws must name a session and a seq")
    return w["session"], w["seq"]


def _checked_record(rec: Any) -> dict[str, Any]:
    """A verdict record as :meth:`VerdictLog.append` writes it; ValueError for anything else."""
    if not isinstance(rec, dict):
        raise TypeError("not a JSON object")
    rec["verdict"] = parse_verdict(rec["verdict"])
    if not isinstance(rec.get("object_id"), (str, int)) or isinstance(rec["object_id"], bool) or rec["object_id"] == "":
        raise ValueError("no object_id")
    if not isinstance(rec.get("seq", 0), int) or not isinstance(rec.get("time", ""), str):
        raise TypeError("seq must be an integer and time a string")
    if not all(isinstance(rec.get(k) or "", str) for k in ("session", "store", "store_hash")):
        raise TypeError("session, store and store_hash must be strings")
    idx = rec.get("store_index")
    if idx is not None and (not isinstance(idx, int) or isinstance(idx, bool)):
        raise ValueError("store_index must be an integer")
    return rec


def verdict_key(record: Mapping[str, Any]) -> tuple[str, str]:
    """Identity of the judged object: its id and source store (hash when known, else path)."""
    return str(record["object_id"]), str(record.get("store_hash") or record.get("store") or "")


def latest(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One record per object: the last by (time, session, seq); in that order (pure)."""
    ordered = sorted(records, key=lambda r: (str(r.get("time", "")), str(r.get("session", "")), int(r.get("seq", 0))))
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for r in ordered:
        last.pop(verdict_key(r), None)  # re-insert so dict order follows the latest time
        last[verdict_key(r)] = dict(r)
    return list(last.values())


def read_verdicts(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The current verdict per object of a verdicts table (latest wins)."""
    return latest(read_records(path))


def count_verdicts(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(VERDICTS, 0)
    for r in records:
        counts[r["verdict"]] += 1
    return counts


# -- verdicts -> labelled crop store --------------------------------------------------------


@dataclass(frozen=True)
class VerdictStoreResult:
    """What ``verdicts to-store`` wrote."""

    out: Path
    alpha: int
    not_alpha: int
    unsure_skipped: int
    rows: int


def _locate(stores: Sequence[CropStore], record: Mapping[str, Any], ids: list[Any], by_id: dict[int, dict[str, int]]):
    oid = str(record["object_id"])
    want_hash = record.get("store_hash")
    want_path = os.path.realpath(record["store"]) if record.get("store") else None

    def preference(k: int) -> tuple[bool, bool]:
        return (not (want_hash and stores[k].content_hash == want_hash),
                not (want_path and os.path.realpath(stores[k].path) == want_path))

    order = sorted(range(len(stores)), key=preference)
    if want_hash and any(s.content_hash == want_hash for s in stores):
        order = [k for k in order if stores[k].content_hash == want_hash]
    idx = record.get("store_index")
    for k in order:
        if isinstance(idx, int) and 0 <= idx < stores[k].n and ids[k][idx].as_py() == oid:
            return k, idx
        if k not in by_id:
            by_id[k] = {o: i for i, o in enumerate(ids[k].to_pylist())}
        row = by_id[k].get(oid)
        if row is not None:
            return k, row
    names = ", ".join(str(s.path) for s in stores)
    raise VerdictError(f"verdict for {oid!r} (store {record.get('store')}): object is in none of the stores given: {names}")


def verdicts_to_store(
    verdicts: str | os.PathLike,
    stores: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    include_unsure: bool = False,
    overwrite: bool = False,
    batch: int = 64,
) -> VerdictStoreResult:
    """Write a labelled crop store from review verdicts (alpha -> 1, not_alpha -> 0).

    Parameters
    ----------
    verdicts : path-like
        A verdicts table directory (or one session file).
    stores : sequence of path-like
        The source crop stores the reviewed candidates came from.
    out : path-like
        The new ``NAME.zarr``. An interrupted write is resumed by rerunning; an existing
        complete store is refused unless ``overwrite``.
    include_unsure : bool
        Keep "unsure" verdicts as label -1 (unknown) rows instead of leaving them out.

    Returns
    -------
    VerdictStoreResult
    """
    records = read_verdicts(verdicts)
    if not records:
        raise VerdictError(f"{verdicts}: no verdicts recorded")
    keep = [r for r in records if r["verdict"] != "unsure" or include_unsure]
    unsure = sum(r["verdict"] == "unsure" for r in records) if not include_unsure else 0
    if not keep:
        raise VerdictError(f"{verdicts}: only 'unsure' verdicts; nothing to label")
    if not stores:
        raise VerdictError("no source store given (use --store, repeatable)")
    out = Path(out)
    if out.exists() and not overwrite:
        _refuse_existing(out)
    opened = [open_store(s) for s in stores]
    ids = [s.table.column("object_id") for s in opened]
    by_id: dict[int, dict[str, int]] = {}
    located = [_locate(opened, r, ids, by_id) for r in keep]
    _check_unique_ids(keep)

    source = {
        "stage": "verdicts",
        "verdicts": str(Path(verdicts).resolve()),
        "stores": {str(s.path): s.content_hash for s in opened},
        "include_unsure": include_unsure,
    }
    with StoreWriter(out, source=source, overwrite=overwrite) as writer:
        todo = [i for i, r in enumerate(keep) if str(r["object_id"]) not in writer]
        for b in range(0, len(todo), batch):
            chunk = todo[b : b + batch]
            crops = _read_crops(opened, [located[i] for i in chunk])
            rows = [_verdict_row(keep[i], opened[located[i][0]], located[i][1]) for i in chunk]
            writer.append(crops, _rows_table(rows))
    counts = count_verdicts(keep)
    result = VerdictStoreResult(
        out=out, alpha=counts["alpha"], not_alpha=counts["not_alpha"], unsure_skipped=unsure, rows=len(keep)
    )
    logger.info("%s: %d alpha, %d not alpha (%d unsure left out)", out, result.alpha, result.not_alpha, unsure)
    return result


def _refuse_existing(out: Path) -> None:
    """Refuse a complete store (or anything else) at ``out``; an interrupted store is resumed."""
    if not is_store(out):
        raise StoreExistsError(f"{out}: exists and is not a crop store")
    if open_store(out, require_complete=False).complete:
        raise StoreExistsError(f"{out}: store exists (use --overwrite to replace it)")


def _check_unique_ids(keep: Sequence[Mapping[str, Any]]) -> None:
    """A store needs unique object ids: refuse verdicts on one id from two stores."""
    seen: dict[str, int] = {}
    for i, r in enumerate(keep):
        if str(r["object_id"]) in seen:
            other = keep[seen[str(r["object_id"])]]
            raise VerdictError(
                f"object id {r['object_id']!r} has verdicts from two stores ({other.get('store')} and {r.get('store')}); "
                "a store needs unique ids"
            )
        seen[str(r["object_id"])] = i


def _read_crops(stores: Sequence[CropStore], where: Sequence[tuple[int, int]]) -> np.ndarray:
    """uint8 (k, 224, 224, 3): the crops at ``where`` ((store number, row) pairs), each store read once."""
    crops = np.empty((len(where), 224, 224, 3), np.uint8)
    for k in {w[0] for w in where}:
        pos = [j for j, w in enumerate(where) if w[0] == k]
        crops[pos] = stores[k].read_rows(np.array([where[j][1] for j in pos], np.int64))
    return crops


def _verdict_row(record: Mapping[str, Any], store: CropStore, row: int) -> dict[str, Any]:
    """The labelled store's row for ``record``: the source row's position and picker features, the verdict."""
    src = store.table.slice(row, 1).to_pylist()[0]
    label = VERDICTS[record["verdict"]]
    return {
        "object_id": src["object_id"],
        "experiment": src.get("experiment"),
        "module": src.get("module"),
        "plate": src.get("plate"),
        "sheet": src.get("sheet"),
        "x_mm": src.get("x_mm"),
        "y_mm": src.get("y_mm"),
        "z_mm": src.get("z_mm"),
        "label": -1 if label is None else label,
        "category": None,
        "multiplicity": src.get("multiplicity"),
        "track_lengths_um": src.get("track_lengths_um"),
        "verdict": record["verdict"],
        "verdict_time": str(record.get("time", "")),
        "source_store": str(store.path),
        "source_index": row,
    }


def _rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    table = pa.Table.from_pylist(rows)
    return table.set_column(
        table.column_names.index("source_index"), "source_index", table.column("source_index").cast(pa.int64())
    )
