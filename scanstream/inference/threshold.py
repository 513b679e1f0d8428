"""Calibrated thresholds: choose the logit cut for a target recall or precision, with evidence.

A threshold record (DESIGN.md, "Threshold record") is a small JSON document that says which
logit cut to apply, why (the target), what it achieved on a labelled calibration store (recall
and precision with binomial confidence intervals), which models it belongs to (their
checkpoint hashes) and what precision to expect at other prevalences. Precision depends on
the prevalence of alpha decays, which differs between sheets (the paper's VALID was about
1:17 alpha:other, its TEST about 1:183), so the record projects it from recall and the false
positive rate, which do not::

    precision(pi) = r * pi / (r * pi + fpr * (1 - pi))

The core here is pure functions over numpy arrays; :func:`calibrate_threshold` is the I/O
edge that scores a store (:func:`scanstream.inference.classify.score_store`) and builds the record.
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
from scanstream.errors import InputError, ThresholdError

RECORD_VERSION = 1
CI_METHODS = {"clopper-pearson": "exact", "wilson": "wilson"}
DEFAULT_PREVALENCES = ("1:17", "1:183")  # the paper's VALID and TEST (PHYSICS.md)


# -- pure core ---------------------------------------------------------------------------
def _validate(scores: Any, labels: Any, target: float, what: str) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise InputError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    if not np.all(np.isfinite(s)):
        raise InputError(f"scores contain {int((~np.isfinite(s)).sum())} non-finite values")
    bad = set(np.unique(y).tolist()) - {0, 1}
    if bad:
        raise InputError(f"labels must be 0 or 1 (filter unknown -1 first), got {sorted(bad)}")
    if not (0.0 < float(target) <= 1.0):
        raise InputError(f"target {what} must be in (0, 1], got {target!r}")
    if not (y == 1).any():
        raise ThresholdError("no positive (alpha) labels: a threshold cannot be calibrated")
    return s, y.astype(bool)


def threshold_at_recall(scores: Any, labels: Any, target: float) -> float:
    """The highest threshold whose selection ``score >= threshold`` reaches ``target`` recall.

    Parameters
    ----------
    scores : array-like, float (n,)
        Logits (higher = more alpha-like).
    labels : array-like, int (n,)
        1 alpha decay, 0 other.
    target : float
        Recall to reach, in (0, 1].

    Returns
    -------
    float
        The score of the ``ceil(target * n_pos)``-th highest positive: selecting every crop at
        or above it keeps at least that many positives, and any higher cut keeps fewer.

    Examples
    --------
    >>> threshold_at_recall([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 1], 2 / 3)
    0.7
    """
    s, y = _validate(scores, labels, target, "recall")
    pos = np.sort(s[y])[::-1]
    # round before ceil so that 0.9 * 10 = 9.000000000000002 asks for 9 positives, not 10
    k = max(1, math.ceil(round(float(target) * pos.size, 9)))
    return float(pos[k - 1])


def threshold_at_precision(scores: Any, labels: Any, target: float) -> float:
    """The lowest threshold (highest recall) whose selection reaches ``target`` precision.

    Parameters
    ----------
    scores, labels : array-like (n,)
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
    >>> threshold_at_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 1], 0.75)
    0.1
    """
    s, y = _validate(scores, labels, target, "precision")
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


def operating_point(scores: Any, labels: Any, threshold: float) -> dict[str, int]:
    """Confusion counts of the cut ``score >= threshold``: tp, fp, fn, tn."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel() == 1
    sel = s >= threshold
    return {
        "tp": int((sel & y).sum()),
        "fp": int((sel & ~y).sum()),
        "fn": int((~sel & y).sum()),
        "tn": int((~sel & ~y).sum()),
    }


def build_threshold_record(
    scores: Any,
    labels: Any,
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
    scores : array-like, float (n,)
        Ensemble mean logits of the calibration crops with a known label.
    labels : array-like, int (n,)
        1 alpha, 0 other.
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
        t = threshold_at_recall(scores, labels, target_value)
    elif target_kind == "precision":
        t = threshold_at_precision(scores, labels, target_value)
    else:
        raise InputError(f"target kind must be 'recall' or 'precision', got {target_kind!r}")
    c = operating_point(scores, labels, t)
    n_pos, n_neg = c["tp"] + c["fn"], c["fp"] + c["tn"]
    sel = c["tp"] + c["fp"]
    recall = c["tp"] / n_pos
    fpr = c["fp"] / n_neg if n_neg else 0.0
    r_ci = proportion_ci(c["tp"], n_pos, level=level, method=ci_method)
    f_ci = proportion_ci(c["fp"], n_neg, level=level, method=ci_method)
    projection = []
    for text in prevalences:
        pi = parse_prevalence(text)
        lo, hi = project_precision(r_ci[0], f_ci[1], pi), project_precision(r_ci[1], f_ci[0], pi)
        projection.append(
            {
                "prevalence": str(text),
                "alpha_fraction": pi,
                "precision": project_precision(recall, fpr, pi),
                # monotone in recall (up) and fpr (down): the bounds come from the ends of both intervals
                "precision_ci": [lo, hi],
            }
        )
    return {
        "scanstream_threshold": RECORD_VERSION,
        "threshold": float(t),
        "target": {"kind": target_kind, "value": float(target_value)},
        "achieved": {
            "recall": recall,
            "recall_ci": list(r_ci),
            "precision": c["tp"] / sel if sel else None,
            "precision_ci": list(proportion_ci(c["tp"], sel, level=level, method=ci_method)),
            "false_positive_rate": fpr,
            "false_positive_rate_ci": list(f_ci),
            "selected": sel,
            "true_positives": c["tp"],
            "false_positives": c["fp"],
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
    """Write a record atomically (temporary file, then rename)."""
    p = Path(path)
    validate_threshold_record(record, source=str(p))
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, p)
    return p


def check_models(record: dict[str, Any], model_hashes: Sequence[str], *, source: str = "threshold record") -> None:
    """Refuse a record calibrated for other models than ``model_hashes`` (ThresholdError)."""
    want, have = sorted(record["model_hashes"]), sorted(model_hashes)
    if want != have:
        raise ThresholdError(
            f"{source}: calibrated for models {want} but the given models are {have}; "
            "calibrate a threshold for these models with `scanstream threshold`"
        )


# -- I/O edge ----------------------------------------------------------------------------
def calibrate_threshold(
    store_path: str | os.PathLike,
    checkpoints: Sequence[str | os.PathLike],
    *,
    target_recall: float | None = None,
    target_precision: float | None = None,
    prevalences: Sequence[str] = DEFAULT_PREVALENCES,
    level: float = 0.95,
    ci_method: str = "clopper-pearson",
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Score a labelled store with the ensemble and build its threshold record.

    Exactly one of ``target_recall`` / ``target_precision`` is given. Crops labelled unknown
    (-1) are scored but not used.
    """
    from scanstream.devices import resolve_precision
    from scanstream.inference.classify import score_store
    from scanstream.inference.engine import checkpoint_identity
    from scanstream.store import open_store

    if (target_recall is None) == (target_precision is None):
        raise InputError("give exactly one of a target recall or a target precision")
    for text in prevalences:
        parse_prevalence(text)  # fail before the slow scoring
    store = open_store(store_path)
    labels = store.labels
    known = labels >= 0
    if not (labels == 1).any():
        raise ThresholdError(f"{store.path}: no crops labelled alpha (1); a threshold needs a labelled store")
    hashes = [checkpoint_identity(c) for c in checkpoints]
    scores = score_store(store, list(checkpoints), device=device, batch_size=batch_size, precision=precision, progress=progress)
    kind, value = ("recall", target_recall) if target_recall is not None else ("precision", target_precision)
    return build_threshold_record(
        scores[known],
        labels[known],
        target_kind=kind,
        target_value=float(value),
        model_hashes=hashes,
        calibration_store={"path": str(store.path), "hash": store.content_hash, "unknown": int((~known).sum())},
        prevalences=prevalences,
        level=level,
        ci_method=ci_method,
        score_precision=resolve_precision(precision, device),
    )
