"""Threshold choice, confidence intervals, prevalence projection and threshold records (pure)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from scanstream.errors import InputError, ThresholdError
from scanstream.threshold import (
    build_threshold_record,
    check_models,
    load_threshold,
    parse_prevalence,
    project_precision,
    proportion_ci,
    threshold_at_precision,
    threshold_at_recall,
    write_threshold,
)


def _recall(s, y, t):
    return ((s >= t) & (y == 1)).sum() / (y == 1).sum()


def _precision(s, y, t):
    sel = s >= t
    return ((sel & (y == 1)).sum() / sel.sum()) if sel.any() else 0.0


def slow_threshold_at_recall(s, y, target):
    """Reference: the highest distinct score whose cut reaches the recall."""
    return max(t for t in np.unique(s) if _recall(s, y, t) >= target - 1e-12)


def slow_threshold_at_precision(s, y, target):
    """Reference: the lowest distinct score whose cut reaches the precision."""
    ok = [t for t in np.unique(s) if _precision(s, y, t) >= target - 1e-12]
    return min(ok) if ok else None


# -- known answers -------------------------------------------------------------------------
POS = [0.9, 0.8, 0.6, 0.3, 0.1]
NEG = [0.95, 0.7, 0.5, 0.4, 0.2, 0.0, -1.0]
SCORES = np.array(POS + NEG)
LABELS = np.array([1] * len(POS) + [0] * len(NEG))


@pytest.mark.parametrize(
    ("target", "expected"),
    [(0.2, 0.9), (0.4, 0.8), (0.6, 0.6), (0.61, 0.3), (0.8, 0.3), (1.0, 0.1)],
)
def test_threshold_at_recall_known_answer(target, expected):
    assert threshold_at_recall(LABELS, SCORES, target) == expected


def test_threshold_at_recall_float_product_does_not_ask_for_one_more():
    # 0.9 * 10 == 9.000000000000002: nine positives reach recall 0.9, not ten
    s = np.arange(10, 0, -1, dtype=float)
    assert threshold_at_recall(np.ones(10, int), s, 0.9) == 2.0


@pytest.mark.parametrize(
    ("target", "expected"),
    # cuts: 0.95 -> 0/1, 0.9 -> 1/2, 0.8 -> 2/3, 0.7 -> 2/4, 0.6 -> 3/5, 0.3 -> 4/8, 0.1 -> 5/10
    [(0.6, 0.6), (0.65, 0.8), (0.5, 0.1), (0.51, 0.6)],
)
def test_threshold_at_precision_known_answer(target, expected):
    assert threshold_at_precision(LABELS, SCORES, target) == expected


def test_threshold_at_precision_unreachable():
    with pytest.raises(ThresholdError, match="no threshold reaches precision 0.9"):
        threshold_at_precision(LABELS, SCORES, 0.9)


@pytest.mark.parametrize("seed", range(6))
def test_thresholds_match_slow_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 200
    y = (rng.random(n) < 0.3).astype(int)
    s = np.round(rng.normal(y * 1.5, 1.0), 1)  # rounding makes ties across classes
    for target in (0.1, 0.5, 0.77, 0.9, 0.95, 1.0):
        assert threshold_at_recall(y, s, target) == slow_threshold_at_recall(s, y, target)
        t = threshold_at_recall(y, s, target)
        assert _recall(s, y, t) >= target
    for target in (0.3, 0.5, 0.6, 0.8):
        ref = slow_threshold_at_precision(s, y, target)
        if ref is None:
            with pytest.raises(ThresholdError):
                threshold_at_precision(y, s, target)
        else:
            assert threshold_at_precision(y, s, target) == ref


# -- bad inputs ----------------------------------------------------------------------------
def test_rejects_length_mismatch():
    with pytest.raises(InputError, match="differ in length"):
        threshold_at_recall([1], [0.1, 0.2], 0.5)


def test_rejects_unknown_labels():
    with pytest.raises(InputError, match=r"labels must be 0 or 1.*-1"):
        threshold_at_recall([1, -1], [0.1, 0.2], 0.5)


@pytest.mark.parametrize("target", [0.0, -0.1, 1.5, float("nan")])
def test_rejects_target_outside_unit_interval(target):
    with pytest.raises(InputError, match="target recall must be in"):
        threshold_at_recall([1, 0], [0.1, 0.2], target)


def test_rejects_non_finite_scores():
    with pytest.raises(InputError, match="non-finite"):
        threshold_at_precision([1, 0], [0.1, float("nan")], 0.5)


def test_rejects_no_positives():
    with pytest.raises(ThresholdError, match="no positive"):
        threshold_at_recall([0, 0], [0.1, 0.2], 0.5)


# -- intervals -----------------------------------------------------------------------------
def test_clopper_pearson_closed_forms():
    # k = 0: upper = 1 - (alpha/2)^(1/n); k = n: lower = (alpha/2)^(1/n)
    lo, hi = proportion_ci(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10))
    lo, hi = proportion_ci(20, 20)
    assert lo == pytest.approx(0.025 ** (1 / 20)) and hi == 1.0


def test_wilson_matches_formula():
    k, n, z = 7, 25, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = proportion_ci(k, n, method="wilson")
    assert lo == pytest.approx(centre - half) and hi == pytest.approx(centre + half)


def test_interval_of_nothing_is_everything():
    assert proportion_ci(0, 0) == (0.0, 1.0)


def test_interval_rejects_unknown_method():
    with pytest.raises(InputError, match="'agresti'"):
        proportion_ci(1, 2, method="agresti")


# -- prevalence ----------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "value"), [("1:183", 1 / 184), ("1:17", 1 / 18), ("0.01", 0.01), (" 2:8 ", 0.2)])
def test_parse_prevalence(text, value):
    assert parse_prevalence(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["abc", "1:", "0", "1", "1.5", "1:0", "0:5", "-1:5"])
def test_parse_prevalence_rejects(text):
    with pytest.raises(InputError, match="prevalence"):
        parse_prevalence(text)


def test_projection_formula_and_identity_at_own_prevalence():
    assert project_precision(0.9, 0.01, 1 / 184) == pytest.approx(0.9 / 184 / (0.9 / 184 + 0.01 * 183 / 184))
    assert project_precision(0.0, 0.0, 0.5) is None
    # projected to the calibration store's own prevalence, it is the measured precision
    t = 0.3
    tp, fp = 4, 4  # cut at 0.3 on SCORES: 4 of 5 positives, 4 of 7 negatives
    p = project_precision(tp / 5, fp / 7, 5 / 12)
    assert p == pytest.approx(tp / (tp + fp))
    assert _precision(SCORES, LABELS, t) == pytest.approx(tp / (tp + fp))


# -- records -------------------------------------------------------------------------------
def _record(**kw):
    args = {
        "target_kind": "recall",
        "target_value": 0.8,
        "model_hashes": ["bbbb", "aaaa"],
        "calibration_store": {"path": "valid.zarr", "hash": "h" * 32},
        "prevalences": ["1:17", "1:183"],
    }
    args.update(kw)
    return build_threshold_record(LABELS, SCORES, **args)


def test_record_at_recall():
    r = _record()
    assert r["threshold"] == 0.3
    assert r["target"] == {"kind": "recall", "value": 0.8}
    a = r["achieved"]
    assert (a["true_positives"], a["false_positives"], a["selected"]) == (4, 4, 8)
    assert a["recall"] == pytest.approx(0.8) and a["precision"] == pytest.approx(0.5)
    assert a["recall_ci"][0] < a["recall"] < a["recall_ci"][1]
    assert a["precision_ci"][0] < a["precision"] < a["precision_ci"][1]
    assert r["calibration_store"] == {"path": "valid.zarr", "hash": "h" * 32, "alpha": 5, "other": 7}
    assert r["model_hashes"] == ["aaaa", "bbbb"]
    proj = {p["prevalence"]: p for p in r["prevalence_projection"]}
    assert set(proj) == {"1:17", "1:183"}
    for p in proj.values():
        assert p["precision"] == pytest.approx(project_precision(0.8, 4 / 7, p["alpha_fraction"]))
        assert p["precision_ci"][0] <= p["precision"] <= p["precision_ci"][1]
    assert proj["1:183"]["precision"] < proj["1:17"]["precision"] < a["precision"]
    json.dumps(r, allow_nan=False)  # valid JSON, no NaN


def test_record_at_precision():
    r = _record(target_kind="precision", target_value=0.6)
    assert r["threshold"] == 0.6 and r["achieved"]["precision"] == pytest.approx(0.6)


def test_record_rejects_unknown_target_kind():
    with pytest.raises(InputError, match="'f1'"):
        _record(target_kind="f1")


def test_write_and_load_round_trip(tmp_path):
    r = _record()
    path = write_threshold(r, tmp_path / "sub" / "t.json")
    assert load_threshold(path) == r
    assert not list(path.parent.glob(".*tmp*"))


def test_load_missing(tmp_path):
    with pytest.raises(ThresholdError, match="no such threshold record"):
        load_threshold(tmp_path / "nope.json")


def test_load_not_json(tmp_path):
    (tmp_path / "t.json").write_text("{not json")
    with pytest.raises(ThresholdError, match="not a readable JSON"):
        load_threshold(tmp_path / "t.json")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("threshold", "0.5", "'threshold' must be a finite number"), ("threshold", None, "finite number"),
     ("target", {"kind": "f1"}, "'target'"), ("model_hashes", [], "'model_hashes'"),
     ("achieved", None, "missing 'achieved'")],
)
def test_load_rejects_malformed(tmp_path, field, value, match):
    r = _record()
    r[field] = value
    (tmp_path / "t.json").write_text(json.dumps(r))
    with pytest.raises(ThresholdError, match=match):
        load_threshold(tmp_path / "t.json")


def test_check_models():
    r = _record()
    check_models(r, ["aaaa", "bbbb"])
    check_models(r, ["bbbb", "aaaa"])  # order of the ensemble does not matter
    with pytest.raises(ThresholdError, match=r"calibrated for models \['aaaa', 'bbbb'\] but the given models are \['aaaa'\]"):
        check_models(r, ["aaaa"])
