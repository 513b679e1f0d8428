"""Recall on a whole sheet from a stratified sample of verdicts: the labels not asked, predicted.

The useful order (:mod:`scanstream.review.adapt`) asks for a simple random sample of each
score band. How many alpha decays the sample *did not* see is what recall hinges on, and a few
dozen verdicts in a band of thousands rarely meet one: a design-based estimate (each verdict
standing for ``N_h / n_h`` objects) is then usually zero for that band, once in a while
hundreds, and its bootstrap interval is too narrow exactly when it matters.

Here the sheet is a finite population whose unjudged labels are predicted (Gelman, Carlin,
Stern, Dunson, Vehtari and Rubin, *Bayesian Data Analysis*, 3rd ed., chapter 8, "Modeling
accounting for data collection": stratified sampling is ignorable once the model conditions on
the strata; Cochran, *Sampling Techniques*, 3rd ed., chapter 5, for the design itself):

* the model: ``logit P(alpha | score, band) = a + b * (score - center) + u_band``, a
  recalibration of the sheet's logits (an intercept and a slope, as in Platt scaling) with a
  random intercept ``u_band ~ N(0, band_sd^2)`` per score band. The band term makes the
  selection ignorable (inclusion depends on the band only) and lets a well-sampled band
  depart from the line; the line carries what a band's few verdicts cannot say about its
  deep tail. Weak priors: ``a ~ N(0, 10^2)``, ``b ~ N(0, 5^2)``.
* the posterior of ``(a, b, u)``: a Laplace (Gaussian) approximation at the mode, found by
  Newton's method (penalised logistic regression);
* prediction: for each of ``replicates`` draws of the parameters, every unjudged object's
  label is drawn from its probability; judged objects keep their verdicts. Each draw is a
  complete labelling of the sheet, so recall, precision and the number of alpha decays at any
  cut are exact for that draw, and their spread over draws is the posterior uncertainty:
  parameter uncertainty plus the finite-population (binomial) spread of the labels not seen.
  A census leaves nothing to predict and gives the exact figures; any unjudged object keeps
  the interval open, so it never collapses to a point while something is unknown.

``benchmarks/verdicts_adapt.py --binormal`` measures the coverage of the intervals on
synthetic sheets (module docstring of :mod:`scanstream.review.adapt`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit

from scanstream.errors import InputError, VerdictError

#: Prior standard deviations of the intercept, the slope (per logit) and the band intercepts.
INTERCEPT_SD, SLOPE_SD, BAND_SD = 10.0, 5.0, 0.5
_CHUNK = 128  # draws predicted at once: (chunk, objects) float64 arrays stay near 20 MB on a 20,000-object sheet


@dataclass(frozen=True)
class CalibrationPosterior:
    """Gaussian posterior of ``(a, b, u_0 .. u_{H-1})`` for ``logit P(alpha) = a + b (s - center) + u_band``.

    Attributes
    ----------
    mean : ndarray, float (2 + bands,)
    cov : ndarray, float (2 + bands, 2 + bands)
    center : float
        Logit the slope is centred on (the design's threshold).
    bands : int
    """

    mean: np.ndarray
    cov: np.ndarray
    center: float
    bands: int

    def design_matrix(self, scores: np.ndarray, band: np.ndarray) -> np.ndarray:
        """Rows ``[1, s - center, onehot(band)]``, float (n, 2 + bands)."""
        s = np.asarray(scores, np.float64)
        x = np.zeros((s.size, 2 + self.bands))
        x[:, 0], x[:, 1] = 1.0, s - self.center
        x[np.arange(s.size), 2 + np.asarray(band, np.int64)] = 1.0
        return x

    def summary(self) -> dict[str, Any]:
        sd = np.sqrt(np.diag(self.cov))
        return {"intercept": [float(self.mean[0]), float(sd[0])], "slope": [float(self.mean[1]), float(sd[1])],
                "band_effects": [[float(m), float(v)] for m, v in zip(self.mean[2:], sd[2:])], "center": self.center}


def fit_calibration(scores: Any, labels: Any, band: Any, *, bands: int, center: float,
                    band_sd: float = BAND_SD) -> CalibrationPosterior:
    """The Laplace posterior of the sheet's calibration from the judged objects.

    Parameters
    ----------
    scores, labels, band : array-like (m,)
        Logit, verdict (1 alpha, 0 not) and score band of each judged object.
    bands : int
        Bands of the design (a band without verdicts keeps its prior).
    center : float
        Logit the slope is centred on.
    band_sd : float
        Prior standard deviation of the band intercepts (0: none, the line alone).

    Examples
    --------
    >>> post = fit_calibration([3.0, 2.0, 1.0, 0.0, -1.0, -2.0], [1, 1, 0, 1, 0, 0], [0, 0, 0, 1, 1, 1],
    ...                        bands=2, center=0.5)
    >>> bool(post.mean[1] > 0)  # the higher the score, the likelier an alpha decay
    True
    """
    if band_sd < 0:
        raise InputError(f"band_sd must be >= 0, got {band_sd!r}")
    y = np.asarray(labels, np.float64)
    post = CalibrationPosterior(np.zeros(2 + bands), np.eye(2 + bands), float(center), int(bands))
    x = post.design_matrix(scores, band)
    # band_sd 0 pins the band intercepts at 0 (an enormous precision)
    prior = np.r_[INTERCEPT_SD ** -2, SLOPE_SD ** -2, np.full(bands, band_sd ** -2 if band_sd > 0 else 1e12)]
    theta = np.zeros(x.shape[1])
    for _ in range(100):
        p = expit(x @ theta)
        hessian = (x * (p * (1 - p))[:, None]).T @ x + np.diag(prior)
        step = np.linalg.solve(hessian, x.T @ (y - p) - prior * theta)
        theta = theta + step
        if np.abs(step).max() < 1e-10:
            break
    p = expit(x @ theta)
    hessian = (x * (p * (1 - p))[:, None]).T @ x + np.diag(prior)
    return CalibrationPosterior(theta, np.linalg.inv(hessian), float(center), int(bands))


@dataclass(frozen=True)
class SheetSample:
    """One sheet's objects in decreasing score, and the verdicts on some of them.

    Attributes
    ----------
    scores : ndarray, float (n,)
        Logits, non-increasing (the ranking the recall is estimated for).
    band : ndarray, int (n,)
        Design band of each object.
    index : ndarray, int (m,)
        Positions (into ``scores``) of the judged objects.
    labels : ndarray, int (m,)
        Their verdicts, 1 alpha, 0 not.
    """

    scores: np.ndarray
    band: np.ndarray
    index: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if np.any(np.diff(self.scores) > 0):
            raise InputError("scores must be in decreasing order")
        if not (np.asarray(self.labels) == 1).any():
            raise VerdictError("no alpha verdict: recall cannot be estimated")

    @property
    def cut_ends(self) -> np.ndarray:
        """bool (n,): positions where a cut can end (the last of a run of tied scores)."""
        return np.r_[self.scores[:-1] > self.scores[1:], True]


def predictive_draws(sample: SheetSample, posterior: CalibrationPosterior, *, replicates: int,
                     seed: int) -> Iterator[np.ndarray]:
    """Complete labellings of the sheet drawn from the posterior predictive, cumulated along the ranks.

    Yields int32 (chunk, n) arrays: entry ``[r, i]`` is the number of alpha decays among the
    ``i + 1`` highest objects in draw ``r``. The same ``seed`` yields the same draws.
    """
    if int(replicates) < 100:
        raise InputError(f"posterior draws (replicates) must be at least 100 for an interval, got {replicates}")
    rng = np.random.default_rng(seed)
    n = sample.scores.size
    unjudged = np.ones(n, bool)
    unjudged[sample.index] = False
    x = posterior.design_matrix(sample.scores[unjudged], sample.band[unjudged])
    known = np.zeros(n, np.int32)
    known[sample.index] = np.asarray(sample.labels) == 1
    for start in range(0, int(replicates), _CHUNK):
        r = min(_CHUNK, int(replicates) - start)
        theta = rng.multivariate_normal(posterior.mean, posterior.cov, size=r, method="cholesky")
        labels = np.repeat(known[None, :], r, axis=0)
        labels[:, unjudged] = rng.random((r, x.shape[0])) < expit(theta @ x.T)
        yield np.cumsum(labels, axis=1, dtype=np.int32)


def recall_cut_rank(sample: SheetSample, draws: Iterator[np.ndarray], target: float, *,
                    assurance: float | None = None) -> int:
    """The position of the highest cut whose posterior recall meets ``target``.

    With ``assurance`` None: the posterior mean recall reaches ``target``. With an
    ``assurance`` in (0, 1): the posterior probability that recall reaches ``target`` is at
    least ``assurance`` (a cut with a one-sided lower bound, selecting more).
    """
    ends = sample.cut_ends
    total = None
    acc = np.zeros(sample.scores.size)
    for cum in draws:
        tot = cum[:, -1:].astype(np.float64)
        acc += (cum / tot).sum(0) if assurance is None else (cum >= target * tot * (1 - 1e-12)).sum(0)
        total = cum.shape[0] + (total or 0)
    value = acc / total
    met = ends & (value >= (target * (1 - 1e-12) if assurance is None else assurance))
    return int(np.argmax(met)) if met.any() else sample.scores.size - 1


def draws_at(sample: SheetSample, draws: Iterator[np.ndarray], thresholds: Any, target: float) -> dict[str, np.ndarray]:
    """Per draw: alpha decays on the sheet, alpha decays at or above each threshold, and the cut at ``target``.

    Returns ``alpha`` int (R,), ``above`` int (R, T) for the T ``thresholds`` (logits), and
    ``cut`` float (R,): the highest score whose cut reaches ``target`` recall in that draw.
    """
    t = np.atleast_1d(np.asarray(thresholds, np.float64))
    selected = np.searchsorted(-sample.scores, -t, side="right")  # objects with score >= t
    ends = sample.cut_ends
    alpha, above, cut = [], [], []
    for cum in draws:
        tot = cum[:, -1]
        alpha.append(tot)
        above.append(np.where(selected > 0, cum[:, np.maximum(selected - 1, 0)], 0))
        met = ends[None, :] & (cum >= target * tot[:, None] * (1 - 1e-12))
        cut.append(sample.scores[np.argmax(met, axis=1)])
    return {"alpha": np.concatenate(alpha), "above": np.concatenate(above), "cut": np.concatenate(cut)}
