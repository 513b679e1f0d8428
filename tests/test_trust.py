"""Label-free trust per sheet: the prior-shift estimator, its interval's coverage, drift on and off."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import ks_2samp

from scanstream import drift, trust
from scanstream.errors import InputError
from scanstream.threshold import build_threshold_record, validate_threshold_record

# Synthetic logits: alpha ~ N(MU1, 1), other ~ N(MU0, 1.3); the calibration store at alpha
# fraction 0.1 (as VALID), the sheets at about 1:100.
MU1, MU0, SD0 = 3.0, -2.5, 1.3


def draw(n: int, prevalence: float, rng: np.random.Generator, *, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    y = rng.random(n) < prevalence
    s = np.where(y, rng.normal(MU1, 1.0, n), rng.normal(MU0 + shift, SD0, n))
    return y.astype(np.int8), s


@pytest.fixture(scope="module")
def calibration():
    rng = np.random.default_rng(1)
    y, s = draw(4000, 0.1, rng)
    mult = np.where(y == 1, 4, rng.integers(0, 4, y.size))
    lengths = [[20.0 + 5 * k for k in range(m)] if yy else [float(v) for v in rng.uniform(5, 60, m)] for yy, m in zip(y, mult, strict=True)]
    image = {"rows": np.arange(0, y.size, 2), **image_statistics(rng, y.size // 2)}
    return y, s, trust.build_trust_reference(y, s, multiplicity=mult, lengths=lengths, image=image)


def image_statistics(rng, k, *, contrast=0.12):
    return {"image_mean": rng.normal(180, 10, k), "image_contrast": rng.normal(contrast, 0.02, k),
            "image_dark_fraction": rng.beta(2, 60, k), "image_darkest": rng.normal(0.3, 0.05, k)}


def record_with(block):
    y = np.r_[np.ones(10), np.zeros(90)].astype(int)
    s = np.r_[np.linspace(1, 3, 10), np.linspace(-3, 0.5, 90)]
    record = build_threshold_record(y, s, target_kind="recall", target_value=0.8, model_hashes=["h"],
                                    calibration_store={"path": "v.zarr", "hash": "x"})
    return record if block is None else {**record, "trust": block}


# -- the estimator ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_prior_shift_is_the_em_fixed_point(seed):
    rng = np.random.default_rng(seed)
    p = np.clip(rng.beta(0.3, 3.0, 500), 1e-6, 1 - 1e-6)
    fast = trust.prior_shift(p, 0.2)
    assert fast.prevalence == pytest.approx(trust.prior_shift_em(p, 0.2), abs=1e-7)
    assert fast.expected_count == pytest.approx(fast.prevalence * p.size, rel=1e-6)  # sum q = N pi at the fixed point


def test_calibration_map_is_platt_and_keeps_the_prevalence(calibration):
    y, s, block = calibration
    cal = block["calibration"]
    # equal priors aside, the log-likelihood ratio of these Gaussians is near linear in s there
    assert cal["kind"] == "platt" and cal["slope"] > 0
    assert cal["prevalence"] == pytest.approx(y.mean())
    assert trust.calibrated_probability(cal, s).mean() == pytest.approx(y.mean(), abs=2e-3)


@pytest.mark.parametrize("seed", range(3))
def test_platt_fit_matches_scikit_learn(seed):
    from sklearn.linear_model import LogisticRegression

    y, s = draw(3000, 0.1, np.random.default_rng(seed))
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(s[:, None], y)
    cal = trust.fit_calibration(y, s)
    assert cal["slope"] == pytest.approx(ref.coef_[0, 0], rel=1e-4)
    assert cal["intercept"] == pytest.approx(ref.intercept_[0], rel=1e-4, abs=1e-4)


# Ventiles of a cascade's logits per class on a simulated sheet (alpha; other): prefilter-rejected
# objects carry the feature model's logit (down to -11), the rest the network's.
ALPHA_VENTILES = [-7.4, -2.7, 0.6, 1.2, 1.6, 1.7, 2.0, 2.5, 2.8, 3.1, 3.2, 3.5, 3.9, 4.6, 4.7, 5.0, 5.1, 5.4, 5.7, 5.9, 6.2]
OTHER_VENTILES = [-11.0, -11.0, -10.9, -10.6, -10.6, -10.5, -9.7, -8.8, -7.9, -7.9, -7.9, -7.6, -7.2, -6.8, -6.2, -5.7,
                  -5.2, -4.8, -4.2, -2.9, 5.2]


def test_platt_fit_converges_on_a_store_at_a_sheets_prevalence():
    """At 1:183 on cascade-like logits a full Newton step from slope 0 overshoots (it diverged to slopes of 3e8)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(21)
    y = (rng.random(20_000) < 1 / 183).astype(int)
    grid = np.linspace(0, 1, 21)
    s = np.where(y == 1, np.interp(rng.random(y.size), grid, ALPHA_VENTILES), np.interp(rng.random(y.size), grid, OTHER_VENTILES))
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(s[:, None], y)
    cal = trust.fit_calibration(y, s)
    assert cal["slope"] == pytest.approx(ref.coef_[0, 0], rel=1e-3)
    assert cal["intercept"] == pytest.approx(ref.intercept_[0], rel=1e-3)


def test_condition_spread_adds_in_quadrature(calibration):
    _, _, block = calibration
    cal = block["calibration"]
    _, sheet = draw(3000, 0.01, np.random.default_rng(13))
    shift = trust.prior_shift(trust.calibrated_probability(cal, sheet), cal["prevalence"])
    lo0, hi0 = trust.count_interval(shift)
    lo, hi = trust.count_interval(shift, relative_sd=0.2)
    n = shift.expected_count
    assert ((hi - lo) / 2) ** 2 == pytest.approx(((hi0 - lo0) / 2) ** 2 + (0.2 * n) ** 2, rel=1e-3)  # z(68.27 %) = 1
    out = trust.sheet_trust(trust.SheetInputs(sheet, sheet > 1.0), record_with(block))
    assert out["expected_alpha_interval"][1] - out["expected_alpha_interval"][0] > hi0 - lo0 + 1.0
    assert f"{trust.CONDITION_SD:.0%}" in out["expected_alpha_method"]


@pytest.mark.parametrize("prevalence", [0.005, 0.02, 0.1])
def test_expected_alpha_recovers_a_known_prevalence(calibration, prevalence):
    _, _, block = calibration
    rng = np.random.default_rng(7)
    errors = []
    for _ in range(40):
        y, s = draw(5000, prevalence, rng)
        est = trust.prior_shift(trust.calibrated_probability(block["calibration"], s), block["calibration"]["prevalence"])
        errors.append(est.expected_count - y.sum())
    expected = prevalence * 5000
    assert abs(np.mean(errors)) < 0.05 * expected + 0.5  # unbiased to a few percent
    assert np.std(errors) < 0.3 * expected


def test_interval_covers_the_true_count_at_its_level(calibration):
    """The 68 % interval holds the realised count in about 68 % of simulated sheets."""
    _, _, block = calibration
    cal = block["calibration"]
    rng = np.random.default_rng(11)
    hits, widths = [], []
    for _ in range(300):
        y, s = draw(3000, 0.01, rng)
        shift = trust.prior_shift(trust.calibrated_probability(cal, s), cal["prevalence"])
        lo, hi = trust.count_interval(shift)
        hits.append(lo <= y.sum() <= hi)
        widths.append(hi - lo)
    coverage = np.mean(hits)
    assert 0.60 <= coverage <= 0.77, coverage  # binomial sd at 300 sheets: 0.027
    assert np.median(widths) < 0.5 * 30  # informative: well under the count itself


def test_calibration_bootstrap_widens_the_interval(calibration):
    _, _, block = calibration
    assert len(block["calibration_bootstrap"]) == trust.CALIBRATION_BOOTSTRAP
    rng = np.random.default_rng(2)
    _, sheet = draw(3000, 0.01, rng)
    cal = block["calibration"]
    shift = trust.prior_shift(trust.calibrated_probability(cal, sheet), cal["prevalence"])
    var = trust.map_variance(sheet, block["calibration_bootstrap"])
    assert var > 0
    narrow, wide = trust.count_interval(shift), trust.count_interval(shift, calibration_var=var)
    assert wide[0] < narrow[0] and wide[1] > narrow[1]


def test_perfect_separation_gives_the_count_exactly():
    p = np.r_[np.full(7, 1 - 1e-9), np.full(993, 1e-9)]
    shift = trust.prior_shift(p, 0.1)
    lo, hi = trust.count_interval(shift)
    assert shift.expected_count == pytest.approx(7, abs=1e-3)
    assert hi - lo < 0.1


def test_no_alpha_at_all_estimates_zero():
    shift = trust.prior_shift(np.full(100, 1e-6), 0.1)
    assert shift.prevalence == 0.0 and shift.expected_count < 1e-3


# -- drift -----------------------------------------------------------------------------------
def test_ks_to_mixture_matches_scipy_on_one_class():
    rng = np.random.default_rng(3)
    ref, sheet = rng.normal(0, 1, 5000), rng.normal(0.3, 1, 800)
    d = drift.ks_to_mixture(sheet, {"other": drift.quantiles(ref), "alpha": None}, 0.3)
    assert d == pytest.approx(ks_2samp(sheet, ref).statistic, abs=0.015)


def sheet_inputs(rng, *, shift=0.0, contrast=0.12, n=3000, prevalence=0.01):
    y, s = draw(n, prevalence, rng, shift=shift)
    mult = np.where(y == 1, 4, rng.integers(0, 4, n))
    lengths = [list(rng.uniform(5, 60, m)) for m in mult]
    image = image_statistics(rng, trust.IMAGE_SAMPLE, contrast=contrast)
    return y, trust.SheetInputs(s, s >= 1.0, multiplicity=mult, lengths=lengths, image=image)


@pytest.mark.parametrize("seed", range(5))
def test_drift_off_on_sheets_like_the_calibration_data(calibration, seed):
    _, _, block = calibration
    y, inputs = sheet_inputs(np.random.default_rng(100 + seed))
    out = trust.sheet_trust(inputs, record_with(block))
    assert out["drift"]["flag"] is False, out["drift"]
    assert set(out["drift"]["statistics"]) == set(drift.DRIFT_LIMITS)
    assert abs(out["expected_alpha"] - y.sum()) <= max(0.25 * y.sum(), 3)
    assert 0.0 < out["expected_recall"] <= 1.0


@pytest.mark.parametrize(("shift", "contrast", "over"), [(1.5, 0.12, "score"), (0.0, 0.08, "image_contrast")])
def test_drift_on_when_the_sheet_differs(calibration, shift, contrast, over):
    _, _, block = calibration
    _, inputs = sheet_inputs(np.random.default_rng(5), shift=shift, contrast=contrast)
    got = trust.sheet_trust(inputs, record_with(block))["drift"]
    assert got["flag"] is True and over in got["over"]
    assert got["statistics"][over]["statistic"] > drift.DRIFT_LIMITS[over]


def test_drift_on_picker_features(calibration):
    _, _, block = calibration
    rng = np.random.default_rng(6)
    _, inputs = sheet_inputs(rng)
    merged = trust.SheetInputs(inputs.scores, inputs.selected, multiplicity=np.full(inputs.scores.size, 6),
                               lengths=[[2.0, 3.0]] * inputs.scores.size, image=inputs.image)
    got = trust.sheet_trust(merged, record_with(block))["drift"]
    assert {"multiplicity", "prong_length"} <= set(got["over"])


def test_drift_without_stores_uses_what_it_has(calibration):
    _, _, block = calibration
    _, inputs = sheet_inputs(np.random.default_rng(8))
    bare = trust.SheetInputs(inputs.scores, inputs.selected, missing={"image_mean": "crop store unreadable: gone"})
    got = trust.sheet_trust(bare, record_with(block))["drift"]
    assert got["flag"] is False
    assert got["statistics"]["image_mean"] == {"unavailable": "crop store unreadable: gone"}
    assert "unavailable" in got["statistics"]["prong_length"]


# -- records old and new ---------------------------------------------------------------------
def test_record_carries_the_trust_block_and_survives_json(calibration):
    _, _, block = calibration
    rec = json.loads(json.dumps(record_with(block)))
    validate_threshold_record(rec)
    assert trust.record_trust(rec)[0]["calibration"] == block["calibration"]


@pytest.mark.parametrize(("record", "reason"), [(None, "no threshold record"), ("old", "earlier scanstream"),
                                                ("bad", "not usable")])
def test_old_or_missing_records_say_unavailable(record, reason):
    rec = {None: None, "old": record_with(None), "bad": record_with({"calibration": {"kind": "platt", "slope": 1.0}})}[record]
    assert record != "old" or "trust" not in rec
    inputs = trust.SheetInputs(np.zeros(10), np.zeros(10, bool))
    out = trust.sheet_trust(inputs, rec)
    assert out["expected_alpha"] == out["expected_recall"] == "unavailable"
    assert out["drift"]["flag"] is None and reason in out["trust_unavailable"]


def test_table_trust_reads_features_and_crops_from_the_stores(store_factory, calibration):
    _, _, block = calibration
    store = store_factory("t.zarr", n=40, alpha_fraction=0.2)
    scores = np.where(store.labels == 1, 3.0, -3.0)
    rows = pa.table({"sheet": ["S1"] * 40, "score": scores, "selected": scores > 0, "store": [str(store.path)] * 40,
                     "store_index": np.arange(40)})
    out = trust.table_trust(rows, record_with(block))["S1"]
    stats = out["drift"]["statistics"]
    assert all("statistic" in stats[n] for n in drift.DRIFT_LIMITS), stats
    assert stats["image_contrast"]["over"]  # the test crops are not the calibration data
    assert stats["image_mean"]["limit"] is None and not stats["image_mean"]["over"]  # reported, never flagged
    missing = rows.set_column(3, "store", pa.array([str(store.path) + "x"] * 40))
    gone = trust.table_trust(missing, record_with(block))["S1"]["drift"]["statistics"]
    assert "crop store unreadable" in gone["image_mean"]["unavailable"] and "statistic" in gone["score"]


def test_table_trust_opens_a_store_of_several_sheets_once(store_factory, calibration, monkeypatch):
    _, _, block = calibration
    store = store_factory("t.zarr", n=40, alpha_fraction=0.2)
    scores = np.where(store.labels == 1, 3.0, -3.0)
    rows = pa.table({"sheet": ["S1", "S2"] * 20, "score": scores, "selected": scores > 0,
                     "store": [str(store.path)] * 40, "store_index": np.arange(40)})
    alone = {s: trust.table_trust(rows, record_with(block), sheets=[s])[s] for s in ("S1", "S2")}
    opens, open_store = [], trust.open_store
    monkeypatch.setattr(trust, "open_store", lambda p: opens.append(p) or open_store(p))
    assert trust.table_trust(rows, record_with(block)) == alone
    assert opens == [str(store.path)]


def test_crop_statistics_on_known_crops():
    crops = np.full((2, 16, 16, 3), 200, np.uint8)
    crops[1, :4] = 20  # rows 0-3: of the sampled rows 0, 4, 8, 12, one in four is dark
    st = drift.crop_statistics(crops)
    assert st["image_mean"].tolist() == pytest.approx([200.0, 155.0])
    assert st["image_dark_fraction"].tolist() == pytest.approx([0.0, 0.25])
    assert st["image_contrast"][0] == 0.0 and st["image_contrast"][1] == pytest.approx(np.sqrt(0.25 * 0.75) * 180 / 155)
    assert st["image_darkest"].tolist() == pytest.approx([1.0, 0.1])


# -- bad input -------------------------------------------------------------------------------
def test_calibration_needs_both_classes():
    with pytest.raises(InputError, match="both classes"):
        trust.fit_calibration([0, 0, 0], [0.1, 0.2, 0.3])


def test_prior_shift_rejects_a_bad_calibration_prevalence():
    with pytest.raises(InputError, match="calibration prevalence"):
        trust.prior_shift([0.5], 1.0)


def test_crop_statistics_rejects_float_crops():
    with pytest.raises(InputError, match="uint8"):
        drift.crop_statistics(np.zeros((1, 4, 4, 3)))


# -- the morning summary ---------------------------------------------------------------------
def test_morning_page_shows_trust_and_says_what_to_do_on_drift(calibration):
    from scanstream.review.morning import DRIFT_ADVICE, summary_markdown

    _, _, block = calibration
    base = {"sheet": "S", "objects": 3000, "selected": 30, "threshold": 1.0, "seconds": 1.0, "classify_seconds": 1.0,
            "crops_per_s": 3000.0, "stores": []}
    for shift, flagged in ((0.0, False), (1.5, True)):
        _, inputs = sheet_inputs(np.random.default_rng(9), shift=shift)
        fields = trust.sheet_trust(inputs, record_with(block))
        page = summary_markdown({**base, **fields})
        assert f"| alpha decays on the sheet, from scores | {fields['expected_alpha']:.1f} [" in page
        assert "| expected recall of the selection | " in page
        assert (DRIFT_ADVICE in page) is flagged and ("**flagged** (score " in page) is flagged
        assert ("none: like the calibration data" in page) is not flagged
    old = summary_markdown({**base, **trust.sheet_trust(inputs, record_with(None))})
    assert "| alpha decays on the sheet, from scores | unavailable: the threshold record has no calibration map" in old
    assert "expected recall" not in old and DRIFT_ADVICE not in old


def test_morning_index_has_a_drift_column(tmp_path):
    from scanstream.review.morning import index_markdown

    for name, flag in (("A", True), ("B", False), ("C", None)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"sheet": name, "objects": 1, "seconds": 1.0, "drift": {"flag": flag}}))
    index = index_markdown(tmp_path / "cands", tmp_path, {})
    assert "| crops/s | drift |" in index
    rows = [line for line in index.splitlines() if line.startswith("| [")]
    assert [r.rsplit("|", 2)[-2].strip() for r in rows] == ["**flagged**", "none", "n/a"]


# -- scanstream info -------------------------------------------------------------------------
@pytest.mark.parametrize("with_trust", [False, True])
def test_info_gives_each_sheet_its_trust_fields(store_factory, tmp_path, calibration, with_trust):
    from scanstream.candidates import table as cand

    store = store_factory("i.zarr", n=40)
    scores = np.where(store.labels == 1, 3.0, -3.0).astype(np.float32)
    rec = record_with(calibration[2] if with_trust else None)
    part = cand.build_part(store.table, scores, threshold=rec["threshold"], store=str(store.path), start=0)
    cand.write_parts(tmp_path / "c", part, store_hash="h", start=0, metadata={"threshold": rec})
    sheet = cand.summarize_candidates(tmp_path / "c")["sheets"]["S1"]
    assert sheet["rows"] == 40
    if with_trust:
        assert isinstance(sheet["expected_alpha"], float) and len(sheet["expected_alpha_interval"]) == 2
        assert isinstance(sheet["drift"]["flag"], bool) and "trust_unavailable" not in sheet
    else:
        assert sheet["expected_alpha"] == sheet["expected_recall"] == "unavailable"
        assert "no calibration map" in sheet["trust_unavailable"] and sheet["drift"]["flag"] is None
