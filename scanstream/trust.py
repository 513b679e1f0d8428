"""Label-free trust in one sheet's selection: its expected alpha decays, and drift from the calibration data.

Users have no labels at night. What the scores alone can say about a sheet:

- **Expected alpha decays.** Under prior shift (each class's score distribution as on the
  labelled calibration store, only the mix changed), a sheet's alpha fraction ``pi`` is the
  maximum of the mixture likelihood over its objects' likelihood ratios
  ``r_i = f_alpha(s_i) / f_other(s_i)``, the fixed point of the EM of Saerens, Latinne &
  Decaestecker (2002, Neural Computation 14:21); each object's posterior is
  ``q_i = pi r_i / (pi r_i + 1 - pi)`` and the expected count ``N pi = sum q_i``. It is solved by
  a root search on the likelihood's derivative (monotone, so the root is EM's fixed point).
  ``r`` comes from the record's ``trust`` block: version 2 has the **histogram map**
  (:func:`fit_histogram`: the classes' bin probabilities' ratio, Jeffreys' prior); version 1
  (older records, still read) a Platt map only (logistic regression of label on logit). The
  68 % interval (:func:`count_interval`) adds the likelihood's curvature, the Poisson-binomial
  spread of the count around ``sum q_i`` and the map's own uncertainty (histograms drawn from
  their Dirichlet posterior; Platt maps refitted on bootstrap resamples).

  Why the histogram (issue 24). Measured on the cached simulated sheets of
  ``benchmarks/shifted_sheets.py`` (prevalence 1:183, shipped cascade e07378ba7c4ee359, map
  fitted on SH-VALID-3000: 300 alpha, 2,700 other), true -> Platt [68 %] -> histogram [68 %]:
  SH-IN1..3 (tuned on: 8 bins per class, prior 0.5): 109 -> 139.6 [115, 164] -> 114.2 [89, 140];
  109 -> 166.4 [141, 192] -> 132.5 [104, 161]; 109 -> 124.7 [103, 146] -> 106.3 [82, 131].
  Held out: HOLDOUT-46948 255 -> 315.8 [264, 368] -> 241.7 [187, 296]; SH-IN4 109 -> 143.4
  [117, 170] -> 108.6 [82, 136]; SH-IN5 109 -> 155.5 [130, 181] -> 120.6 [93, 148]. Platt's
  one slope carries the overlap region's ratio (where VALID holds 33 alpha and 15 other between
  logits -0.5 and 1.5, a sheet 8 and 173 per 109 alpha) over the whole range, and a sheet's
  ~20,000 others make any excess count. Shifted sheets (beyond the prior-shift assumption; the
  drift flag is the guard): PALER 74.5 -> 58.1, DARKER 183.8 -> 151.7, FOGGIER 123.4 -> 97.6,
  LOW30 106.3 -> 77.9, HIGH30 177.0 -> 143.7, FAR 44.0 -> 28.3 (109 each). Limitation: a bin
  with no calibration object of one class rests on the prior; on Gaussian toy scores with no
  others at all above the alpha peak (tests/test_trust.py) the histogram counts 25 % low at
  1:200 where Platt is unbiased, and there its interval undercovers.
- **Expected recall** of the selection: the posteriors of the selected objects over the
  expected count.
- **Drift.** All of the above assumes the sheet's objects look like the calibration store's;
  :mod:`scanstream.drift` compares them (score, picker features, image statistics) and
  raises the flag.

The core is pure functions over numpy arrays; :func:`sheet_inputs` is the one edge that reads
crop stores (object tables and a sample of crops). This module sits below the stages that use
it (threshold calibration, ``scanstream info``, the morning summary) and imports none of them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

from scanstream.drift import (
    IMAGE_STATISTICS,
    crop_statistics,
    drift_object,
    multiplicity_histogram,
    prong_lengths,
    quantiles,
)
from scanstream.errors import InputError, StoreError
from scanstream.store import open_store

TRUST_VERSION = 2
#: Score bins of the histogram map: this many quantile bins of each class's calibration scores,
#: their edges merged (so both the alpha decays' and the others' shapes are resolved).
HISTOGRAM_BINS = 8
#: Pseudo-count per bin and class (Jeffreys' prior on each class's bin probabilities).
HISTOGRAM_PRIOR = 0.5
#: Draws of the two histograms from their posterior (Dirichlet) for the map's uncertainty.
HISTOGRAM_DRAWS = 200
#: Calibration maps refitted on bootstrap resamples of the calibration data, kept in the record
#: so that each sheet's interval carries the calibration map's own uncertainty.
CALIBRATION_BOOTSTRAP = 50
#: Crops sampled per sheet for its image statistics (each read once, a strided pixel grid).
IMAGE_SAMPLE = 400
INTERVAL_LEVEL = 0.6827
_PROB_EPS = 1e-9

# -- calibration map -------------------------------------------------------------------------
def _labels_scores(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.ravel(np.asarray(labels))
    s = np.ravel(np.asarray(scores, dtype=np.float64))
    if y.shape != s.shape:
        raise InputError(f"labels and scores differ in length: {y.size} != {s.size}")
    if not np.isin(y, (0, 1)).all():
        raise InputError(f"labels must be 0 or 1, got {sorted(set(np.unique(y).tolist()) - {0, 1})[:5]}")
    if not np.isfinite(s).all():
        raise InputError("scores must be finite")
    return y.astype(bool), s


def fit_calibration(labels: Any, scores: Any) -> dict[str, Any]:
    """Platt scaling of logits on labelled calibration data: ``p = sigmoid(slope * score + intercept)``.

    The two parameters are the maximum-likelihood logistic regression of label on logit, by
    Newton's method (a ridge of 1e-6 on the slope only keeps perfectly separated data finite).
    The intercept is unpenalised, so the map reproduces the calibration prevalence, where the
    prior-shift EM starts. (scikit-learn's LogisticRegression gives the same fit but costs
    0.3-0.9 s per call here against under a millisecond.) ``labels``: 1 alpha decay, 0 other,
    both must occur; ``scores``: logits. Returns ``kind`` ("platt"), ``slope``, ``intercept``, and
    the calibration data's ``prevalence`` (alpha fraction), ``alpha`` and ``other`` counts.
    """
    y, s = _labels_scores(labels, scores)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        raise InputError(f"a calibration map needs both classes, got {n1} alpha and {n0} other")
    x = np.c_[s, np.ones_like(s)]
    w = np.array([0.0, math.log(n1 / n0)])
    ridge = np.diag([1e-6, 0.0])
    for _ in range(100):
        p = 0.5 * (1.0 + np.tanh(0.5 * (x @ w)))
        grad = x.T @ (y - p) - ridge @ w
        hess = (x * (p * (1.0 - p))[:, None]).T @ x + ridge + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w += step
        if np.max(np.abs(step)) < 1e-10:
            break
    return {"kind": "platt", "slope": float(w[0]), "intercept": float(w[1]),
            "prevalence": n1 / (n1 + n0), "alpha": n1, "other": n0}


def calibrated_probability(calibration: Mapping[str, Any], scores: Any) -> np.ndarray:
    """Probability of alpha at the calibration prevalence, for logits ``scores`` (float64 (n,))."""
    z = calibration["slope"] * np.asarray(scores, dtype=np.float64) + calibration["intercept"]
    return np.clip(0.5 * (1.0 + np.tanh(0.5 * z)), _PROB_EPS, 1.0 - _PROB_EPS)


def fit_histogram(labels: Any, scores: Any, *, bins: int = HISTOGRAM_BINS, prior: float = HISTOGRAM_PRIOR) -> dict[str, Any]:
    """The histogram map: each class's calibration scores counted in common score bins.

    The edges are the inner ``bins``-quantiles of the alpha decays' scores merged with those of
    the others' (duplicates dropped; the outer bins open-ended), so every bin holds a share of at
    least one class. A sheet's likelihood ratio in a bin is the ratio of the two classes' bin
    probabilities under Jeffreys' prior (:func:`histogram_ratio`); nothing is assumed about the
    map's shape, so a cascade's two score regimes (the feature model's logit where the prefilter
    rejects, the network's where it keeps) need no common form. Returns ``kind`` ("histogram"),
    ``edges``, ``alpha`` and ``other`` (counts per bin, ``len(edges) + 1`` each) and ``prior``.
    """
    y, s = _labels_scores(labels, scores)
    if not y.any() or y.all():
        raise InputError(f"a histogram map needs both classes, got {int(y.sum())} alpha and {int((~y).sum())} other")
    cut = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    edges = np.unique(np.r_[np.quantile(s[y], cut), np.quantile(s[~y], cut)])
    return {"kind": "histogram", "edges": edges.tolist(), "alpha": _bin_counts(edges, s[y]).tolist(),
            "other": _bin_counts(edges, s[~y]).tolist(), "prior": float(prior)}


def _bin_counts(edges: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(edges, scores, side="right"), minlength=edges.size + 1).astype(np.float64)


def histogram_ratio(histogram: Mapping[str, Any]) -> np.ndarray:
    """Likelihood ratio ``f_alpha / f_other`` per bin: the posterior-mean bin probabilities' ratio."""
    a = np.asarray(histogram["alpha"], dtype=np.float64) + histogram["prior"]
    o = np.asarray(histogram["other"], dtype=np.float64) + histogram["prior"]
    return (a / a.sum()) / (o / o.sum())


def histogram_variance(histogram: Mapping[str, Any], counts: np.ndarray, *, draws: int = HISTOGRAM_DRAWS, seed: int = 0) -> float:
    """Variance of a sheet's expected count over histograms drawn from their posterior.

    Each class's bin probabilities are drawn from Dirichlet(counts + prior) (seeded), the
    prevalence refitted on the sheet's bin ``counts``: the map's uncertainty from the finite
    calibration store, bins empty of one class there included.
    """
    rng = np.random.default_rng(seed)
    a = np.asarray(histogram["alpha"], dtype=np.float64) + histogram["prior"]
    o = np.asarray(histogram["other"], dtype=np.float64) + histogram["prior"]
    out = []
    for _ in range(draws):
        lr = rng.dirichlet(a) / np.maximum(rng.dirichlet(o), 1e-300)
        pi, _ = _ml_prevalence(lr, counts)
        out.append(float(np.sum(counts * _posteriors(lr, pi))))
    return float(np.var(out, ddof=1))


def usable_histogram(block: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The trust block's histogram map when it is well formed (version 2 blocks), else None."""
    h = block.get("histogram")
    try:
        edges, a, o = (np.asarray(h[k], dtype=np.float64) for k in ("edges", "alpha", "other"))
        ok = a.shape == o.shape == (edges.size + 1,) and float(h["prior"]) > 0 and np.all(np.diff(edges) > 0)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return h if ok and h["kind"] == "histogram" and a.sum() > 0 and o.sum() > 0 else None


# -- prior shift -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PriorShift:
    """A sheet's prevalence re-estimated from calibrated probabilities.

    Attributes
    ----------
    prevalence : float
        The sheet's alpha fraction (maximum likelihood, the EM fixed point).
    posteriors : ndarray, float64 (n,)
        Each object's probability of alpha at that prevalence.
    information : float
        Observed Fisher information of the mixture likelihood at ``prevalence`` (per unit of
        prevalence squared); 0 when the scores carry no information.
    """

    prevalence: float
    posteriors: np.ndarray
    information: float

    @property
    def expected_count(self) -> float:
        return float(self.posteriors.sum())


def _posteriors(lr: np.ndarray, pi: float) -> np.ndarray:
    return pi * lr / (pi * lr + (1.0 - pi))


def prior_shift(probabilities: Any, train_prevalence: float) -> PriorShift:
    """Re-estimate the alpha fraction of a set of objects from probabilities calibrated at ``train_prevalence``.

    Parameters
    ----------
    probabilities : array-like, float (n,)
        Calibrated probabilities of alpha at the calibration prevalence, in (0, 1).
    train_prevalence : float
        The calibration data's alpha fraction, in (0, 1).

    Returns
    -------
    PriorShift

    Examples
    --------
    >>> round(prior_shift([0.9, 0.9, 0.1, 0.1], 0.5).prevalence, 6)
    0.5
    """
    p = np.clip(np.ravel(np.asarray(probabilities, dtype=np.float64)), _PROB_EPS, 1.0 - _PROB_EPS)
    if p.size == 0:
        raise InputError("no objects to estimate a prevalence from")
    if not (0.0 < train_prevalence < 1.0):
        raise InputError(f"calibration prevalence must be in (0, 1), got {train_prevalence!r}")
    # likelihood ratio f_alpha(s) / f_other(s): the calibration prior divided out
    return shift_from_ratio((p / (1.0 - p)) * ((1.0 - train_prevalence) / train_prevalence))


def shift_from_ratio(lr: Any, weights: Any = None) -> PriorShift:
    """The prior-shift maximum likelihood from each object's likelihood ratio ``f_alpha(s) / f_other(s)``.

    ``weights`` (optional, (n,)) counts each entry that many times (objects grouped by score bin).
    """
    lr = np.ravel(np.asarray(lr, dtype=np.float64))
    wt = np.ones_like(lr) if weights is None else np.ravel(np.asarray(weights, dtype=np.float64))
    pi, info = _ml_prevalence(lr, wt)
    return PriorShift(prevalence=pi, posteriors=_posteriors(lr, pi), information=info)


def _ml_prevalence(lr: np.ndarray, wt: np.ndarray) -> tuple[float, float]:
    def score(pi: float) -> float:  # d log L / d pi, decreasing in pi
        return float(np.sum(wt * (lr - 1.0) / (pi * lr + 1.0 - pi)))

    lo, hi = 1e-12, 1.0 - 1e-12
    if score(lo) <= 0.0:
        pi = 0.0
    elif score(hi) >= 0.0:
        pi = 1.0
    else:
        pi = brentq(score, lo, hi, xtol=1e-14, rtol=1e-12)
    return float(pi), float(np.sum(wt * ((lr - 1.0) / (pi * lr + 1.0 - pi)) ** 2))


def prior_shift_em(probabilities: Any, train_prevalence: float, *, tol: float = 1e-12, max_iter: int = 100_000) -> float:
    """The Saerens et al. (2002) EM iteration itself (slow; the reference :func:`prior_shift` is checked against)."""
    p = np.clip(np.ravel(np.asarray(probabilities, dtype=np.float64)), _PROB_EPS, 1.0 - _PROB_EPS)
    pi = train_prevalence
    for _ in range(max_iter):
        w, v = pi / train_prevalence, (1.0 - pi) / (1.0 - train_prevalence)
        new = float(np.mean(w * p / (w * p + v * (1.0 - p))))
        if abs(new - pi) < tol:
            return new
        pi = new
    return pi


def count_interval(shift: PriorShift, *, level: float = INTERVAL_LEVEL, calibration_var: float = 0.0) -> tuple[float, float]:
    """Interval for the realised number of alpha decays among the objects.

    ``sum q_i`` is off from the realised count ``K`` in two independent ways: the estimated
    prevalence is off from the true one (variance ``1 / I`` from the likelihood's curvature,
    carried to the count by ``dS/dpi = sum q_i (1 - q_i) / (pi (1 - pi))``), and ``K`` spreads
    about its expectation given the scores (Poisson-binomial variance ``sum q_i (1 - q_i)``).
    ``calibration_var`` adds the calibration map's own uncertainty (the variance of the count
    over maps refitted on bootstrap resamples of the calibration data, :func:`map_variance`).
    The interval is normal, ``sum q_i +- z sqrt(var)``, clipped at 0 and at the object count.
    A map that is wrong for the sheet (the sheet unlike the calibration data) is not in it:
    the drift flag is the guard against that.
    """
    q = shift.posteriors
    pb = float(np.sum(q * (1.0 - q)))
    pi = shift.prevalence
    if 0.0 < pi < 1.0 and shift.information > 0.0:
        slope = pb / (pi * (1.0 - pi))
        var = pb + slope * slope / shift.information
    elif shift.information > 0.0:
        var = pb + (q.size**2) / shift.information  # at the boundary: the curvature alone, in counts
    else:
        var = float(q.size) ** 2 / 4.0  # the scores say nothing: anything from 0 to n
    var += max(0.0, float(calibration_var))
    z = float(norm.ppf(0.5 + level / 2.0))
    half = z * math.sqrt(var)
    n = shift.expected_count
    return (max(0.0, n - half), min(float(q.size), n + half))


def bootstrap_calibrations(labels: Any, scores: Any, *, n: int = CALIBRATION_BOOTSTRAP, seed: int = 0) -> list[list[float]]:
    """``[slope, intercept, prevalence]`` of Platt maps refitted on ``n`` bootstrap resamples (seeded)."""
    y, s = _labels_scores(labels, scores)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        i = rng.integers(0, y.size, y.size)
        if y[i].all() or not y[i].any():
            continue  # a resample without one class has no map
        cal = fit_calibration(y[i], s[i])
        out.append([cal["slope"], cal["intercept"], cal["prevalence"]])
    return out


def map_variance(scores: Any, bootstrap: Sequence[Sequence[float]] | None) -> float:
    """Variance of a set's expected count over the bootstrap calibration maps (0 without them)."""
    if not bootstrap or len(bootstrap) < 2:
        return 0.0
    counts = [prior_shift(calibrated_probability({"slope": a, "intercept": b}, scores), pi).expected_count
              for a, b, pi in bootstrap]
    return float(np.var(counts, ddof=1))


# -- the record's trust block ----------------------------------------------------------------
def _by_class(values: Any, y: np.ndarray, summarise: Any) -> dict[str, Any] | None:
    """``{"alpha": summarise(values of alpha), "other": summarise(values of others)}``, or None."""
    if values is None:
        return None
    ref = {"alpha": summarise(_select(values, y)), "other": summarise(_select(values, ~y))}
    return ref if ref["other"] is not None else None


def _select(values: Any, mask: np.ndarray) -> Any:
    if isinstance(values, np.ndarray):
        return values[mask]
    return [v for v, m in zip(values, mask, strict=True) if m]


def build_trust_reference(
    labels: Any,
    scores: Any,
    *,
    multiplicity: Any = None,
    lengths: Sequence[Any] | None = None,
    image: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The threshold record's ``trust`` block from labelled calibration data (pure).

    Parameters
    ----------
    labels, scores : array-like (n,)
        Labels (1 alpha, 0 other) and logits of the calibration crops.
    multiplicity : array-like (n,), optional
        The picker's prong count per crop.
    lengths : sequence of sequences of float, optional
        The picker's prong lengths (um) per crop.
    image : mapping, optional
        Per-crop image statistics (:func:`crop_statistics`) of the crops at ``image["rows"]``
        (indices into ``labels``; a sample of the store).

    Returns
    -------
    dict
        ``version``, ``calibration`` (:func:`fit_calibration`) and ``reference``: per quantity,
        the quantiles (a histogram for multiplicity) of each class.
    """
    y, s = _labels_scores(labels, scores)
    reference: dict[str, Any] = {"score": _by_class(s, y, quantiles)}
    if multiplicity is not None:
        m = np.asarray(multiplicity, dtype=np.float64)
        reference["multiplicity"] = _by_class(m, y, multiplicity_histogram)
    if lengths is not None:
        reference["prong_length"] = _by_class(list(lengths), y, lambda v: quantiles(prong_lengths(v)))
    if image is not None:
        rows = np.asarray(image["rows"], dtype=np.int64)
        for name in IMAGE_STATISTICS:
            reference[name] = _by_class(np.asarray(image[name]), y[rows], quantiles)
        reference["image_sample"] = int(rows.size)
    return {"version": TRUST_VERSION, "calibration": fit_calibration(y, s),
            "calibration_bootstrap": bootstrap_calibrations(y, s), "histogram": fit_histogram(y, s),
            "reference": reference}


def record_trust(record: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, str | None]:
    """The trust block of a threshold record, or None and why it cannot be used."""
    if not record:
        return None, "no threshold record in the table (classify ran without --threshold)"
    block = record.get("trust")
    if not isinstance(block, Mapping):
        return None, ("the threshold record has no calibration map (written by an earlier scanstream, or not from a "
                      "labelled store); calibrate one with `scanstream threshold` on a labelled store")
    cal = block.get("calibration") or {}
    ok = cal.get("kind") == "platt" and all(isinstance(cal.get(k), (int, float)) for k in ("slope", "intercept", "prevalence"))
    if not ok or not (0.0 < cal["prevalence"] < 1.0):
        return None, f"the threshold record's calibration map is not usable: {dict(cal)!r}"
    return dict(block), None


# -- one sheet -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SheetInputs:
    """What the trust fields of one sheet are computed from.

    Attributes
    ----------
    scores : ndarray, float (n,)
        Logits of every object of the sheet.
    selected : ndarray, bool (n,) or None
        The threshold's selection (None without a threshold).
    multiplicity, lengths
        The picker's features per object (None when the stores cannot be read).
    image : dict or None
        Image statistics of a sample of the sheet's crops (:func:`crop_statistics`).
    missing : dict
        Why a quantity is absent (quantity name -> reason).
    """

    scores: np.ndarray
    selected: np.ndarray | None = None
    multiplicity: np.ndarray | None = None
    lengths: list | None = None
    image: dict[str, np.ndarray] | None = None
    missing: Mapping[str, str] | None = None


def unavailable(why: str) -> dict[str, Any]:
    """The trust fields of a sheet that cannot have them, each saying so, and ``trust_unavailable`` why."""
    return {"expected_alpha": "unavailable", "expected_alpha_interval": "unavailable",
            "expected_recall": "unavailable", "drift": {"flag": None, "unavailable": why}, "trust_unavailable": why}


_PLATT_METHOD = ("prior-shift EM on Platt-calibrated scores; 68 % interval from the likelihood's curvature, the "
                 "Poisson-binomial spread and the calibration map's bootstrap")
_HISTOGRAM_METHOD = ("prior-shift EM on the calibration store's class score histograms; 68 % interval from the "
                     "likelihood's curvature, the Poisson-binomial spread and the histograms' posterior")


def expected_alpha(block: Mapping[str, Any], scores: np.ndarray) -> tuple[PriorShift, float, str]:
    """A sheet's prior shift, the calibration map's variance of its count, and the method in words.

    Version 2 blocks carry the histogram map (:func:`fit_histogram`); version 1 blocks (records
    written before it) only the Platt map, which is used then.
    """
    hist = usable_histogram(block)
    if hist is None:
        cal = block["calibration"]
        shift = prior_shift(calibrated_probability(cal, scores), cal["prevalence"])
        return shift, map_variance(scores, block.get("calibration_bootstrap")), _PLATT_METHOD
    edges = np.asarray(hist["edges"], dtype=np.float64)
    bins = np.searchsorted(edges, scores, side="right")
    shift = shift_from_ratio(histogram_ratio(hist)[bins])
    var = histogram_variance(hist, np.bincount(bins, minlength=edges.size + 1).astype(np.float64)) if scores.size else 0.0
    return shift, var, _HISTOGRAM_METHOD


def sheet_trust(inputs: SheetInputs, record: Mapping[str, Any] | None) -> dict[str, Any]:
    """``expected_alpha`` (with its 68 % interval), ``expected_recall`` and ``drift`` of one sheet.

    Fields that cannot be computed (no threshold record, or one without a calibration map) are
    the string ``"unavailable"`` and ``trust_unavailable`` says why.
    """
    block, why = record_trust(record)
    if block is None:
        return unavailable(why or "")
    scores = np.asarray(inputs.scores, dtype=np.float64)
    shift, map_var, method = expected_alpha(block, scores)
    n_alpha = shift.expected_count
    lo, hi = count_interval(shift, calibration_var=map_var)
    out: dict[str, Any] = {
        "expected_alpha": round(n_alpha, 2),
        "expected_alpha_interval": [round(lo, 2), round(hi, 2)],
        "expected_alpha_method": method,
        "estimated_prevalence": shift.prevalence,
    }
    if inputs.selected is None:
        out["expected_recall"] = "unavailable"
        out["trust_unavailable"] = "no selection (classify ran without a threshold)"
    else:
        sel = np.asarray(inputs.selected, dtype=bool)
        out["expected_recall"] = round(float(shift.posteriors[sel].sum() / n_alpha), 4) if n_alpha > 0 else None
    values = {"score": scores, "multiplicity": inputs.multiplicity,
              "prong_length": None if inputs.lengths is None else prong_lengths(inputs.lengths),
              **{n: None if inputs.image is None else inputs.image.get(n) for n in IMAGE_STATISTICS}}
    out["drift"] = drift_object(values, block.get("reference") or {}, shift.prevalence, missing=inputs.missing)
    return out


# -- the edge: a sheet's objects in its crop stores ------------------------------------------
def sheet_inputs(
    scores: Any,
    selected: Any,
    stores: Sequence[str | None],
    store_index: Any,
    *,
    image_sample: int = IMAGE_SAMPLE,
    seed: int = 0,
) -> SheetInputs:
    """A sheet's :class:`SheetInputs`: its scores, and its picker features and crops read from its stores.

    Parameters
    ----------
    scores, selected : array-like (n,)
        The candidate rows' ``score`` and ``selected`` (``selected`` may hold None: no threshold).
    stores : sequence of str (n,)
        Each row's crop store path (resolved); ``store_index`` its row in that store.
    image_sample : int
        Crops read for the image statistics (a seeded uniform sample of the sheet's rows).

    A store that cannot be opened leaves the features and image statistics absent, with the
    reason in ``missing``; nothing here raises for it.
    """
    s = np.asarray(scores, dtype=np.float64)
    sel_list = list(selected) if selected is not None else []
    sel = None if not sel_list or any(v is None for v in sel_list) else np.asarray(sel_list, dtype=bool)
    idx = np.asarray(store_index, dtype=np.int64)
    paths = np.asarray([p or "" for p in stores], dtype=object)
    opened: dict[str, Any] = {}
    try:
        for p in dict.fromkeys(paths.tolist()):
            if not p:
                raise InputError("a row has no store path")
            opened[p] = open_store(p)
    except (StoreError, InputError, OSError) as exc:
        why = f"crop store unreadable: {exc}"
        return SheetInputs(s, sel, missing={n: why for n in ("multiplicity", "prong_length", *IMAGE_STATISTICS)})
    mult = np.empty(s.size)
    lengths: list = [None] * s.size
    for p, store in opened.items():
        rows = np.nonzero(paths == p)[0]
        mult[rows] = store.table.column("multiplicity").take(idx[rows]).to_numpy(zero_copy_only=False)
        for r, v in zip(rows, store.table.column("track_lengths_um").take(idx[rows]).to_pylist(), strict=True):
            lengths[r] = v
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(s.size, size=min(image_sample, s.size), replace=False))
    image = {n: np.empty(pick.size) for n in IMAGE_STATISTICS}
    for p, store in opened.items():
        where = np.nonzero(paths[pick] == p)[0]
        if where.size:
            stats = crop_statistics(store.read_rows(idx[pick[where]]))
            for n in IMAGE_STATISTICS:
                image[n][where] = stats[n]
    return SheetInputs(s, sel, multiplicity=mult, lengths=lengths, image=image)


#: The candidate table columns :func:`table_trust` reads.
TABLE_COLUMNS = ["sheet", "score", "selected", "store", "store_index"]


def table_trust(rows: Any, record: Mapping[str, Any] | None, *, sheets: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Trust fields of each sheet (or of ``sheets``) of candidate rows (a pyarrow Table of :data:`TABLE_COLUMNS`).

    ``store`` must hold resolved store paths (as the candidate table's reader returns them).
    """
    block, why = record_trust(record)
    if block is None:  # the rows are not needed (and may be None)
        names = sheets if sheets is not None else sorted(set(rows.column("sheet").to_pylist()))
        return {s: unavailable(why or "") for s in names}
    names = np.asarray(rows.column("sheet").fill_null("").to_pylist(), dtype=object)
    out = {}
    for s in sorted(set(names.tolist())) if sheets is None else sheets:
        mask = names == s
        if not mask.any():
            out[s] = unavailable(f"no rows of sheet {s!r} in the table")
            continue
        part = rows.filter(mask)
        inputs = sheet_inputs(part.column("score").to_numpy(), part.column("selected").to_pylist(),
                              part.column("store").to_pylist(), part.column("store_index").to_numpy())
        out[s] = sheet_trust(inputs, record)
    return out


def store_image_statistics(path: str | os.PathLike, *, sample: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Image statistics of a seeded sample of a crop store's crops, with the sampled ``rows``."""
    store = open_store(path)
    rows = np.sort(np.random.default_rng(seed).choice(store.n, size=min(sample, store.n), replace=False))
    parts = [crop_statistics(store.read_rows(rows[i:i + 256])) for i in range(0, rows.size, 256)]  # bounded memory
    return {"rows": rows, **{n: np.concatenate([q[n] for q in parts]) for n in IMAGE_STATISTICS}}
