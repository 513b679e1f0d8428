"""The picker's error measures (scanstream.picker.accuracy) against slow references."""

from __future__ import annotations

import numpy as np
import pytest

from scanstream.picker import accuracy as acc


def random_scene(seed: int):
    rng = np.random.default_rng(seed)
    truth = [{"x_mm": float(x), "y_mm": float(y), "z_mm": float(z), "label": int(rng.random() < 0.6),
              "n_prongs": int(rng.integers(3, 7))} for x, y, z in rng.uniform(0, 0.05, (12, 3))]
    near = np.array([[r["x_mm"], r["y_mm"], r["z_mm"]] for r in truth])[rng.integers(0, 12, 10)]
    picked = np.concatenate([near + rng.normal(0, 0.002, near.shape), rng.uniform(0, 0.05, (5, 3))])
    return picked, rng.integers(1, 7, len(picked)), truth


@pytest.mark.parametrize("seed", range(5))
def test_decay_matches_against_a_loop(seed):
    picked, mult, truth = random_scene(seed)
    got = acc.decay_matches(picked, mult, truth, xy_um=2.0, z_um=3.0, near_um=6.0)
    decays = [r for r in truth if r["label"] == 1]
    assert len(got) == len(decays)
    for r, m in zip(decays, got, strict=True):
        d = [(((p[0] - r["x_mm"]) ** 2 + (p[1] - r["y_mm"]) ** 2) ** 0.5 * 1000, abs(p[2] - r["z_mm"]) * 1000, j)
             for j, p in enumerate(picked)]
        assert m["picked"] == any(a <= 2.0 and b <= 3.0 for a, b, _ in d)
        close = [(a, j) for a, _, j in d if a <= 6.0]
        assert m["found"] == bool(close) and m["near"] == len(close)
        if close:
            a, j = min(close)
            assert m["index"] == j and m["dxy_um"] == pytest.approx(a)
            assert m["dz_um"] == pytest.approx((picked[j, 2] - r["z_mm"]) * 1000)
            assert m["multiplicity_error"] == mult[j] - r["n_prongs"]


@pytest.mark.parametrize("seed", range(5))
def test_fakes_and_duplicates_against_loops(seed):
    picked, _, truth = random_scene(seed)
    fakes = acc.fake_vertices(picked, truth)
    dups, dups_xy = acc.duplicates(picked), acc.duplicates(picked, in_3d=False)
    for i, p in enumerate(picked):
        assert fakes[i] == (not any(np.hypot(p[0] - r["x_mm"], p[1] - r["y_mm"]) * 1000 <= 5.0
                                    and abs(p[2] - r["z_mm"]) * 1000 <= 6.0 for r in truth))
        assert dups[i] == any(j != i and np.linalg.norm(p - q) * 1000 <= 8.0 for j, q in enumerate(picked))
        assert dups_xy[i] == any(j != i and np.hypot(*(p[:2] - q[:2])) * 1000 <= 8.0 for j, q in enumerate(picked))
    assert acc.fake_vertices(picked, []).all() and acc.duplicates(np.zeros((0, 3))).shape == (0,)


def unit(deg_az, deg_dip=0.0):
    a, d = np.radians(deg_az), np.radians(deg_dip)
    return np.array([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])


def test_prong_matching_merged_missed_and_extra():
    true = np.array([unit(0), unit(12), unit(90, 40), unit(200)])
    measured = np.array([unit(5), unit(90, 30), unit(300)])
    m = acc.match_prongs(measured, true)
    # 0 and 12 degrees share the measured 5: one merged; 200 has nothing (missed); 300 matches nothing (extra)
    assert m == {"pairs": [(0, 0), (2, 1)], "merged": 1, "missed": 1, "extra": 1, "extra_indices": [2]}
    assert acc.match_prongs(measured, np.zeros((0, 3)))["extra"] == 3
    assert acc.match_prongs(measured, np.zeros((0, 3)))["extra_indices"] == [0, 1, 2]
    assert acc.match_prongs(np.zeros((0, 3)), true)["missed"] == 4


def test_true_directions_from_azimuth_and_dip():
    d = acc.true_directions({"prong_azimuth_deg": [90.0, 0.0], "prong_dip_deg": [0.0, 90.0]})
    np.testing.assert_allclose(d, [[0, 1, 0], [0, 0, 1]], atol=1e-12)


def test_length_errors_against_quantiles_per_bin():
    rng = np.random.default_rng(3)
    t = rng.uniform(0, 60, 200)
    m = t + rng.normal(0, 2, 200)
    rows = acc.length_errors(t, m)
    assert sum(r["prongs"] for r in rows) == int((t < 80).sum())
    for r in rows:
        lo, hi = r["true_um"]
        e = (m - t)[(t >= lo) & (t < hi)]
        assert r["prongs"] == len(e)
        if len(e):
            assert r["median_um"] == round(float(np.median(e)), 2)
            assert r["q16_q84_um"] == [round(float(np.quantile(e, q)), 2) for q in (0.16, 0.84)]
        else:
            assert r["median_um"] is None
