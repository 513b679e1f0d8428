"""scanstream.metrics: AP against a slow reference, Table 2 arithmetic on the paper's counts."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from scanstream import metrics as mt
from scanstream.errors import InputError


def slow_average_precision(labels, scores) -> float:
    """AP by definition: sum over distinct thresholds (highest first) of (R_k - R_{k-1}) * P_k."""
    labels = [int(v) for v in labels]
    scores = [float(v) for v in scores]
    positives = sum(labels)
    ap, last_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        tp = sum(1 for y, s in zip(labels, scores) if s >= t and y == 1)
        sel = sum(1 for s in scores if s >= t)
        recall = tp / positives
        ap += (recall - last_recall) * (tp / sel)
        last_recall = recall
    return ap


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_slow_reference(seed, ties):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    labels = (rng.random(n) < rng.uniform(0.05, 0.6)).astype(int)
    labels[:2] = [1, 0]
    scores = rng.normal(size=n) + 1.5 * labels
    if ties:
        scores = np.round(scores, 0)  # many tied scores across classes
    assert mt.average_precision(labels, scores) == pytest.approx(slow_average_precision(labels, scores), abs=1e-12)


def test_average_precision_perfect_and_reversed():
    y = np.array([0, 0, 1, 1, 0])
    assert mt.average_precision(y, np.array([0.1, 0.2, 0.9, 0.8, 0.3])) == 1.0
    # all alpha decays ranked last: P at the two positive steps is 1/4 and 2/5
    assert mt.average_precision(y, -np.array([0.1, 0.2, 0.9, 0.8, 0.3])) == pytest.approx(0.5 * 1 / 4 + 0.5 * 2 / 5)


def test_pr_curve_ends_and_is_consistent_with_ap():
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.2).astype(int)
    s = rng.normal(size=300) + y
    p, r, t = mt.precision_recall_curve(y, s)
    assert r[0] == 1.0 and r[-1] == 0.0 and p[-1] == 1.0
    assert len(t) == len(p) - 1
    assert -np.sum(np.diff(r) * p[:-1]) == pytest.approx(mt.average_precision(y, s))


@pytest.mark.parametrize(
    "labels, scores, match",
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "0 or 1"),
        ([0, 1, -1], [0.1, 0.2, 0.3], "0 or 1"),
        ([0, 1], [0.1], "differ in length"),
        ([0, 1], [0.1, float("nan")], "non-finite"),
        ([0, 0], [0.1, 0.2], "both classes"),
        ([1, 1], [0.1, 0.2], "both classes"),
        ([[0, 1]], [[0.1, 0.2]], "1-d"),
    ],
)
def test_average_precision_rejects_bad_input(labels, scores, match):
    with pytest.raises(InputError, match=match):
        mt.average_precision(np.array(labels), np.array(scores))


# -- Table 2 on the paper's own counts -------------------------------------------------------
PAPER_FORMER = mt.OperatingPoint(threshold=None, selected=2489, true_positives=201, positives=255, total=46948)


def test_former_precision_and_recall_reproduce_the_paper():
    p, r = PAPER_FORMER.precision, PAPER_FORMER.recall
    assert (round(p.value, 3), round(p.error, 3)) == (0.081, 0.006)
    assert (round(r.value, 3), round(r.error, 3)) == (0.788, 0.056)
    assert p.error == pytest.approx(math.sqrt(201) / 2489)
    assert r.error == pytest.approx(math.sqrt(201) / 255)
    assert p.format(3) == "0.081 +- 0.006" and r.format(3) == "0.788 +- 0.056"


def test_precision_ratio_reproduces_the_paper():
    # the paper: CNN precision 0.547 +- 0.025 (four models) -> a factor 6.8 +- 0.6
    ratio = mt.ratio_with_error(mt.Measured(0.547, 0.025), PAPER_FORMER.precision)
    assert (round(ratio.value, 1), round(ratio.error, 1)) == (6.8, 0.6)
    rel = math.hypot(0.025 / 0.547, (math.sqrt(201) / 2489) / (201 / 2489))
    assert ratio.error == pytest.approx(ratio.value * rel)


def test_table2_single_model_uses_sqrt_n_errors():
    cnn = mt.OperatingPoint(threshold=1.5, selected=366, true_positives=201, positives=255, total=46948)
    t = mt.table2(PAPER_FORMER, cnn)
    assert t["models"] == 1
    assert t["former"]["candidates"] == {"value": 2489.0, "error": pytest.approx(math.sqrt(2489))}
    assert t["cnn"]["candidates"] == {"value": 366.0, "error": pytest.approx(math.sqrt(366))}
    assert t["cnn"]["precision"]["value"] == pytest.approx(201 / 366)
    assert t["cnn"]["precision"]["error"] == pytest.approx(math.sqrt(201) / 366)
    assert t["cnn"]["recall"]["value"] == pytest.approx(201 / 255)
    assert t["precision_ratio"]["value"] == pytest.approx((201 / 366) / (201 / 2489))
    assert t["load_factor"]["value"] == pytest.approx(2489 / 366)
    rel = math.hypot(1 / math.sqrt(2489), 1 / math.sqrt(366))
    assert t["load_factor"]["error"] == pytest.approx(2489 / 366 * rel)
    assert t["cnn"]["thresholds"] == [1.5]


def test_table2_several_models_uses_mean_and_sample_std():
    sel = [350, 366, 382, 366]
    ops = [mt.OperatingPoint(float(i), s, 201, 255, 46948) for i, s in enumerate(sel)]
    t = mt.table2(PAPER_FORMER, ops)
    assert t["models"] == 4
    assert t["cnn"]["candidates"]["value"] == pytest.approx(np.mean(sel))
    assert t["cnn"]["candidates"]["error"] == pytest.approx(np.std(sel, ddof=1))
    precs = [201 / s for s in sel]
    assert t["cnn"]["precision"]["value"] == pytest.approx(np.mean(precs))
    assert t["cnn"]["precision"]["error"] == pytest.approx(np.std(precs, ddof=1))
    assert t["load_factor"]["value"] == pytest.approx(2489 / np.mean(sel))


def test_table2_rejects_different_sets():
    with pytest.raises(InputError, match="different sets"):
        mt.table2(PAPER_FORMER, mt.OperatingPoint(0.0, 300, 100, 200, 40000))
    with pytest.raises(InputError, match="at least one"):
        mt.table2(PAPER_FORMER, [])


@pytest.mark.parametrize(
    "k, n, match",
    [(5, 3, "exceed"), (-1, 3, "negative")],
)
def test_count_errors_reject_impossible_counts(k, n, match):
    with pytest.raises(InputError, match=match):
        mt.precision_with_error(k, n)
    with pytest.raises(InputError, match=match):
        mt.recall_with_error(k, n)


def test_precision_of_empty_selection_is_nan_and_recall_needs_positives():
    assert math.isnan(mt.precision_with_error(0, 0).value)
    with pytest.raises(InputError, match="0 positives"):
        mt.recall_with_error(0, 0)


def test_ratio_edge_cases():
    assert math.isnan(mt.ratio_with_error(mt.Measured(1, 0.1), mt.Measured(0, 0)).value)
    assert mt.ratio_with_error(mt.Measured(0, 1), mt.Measured(2, 0.1)) == mt.Measured(0.0, 0.5)


def test_mean_std():
    m = mt.mean_std([0.97, 0.98, 0.99])
    assert m.value == pytest.approx(0.98) and m.error == pytest.approx(0.01)
    assert math.isnan(mt.mean_std([0.5]).error)
    with pytest.raises(InputError):
        mt.mean_std([])


# -- operating points -------------------------------------------------------------------------
def slow_point_at_recall(labels, scores, recall):
    """Smallest prefix of the score ordering (ties included) whose recall reaches the target."""
    positives = sum(labels)
    for t in sorted(set(scores), reverse=True):
        tp = sum(1 for y, s in zip(labels, scores) if s >= t and y == 1)
        if tp >= math.ceil(recall * positives - 1e-9):
            return t, sum(1 for s in scores if s >= t), tp


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("recall", [0.1, 0.5, 201 / 255, 1.0])
def test_operating_point_at_recall_matches_slow_reference(seed, recall):
    rng = np.random.default_rng(seed)
    y = (rng.random(150) < 0.2).astype(int)
    y[:2] = [1, 0]
    s = np.round(rng.normal(size=150) + 1.2 * y, 1)
    op = mt.operating_point_at_recall(y, s, recall)
    t, sel, tp = slow_point_at_recall(list(y), list(s), recall)
    assert (op.threshold, op.selected, op.true_positives) == (t, sel, tp)
    assert op.recall.value >= recall - 1e-12
    assert op.positives == int(y.sum()) and op.total == 150


def test_operating_point_at_recall_of_paper_recall_keeps_201_true_positives():
    y = np.zeros(3000, int)
    y[:255] = 1
    s = np.arange(3000, 0, -1).astype(float)  # perfect ordering
    op = mt.operating_point_at_recall(y, s, 201 / 255)
    assert (op.true_positives, op.selected) == (201, 201)


@pytest.mark.parametrize("recall", [0.0, -0.1, 1.01])
def test_operating_point_at_recall_rejects_bad_target(recall):
    with pytest.raises(InputError, match="target recall"):
        mt.operating_point_at_recall(np.array([0, 1]), np.array([0.0, 1.0]), recall)


def test_operating_point_at_threshold_and_selection():
    y = np.array([1, 0, 1, 0, 0])
    s = np.array([2.0, 1.0, 0.5, 0.5, -1.0])
    op = mt.operating_point_at_threshold(y, s, 0.5)
    assert (op.selected, op.true_positives, op.false_positives, op.positives) == (4, 2, 2, 2)
    op2 = mt.operating_point_from_selection(y, np.array([True, False, False, False, True]))
    assert (op2.selected, op2.true_positives, op2.threshold) == (2, 1, None)
    with pytest.raises(InputError, match="differ in length"):
        mt.operating_point_from_selection(y, np.array([True]))
    d = op.to_dict()
    assert d["precision"]["value"] == 0.5 and d["candidates"]["value"] == 4


def test_false_positives_by_category():
    y = np.array([1, 0, 0, 0, 0])
    cat = ["alpha_th", "dust", "1vtx", "dust", None]
    sel = np.array([True, True, False, True, True])
    assert mt.false_positives_by_category(y, cat, sel) == {"dust": 2, "unknown": 1}
    with pytest.raises(InputError):
        mt.false_positives_by_category(y, cat[:2], sel)


def test_paired_false_positives_counts_and_exact_mcnemar():
    y = np.array([1] * 4 + [0] * 20)
    former = np.zeros(24, bool)
    cnn = np.zeros(24, bool)
    former[:4] = cnn[:4] = True  # the same alpha decays
    former[4:14] = True  # 10 non-alpha objects
    cnn[4:6] = True  # 2 of them, and nothing else
    d = mt.paired_false_positives(y, former, cnn)
    assert (d["only_former"], d["only_cnn"], d["both"]) == (8, 0, 2)
    assert d["p_value"] == pytest.approx(2 * 0.5**8)  # exact two-sided binomial, 8 of 8 one way
    even = mt.paired_false_positives(y, former, former)
    assert (even["only_former"], even["only_cnn"], even["p_value"]) == (0, 0, 1.0)
    # a brute-force two-sided binomial for an uneven split 9 vs 3
    b, c = 9, 3
    pmf = [math.comb(b + c, k) * 0.5 ** (b + c) for k in range(b + c + 1)]
    ref = sum(p for p in pmf if p <= pmf[b] * (1 + 1e-9))
    cnn2 = np.zeros(24, bool)
    f2 = np.zeros(24, bool)
    f2[4:13] = True
    cnn2[13:16] = True
    assert mt.paired_false_positives(y, f2, cnn2)["p_value"] == pytest.approx(ref)
    with pytest.raises(InputError, match="differ in length"):
        mt.paired_false_positives(y, former[:3], cnn)


def test_docstring_examples():
    result = doctest.testmod(mt, extraglobs={"np": np})
    assert result.attempted >= 3 and result.failed == 0
