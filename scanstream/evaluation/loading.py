"""Evaluation inputs: the truth of crop stores and the scores to measure against it.

The loading layer of :mod:`scanstream.evaluation.evaluate` (I/O only): :func:`load_truth`
(labels and categories from crop stores), :func:`load_candidate_scores` (a candidate table's
scores and calibrated threshold), :func:`load_baseline` (the former method's table) and
:func:`load_feature_scores` (the learned former method's logits on the stores' labelled
objects); each model's scores are a :class:`ScoreSet`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scanstream.candidates.table import read_candidates, read_metadata
from scanstream.errors import InputError, ThresholdError
from scanstream.picker.learned import load_feature_model
from scanstream.store import open_store
from scanstream.threshold import load_threshold

#: How reports, figures and metrics.json call the feature model's scores.
LEARNED_NAME = "learned former method (features only)"


@dataclass(frozen=True)
class ScoreSet:
    """Scores of one model (or ensemble) over objects.

    Attributes
    ----------
    name : str
        How figures and tables call it.
    object_ids : array of str, shape (n,)
    scores : array of float64, shape (n,)
        Logits (mean logit for an ensemble).
    threshold : float or None
        The calibrated threshold on the logit, when there is one.
    model_hashes : tuple of str
        The checkpoints behind the scores (empty when unknown).
    source : str
        Where the scores came from (a candidate table path), for the report.
    stores : array of str, shape (n,), or None
        The crop store of each row (candidate tables record it), to tell apart equal object
        ids of different stores.
    """

    name: str
    object_ids: np.ndarray
    scores: np.ndarray
    threshold: float | None = None
    model_hashes: tuple[str, ...] = ()
    source: str = ""
    stores: np.ndarray | None = None


def load_truth(stores: Sequence[str | os.PathLike]) -> pa.Table:
    """object_id, label, category and store path of every object of the given crop stores.

    Raises
    ------
    InputError
        No store given, or an object id present in two stores.
    """
    if not stores:
        raise InputError("evaluate needs at least one crop store with labels (--store)")
    parts = []
    for path in stores:
        s = open_store(path)
        t = s.table
        cat = t.column("category") if "category" in t.column_names else pa.nulls(t.num_rows, pa.string())
        parts.append(
            pa.table(
                {
                    "object_id": t.column("object_id"),
                    "label": t.column("label"),
                    "category": cat,
                    "store": pa.array([str(s.path)] * t.num_rows, pa.string()),
                }
            )
        )
    truth = pa.concat_tables(parts)
    ids = truth.column("object_id")
    if pc.count_distinct(ids).as_py() != truth.num_rows:
        counts = pc.value_counts(ids)
        dup = [v["values"] for v in counts.to_pylist() if v["counts"] > 1][:3]
        raise InputError(f"object ids appear in more than one of the stores {[str(p) for p in stores]}: e.g. {dup}")
    return truth


def load_candidate_scores(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    threshold: str | os.PathLike | None = None,
) -> ScoreSet:
    """A candidate table's object ids, scores, calibrated threshold and model hashes.

    The threshold is taken from ``threshold`` (a threshold record JSON) when given, else from
    the record in the table's metadata, else None. A threshold record that names other models
    than the table's is refused.

    Raises
    ------
    InputError
        The table lacks ``object_id`` / ``score`` or has non-finite scores.
    ThresholdError
        The threshold record belongs to other models.
    """
    p = Path(path)
    table = read_candidates(p, columns=["object_id", "score", "store"], partial=True)
    for col in ("object_id", "score"):
        if col not in table.column_names:
            raise InputError(f"{p}: candidate table has no {col!r} column")
    meta = read_metadata(p) or {}
    hashes = tuple(meta.get("model_hashes") or ())
    record = meta.get("threshold")
    if threshold is not None:
        record = load_threshold(threshold)
        rec_hashes = tuple(record.get("model_hashes") or ())
        if hashes and rec_hashes and sorted(rec_hashes) != sorted(hashes):
            raise ThresholdError(
                f"{threshold}: threshold record belongs to models {list(rec_hashes)}, but {p} was scored by {list(hashes)}"
            )
    thr = None if not record else float(record["threshold"])
    scores = table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
    if not np.all(np.isfinite(scores)):
        raise InputError(f"{p}: {int((~np.isfinite(scores)).sum())} non-finite scores in the candidate table")
    ids = np.asarray(table.column("object_id").to_pylist(), dtype=object)
    stores = None
    if "store" in table.column_names:
        stores = np.asarray([str(s) if s is not None else "" for s in table.column("store").to_pylist()], dtype=object)
    return ScoreSet(name or p.name, ids, scores, thr, hashes, str(p), stores)


def load_baseline(path: str | os.PathLike) -> pa.Table:
    """The former method's table (``scanstream baseline``): object_id, selected[, baseline_score].

    Raises
    ------
    InputError
        Missing file, unreadable Parquet, missing columns or duplicate object ids.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such former-method table")
    try:
        t = pq.read_table(p)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{p}: not a readable Parquet file: {exc}") from None
    for col in ("object_id", "selected"):
        if col not in t.column_names:
            raise InputError(f"{p}: former-method table has no {col!r} column (columns: {t.column_names})")
    if pc.count_distinct(t.column("object_id")).as_py() != t.num_rows:
        raise InputError(f"{p}: former-method table has duplicate object ids")
    return t


def load_feature_scores(path: str | os.PathLike, stores: Sequence[str | os.PathLike]) -> ScoreSet:
    """The learned former method's logits on the labelled objects (label 0 / 1) of ``stores``.

    ``path`` is a feature model written by ``scanstream baseline --learned ... --save-model``
    (:func:`scanstream.picker.learned.save_feature_model`). Each store's labelled rows are
    scored from its own object table, so object ids and logits stay row-aligned; :func:`join`
    then aligns them with the labels by ``object_id``.

    Raises
    ------
    CheckpointError
        ``path`` is not a feature model.
    InputError
        A store lacks the picker's features (``multiplicity``, ``track_lengths_um``) or has
        labelled objects without a multiplicity; the message names the store.
    """
    model = load_feature_model(path)
    ids, scores, where = [], [], []
    for p in stores:
        s = open_store(p)
        t = s.table
        t = t.filter(pc.greater_equal(t.column("label"), 0))
        ids.extend(t.column("object_id").to_pylist())
        scores.append(model.score_table(t, source=f"store {s.path} (scored by the feature model {path})"))
        where.extend([str(s.path)] * t.num_rows)
    return ScoreSet(
        LEARNED_NAME,
        np.asarray(ids, dtype=object),
        np.concatenate(scores).astype(np.float64) if scores else np.zeros(0),
        source=str(path),
        stores=np.asarray(where, dtype=object),
    )
