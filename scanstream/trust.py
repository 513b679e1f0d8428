"""Label-free trust in one sheet's selection: its expected alpha decays, and drift from the calibration data.

Users have no labels at night. What the scores alone can say about a sheet:

- **Expected alpha decays.** The threshold record carries a calibration map, logit ->
  probability, fitted on its labelled calibration store (Platt scaling: a logistic regression
  of label on logit, at that store's prevalence ``pi_c``). A sheet has its own prevalence
  ``pi``; under prior shift (the classes' score distributions unchanged, only their mix) the
  calibrated probabilities are re-weighted to it, and ``pi`` is the maximum of the mixture
  likelihood, the fixed point of the EM of Saerens, Latinne & Decaestecker (2002, Neural
  Computation 14:21)::

      q_i(pi) = w p_i / (w p_i + v (1 - p_i)),  w = pi / pi_c,  v = (1 - pi) / (1 - pi_c)
      pi      = mean_i q_i(pi)

  It is solved here by a root search on the likelihood's derivative (which is monotone, so
  the root is the fixed point EM converges to). The sheet's expected count is
  ``N pi = sum q_i``; its 68 % interval combines the likelihood's curvature (the estimate's
  sampling spread, ``1 / I(pi)`` with the observed information ``I``) and the Poisson-binomial
  spread of the realised count around ``sum q_i`` (``sum q_i (1 - q_i)``), and the calibration
  map's own uncertainty (the count's spread over maps refitted on bootstrap resamples of the
  calibration data, kept in the record), see :func:`count_interval`.
  Measured (issue 24) on the cached simulated sheets of ``benchmarks/shifted_sheets.py`` at
  1:183 with the shipped cascade (model e07378ba7c4ee359): the map fitted on SH-VALID-3000
  (one labelled sheet, 300 alpha and 2,700 other) counts every in-range sheet high by a common
  factor, true -> count [68 % interval before -> after :data:`CONDITION_SD`]: HOLDOUT-46948
  255 -> 315.9 [264, 368 -> 241, 391]; SH-IN1..5 109 each -> 139.6 [115, 164 -> 106, 174],
  166.4 [141, 192 -> 129, 204], 124.7 [103, 146 -> 95, 155], 143.4 [117, 170 -> 108, 179],
  155.5 [130, 181 -> 119, 192]. That factor is the store's, not the map's form: any in-range
  sheet's own labels as the store give +2.4 % on average over the other sheets (rms 16.0 %,
  25 pairs), and 3,000-object stores (300 alpha) drawn from the other in-range sheets -2.8 %
  (rms 15.0 %, 60 draws); a histogram map and Platt variants (per score range, reweighted to the
  sheets' prevalence, polynomial) refitted on SH-VALID-3000 moved the counts little or by a bias
  of their own (the histogram -18.5 % on the drawn stores). The count spread between a store's
  conditions and a sheet's is what the interval lacked: with single-sheet stores it held the
  truth on 60 % of pairs; :data:`CONDITION_SD` is the spread left once the map's bootstrap and
  the sheet's own spread are taken out, measured on the 6 pairs among SH-IN1..3 (0.17; 0.09 on
  all 30 pairs of the six in-range sheets, so it errs wide). With it: 76 % of the 25 pairs,
  78 % of SH-IN1..3's stores on the held-out HOLDOUT/SH-IN4/SH-IN5, 90 % of the drawn stores,
  4 of 6 in-range sheets from SH-VALID-3000 (+24 % to +53 %: an unlucky store, not fixable
  from its own labels; a store from several sheets is). Shifted sheets (drift's job; counts
  unchanged): PALER 74.5, DARKER 183.8, FOGGIER 123.4, LOW30 106.3, HIGH30 177.0, FAR 44.0.
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from scanstream.drift import (
    IMAGE_STATISTICS,
    crop_statistics,
    drift_object,
    multiplicity_histogram,
    prong_lengths,
    quantiles,
)
from scanstream.errors import InputError, StoreError
from scanstream.metrics import check_labels_scores
from scanstream.store import CropStore, open_store

TRUST_VERSION = 1
#: Calibration maps refitted on bootstrap resamples of the calibration data, kept in the record
#: so that each sheet's interval carries the calibration map's own uncertainty.
CALIBRATION_BOOTSTRAP = 50
#: Crops sampled per sheet for its image statistics (each read once, a strided pixel grid).
IMAGE_SAMPLE = 400
INTERVAL_LEVEL = 0.6827
#: Relative standard deviation of a sheet's count from the difference between its imaging
#: conditions and the calibration store's, beyond the map's sampling spread; measured as below
#: (module docstring), added to every interval.
CONDITION_SD = 0.17
_PROB_EPS = 1e-9

# -- calibration map -------------------------------------------------------------------------
def _labels_scores(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y, s = check_labels_scores(np.ravel(labels), np.ravel(scores), need_both=False)
    return y.astype(bool), s


def fit_calibration(labels: Any, scores: Any) -> dict[str, Any]:
    """Platt scaling of logits on labelled calibration data: ``p = sigmoid(slope * score + intercept)``.

    The two parameters are the maximum-likelihood logistic regression of label on logit, by
    Newton's method (a ridge of 1e-6 on the slope only keeps perfectly separated data finite).
    The intercept is unpenalised, so the map reproduces the calibration prevalence, where the
    prior-shift EM starts. (scikit-learn's LogisticRegression gives the same fit but costs
    0.3-0.9 s per call here against under a millisecond, and the record takes
    :data:`CALIBRATION_BOOTSTRAP` refits.)

    Parameters
    ----------
    labels : array-like, int (n,)
        1 alpha decay, 0 other; both must occur.
    scores : array-like, float (n,)
        Logits.

    Returns
    -------
    dict
        ``kind`` ("platt"), ``slope``, ``intercept``, and the calibration data's ``prevalence``
        (alpha fraction), ``alpha`` and ``other`` counts: the prior the probabilities hold.
    """
    y, s = _labels_scores(labels, scores)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        raise InputError(f"a calibration map needs both classes, got {n1} alpha and {n0} other")
    x = np.c_[s, np.ones_like(s)]
    w = np.array([0.0, math.log(n1 / n0)])
    ridge = np.diag([1e-6, 0.0])

    def loglik(v: np.ndarray) -> float:
        z = x @ v
        return float(np.sum(y * z - np.logaddexp(0.0, z)) - 0.5 * v @ ridge @ v)

    for _ in range(200):
        p = 0.5 * (1.0 + np.tanh(0.5 * (x @ w)))
        grad = x.T @ (y - p) - ridge @ w
        hess = (x * (p * (1.0 - p))[:, None]).T @ x + ridge + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        now = loglik(w)
        while loglik(w + step) < now and np.max(np.abs(step)) > 1e-12:  # damped: a full step overshoots
            step = step / 2.0  # on rare-alpha stores (1:183), where the first one from slope 0 is huge
        w += step
        if np.max(np.abs(step)) < 1e-10:
            break
    return {"kind": "platt", "slope": float(w[0]), "intercept": float(w[1]),
            "prevalence": n1 / (n1 + n0), "alpha": n1, "other": n0}


def calibrated_probability(calibration: Mapping[str, Any], scores: Any) -> np.ndarray:
    """Probability of alpha at the calibration prevalence, for logits ``scores`` (float64 (n,))."""
    z = calibration["slope"] * np.asarray(scores, dtype=np.float64) + calibration["intercept"]
    return np.clip(0.5 * (1.0 + np.tanh(0.5 * z)), _PROB_EPS, 1.0 - _PROB_EPS)


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
    # likelihood ratio f_alpha(s) / f_other(s) up to nothing: the calibration prior divided out
    lr = (p / (1.0 - p)) * ((1.0 - train_prevalence) / train_prevalence)

    def score(pi: float) -> float:  # d log L / d pi, decreasing in pi
        return float(np.sum((lr - 1.0) / (pi * lr + 1.0 - pi)))

    lo, hi = 1e-12, 1.0 - 1e-12
    if score(lo) <= 0.0:
        pi = 0.0
    elif score(hi) >= 0.0:
        pi = 1.0
    else:  # bisection of the decreasing score: ~47 halvings to 1e-14 (scipy.optimize's brentq took fewer
        # steps but cost `scanstream info`, which reaches this module, ~1 s of imports)
        while hi - lo > 1e-14:
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if score(mid) > 0.0 else (lo, mid)
        pi = 0.5 * (lo + hi)
    info = float(np.sum(((lr - 1.0) / (pi * lr + 1.0 - pi)) ** 2))
    return PriorShift(prevalence=float(pi), posteriors=_posteriors(lr, pi), information=info)


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


def count_interval(shift: PriorShift, *, level: float = INTERVAL_LEVEL, calibration_var: float = 0.0,
                   relative_sd: float = 0.0) -> tuple[float, float]:
    """Interval for the realised number of alpha decays among the objects.

    ``sum q_i`` is off from the realised count ``K`` in two independent ways: the estimated
    prevalence is off from the true one (variance ``1 / I`` from the likelihood's curvature,
    carried to the count by ``dS/dpi = sum q_i (1 - q_i) / (pi (1 - pi))``), and ``K`` spreads
    about its expectation given the scores (Poisson-binomial variance ``sum q_i (1 - q_i)``).
    ``calibration_var`` adds the calibration map's own uncertainty (the variance of the count
    over maps refitted on bootstrap resamples of the calibration data, :func:`map_variance`),
    ``relative_sd`` a spread proportional to the count (:data:`CONDITION_SD`: imaging conditions
    within range but unlike the calibration store's). The interval is normal,
    ``sum q_i +- z sqrt(var)``, clipped at 0 and at the object count. A sheet outside the range
    (unlike the calibration data) is not in it: the drift flag is the guard against that.
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
    var += max(0.0, float(calibration_var)) + (relative_sd * shift.expected_count) ** 2
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
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
            "calibration_bootstrap": bootstrap_calibrations(y, s), "reference": reference}


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


def sheet_trust(inputs: SheetInputs, record: Mapping[str, Any] | None) -> dict[str, Any]:
    """``expected_alpha`` (with its 68 % interval), ``expected_recall`` and ``drift`` of one sheet.

    Fields that cannot be computed (no threshold record, or one without a calibration map) are
    the string ``"unavailable"`` and ``trust_unavailable`` says why.
    """
    block, why = record_trust(record)
    if block is None:
        return unavailable(why or "")
    cal = block["calibration"]
    scores = np.asarray(inputs.scores, dtype=np.float64)
    shift = prior_shift(calibrated_probability(cal, scores), cal["prevalence"])
    n_alpha = shift.expected_count
    lo, hi = count_interval(shift, calibration_var=map_variance(scores, block.get("calibration_bootstrap")),
                            relative_sd=CONDITION_SD)
    out: dict[str, Any] = {
        "expected_alpha": round(n_alpha, 2),
        "expected_alpha_interval": [round(lo, 2), round(hi, 2)],
        "expected_alpha_method": "prior-shift EM on Platt-calibrated scores; 68 % interval from the likelihood's "
                                 "curvature, the Poisson-binomial spread, the calibration map's bootstrap and "
                                 f"a {CONDITION_SD:.0%} spread for imaging conditions unlike the calibration store's",
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
    opened: dict[str, Any] | None = None,
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
    opened : dict, optional
        Open stores by path, shared between calls and filled in here, so that a store holding
        several sheets is opened (and its object table checked) once.

    A store that cannot be opened leaves the features and image statistics absent, with the
    reason in ``missing``; nothing here raises for it.
    """
    s = np.asarray(scores, dtype=np.float64)
    sel_list = list(selected) if selected is not None else []
    sel = None if not sel_list or any(v is None for v in sel_list) else np.asarray(sel_list, dtype=bool)
    idx = np.asarray(store_index, dtype=np.int64)
    paths = np.asarray([p or "" for p in stores], dtype=object)
    opened = {} if opened is None else opened
    mine: dict[str, Any] = {}
    try:
        for p in dict.fromkeys(paths.tolist()):
            if not p:
                raise InputError("a row has no store path")
            if p not in opened:
                opened[p] = open_store(p)
            mine[p] = opened[p]
    except (StoreError, InputError, OSError) as exc:
        why = f"crop store unreadable: {exc}"
        return SheetInputs(s, sel, missing={n: why for n in ("multiplicity", "prong_length", *IMAGE_STATISTICS)})
    mult = np.empty(s.size)
    lengths: list = [None] * s.size
    for p, store in mine.items():
        rows = np.nonzero(paths == p)[0]
        mult[rows] = store.table.column("multiplicity").take(idx[rows]).to_numpy(zero_copy_only=False)
        for r, v in zip(rows, store.table.column("track_lengths_um").take(idx[rows]).to_pylist(), strict=True):
            lengths[r] = v
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(s.size, size=min(image_sample, s.size), replace=False))
    image = {n: np.empty(pick.size) for n in IMAGE_STATISTICS}
    for p, store in mine.items():
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
    out: dict[str, dict[str, Any]] = {}
    opened: dict[str, Any] = {}  # a store holding several sheets is opened once
    for s in sorted(set(names.tolist())) if sheets is None else sheets:
        mask = names == s
        if not mask.any():
            out[s] = unavailable(f"no rows of sheet {s!r} in the table")
            continue
        part = rows.filter(mask)
        inputs = sheet_inputs(part.column("score").to_numpy(), part.column("selected").to_pylist(),
                              part.column("store").to_pylist(), part.column("store_index").to_numpy(), opened=opened)
        out[s] = sheet_trust(inputs, record)
    return out


def store_image_statistics(store: CropStore, *, sample: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Image statistics of a seeded sample of an open crop store's crops, with the sampled ``rows``."""
    rows = np.sort(np.random.default_rng(seed).choice(store.n, size=min(sample, store.n), replace=False))
    parts = [crop_statistics(store.read_rows(rows[i:i + 256])) for i in range(0, rows.size, 256)]  # bounded memory
    return {"rows": rows, **{n: np.concatenate([q[n] for q in parts]) for n in IMAGE_STATISTICS}}
