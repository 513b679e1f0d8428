"""scanstream.review.posterior: recall on a whole sheet from a stratified sample of verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit

from scanstream.errors import InputError, VerdictError
from scanstream.review.adapt import JudgedSample, asked_until, build_design, record_from_verdicts
from scanstream.review.posterior import (
    INTERCEPT_SD,
    SLOPE_SD,
    SheetSample,
    draws_at,
    fit_calibration,
    predictive_draws,
    recall_cut_rank,
)


def binormal_sheet(seed, n=3000, alpha=60, sd=1.8, shift=0.0, mix=0.0):
    """Labels and logits: others N(-4 + shift, 1.5), alpha decays N(1.5 + shift, sd), a fraction ``mix`` N(-3, 1.5)."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) < alpha).astype(np.int8)
    a = np.where(rng.random(n) < mix, rng.normal(-3 + shift, 1.5, n), rng.normal(1.5 + shift, sd, n))
    return y, np.where(y == 1, a, rng.normal(-4 + shift, 1.5, n))


def judged(seed, verdicts, **sheet):
    y, s = binormal_sheet(seed, **sheet)
    d = build_design([f"o{i:05d}" for i in range(y.size)], s, threshold=0.06, sheet="S", seed=seed)
    yr = y[d.source]
    asked = np.sort(asked_until(d, yr, verdicts))
    return JudgedSample(d, asked, yr[asked]), yr


def judged_sheet(seed, verdicts):
    """:func:`judged`'s sample, its sheet and the calibration posterior fitted to its verdicts."""
    sample, _ = judged(seed, verdicts)
    scores = sample.design.scores
    sheet = SheetSample(scores, sample.design.band, sample.index, sample.labels)
    post = fit_calibration(scores[sample.index], sample.labels, sample.design.band[sample.index],
                           bands=len(sample.design.edges) - 1, center=0.06)
    return sample, sheet, post


def test_the_mode_and_covariance_match_a_slow_reference():
    rng = np.random.default_rng(0)
    s = rng.normal(0, 2, 120)
    band = np.minimum((np.argsort(np.argsort(-s)) // 30), 3)
    y = (rng.random(120) < expit(0.8 * s - 1)).astype(float)
    post = fit_calibration(s, y, band, bands=4, center=0.3, band_sd=0.7)
    x = post.design_matrix(s, band)
    prior = np.r_[INTERCEPT_SD ** -2, SLOPE_SD ** -2, np.full(4, 0.7 ** -2)]

    def loss(theta):  # the negative log posterior, term by term
        eta = x @ theta
        return float(np.sum(np.logaddexp(0, eta) - y * eta) + 0.5 * np.sum(prior * theta ** 2))

    ref = minimize(loss, np.zeros(6), method="BFGS", options={"gtol": 1e-9}).x
    np.testing.assert_allclose(post.mean, ref, atol=1e-4)
    h = np.zeros((6, 6))  # the Hessian by finite differences of the loss
    eps = 1e-4
    for i in range(6):
        for j in range(6):
            e_i, e_j = np.eye(6)[i] * eps, np.eye(6)[j] * eps
            h[i, j] = (loss(ref + e_i + e_j) - loss(ref + e_i - e_j) - loss(ref - e_i + e_j)
                       + loss(ref - e_i - e_j)) / (4 * eps ** 2)
    np.testing.assert_allclose(post.cov, np.linalg.inv(h), rtol=1e-3, atol=1e-6)


def test_draws_keep_verdicts_repeat_by_seed_and_are_summed_right():
    sample, sheet, post = judged_sheet(1, 20)
    scores = sample.design.scores
    a = np.concatenate(list(predictive_draws(sheet, post, replicates=300, seed=4)))
    b = np.concatenate(list(predictive_draws(sheet, post, replicates=300, seed=4)))
    assert a.shape == (300, scores.size) and np.array_equal(a, b)
    labels = np.diff(a, axis=1, prepend=0)
    assert np.all(labels[:, sample.index] == sample.labels)  # a verdict is never redrawn
    t = [scores[40], scores[200], scores[-1] - 1.0, scores[0] + 1.0]
    got = draws_at(sheet, iter([a]), t, 0.8)
    for r in range(0, 300, 37):  # slow reference, one draw at a time
        assert got["alpha"][r] == labels[r].sum()
        assert got["above"][r].tolist() == [int(labels[r][scores >= ti].sum()) for ti in t]
        need = 0.8 * labels[r].sum()
        k = next(i for i in range(scores.size) if labels[r][: i + 1].sum() >= need and
                 (i == scores.size - 1 or scores[i] > scores[i + 1]))
        assert got["cut"][r] == scores[k]


def test_an_assured_cut_selects_at_least_as_much():
    _, sheet, post = judged_sheet(2, 30)
    mean = recall_cut_rank(sheet, predictive_draws(sheet, post, replicates=300, seed=0), 0.8)
    sure = recall_cut_rank(sheet, predictive_draws(sheet, post, replicates=300, seed=0), 0.8, assurance=0.9)
    assert sure > mean


@pytest.mark.parametrize("setting", [{"sd": 0.9}, {"sd": 1.8}, {"sd": 2.5, "shift": -1.0}, {"sd": 1.2, "mix": 0.15}],
                         ids=["shallow", "default", "deep-shifted", "mixture"])
def test_the_interval_holds_the_truth_about_95_percent_of_the_time(setting):
    """Coverage over 60 seeded synthetic sheets: 0.95 expected; 0.85 is 3.5 standard errors below it."""
    inside, widths = [], []
    for seed in range(60):
        sample, yr = judged(100 + seed, 20, **setting)
        rec = record_from_verdicts(sample, target_recall=0.8, model_hashes=["m"], calibration={}, replicates=200,
                                   seed=seed)
        truth = yr[sample.design.scores >= rec["threshold"]].sum() / yr.sum()
        lo, hi = rec["achieved"]["recall_ci"]
        inside.append(lo <= truth <= hi)
        widths.append(hi - lo)
    assert np.mean(inside) >= 0.85
    assert min(widths) > 0  # never degenerate while objects are unjudged
    assert np.median(widths) < 0.9  # honest, not narrow: 0.6-0.8 wide at 20 alpha verdicts on these sheets


def test_a_band_seen_whole_keeps_an_open_interval():
    """A band whose alpha decays were all judged no longer freezes the interval (the bootstrap's [1, 1])."""
    y, s = binormal_sheet(5)
    d = build_design([f"o{i:05d}" for i in range(y.size)], s, threshold=0.06, sheet="S", seed=0)
    yr = y[d.source]
    asked = np.sort(np.r_[np.nonzero(d.band == 0)[0], np.nonzero(d.band == 1)[0],
                          *[np.nonzero(d.band == h)[0][:5] for h in range(2, len(d.edges) - 1)]])
    rec = record_from_verdicts(JudgedSample(d, asked, yr[asked]), target_recall=0.5, model_hashes=["m"],
                               calibration={}, replicates=300)
    lo, hi = rec["achieved"]["recall_ci"]
    assert lo < hi < 1.0 and lo <= rec["achieved"]["recall"] <= hi


def test_bad_inputs_are_refused():
    with pytest.raises(InputError, match="decreasing"):
        SheetSample(np.array([1.0, 2.0]), np.zeros(2, int), np.array([0]), np.array([1]))
    with pytest.raises(VerdictError, match="no alpha verdict"):
        SheetSample(np.array([2.0, 1.0]), np.zeros(2, int), np.array([0]), np.array([0]))
    with pytest.raises(InputError, match="band_sd"):
        fit_calibration([1.0], [1], [0], bands=1, center=0.0, band_sd=-1.0)
    sample, _ = judged(3, 10)
    with pytest.raises(InputError, match="at least 100"):
        record_from_verdicts(sample, target_recall=0.8, model_hashes=[], calibration={}, replicates=50)
    with pytest.raises(InputError, match="assurance"):
        record_from_verdicts(sample, target_recall=0.8, model_hashes=[], calibration={}, assurance=1.5)
