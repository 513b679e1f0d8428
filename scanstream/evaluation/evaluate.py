"""Evaluation: candidate tables + store truth + the former method -> the paper's measures.

Three layers, as docs/contributing.md (rule 2) asks:

1. loading (I/O, :mod:`scanstream.evaluation.loading`): ``load_truth`` (labels and categories
   from crop stores), ``load_candidate_scores`` (a candidate table's scores and calibrated
   threshold), ``load_baseline`` (the former method's table), ``load_feature_scores`` (the
   learned former method's logits on the stores' labelled objects);
2. :func:`join` aligns them on ``object_id`` into :class:`EvalData` (unknown labels dropped,
   any labelled object missing from a table is an error: a recall over half a sheet is wrong);
3. :func:`compute_metrics` (pure) measures AP, the operating points at the former method's
   recall and at the calibrated threshold, Table 2 and the false positives by category;
   :func:`evaluate` adds the figures and report files.

Which scores are compared
-------------------------
Each candidate table is one "model" (usually an ensemble: its ``score`` is the mean logit).
The first one is the primary model: Table 2 is built from it with sqrt(N) errors. With two
or more models a second Table 2 row gives the mean +- std over the models (the paper's four
seeds). The former method's recall on the evaluated set is the target recall; the CNN's
operating point there keeps the same number of true alpha decays
(:func:`scanstream.metrics.operating_point_at_recall`).

The learned former method (:mod:`scanstream.picker.learned`, boosted trees on the same picker
features the cuts use) is a second baseline, never one of the models: it gets its AP, its
operating point at the former method's recall (Table 2 against the cuts) and a paired
comparison with each model there, so that a CNN's gain can be split into what the features
alone give and what the images add.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from scanstream import metrics as mt
from scanstream.errors import InputError
from scanstream.evaluation import figures as fg
from scanstream.evaluation.loading import (
    ScoreSet,
    load_baseline,
    load_candidate_scores,
    load_feature_scores,
    load_truth,
)
from scanstream.evaluation.report import render_evaluation, write_report

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalData:
    """Labelled objects aligned across models and the former method (unknown labels dropped).

    Attributes
    ----------
    object_ids : array of str, shape (n,)
    labels : array of int8, shape (n,)
        1 alpha decay, 0 other.
    categories : list of (str or None), length n
    models : list of ScoreSet
        Each with ``object_ids`` equal to this one's (scores in the same order).
    former_selected : array of bool, shape (n,), or None
    former_score : array of float64, shape (n,), or None
    dropped_unknown : int
        Objects of the stores with label -1 (not evaluated).
    stores : list of str
    learned : ScoreSet or None
        The learned former method's logits (same ``object_ids`` order), a baseline beside the
        cuts and not one of ``models``.
    """

    object_ids: np.ndarray
    labels: np.ndarray
    categories: list
    models: list[ScoreSet]
    former_selected: np.ndarray | None = None
    former_score: np.ndarray | None = None
    dropped_unknown: int = 0
    stores: list[str] = field(default_factory=list)
    learned: ScoreSet | None = None


# -- joining ---------------------------------------------------------------------------------
def _align(keys: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
    """Row index into ``ids`` of every key (error when some are missing)."""
    index = {k: i for i, k in enumerate(ids.tolist())}
    pos = np.fromiter((index.get(k, -1) for k in keys.tolist()), dtype=np.int64, count=len(keys))
    missing = int((pos < 0).sum())
    if missing:
        example = keys[pos < 0][:3].tolist()
        raise InputError(f"{what} lacks {missing} of the {len(keys)} labelled objects (e.g. {example}); score or select them first")
    return pos


def _resolve(p: str) -> str:
    try:
        return str(Path(p).resolve())
    except OSError:
        return p


def join(
    truth: pa.Table,
    models: Sequence[ScoreSet],
    baseline: pa.Table | None = None,
    *,
    baseline_name: str = "former-method table",
    learned: ScoreSet | None = None,
) -> EvalData:
    """Align model scores, the former method and the learned one with the labelled objects of ``truth``.

    Rows of a candidate table that belong to other objects (another sheet classified in the
    same run) are ignored; labelled objects that a table lacks are an error.
    """
    if not models:
        raise InputError("evaluate needs at least one candidate table (scanstream evaluate CANDIDATES ...)")
    labels_all = truth.column("label").to_numpy(zero_copy_only=False).astype(np.int8)
    keep = labels_all >= 0
    dropped = int((~keep).sum())
    ids = np.asarray(truth.column("object_id").to_pylist(), dtype=object)[keep]
    if ids.size == 0:
        raise InputError("the stores have no labelled objects (every label is -1): nothing to evaluate")
    labels = labels_all[keep]
    categories = [c for c, k in zip(truth.column("category").to_pylist(), keep) if k]
    truth_store = np.asarray(truth.column("store").to_pylist(), dtype=object)[keep]
    aligned: list[ScoreSet] = []
    for ss in models:
        sids = ss.object_ids
        scores = ss.scores
        stores = ss.stores
        if len(set(sids.tolist())) != len(sids):
            # the same object id in two stores of one run: keep the rows of the evaluated stores
            if stores is None:
                raise InputError(f"{ss.source or ss.name}: duplicate object ids in the candidate table")
            wanted = {_resolve(s) for s in truth_store.tolist()}
            rows = np.array([_resolve(s) in wanted for s in stores.tolist()], dtype=bool)
            sids, scores = sids[rows], scores[rows]
            if len(set(sids.tolist())) != len(sids):
                raise InputError(f"{ss.source or ss.name}: duplicate object ids within the evaluated stores")
        pos = _align(ids, sids, f"candidate table {ss.source or ss.name}")
        aligned.append(ScoreSet(ss.name, ids, scores[pos], ss.threshold, ss.model_hashes, ss.source))
    names = [m.name for m in aligned]
    if len(set(names)) != len(names):
        raise InputError(f"two models share a name: {names}")
    former_sel = former_score = None
    if baseline is not None:
        pos = _align(ids, np.asarray(baseline.column("object_id").to_pylist(), dtype=object), baseline_name)
        former_sel = baseline.column("selected").to_numpy(zero_copy_only=False).astype(bool)[pos]
        if "baseline_score" in baseline.column_names:
            former_score = baseline.column("baseline_score").to_numpy(zero_copy_only=False).astype(np.float64)[pos]
    if learned is not None:
        pos = _align(ids, learned.object_ids, f"feature-model scores of {learned.source or learned.name}")
        learned = ScoreSet(learned.name, ids, learned.scores[pos], None, (), learned.source)
    return EvalData(
        object_ids=ids,
        labels=labels,
        categories=categories,
        models=aligned,
        former_selected=former_sel,
        former_score=former_score,
        dropped_unknown=dropped,
        stores=sorted(set(truth.column("store").to_pylist())),
        learned=learned,
    )


# -- measuring (pure) ------------------------------------------------------------------------
def compute_metrics(data: EvalData, *, spread_over: Sequence[str] | None = None) -> dict[str, Any]:
    """Every number of the evaluation report, JSON-ready.

    Parameters
    ----------
    data : EvalData
    spread_over : sequence of str, optional
        Names of the models whose mean +- std is reported (``ap``, ``table2_models``);
        default all models. E.g. the single models of an ensemble, without the ensemble.

    Returns
    -------
    dict
        ``data`` (class counts), ``models`` (per model: AP, threshold, hashes),
        ``ap`` (mean +- std over the models when several), ``former`` (its operating point
        and, with a score, its AP), ``at_former_recall`` (target recall, per-model operating
        points, ``table2`` for the primary model, ``table2_models`` over all models when
        several, false positives by category), ``at_threshold`` (per model with a calibrated
        threshold: operating point, Table 2 against the former method, false positives) and,
        with ``data.learned``, ``learned`` (see :func:`learned_metrics`).
    """
    y = data.labels
    mt.check_labels_scores(y, np.zeros(len(y)))  # both classes present
    out: dict[str, Any] = {
        "data": {**mt.class_counts(y), "unknown_dropped": data.dropped_unknown, "stores": list(data.stores)},
        "models": {m.name: _model_metrics(y, m) for m in data.models},
    }
    group = _spread_group(data, spread_over)
    if len(group) > 1:
        out["ap"] = mt.mean_std([out["models"][k]["ap"] for k in group]).to_dict()
        out["spread_over"] = group
    former, ops = None, None
    if data.former_selected is not None:
        former = mt.operating_point_from_selection(y, data.former_selected)
        out["former"] = _former_metrics(data, former)
        if former.true_positives == 0:
            logger.warning("the former method selects no alpha decay: no comparison at its recall")
        else:
            ops = {m.name: mt.operating_point_at_recall(y, m.scores, former.recall.value) for m in data.models}
            out["at_former_recall"] = _at_former_recall(data, former, ops, group)
    out["at_threshold"] = _at_threshold(data, former)
    if data.learned is not None:
        out["learned"] = learned_metrics(data, former, ops, out["at_threshold"])
    return out


def _model_metrics(y: np.ndarray, m: ScoreSet) -> dict[str, Any]:
    """``metrics["models"][name]``: a model's AP, threshold, hashes and source."""
    return {"ap": mt.average_precision(y, m.scores), "threshold": m.threshold, "model_hashes": list(m.model_hashes),
            "source": m.source}


def _spread_group(data: EvalData, spread_over: Sequence[str] | None) -> list[str]:
    """The models quoted as mean +- std (default all); unknown names are an error."""
    names = [m.name for m in data.models]
    group = list(spread_over) if spread_over is not None else names
    unknown = sorted(set(group) - set(names))
    if unknown:
        raise InputError(f"spread_over names unknown models {unknown} (models: {names})")
    return group


def _former_metrics(data: EvalData, former: mt.OperatingPoint) -> dict[str, Any]:
    """``metrics["former"]``: the cuts' operating point, AP (with a score) and false positives."""
    out: dict[str, Any] = {"operating_point": former.to_dict()}
    if data.former_score is not None:
        out["ap"] = mt.average_precision(data.labels, data.former_score)
    out["false_positives"] = mt.false_positives_by_category(data.labels, data.categories, data.former_selected)
    return out


def _at_former_recall(
    data: EvalData, former: mt.OperatingPoint, ops: Mapping[str, mt.OperatingPoint], group: Sequence[str]
) -> dict[str, Any]:
    """``metrics["at_former_recall"]``: every model at the former method's recall (``ops``) against the cuts."""
    y, cats = data.labels, data.categories
    primary = data.models[0].name
    sect: dict[str, Any] = {
        "target_recall": former.recall.value,
        "primary": primary,
        "operating_points": {k: v.to_dict() for k, v in ops.items()},
        "table2": mt.table2(former, ops[primary]),
        "false_positives": {
            k: mt.false_positives_by_category(y, cats, _selection(data, k, v.threshold)) for k, v in ops.items()
        },
        "paired": {
            k: mt.paired_false_positives(y, data.former_selected, _selection(data, k, v.threshold))
            for k, v in ops.items()
        },
    }
    if len(group) > 1:
        sect["table2_models"] = mt.table2(former, [ops[k] for k in group])
    return sect


def _at_threshold(data: EvalData, former: mt.OperatingPoint | None) -> dict[str, Any]:
    """``metrics["at_threshold"]``: every model with a calibrated threshold, at that threshold."""
    y = data.labels
    out: dict[str, Any] = {}
    for m in data.models:
        if m.threshold is None:
            continue
        op = mt.operating_point_at_threshold(y, m.scores, m.threshold)
        entry: dict[str, Any] = {
            "operating_point": op.to_dict(),
            "false_positives": mt.false_positives_by_category(y, data.categories, m.scores >= m.threshold),
        }
        if former is not None:
            entry["table2"] = mt.table2(former, op)
        out[m.name] = entry
    return out


def learned_metrics(
    data: EvalData,
    former: mt.OperatingPoint | None,
    ops: Mapping[str, mt.OperatingPoint] | None,
    at_threshold: Mapping[str, Any],
) -> dict[str, Any]:
    """The learned former method beside the cuts and the models (``metrics["learned"]``).

    Parameters
    ----------
    data : EvalData
        With ``learned`` set.
    former : OperatingPoint or None
        The cuts' operating point (None without a former-method table).
    ops : mapping of str to OperatingPoint, or None
        Each model's operating point at the former method's recall (None when not compared).
    at_threshold : mapping
        ``compute_metrics``' ``at_threshold`` section.

    Returns
    -------
    dict
        ``name``, ``source``, ``ap``; ``at_former_recall`` when the models are compared there:
        ``target_recall``, ``operating_point``, ``table2`` (the learned method in the CNN column
        against the cuts), ``false_positives`` by category, and ``paired`` per model:
        ``paired_false_positives(labels, learned_selection, model_selection)`` with its sides
        named ``only_learned`` / ``only_cnn``; ``at_threshold_recall`` per model with a
        calibrated threshold: the learned method's operating point at the recall the model
        reaches there.
    """
    y, lm = data.labels, data.learned
    out: dict[str, Any] = {"name": lm.name, "source": lm.source, "ap": mt.average_precision(y, lm.scores)}
    if former is not None and ops is not None:
        op = mt.operating_point_at_recall(y, lm.scores, former.recall.value)
        sel = lm.scores >= op.threshold
        paired = {}
        for k, v in ops.items():
            p = mt.paired_false_positives(y, sel, _selection(data, k, v.threshold))
            paired[k] = {"only_learned": p["only_former"], "only_cnn": p["only_cnn"], "both": p["both"], "p_value": p["p_value"]}
        out["at_former_recall"] = {
            "target_recall": former.recall.value,
            "operating_point": op.to_dict(),
            "table2": mt.table2(former, op),
            "false_positives": mt.false_positives_by_category(y, data.categories, sel),
            "paired": paired,
        }
    at_rec = {}
    for name, entry in at_threshold.items():
        recall = entry["operating_point"]["recall"]["value"]
        if recall > 0:
            at_rec[name] = {"target_recall": recall, "operating_point": mt.operating_point_at_recall(y, lm.scores, recall).to_dict()}
    if at_rec:
        out["at_threshold_recall"] = at_rec
    return out


def _selection(data: EvalData, name: str, threshold: float | None) -> np.ndarray:
    """Selection ``score >= threshold`` of the model called ``name``."""
    m = next(m for m in data.models if m.name == name)
    return m.scores >= threshold


# -- the whole job ---------------------------------------------------------------------------
@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate` wrote and measured."""

    out: Path
    report: Path
    metrics_path: Path
    figures: dict[str, Path]
    metrics: dict[str, Any]


def make_figures(data: EvalData, metrics: Mapping[str, Any], out: Path, *, prefix: str = "") -> dict[str, Path]:
    """PR curves (figure 5) and score distributions (figure 4) of ``data`` into ``out``."""
    y = data.labels
    curves = []
    for m in data.models:
        p, r, _ = mt.precision_recall_curve(y, m.scores)
        curves.append(fg.Curve(m.name, p, r, metrics["models"][m.name]["ap"]))
    if data.former_score is not None:
        p, r, _ = mt.precision_recall_curve(y, data.former_score)
        curves.append(fg.Curve("former method (score)", p, r, metrics["former"]["ap"]))
    if data.learned is not None:
        p, r, _ = mt.precision_recall_curve(y, data.learned.scores)
        curves.append(fg.Curve(data.learned.name, p, r, metrics["learned"]["ap"]))
    points = []
    if "former" in metrics:
        op = metrics["former"]["operating_point"]
        points.append(fg.Point("former method cuts", op["recall"]["value"], op["precision"]["value"],
                               op["recall"]["error"], op["precision"]["error"], marker="s"))
    if "at_former_recall" in metrics:
        name = metrics["at_former_recall"]["primary"]
        op = metrics["at_former_recall"]["operating_points"][name]
        points.append(fg.Point(f"{name} at former recall", op["recall"]["value"], op["precision"]["value"],
                               op["recall"]["error"], op["precision"]["error"], marker="D"))
    if "at_former_recall" in metrics.get("learned", {}):
        op = metrics["learned"]["at_former_recall"]["operating_point"]
        points.append(fg.Point("learned former method at former recall", op["recall"]["value"], op["precision"]["value"],
                               op["recall"]["error"], op["precision"]["error"], marker="v"))
    for name, entry in metrics.get("at_threshold", {}).items():
        op = entry["operating_point"]
        points.append(fg.Point(f"{name} at calibrated threshold", op["recall"]["value"], op["precision"]["value"],
                               op["recall"]["error"], op["precision"]["error"], marker="^"))
    figs = {"pr_curves": fg.plot_pr_curves(curves, out / f"{prefix}pr_curves.png", points=points)}
    primary = data.models[0]
    figs["score_distributions"] = fg.plot_score_distributions(
        primary.scores, y, out / f"{prefix}score_distributions.png",
        threshold=primary.threshold, threshold_label="calibrated threshold",
        title=f"Output distributions: {primary.name}",
    )
    return figs


def evaluate(
    candidates: Sequence[str | os.PathLike],
    stores: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    baseline: str | os.PathLike | None = None,
    threshold: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
    extra_models: Sequence[ScoreSet] = (),
    spread_over: Sequence[str] | None = None,
    title: str = "scanstream evaluation",
    feature_model: str | os.PathLike | None = None,
) -> EvaluationResult:
    """Evaluate candidate tables against the truth of crop stores; write figures and a report.

    Parameters
    ----------
    candidates : sequence of path
        Candidate table directories; the first is the primary model. ``threshold`` (a
        threshold record) applies to the first.
    stores : sequence of path
        Crop stores with labels (1 / 0); objects with label -1 are not evaluated.
    out : path
        Report directory: report.md, metrics.json, pr_curves.png, score_distributions.png.
    baseline : path, optional
        The former method's table (``scanstream baseline``), for Table 2.
    names : sequence of str, optional
        Names of the candidate tables (default: their directory names).
    extra_models : sequence of ScoreSet
        More models to compare (e.g. the single models of a search), after the tables.
    spread_over : sequence of str, optional
        Models to quote as mean +- std (default: all); see :func:`compute_metrics`.
    feature_model : path, optional
        A feature model (``scanstream baseline --learned ... --save-model FILE``): the learned
        former method, scored on the stores' labelled objects and reported beside the cuts
        (``metrics["learned"]``).
    """
    if names is not None and len(names) != len(candidates):
        raise InputError(f"{len(names)} names for {len(candidates)} candidate tables")
    out = Path(out)
    truth = load_truth(stores)
    models = []
    for i, c in enumerate(candidates):
        nm = names[i] if names is not None else None
        if nm is None:
            nm = Path(c).name
            taken = {m.name for m in models}
            nm = nm if nm not in taken else f"{nm}-{i}"
        models.append(load_candidate_scores(c, name=nm, threshold=threshold if i == 0 else None))
    models.extend(extra_models)
    base = load_baseline(baseline) if baseline is not None else None
    learned = load_feature_scores(feature_model, stores) if feature_model is not None else None
    data = join(truth, models, base, baseline_name=str(baseline), learned=learned)
    metrics = compute_metrics(data, spread_over=spread_over)
    out.mkdir(parents=True, exist_ok=True)
    figs = make_figures(data, metrics, out)
    metrics["figures"] = {k: v.name for k, v in figs.items()}
    md = render_evaluation(metrics, title=title)
    report, mpath = write_report(out, md, metrics)
    logger.info("evaluation of %d objects written to %s", len(data.labels), out)
    return EvaluationResult(out, report, mpath, figs, metrics)


def scores_from_table(table: pa.Table, *, exclude: Sequence[str] = ("object_id", "label")) -> list[ScoreSet]:
    """ScoreSets from a wide table: object_id plus one float column per model (search's test scores)."""
    ids = np.asarray(table.column("object_id").to_pylist(), dtype=object)
    meta = json.loads((table.schema.metadata or {}).get(b"scanstream", b"{}"))
    hashes = meta.get("model_hashes", {})
    return [
        ScoreSet(col, ids, table.column(col).to_numpy(zero_copy_only=False).astype(np.float64),
                 None, tuple(hashes.get(col, ())), "search test scores")
        for col in table.column_names if col not in exclude
    ]
