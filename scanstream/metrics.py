"""Evaluation measures: Average Precision, precision-recall curves and the paper's Table 2.

Pure functions over numpy arrays; no I/O. ``labels`` are 1 (alpha decay) / 0 (other) and
``scores`` are logits (higher = more alpha-like); objects with unknown labels (-1) must be
dropped by the caller.

Errors on counts (docs/physics.md, "errors as sqrt(N)")
-------------------------------------------------------
The paper quotes the former method's precision as 0.081 +- 0.006 (201 true alpha decays among
2,489 selected objects) and its recall as 0.788 +- 0.056 (201 of 255 alpha decays). Both come
from a Poisson error on the number of true positives with the denominator held fixed::

    precision = TP / selected     +- sqrt(TP) / selected     (201/2489 = 0.0808 +- 0.0057)
    recall    = TP / positives    +- sqrt(TP) / positives    (201/255  = 0.7882 +- 0.0556)
    candidates = selected         +- sqrt(selected)

A binomial error (sqrt(p (1 - p) / n)) would give 0.0055 and 0.0256 instead and does not
reproduce the paper's recall error, so :func:`precision_with_error` and
:func:`recall_with_error` use sqrt(TP). Ratios of two measured values (the precision ratio,
the human-load factor) propagate relative errors in quadrature::

    r = a / b,   sigma_r = r * sqrt((sigma_a / a)^2 + (sigma_b / b)^2)

which turns the paper's 0.547 +- 0.025 over 0.081 +- 0.006 into 6.8 +- 0.6. Over several
models (the paper's four seeds), a quantity is quoted as mean +- sample standard deviation
(ddof = 1), :func:`mean_std`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from scanstream.errors import InputError


@dataclass(frozen=True)
class Measured:
    """A value with its one-sigma error."""

    value: float
    error: float

    def __truediv__(self, other: Measured) -> Measured:
        return ratio_with_error(self, other)

    def format(self, decimals: int = 3) -> str:
        """``"0.081 +- 0.006"`` with ``decimals`` places on both."""
        if not math.isfinite(self.error):
            return f"{self.value:.{decimals}f}"
        return f"{self.value:.{decimals}f} +- {self.error:.{decimals}f}"

    def to_dict(self) -> dict[str, float]:
        return {"value": float(self.value), "error": float(self.error)}


def check_labels_scores(labels: np.ndarray, scores: np.ndarray, *, need_both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``labels`` (n,) in {0, 1} and finite ``scores`` (n,) of the same length.

    Raises
    ------
    InputError
        Different lengths, labels other than 0/1, non-finite scores, or (``need_both``) a
        class that is absent.
    """
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise InputError(f"labels and scores must be 1-d, got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise InputError(f"labels ({y.shape[0]}) and scores ({s.shape[0]}) differ in length")
    bad = set(np.unique(y).tolist()) - {0, 1}
    if bad:
        raise InputError(f"labels must be 0 or 1 (drop unknown -1 first), got {sorted(bad)}")
    if not np.all(np.isfinite(s)):
        raise InputError(f"scores contain {int((~np.isfinite(s)).sum())} non-finite values")
    y = y.astype(np.int8)
    if need_both and (not (y == 1).any() or not (y == 0).any()):
        raise InputError(
            f"need both classes to measure precision and recall, got {int((y == 1).sum())} alpha "
            f"and {int((y == 0).sum())} other"
        )
    return y, s


def check_target(value: float, what: str) -> float:
    """A target recall or precision as a float in (0, 1]; an InputError naming ``what`` otherwise."""
    if not 0.0 < float(value) <= 1.0:
        raise InputError(f"target {what} must be in (0, 1], got {value!r}")
    return float(value)


def recall_cut(labels: np.ndarray, scores: np.ndarray, recall: float) -> float:
    """The highest threshold whose selection ``score >= threshold`` reaches ``recall``.

    Objects are taken in decreasing score until ``ceil(recall * positives)`` alpha decays are
    selected; the threshold is the score of the last alpha decay taken (every object tied with
    it is selected too). Any higher cut keeps fewer alpha decays.

    Parameters
    ----------
    labels : array of int, shape (n,)
        1 alpha decay, 0 other; at least one alpha decay.
    scores : array of float, shape (n,)
    recall : float
        Target recall in (0, 1].

    Examples
    --------
    >>> recall_cut(np.array([1, 0, 1, 1]), np.array([0.9, 0.8, 0.7, 0.1]), 2 / 3)
    0.7
    """
    recall = check_target(recall, "recall")
    y, s = check_labels_scores(labels, scores, need_both=False)
    positives = int((y == 1).sum())
    if positives == 0:
        raise InputError("recall is undefined without alpha decays (0 positives)")
    # the small tolerance keeps 201/255 -> 201 (and 0.9 * 10 -> 9) despite floating point
    need = max(1, math.ceil(recall * positives - 1e-9))
    return float(np.sort(s[y == 1])[::-1][need - 1])


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average Precision: the area under the step precision-recall curve (scikit-learn).

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds, highest first.

    Parameters
    ----------
    labels : array of int, shape (n,)
        1 alpha decay, 0 other.
    scores : array of float, shape (n,)
        Logits (or any score increasing with alpha-likeness).

    Examples
    --------
    >>> average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1]))
    0.8333333333333333
    """
    # scikit-learn is imported where a curve is computed, not with this module: the candidate
    # table's readers (`scanstream query`, `info`) reach this module and would pay ~1.7 s for it
    from sklearn.metrics import average_precision_score

    y, s = check_labels_scores(labels, scores)
    return float(average_precision_score(y, s))


def precision_recall_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score threshold (scikit-learn).

    Returns
    -------
    precision, recall : array of float, shape (k + 1,)
        Recall decreasing to 0; the last point is (precision 1, recall 0) by convention.
    thresholds : array of float, shape (k,)
        Increasing score thresholds (``score >= threshold`` is selected).
    """
    from sklearn.metrics import precision_recall_curve as sk_precision_recall_curve  # as in average_precision

    y, s = check_labels_scores(labels, scores)
    precision, recall, thresholds = sk_precision_recall_curve(y, s)
    return precision, recall, thresholds


def count_with_error(n: float) -> Measured:
    """A count with its Poisson error sqrt(n)."""
    if n < 0:
        raise InputError(f"a count cannot be negative, got {n}")
    return Measured(float(n), math.sqrt(n))


def precision_with_error(true_positives: int, selected: int) -> Measured:
    """TP / selected +- sqrt(TP) / selected (module docstring). NaN when nothing is selected."""
    _check_counts(true_positives, selected, "selected")
    if selected == 0:
        return Measured(math.nan, math.nan)
    return Measured(true_positives / selected, math.sqrt(true_positives) / selected)


def recall_with_error(true_positives: int, positives: int) -> Measured:
    """TP / positives +- sqrt(TP) / positives (module docstring)."""
    _check_counts(true_positives, positives, "positives")
    if positives == 0:
        raise InputError("recall is undefined without alpha decays (0 positives)")
    return Measured(true_positives / positives, math.sqrt(true_positives) / positives)


def _check_counts(k: int, n: int, name: str) -> None:
    if k < 0 or n < 0:
        raise InputError(f"counts cannot be negative: true positives {k}, {name} {n}")
    if k > n:
        raise InputError(f"true positives ({k}) exceed {name} ({n})")


def ratio_with_error(numerator: Measured, denominator: Measured) -> Measured:
    """a / b with relative errors added in quadrature (module docstring)."""
    a, b = numerator, denominator
    if b.value == 0:
        return Measured(math.nan, math.nan)
    r = a.value / b.value
    if a.value == 0:
        return Measured(0.0, abs(a.error / b.value))
    rel = math.hypot(a.error / a.value, b.error / b.value)
    return Measured(r, abs(r) * rel)


def mean_std(values: Sequence[float]) -> Measured:
    """Mean +- sample standard deviation (ddof = 1) over models; the error is NaN for one value."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise InputError("mean of no values")
    return Measured(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan)


@dataclass(frozen=True)
class OperatingPoint:
    """What a selection rule picks from a labelled set.

    Attributes
    ----------
    threshold : float or None
        Score threshold (``score >= threshold`` selected); None for a rule without one.
    selected, true_positives, positives, total : int
        Objects selected, alpha decays among them, alpha decays in the set, objects in the set.
    """

    threshold: float | None
    selected: int
    true_positives: int
    positives: int
    total: int

    @property
    def false_positives(self) -> int:
        return self.selected - self.true_positives

    @property
    def candidates(self) -> Measured:
        return count_with_error(self.selected)

    @property
    def precision(self) -> Measured:
        return precision_with_error(self.true_positives, self.selected)

    @property
    def recall(self) -> Measured:
        return recall_with_error(self.true_positives, self.positives)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            false_positives=self.false_positives,
            candidates=self.candidates.to_dict(),
            precision=self.precision.to_dict(),
            recall=self.recall.to_dict(),
        )
        return d


def operating_point_from_selection(labels: np.ndarray, selected: np.ndarray) -> OperatingPoint:
    """The operating point of a boolean selection (the former method's cuts)."""
    y = np.asarray(labels)
    sel = np.asarray(selected, dtype=bool)
    y, _ = check_labels_scores(y, np.zeros(len(y)), need_both=False)
    if sel.shape != y.shape:
        raise InputError(f"selection ({sel.shape[0]}) and labels ({y.shape[0]}) differ in length")
    return OperatingPoint(
        threshold=None,
        selected=int(sel.sum()),
        true_positives=int((sel & (y == 1)).sum()),
        positives=int((y == 1).sum()),
        total=int(y.size),
    )


def operating_point_at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> OperatingPoint:
    """Select ``score >= threshold``."""
    y, s = check_labels_scores(labels, scores, need_both=False)
    op = operating_point_from_selection(y, s >= threshold)
    return OperatingPoint(float(threshold), op.selected, op.true_positives, op.positives, op.total)


def operating_point_at_recall(labels: np.ndarray, scores: np.ndarray, recall: float) -> OperatingPoint:
    """The highest threshold whose selection reaches ``recall``.

    Objects are taken in decreasing score until ``ceil(recall * positives)`` alpha decays are
    selected (the same number of true positives as a rule with that recall); the threshold is
    the score of the last alpha decay taken (:func:`recall_cut`), and every object tied with it
    is selected too.

    Parameters
    ----------
    labels : array of int, shape (n,)
    scores : array of float, shape (n,)
    recall : float
        Target recall in (0, 1].

    Examples
    --------
    >>> op = operating_point_at_recall(np.array([1, 0, 1, 0, 1]), np.array([5., 4., 3., 2., 1.]), 2 / 3)
    >>> (op.threshold, op.selected, op.true_positives)
    (3.0, 3, 2)
    """
    check_target(recall, "recall")
    y, s = check_labels_scores(labels, scores)
    return operating_point_at_threshold(y, s, recall_cut(y, s, recall))


def table2(former: OperatingPoint, cnn: OperatingPoint | Sequence[OperatingPoint]) -> dict:
    """The paper's Table 2: the former method against the CNN on the same set.

    Parameters
    ----------
    former : OperatingPoint
        The former method's selection.
    cnn : OperatingPoint or sequence of OperatingPoint
        The CNN's selection (usually at the former method's recall). With one operating point
        counts carry sqrt(N) errors (module docstring); with several (one per model, the
        paper's four seeds) every quantity is the mean +- sample std over the models.

    Returns
    -------
    dict
        ``former`` and ``cnn``: {candidates, precision, recall, true_positives} as
        {value, error}; ``precision_ratio`` (CNN / former precision) and ``load_factor``
        (former candidates / CNN candidates: how much less a person has to look at), both
        with propagated errors; ``models``: the number of CNN operating points.

    Examples
    --------
    >>> former = OperatingPoint(None, 2489, 201, 255, 46948)
    >>> t = table2(former, OperatingPoint(0.0, 366, 201, 255, 46948))
    >>> round(t["former"]["precision"]["value"], 3), round(t["former"]["precision"]["error"], 3)
    (0.081, 0.006)
    """
    ops = [cnn] if isinstance(cnn, OperatingPoint) else list(cnn)
    if not ops:
        raise InputError("table2 needs at least one CNN operating point")
    for op in ops:
        if (op.positives, op.total) != (former.positives, former.total):
            raise InputError(
                f"CNN and former method were measured on different sets: {op.positives}/{op.total} "
                f"vs {former.positives}/{former.total} (alpha/total)"
            )
    if len(ops) == 1:
        op = ops[0]
        cand, prec, rec = op.candidates, op.precision, op.recall
        tp = count_with_error(op.true_positives)
    else:
        cand = mean_std([op.selected for op in ops])
        prec = mean_std([op.precision.value for op in ops])
        rec = mean_std([op.recall.value for op in ops])
        tp = mean_std([op.true_positives for op in ops])
    return {
        "models": len(ops),
        "positives": former.positives,
        "total": former.total,
        "former": {
            "candidates": former.candidates.to_dict(),
            "true_positives": count_with_error(former.true_positives).to_dict(),
            "precision": former.precision.to_dict(),
            "recall": former.recall.to_dict(),
        },
        "cnn": {
            "candidates": cand.to_dict(),
            "true_positives": tp.to_dict(),
            "precision": prec.to_dict(),
            "recall": rec.to_dict(),
            "thresholds": [op.threshold for op in ops],
        },
        "precision_ratio": ratio_with_error(prec, former.precision).to_dict(),
        "load_factor": ratio_with_error(former.candidates, cand).to_dict(),
    }


def false_positives_by_category(labels: np.ndarray, categories: Sequence[str | None], selected: np.ndarray) -> dict[str, int]:
    """Counts of selected non-alpha objects per category (``"unknown"`` for a missing one), largest first."""
    y = np.asarray(labels)
    sel = np.asarray(selected, dtype=bool)
    if not (len(y) == len(sel) == len(categories)):
        raise InputError(f"labels ({len(y)}), categories ({len(categories)}) and selection ({len(sel)}) differ in length")
    out: dict[str, int] = {}
    for i in np.flatnonzero(sel & (y == 0)):
        key = categories[i] if categories[i] is not None else "unknown"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def paired_false_positives(labels: np.ndarray, former: np.ndarray, cnn: np.ndarray) -> dict[str, Any]:
    """Which method's selection holds more false positives, object by object (McNemar's test).

    Both selections are made on the same objects; at equal recall they hold the same number of
    alpha decays, so the comparison is in the non-alpha objects only one of them selects:
    ``only_former`` (b) and ``only_cnn`` (c). Under "neither is better" each of the b + c is
    equally likely either way, so ``p_value`` is the exact two-sided binomial probability of a
    split at least as uneven (McNemar's exact test); it accounts for the two selections sharing
    most of their objects, which the independent errors of :func:`table2` do not.

    Examples
    --------
    >>> d = paired_false_positives(np.array([0, 0, 0, 1]), np.array([1, 1, 0, 1]), np.array([0, 1, 0, 1]))
    >>> (d["only_former"], d["only_cnn"], d["both"], d["p_value"])
    (1, 0, 1, 1.0)
    """
    from scipy.stats import binomtest

    y = np.asarray(labels)
    f, c = np.asarray(former, dtype=bool), np.asarray(cnn, dtype=bool)
    if not (len(y) == len(f) == len(c)):
        raise InputError(f"labels ({len(y)}) and the two selections ({len(f)}, {len(c)}) differ in length")
    neg = y == 0
    b, cc = int((f & ~c & neg).sum()), int((c & ~f & neg).sum())
    p = float(binomtest(b, b + cc, 0.5).pvalue) if b + cc else 1.0
    return {"only_former": b, "only_cnn": cc, "both": int((f & c & neg).sum()), "p_value": p}


def class_counts(labels: np.ndarray) -> dict[str, int]:
    """{"alpha", "other", "total"} of a 0/1 label array."""
    y = np.asarray(labels)
    return {"alpha": int((y == 1).sum()), "other": int((y == 0).sum()), "total": int(y.size)}
