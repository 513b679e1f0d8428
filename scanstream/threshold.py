"""Calibrated thresholds: choose the logit cut for a target recall or precision, with evidence.

A threshold record (docs/classify.md, "Threshold records") is a small JSON document that says which
logit cut to apply, why (the target), what it achieved on a labelled calibration store (recall
and precision with binomial confidence intervals), which models it belongs to (their
checkpoint hashes) and what precision to expect at other prevalences. Precision depends on
the prevalence of alpha decays, which differs between sheets (the paper's VALID was about
1:17 alpha:other, its TEST about 1:183), so the record projects it from recall and the false
positive rate, which do not::

    precision(pi) = r * pi / (r * pi + fpr * (1 - pi))

The core here is pure functions over numpy arrays, labels first as in
:mod:`scanstream.metrics` (whose input checks and recall cut they use);
:func:`scanstream.inference.scoring.calibrate_threshold` is the I/O edge that scores a store
and builds the record. This module needs neither torch nor a model, so reading and checking
records stays cheap (evaluation and the candidate tables read them).
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest

from scanstream import __version__
from scanstream.atomic import write_json
from scanstream.errors import InputError, ThresholdError
from scanstream.metrics import check_labels_scores, check_target, operating_point_at_threshold, recall_cut

RECORD_VERSION = 1
CI_METHODS = {"clopper-pearson": "exact", "wilson": "wilson"}
DEFAULT_PREVALENCES = ("1:17", "1:183")  # the paper's VALID and TEST (docs/physics.md)


# -- pure core ---------------------------------------------------------------------------
def _calibration_data(labels: Any, scores: Any, target: float, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels (bool) and scores (float64) checked by :func:`~scanstream.metrics.check_labels_scores`.

    Raises
    ------
    InputError
        Bad arrays (different lengths, labels other than 0/1, non-finite scores) or a target
        outside (0, 1].
    ThresholdError
        No alpha label: there is nothing to calibrate on.
    """
    y, s = check_labels_scores(np.ravel(labels), np.ravel(scores), need_both=False)
    check_target(target, what)
    if not (y == 1).any():
        raise ThresholdError("no positive (alpha) labels: a threshold cannot be calibrated")
    return y.astype(bool), s


def threshold_at_recall(labels: Any, scores: Any, target: float) -> float:
    """The highest threshold whose selection ``score >= threshold`` reaches ``target`` recall.

    Parameters
    ----------
    labels : array-like, int (n,)
        1 alpha decay, 0 other.
    scores : array-like, float (n,)
        Logits (higher = more alpha-like).
    target : float
        Recall to reach, in (0, 1].

    Returns
    -------
    float
        The score of the ``ceil(target * n_pos)``-th highest positive: selecting every crop at
        or above it keeps at least that many positives, and any higher cut keeps fewer
        (:func:`scanstream.metrics.recall_cut`).

    Examples
    --------
    >>> threshold_at_recall([1, 0, 1, 1], [0.9, 0.8, 0.7, 0.1], 2 / 3)
    0.7
    """
    y, s = _calibration_data(labels, scores, target, "recall")
    return recall_cut(y.astype(np.int8), s, target)


def threshold_at_precision(labels: Any, scores: Any, target: float) -> float:
    """The lowest threshold (highest recall) whose selection reaches ``target`` precision.

    Parameters
    ----------
    labels, scores : array-like (n,)
        As in :func:`threshold_at_recall`.
    target : float
        Precision to reach, in (0, 1].

    Returns
    -------
    float
        One of the scores: among the cuts ``score >= t`` over distinct scores ``t`` whose
        precision is at least ``target``, the lowest.

    Raises
    ------
    ThresholdError
        No cut reaches the target on these scores.

    Examples
    --------
    >>> threshold_at_precision([1, 0, 1, 1], [0.9, 0.8, 0.7, 0.1], 0.75)
    0.1
    """
    y, s = _calibration_data(labels, scores, target, "precision")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    selected = np.arange(1, s.size + 1)
    # a cut at a distinct score selects every crop with that score: the last index of each tie
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s.size - 1]
    precision = tp[last] / selected[last]
    ok = np.nonzero(precision >= float(target) - 1e-12)[0]
    if ok.size == 0:
        raise ThresholdError(f"no threshold reaches precision {target} on these scores (best {precision.max():.4f})")
    return float(s_sorted[last[ok[-1]]])


def proportion_ci(k: int, n: int, *, level: float = 0.95, method: str = "clopper-pearson") -> tuple[float, float]:
    """Two-sided binomial confidence interval for ``k`` successes in ``n`` trials.

    ``method`` is ``"clopper-pearson"`` (exact, conservative) or ``"wilson"``; both via
    :func:`scipy.stats.binomtest`. With ``n == 0`` nothing is known: ``(0.0, 1.0)``.
    """
    if method not in CI_METHODS:
        raise InputError(f"confidence interval method must be one of {sorted(CI_METHODS)}, got {method!r}")
    if not (0.0 < level < 1.0):
        raise InputError(f"confidence level must be in (0, 1), got {level!r}")
    if n == 0:
        return (0.0, 1.0)
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method=CI_METHODS[method])
    return (float(ci.low), float(ci.high))


def parse_prevalence(text: str) -> float:
    """Alpha fraction from ``"1:183"`` (alpha:other) or a fraction such as ``"0.005"``."""
    t = str(text).strip()
    try:
        if ":" in t:
            a, b = (float(v) for v in t.split(":"))
            value = a / (a + b) if a > 0 and b >= 0 else float("nan")
        else:
            value = float(t)
    except ValueError:
        raise InputError(f"prevalence {text!r}: expected alpha:other such as 1:183, or a fraction in (0, 1)") from None
    if not (0.0 < value < 1.0):
        raise InputError(f"prevalence {text!r}: expected alpha:other such as 1:183, or a fraction in (0, 1)")
    return value


def project_precision(recall: float, fpr: float, prevalence: float) -> float | None:
    """Precision expected at alpha fraction ``prevalence`` for a cut with ``recall`` and ``fpr``.

    ``p = r * pi / (r * pi + fpr * (1 - pi))``; None when nothing would be selected.

    Examples
    --------
    >>> round(project_precision(0.9, 0.01, 1 / 184), 4)
    0.3297
    """
    den = recall * prevalence + fpr * (1.0 - prevalence)
    return None if den <= 0 else float(recall * prevalence / den)


def precision_projection(recall: float, fpr: float, recall_ci: Sequence[float | None],
                         fpr_ci: Sequence[float | None], prevalences: Sequence[str]) -> list[dict[str, Any]]:
    """The record's ``prevalence_projection``: precision (and its interval) at each prevalence.

    Precision is monotone in recall (up) and fpr (down), so the interval's bounds come from the
    ends of both intervals; a bound missing from either (None) leaves that bound None.
    """
    out = []
    for text in prevalences:
        pi = parse_prevalence(text)
        lo = project_precision(recall_ci[0], fpr_ci[1], pi) if None not in (recall_ci[0], fpr_ci[1]) else None
        hi = project_precision(recall_ci[1], fpr_ci[0], pi) if None not in (recall_ci[1], fpr_ci[0]) else None
        out.append({"prevalence": str(text), "alpha_fraction": pi, "precision": project_precision(recall, fpr, pi),
                    "precision_ci": [lo, hi]})
    return out


def build_threshold_record(
    labels: Any,
    scores: Any,
    *,
    target_kind: str,
    target_value: float,
    model_hashes: Sequence[str],
    calibration_store: dict[str, Any],
    prevalences: Sequence[str] = DEFAULT_PREVALENCES,
    level: float = 0.95,
    ci_method: str = "clopper-pearson",
    score_precision: str | None = None,
) -> dict[str, Any]:
    """The threshold record for labelled calibration ``scores`` (pure: no I/O).

    Parameters
    ----------
    labels : array-like, int (n,)
        1 alpha, 0 other.
    scores : array-like, float (n,)
        Ensemble mean logits of the calibration crops with a known label.
    target_kind : {"recall", "precision"}
    target_value : float
    model_hashes : sequence of str
        Checkpoint hashes of the ensemble that produced ``scores``.
    calibration_store : dict
        ``path`` and ``hash`` of the labelled store; class counts are filled in here.
    prevalences : sequence of str
        ``"1:183"``-style prevalences to project precision to.
    """
    if target_kind == "recall":
        t = threshold_at_recall(labels, scores, target_value)
    elif target_kind == "precision":
        t = threshold_at_precision(labels, scores, target_value)
    else:
        raise InputError(f"target kind must be 'recall' or 'precision', got {target_kind!r}")
    op = operating_point_at_threshold(np.ravel(labels), np.ravel(scores), t)
    tp, fp, sel = op.true_positives, op.false_positives, op.selected
    n_pos, n_neg = op.positives, op.total - op.positives
    recall = tp / n_pos
    fpr = fp / n_neg if n_neg else 0.0
    r_ci = proportion_ci(tp, n_pos, level=level, method=ci_method)
    f_ci = proportion_ci(fp, n_neg, level=level, method=ci_method)
    projection = precision_projection(recall, fpr, r_ci, f_ci, prevalences)
    return {
        "scanstream_threshold": RECORD_VERSION,
        "threshold": float(t),
        "target": {"kind": target_kind, "value": float(target_value)},
        "achieved": {
            "recall": recall,
            "recall_ci": list(r_ci),
            "precision": tp / sel if sel else None,
            "precision_ci": list(proportion_ci(tp, sel, level=level, method=ci_method)),
            "false_positive_rate": fpr,
            "false_positive_rate_ci": list(f_ci),
            "selected": sel,
            "true_positives": tp,
            "false_positives": fp,
        },
        "ci": {"method": ci_method, "level": level},
        "calibration_store": {**calibration_store, "alpha": n_pos, "other": n_neg},
        "model_hashes": sorted(model_hashes),
        "score_precision": score_precision,
        "prevalence_projection": projection,
        "version": __version__,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# -- records on disk ---------------------------------------------------------------------
def validate_threshold_record(record: Any, *, source: str = "threshold record") -> dict[str, Any]:
    """Check the fields every consumer relies on; return the record or raise ThresholdError."""
    if not isinstance(record, dict):
        raise ThresholdError(f"{source}: not a JSON object")
    t = record.get("threshold")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise ThresholdError(f"{source}: 'threshold' must be a finite number, got {t!r}")
    target = record.get("target")
    if not isinstance(target, dict) or target.get("kind") not in ("recall", "precision"):
        raise ThresholdError(f"{source}: 'target' must be {{'kind': 'recall'|'precision', 'value': ...}}, got {target!r}")
    hashes = record.get("model_hashes")
    if not isinstance(hashes, list) or not hashes or not all(isinstance(h, str) for h in hashes):
        raise ThresholdError(f"{source}: 'model_hashes' must be a non-empty list of checkpoint hashes, got {hashes!r}")
    for key in ("achieved", "calibration_store"):
        if not isinstance(record.get(key), dict):
            raise ThresholdError(f"{source}: missing {key!r}")
    return record


def load_threshold(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a threshold record JSON file."""
    p = Path(path)
    try:
        record = json.loads(p.read_text())
    except FileNotFoundError:
        raise ThresholdError(f"{p}: no such threshold record") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ThresholdError(f"{p}: not a readable JSON threshold record: {exc}") from None
    return validate_threshold_record(record, source=str(p))


def write_threshold(record: dict[str, Any], path: str | os.PathLike) -> Path:
    """Check a record and write it to ``path`` atomically (:func:`scanstream.atomic.write_json`)."""
    p = Path(path)
    validate_threshold_record(record, source=str(p))
    return write_json(p, record, sort_keys=False)


def check_models(record: dict[str, Any], model_hashes: Sequence[str], *, source: str = "threshold record") -> None:
    """Refuse a record calibrated for other models than ``model_hashes`` (ThresholdError)."""
    want, have = sorted(record["model_hashes"]), sorted(model_hashes)
    if want != have:
        raise ThresholdError(
            f"{source}: calibrated for models {want} but the given models are {have}; "
            "calibrate a threshold for these models with `scanstream threshold`"
        )
